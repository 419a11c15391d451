#!/usr/bin/env bash
# Side-by-side benchmark of stompline and RabbitMQ Web-STOMP on this machine,
# with benches/loadgen (stompline-loadgen). Loopback only.
#
#   scripts/bench.sh [SCENARIO...]
#
# SCENARIO: fanout fanout-tcp pairs search idle idle-tcp (default: all of
# them), and chat (stompline's durable chat pipeline on SQLite and PostgreSQL;
# stompline only, RabbitMQ has no equivalent). chat-sqlite / chat-postgres
# run one backend.
# Builds release binaries, starts stompline on ephemeral ports with a
# temporary data dir, makes sure RabbitMQ's rabbitmq_stomp and
# rabbitmq_web_stomp plugins are on (STOMP 127.0.0.1:61614, Web-STOMP
# 127.0.0.1:15674), runs each scenario against both servers back to back,
# and writes $BENCH_OUT/results.jsonl (one JSON report per run) and
# $BENCH_OUT/results.md (the tables with ratios ours/theirs).
#
# Environment:
#   BENCH_OUT            output directory (default target/bench)
#   BENCH_IDLE_SESSIONS  idle session counts (default "5000 50000"; counts
#                        above what the open-file hard limit allows are
#                        lowered to fit, and the report says so)
#   BENCH_FANOUT_SECS, BENCH_PAIRS_SECS, BENCH_STEP_SECS  measured seconds
#   RMQ_STOMP_PORT, RMQ_WS_PORT  RabbitMQ plugin ports (61614, 15674)
#   BENCH_RMQ_FRESH      1 (default): restart RabbitMQ before each idle run, so
#                        memory its allocators kept from earlier runs does not
#                        hide growth (RabbitMQ's RSS does not shrink after
#                        sessions close); 0: never restart for this
#   BENCH_CHAT_SECS      measured seconds per chat run (default 10)
#   BENCH_PG             PostgreSQL server for chat runs, as host:port
#                        (default 127.0.0.1:5432, role postgres, trust auth);
#                        each run gets a scratch database, dropped afterwards
#   BENCH_STOMPLINE      a stompline binary to measure instead of building
#                        this tree's (e.g. an older build kept for an A/B
#                        comparison in one sitting)
#   BENCH_NICE           e.g. -10: run the load generator, stompline and (for
#                        the length of the run) every RabbitMQ thread, and
#                        for chat-postgres a local PostgreSQL's processes, at
#                        this niceness, so other work on a shared machine
#                        disturbs the servers less and none is favoured over
#                        the database it waits on; restored at the end
#
# Changes RabbitMQ's configuration when needed: appends the two listener
# ports to /etc/rabbitmq/rabbitmq.conf, enables the plugins, and restarts
# the node once with its open-file soft limit raised to the hard limit
# (the default 1024 cannot hold thousands of sessions). AMQP on 5672 is
# back as soon as the restart returns.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${BENCH_OUT:-$ROOT/target/bench}
RMQ_STOMP_PORT=${RMQ_STOMP_PORT:-61614}
RMQ_WS_PORT=${RMQ_WS_PORT:-15674}
FANOUT_SECS=${BENCH_FANOUT_SECS:-10}
PAIRS_SECS=${BENCH_PAIRS_SECS:-15}
STEP_SECS=${BENCH_STEP_SECS:-6}
CHAT_SECS=${BENCH_CHAT_SECS:-10}
PG=${BENCH_PG:-127.0.0.1:5432}
IDLE_SESSIONS=${BENCH_IDLE_SESSIONS:-"5000 50000"}
NICE=${BENCH_NICE:-0}
RMQ_FRESH=${BENCH_RMQ_FRESH:-1}
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(fanout fanout-tcp pairs search idle idle-tcp chat)

log() { printf 'bench: %s\n' "$*" >&2; }
wants() { local s; for s in "${SCENARIOS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
# True when a scenario other than the chat ones (which need no RabbitMQ) is wanted.
wants_rabbitmq() { local s; for s in "${SCENARIOS[@]}"; do case $s in chat*) ;; *) return 0 ;; esac; done; return 1; }

mkdir -p "$OUT"
JSON=$OUT/results.jsonl
: >"$JSON"

log "building release binaries"
cargo build --release --quiet -p stompline -p stompline-loadgen --bin stompline --bin stompline-loadgen
LOADGEN=$ROOT/target/release/stompline-loadgen
STOMPLINE=${BENCH_STOMPLINE:-$ROOT/target/release/stompline}

# The load generator and both servers raise their soft limit to this.
NOFILE=$(ulimit -Hn)
ulimit -n "$NOFILE"

# --- stompline -----------------------------------------------------------------

SL_PID=
SL_DIR=
stompline_stop() {
    if [ -n "$SL_PID" ]; then
        kill "$SL_PID" 2>/dev/null || true
        wait "$SL_PID" 2>/dev/null || true
        SL_PID=
    fi
}
RMQ_RENICED=
cleanup() {
    stompline_stop
    if [ -n "$RMQ_RENICED" ]; then
        renice_threads "$RMQ_RENICED" "$(rmq_pid)"
    fi
    [ -n "$SL_DIR" ] && rm -rf "$SL_DIR"
    pg_drop
    pg_restore_nice
}
trap cleanup EXIT

# With BENCH_NICE, a local PostgreSQL runs at that niceness too (its
# postmaster and every process it has; backends forked later inherit it).
PG_RENICED=()
pg_renice() {
    [ "$NICE" != 0 ] || return 0
    case "${PG%:*}" in 127.0.0.1 | localhost | ::1) ;; *) return 0 ;; esac
    local p
    for p in $(pgrep -x postgres); do
        PG_RENICED+=("$p:$(ps -o ni= -p "$p" | tr -d ' ')")
        renice -n "$NICE" -p "$p" >/dev/null 2>&1 || true
    done
}
pg_restore_nice() {
    local e
    for e in "${PG_RENICED[@]}"; do
        renice -n "${e#*:}" -p "${e%%:*}" >/dev/null 2>&1 || true
    done
    PG_RENICED=()
}

PG_DB=
pg_drop() {
    if [ -n "$PG_DB" ]; then
        dropdb -h "${PG%:*}" -p "${PG##*:}" -U postgres --if-exists "$PG_DB" 2>/dev/null || true
        PG_DB=
    fi
}

# renice_threads NICENESS PID: every thread of PID (niceness is per thread).
renice_threads() {
    local t
    for t in /proc/"$2"/task/*; do
        renice -n "$1" -p "${t##*/}" >/dev/null 2>&1 || true
    done
}

# Starts a fresh stompline (new data dir) and registers the bench user.
# Extra arguments go to `stompline serve` (e.g. --database-url).
stompline_start() {
    stompline_stop
    [ -n "$SL_DIR" ] && rm -rf "$SL_DIR"
    SL_DIR=$(mktemp -d /tmp/stompline-bench.XXXXXX)
    rm -f "$OUT/stompline.log" # so the wait below cannot read the previous server's line
    # One bench user holds every session, so its per-user cap is raised;
    # the per-connection inbound rate limit would throttle the max-rate
    # publisher, so it is off (RabbitMQ has none either). So is the per-user
    # chat rate (100 msg/s by default), which chat runs would measure instead.
    # The load generator logs in thousands of sessions from one address, so
    # the login rate limits are off too.
    STOMPLINE_STOMP__MAX_CONNECTIONS_PER_USER=200000 \
        STOMPLINE_RATE_LIMIT__ENABLED=false \
        STOMPLINE_CHAT__RATE_PER_SEC=0 \
        STOMPLINE_STOMP__MAX_CONNECTIONS=200000 \
        STOMPLINE_STOMP__INBOUND_FRAMES_PER_SEC=0 \
        STOMPLINE_AUTH__ACCESS_TOKEN_TTL_SECS=86400 \
        RUST_LOG=warn,stompline=info \
        nice -n "$NICE" "$STOMPLINE" serve --http-addr 127.0.0.1:0 --stomp-addr 127.0.0.1:0 \
        --data-dir "$SL_DIR" "$@" 2>"$OUT/stompline.log" &
    SL_PID=$!
    local line= i
    for i in $(seq 1 100); do
        line=$(grep -m1 'listening' "$OUT/stompline.log" || true)
        [ -n "$line" ] && break
        sleep 0.1
    done
    [ -n "$line" ] || { log "stompline did not start"; cat "$OUT/stompline.log" >&2; exit 1; }
    SL_HTTP=$(sed -E 's/.*http=([0-9.:]+).*/\1/' <<<"$line")
    SL_STOMP=$(sed -E 's/.*stomp=([0-9.:]+).*/\1/' <<<"$line")
    SL_TOKEN=$(curl -fsS -X POST "http://$SL_HTTP/api/auth/register" \
        -H 'content-type: application/json' \
        -d '{"username":"bench","password":"bench-password-1"}' | jq -r .accessToken)
    log "stompline pid $SL_PID http=$SL_HTTP stomp=$SL_STOMP"
}

# --- RabbitMQ ------------------------------------------------------------------

rmq_pid() { rabbitmqctl eval 'os:getpid().' 2>/dev/null | tr -d '"'; }

rabbitmq_prepare() {
    local conf=/etc/rabbitmq/rabbitmq.conf restart=0 pid soft
    if ! grep -q '^stomp.listeners.tcp.1' "$conf" 2>/dev/null; then
        printf '%s\n' '# STOMP and Web-STOMP for stompline benchmarks (ports apart from stompline defaults)' \
            "stomp.listeners.tcp.1 = 127.0.0.1:$RMQ_STOMP_PORT" \
            "web_stomp.tcp.ip = 127.0.0.1" "web_stomp.tcp.port = $RMQ_WS_PORT" >>"$conf"
        restart=1
    fi
    if ! rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_web_stomp; then
        rabbitmq-plugins enable --offline rabbitmq_stomp rabbitmq_web_stomp >/dev/null
        restart=1
    fi
    pid=$(rmq_pid)
    soft=$(awk '/Max open files/{print $4}' "/proc/$pid/limits" 2>/dev/null || echo 0)
    [ "${soft:-0}" -lt "$NOFILE" ] && restart=1
    if [ "$restart" = 1 ]; then
        rabbitmq_restart "plugins, ports, open-file limit $NOFILE"
    else
        rabbitmq_adopt
    fi
}

rabbitmq_restart() {
    log "restarting RabbitMQ ($1)"
    if [ -n "$RMQ_RENICED" ]; then
        renice_threads "$RMQ_RENICED" "$(rmq_pid)"
        RMQ_RENICED=
    fi
    rabbitmqctl stop >/dev/null 2>&1 || true
    /etc/init.d/rabbitmq-server start >/dev/null
    rabbitmqctl await_startup >/dev/null
    sleep 3 # let start-up allocation settle before anything reads its RSS
    rabbitmq_adopt
}

rabbitmq_adopt() {
    RMQ_PID=$(rmq_pid)
    if [ "$NICE" != 0 ]; then
        RMQ_RENICED=$(ps -o ni= -p "$RMQ_PID" | tr -d ' ')
        renice_threads "$NICE" "$RMQ_PID"
    fi
    log "rabbitmq pid $RMQ_PID stomp=127.0.0.1:$RMQ_STOMP_PORT web-stomp=127.0.0.1:$RMQ_WS_PORT"
}

# --- runs ----------------------------------------------------------------------

# ours|theirs TRANSPORT LOADGEN-ARGS...
run() {
    local who=$1 transport=$2
    shift 2
    local url pass login pid label
    if [ "$who" = ours ]; then
        label=stompline login=bench pass=$SL_TOKEN pid=$SL_PID
        if [ "$transport" = ws ]; then url="ws://$SL_HTTP/ws"; else url="tcp://$SL_STOMP"; fi
    else
        label=rabbitmq login=guest pass=guest pid=$RMQ_PID
        if [ "$transport" = ws ]; then url="ws://127.0.0.1:$RMQ_WS_PORT/ws"; else url="tcp://127.0.0.1:$RMQ_STOMP_PORT"; fi
    fi
    log "$label/$transport: $*"
    LOADGEN_PASSCODE=$pass nice -n "$NICE" "$LOADGEN" --url "$url" --login "$login" --server-pid "$pid" \
        --label "$label/$transport" --json "$JSON" "$@" >/dev/null
}

stompline_start
wants_rabbitmq && rabbitmq_prepare

for t in ws tcp; do
    scenario=fanout
    [ "$t" = tcp ] && scenario=fanout-tcp
    wants "$scenario" || continue
    for who in ours theirs; do
        run "$who" "$t" fanout --subscribers 100 --size 100 --window 10 --duration "$FANOUT_SECS"
    done
done

if wants pairs; then
    for who in ours theirs; do
        run "$who" ws pairs --pairs 200 --rate 50 --size 100 --duration "$PAIRS_SECS"
    done
fi

if wants search; then
    for who in ours theirs; do
        run "$who" ws pairs-search --pairs 200 --rate 50 --size 100 --p99-ms 10 \
            --duration "$STEP_SECS" --warmup 1 --drain 3 --refine 3
    done
fi

if wants idle; then
    # Each session is one socket on each side, and each process has the
    # open-file hard limit, which caps the count on this machine. RabbitMQ
    # stops accepting (file-descriptor alarm) a little below its limit.
    max_sessions=$((NOFILE - 3000))
    for n in $IDLE_SESSIONS; do
        if [ "$n" -gt "$max_sessions" ]; then
            log "idle: $n sessions do not fit the open-file hard limit $NOFILE; running $max_sessions"
            n=$max_sessions
        fi
        stompline_start # a fresh process, so earlier runs' freed memory does not hide growth
        sleep 1
        run ours ws idle --sessions "$n" --source-count 4 --parallel 64 --settle 5
        [ "$RMQ_FRESH" = 1 ] && rabbitmq_restart "fresh memory baseline for idle"
        run theirs ws idle --sessions "$n" --source-count 4 --parallel 64 --settle 5
    done
fi

if wants idle-tcp; then
    # The same over plain TCP: what the WebSocket layer adds per session.
    stompline_start
    sleep 1
    run ours tcp idle --sessions 5000 --source-count 4 --parallel 64 --settle 5
    [ "$RMQ_FRESH" = 1 ] && rabbitmq_restart "fresh memory baseline for idle"
    run theirs tcp idle --sessions 5000 --source-count 4 --parallel 64 --settle 5
fi

# Chat pipeline: durable sends with RECEIPTs (SEND /app/chat.send), per
# backend and conversation shape, first at max rate (in-flight window of
# unanswered RECEIPTs per sender), then at a fixed rate of half the durable
# rate measured, for the latency goal.
#   one:  20 users, 20 sender connections, one group of all 20, observed by
#         one subscriber on /topic/chat/{cid}
#   many: 50 users, 50 sender connections, 1,000 direct conversations,
#         observed by every member on /user/queue/messages (2 copies each)
chat_shape() {
    case $1 in
    one) echo "--users 20 --senders 20 --conversations 1 --kind group --deliver topic --window 16" ;;
    many) echo "--users 50 --senders 50 --conversations 1000 --kind direct --deliver user --window 8" ;;
    esac
}
chat_run() {
    local backend=$1 shape=$2
    shift 2
    log "stompline-$backend/ws chat $shape: $*"
    # shellcheck disable=SC2046 # the shape is a list of options
    LOADGEN_PASSCODE=$SL_TOKEN nice -n "$NICE" "$LOADGEN" --url "ws://$SL_HTTP/ws" --login bench \
        --server-pid "$SL_PID" --label "stompline-$backend/ws/$shape" --json "$JSON" \
        chat --http "http://$SL_HTTP" $(chat_shape "$shape") --duration "$CHAT_SECS" --warmup 2 "$@" >/dev/null
}
for backend in sqlite postgres; do
    wants chat || wants "chat-$backend" || continue
    args=()
    if [ "$backend" = postgres ]; then
        PG_DB=bench_chat_$$
        createdb -h "${PG%:*}" -p "${PG##*:}" -U postgres "$PG_DB"
        args=(--database-url "postgres://postgres@$PG/$PG_DB")
        pg_renice
    fi
    stompline_start "${args[@]}"
    for shape in one many; do
        chat_run "$backend" "$shape"
        max=$(tail -n1 "$JSON" | jq '.extra.durable_per_s | floor')
        sleep 2
        chat_run "$backend" "$shape" --rate $((max / 2))
        sleep 2
    done
    stompline_stop
    pg_drop
    pg_restore_nice
done

stompline_stop
python3 "$ROOT/benches/render.py" "$JSON" >"$OUT/results.md"
log "wrote $OUT/results.md and $JSON"
cat "$OUT/results.md"
