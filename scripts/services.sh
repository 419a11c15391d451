#!/usr/bin/env bash
# Brings up the external services stompline's service-backed tests talk to,
# installing them from Debian's packages when absent.
#
#   scripts/services.sh [start|check] [SERVICE...]
#
#   start (default)  install if missing, start if down, wait until usable
#   check            only report; exit 1 if a service is not usable
#
# With no SERVICE, all of them. Each service is a pair of functions
# <name>_start and <name>_check plus an entry in SERVICES below.
#
# Addresses match what the tests read by default:
#   postgres  postgres://postgres@127.0.0.1:5432/postgres (trust auth)
#   redis     redis://127.0.0.1:6379 (keeps nothing on disk)
#   rabbitmq  amqp://guest:guest@127.0.0.1:5672/%2f
#   kafka     127.0.0.1:9092: tansu, a Kafka-compatible broker, in memory
#             (installed with `cargo install tansu` when not on PATH, which
#             takes ~25 minutes once per machine; pid file and log under
#             STOMPLINE_SERVICES_STATE, default /tmp/stompline-services)
#
# On a machine where the postgres role cannot log in over 127.0.0.1 without
# a password, `start` adds loopback-only trust rules to pg_hba.conf when
# CI=true or STOMPLINE_SERVICES_TRUST=1, and otherwise stops with the fix.
set -euo pipefail

# Each entry has its <name>_start / <name>_check pair below.
SERVICES=(postgres redis rabbitmq kafka)

PG_URL="${STOMPLINE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
REDIS_URL="${STOMPLINE_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
KAFKA_ADDR="${STOMPLINE_TEST_KAFKA_BROKERS:-127.0.0.1:9092}"
KAFKA_ADDR="${KAFKA_ADDR%%,*}"
STATE_DIR="${STOMPLINE_SERVICES_STATE:-${TMPDIR:-/tmp}/stompline-services}"
WAIT_SECS="${STOMPLINE_SERVICES_WAIT_SECS:-60}"

log() { printf 'services: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    log "installing $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Waits until "$@" succeeds, up to WAIT_SECS.
wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + WAIT_SECS))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$what did not come up within ${WAIT_SECS}s"
            return 1
        fi
        sleep 1
    done
}

# --- PostgreSQL ------------------------------------------------------------

pg_cluster_version() {
    ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1
}

pg_login() {
    PGCONNECT_TIMEOUT=5 psql -w -X -q -At "$PG_URL" -c 'select 1' </dev/null
}

pg_as_superuser() {
    # Over the local socket with peer auth, whatever pg_hba says about TCP.
    as_root runuser -u postgres -- psql -w -X -q -At "$@" </dev/null
}

pg_trust_loopback() {
    local hba
    hba=$(pg_as_superuser -c 'show hba_file')
    log "adding loopback trust rules to $hba"
    as_root cp "$hba" "$hba.stompline.bak"
    as_root sh -c "{ printf '%s\n' '# added by stompline scripts/services.sh (loopback only)' \
        'host all all 127.0.0.1/32 trust' 'host all all ::1/128 trust'; cat '$hba.stompline.bak'; } > '$hba'"
    pg_as_superuser -c 'select pg_reload_conf()' >/dev/null
}

postgres_check() {
    pg_isready -q -h 127.0.0.1 -p 5432 && pg_login >/dev/null
}

postgres_start() {
    if ! command -v pg_ctlcluster >/dev/null || [ -z "$(pg_cluster_version)" ]; then
        apt_install postgresql postgresql-client
    fi
    command -v psql >/dev/null || apt_install postgresql-client
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        local version
        version=$(pg_cluster_version)
        log "starting PostgreSQL $version"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
        wait_for "PostgreSQL" pg_isready -q -h 127.0.0.1 -p 5432
    fi
    if ! pg_login >/dev/null 2>&1; then
        if [ "${CI:-}" = "true" ] || [ "${STOMPLINE_SERVICES_TRUST:-}" = "1" ]; then
            pg_trust_loopback
            wait_for "PostgreSQL login" pg_login
        else
            log "PostgreSQL is up but '$PG_URL' cannot log in without a password."
            log "Allow trust auth on loopback (STOMPLINE_SERVICES_TRUST=1 $0 start does it),"
            log "or point STOMPLINE_TEST_POSTGRES_URL at a database you can use."
            return 1
        fi
    fi
}

# --- Redis -------------------------------------------------------------------

redis_check() {
    [ "$(timeout 5 redis-cli -u "$REDIS_URL" ping 2>/dev/null)" = PONG ]
}

redis_start() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
        apt_install redis-server redis-tools
    if ! redis_check; then
        log "starting Redis"
        as_root mkdir -p /var/lib/redis /var/log/redis
        as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
            --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
        wait_for "Redis" redis_check
    fi
}

# --- RabbitMQ ----------------------------------------------------------------

# The broker answers an AMQP 0-9-1 protocol header with a Connection.Start
# method frame (frame type 1).
amqp_handshake() {
    timeout 5 bash -c '
        exec 3<>/dev/tcp/127.0.0.1/5672 || exit 1
        printf "AMQP\000\000\011\001" >&3
        [ "$(head -c 1 <&3 | od -An -tu1 | tr -d " ")" = 1 ]'
}

rabbitmq_check() {
    as_root timeout 20 rabbitmq-diagnostics -q ping && amqp_handshake
}

rabbitmq_start() {
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    if ! rabbitmq_check; then
        log "starting RabbitMQ"
        as_root rabbitmq-server -detached
        wait_for "RabbitMQ" rabbitmq_check
    fi
}

# --- Kafka (tansu) -----------------------------------------------------------

tansu_bin() {
    command -v tansu 2>/dev/null && return 0
    [ -x "$HOME/.cargo/bin/tansu" ] && echo "$HOME/.cargo/bin/tansu" && return 0
    return 1
}

# A Kafka Metadata request (v1, no topics) answered with our correlation id
# means the broker is serving, not just listening.
kafka_metadata() {
    local host=${KAFKA_ADDR%:*} port=${KAFKA_ADDR##*:} answer
    answer=$(timeout 5 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "\x00\x00\x00\x13\x00\x03\x00\x01\x00\x00\x00\x2a\x00\x05check\x00\x00\x00\x00" >&3
        head -c 8 <&3 | od -An -tx1' _ "$host" "$port") || return 1
    [ "$(echo $answer)" != "" ] && [ "$(echo $answer | cut -d' ' -f5-8)" = "00 00 00 2a" ]
}

kafka_check() {
    kafka_metadata
}

kafka_start() {
    local bin
    if ! bin=$(tansu_bin); then
        command -v cargo >/dev/null || { log "cargo is needed to install tansu"; return 1; }
        command -v gcc >/dev/null || apt_install gcc libc6-dev
        log "installing tansu (cargo install tansu --locked --features dynostore; ~25 min once)"
        cargo install tansu --locked --features dynostore >&2 || return 1
        bin=$(tansu_bin) || return 1
    fi
    mkdir -p "$STATE_DIR"
    local pidfile="$STATE_DIR/tansu.pid" url="tcp://$KAFKA_ADDR"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        log "tansu (pid $(cat "$pidfile")) is running but not answering; restarting it"
        kill "$(cat "$pidfile")" 2>/dev/null || true
        sleep 1
    fi
    log "starting tansu on $KAFKA_ADDR (log $STATE_DIR/tansu.log)"
    # Without --features dynostore tansu has no storage engine and drops
    # messages; memory:// keeps nothing across a restart, which the tests
    # that restart a broker account for. Listener URLs are explicit: tansu
    # binds 0.0.0.0 otherwise.
    nohup "$bin" broker --listener-url "$url" --advertised-listener-url "$url" \
        --storage-engine memory://tansu/ >>"$STATE_DIR/tansu.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    wait_for "tansu" kafka_metadata
}

# --- main --------------------------------------------------------------------

action=${1:-start}
[ $# -gt 0 ] && shift
case "$action" in
    start | check) ;;
    -h | --help)
        sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d'
        exit 0
        ;;
    *)
        log "unknown action '$action' (start or check)"
        exit 2
        ;;
esac
wanted=("$@")
[ ${#wanted[@]} -eq 0 ] && wanted=("${SERVICES[@]}")

status=0
for service in "${wanted[@]}"; do
    if ! declare -F "${service}_check" >/dev/null; then
        log "unknown service '$service' (known: ${SERVICES[*]})"
        status=1
        continue
    fi
    if [ "$action" = start ] && ! "${service}_check" >/dev/null 2>&1; then
        "${service}_start" || true
    fi
    if "${service}_check" >/dev/null 2>&1; then
        log "$service: up"
    else
        log "$service: NOT usable"
        status=1
    fi
done
exit "$status"
