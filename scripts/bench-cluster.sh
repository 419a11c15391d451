#!/usr/bin/env bash
# Cluster benchmark: N stompline instances (default 3) on one PostgreSQL
# database, relay and shared state in Redis, and (with BENCH_BUS=kafka, the
# default) sends through Kafka, driven by benches/loadgen's chat scenario
# with connection i on instance i mod N, so senders and the subscribers of
# their conversations mostly sit on different instances. Everything runs on
# this machine: say so when quoting the numbers.
#
#   scripts/bench-cluster.sh
#
# Needs the services of scripts/services.sh (PostgreSQL, Redis, and tansu
# for Kafka) running on loopback.
#
# Environment:
#   BENCH_OUT         output directory (default target/bench-cluster)
#   BENCH_INSTANCES   instances (default 3)
#   BENCH_BUS         kafka (default) or local
#   BENCH_CHAT_SECS   measured seconds per run (default 10)
#   BENCH_PG          PostgreSQL host:port (default 127.0.0.1:5432, role
#                     postgres, trust auth; a scratch database per run)
#   BENCH_REDIS       Redis URL (default redis://127.0.0.1:6379)
#   BENCH_KAFKA       Kafka bootstrap servers (default 127.0.0.1:9092)
#   BENCH_STOMPLINE   a stompline binary to measure instead of this tree's
#                     release build (for an A/B of two builds in one sitting)
#
# Runs the shapes of scripts/bench.sh's chat scenario (one busy group of
# 20; 1,000 direct conversations) first at max rate, then at half the
# durable rate measured, and writes $BENCH_OUT/results.jsonl.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${BENCH_OUT:-$ROOT/target/bench-cluster}
N=${BENCH_INSTANCES:-3}
BUS=${BENCH_BUS:-kafka}
CHAT_SECS=${BENCH_CHAT_SECS:-10}
PG=${BENCH_PG:-127.0.0.1:5432}
REDIS=${BENCH_REDIS:-redis://127.0.0.1:6379}
KAFKA=${BENCH_KAFKA:-127.0.0.1:9092}

log() { printf 'bench-cluster: %s\n' "$*" >&2; }

mkdir -p "$OUT"
JSON=$OUT/results.jsonl
: >"$JSON"

log "building release binaries"
cargo build --release -q -p stompline --bin stompline
cargo build --release -q -p stompline-loadgen
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
STOMPLINE=${BENCH_STOMPLINE:-$TARGET_DIR/release/stompline}
LOADGEN=$TARGET_DIR/release/stompline-loadgen

PIDS=()
DIRS=()
PG_DB=
stop_all() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
    for p in "${DIRS[@]}"; do rm -rf "$p"; done
    DIRS=()
    if [ -n "$PG_DB" ]; then
        dropdb -h "${PG%:*}" -p "${PG##*:}" -U postgres --if-exists "$PG_DB" 2>/dev/null || true
        PG_DB=
    fi
}
trap stop_all EXIT

HTTP=()
# Starts N instances on a fresh database, key prefix, topic prefix and group.
start_cluster() {
    stop_all
    local unique i dir line
    unique=$(date +%s)$$
    PG_DB=bench_cluster_$unique
    createdb -h "${PG%:*}" -p "${PG##*:}" -U postgres "$PG_DB"
    HTTP=()
    for i in $(seq 0 $((N - 1))); do
        dir=$(mktemp -d /tmp/stompline-bench-cluster.XXXXXX)
        DIRS+=("$dir")
        # As scripts/bench.sh: the load generator's own limits are lifted so
        # the run measures the pipeline, not the per-user send rate.
        STOMPLINE_DATABASE_URL="postgres://postgres@$PG/$PG_DB" \
            STOMPLINE_AUTH__JWT_SECRET="bench-cluster-secret-$unique-0123456789abcdef" \
            STOMPLINE_RELAY=redis STOMPLINE_SHARED_STATE=redis \
            STOMPLINE_REDIS__URL="$REDIS" STOMPLINE_REDIS__KEY_PREFIX="bench:$unique:" \
            STOMPLINE_BUS="$BUS" STOMPLINE_KAFKA__BROKERS="$KAFKA" \
            STOMPLINE_KAFKA__TOPIC_PREFIX="bench.$unique." \
            STOMPLINE_KAFKA__GROUP_ID="bench-$unique" \
            STOMPLINE_STOMP__MAX_CONNECTIONS_PER_USER=200000 \
            STOMPLINE_RATE_LIMIT__ENABLED=false \
            STOMPLINE_CHAT__RATE_PER_SEC=0 \
            STOMPLINE_STOMP__INBOUND_FRAMES_PER_SEC=0 \
            STOMPLINE_AUTH__ACCESS_TOKEN_TTL_SECS=86400 \
            RUST_LOG=warn,stompline=info \
            "$STOMPLINE" serve --http-addr 127.0.0.1:0 --stomp-addr "" \
            --data-dir "$dir" 2>"$OUT/stompline-$i.log" &
        PIDS+=($!)
        line=
        for _ in $(seq 1 300); do
            line=$(grep -m1 'listening' "$OUT/stompline-$i.log" || true)
            [ -n "$line" ] && break
            sleep 0.1
        done
        [ -n "$line" ] || { log "instance $i did not start"; cat "$OUT/stompline-$i.log" >&2; exit 1; }
        HTTP+=("$(sed -E 's/.*http=([0-9.:]+).*/\1/' <<<"$line")")
    done
    log "instances: ${HTTP[*]} (bus=$BUS, relay=redis, shared_state=redis)"
}

shape() {
    case $1 in
    one) echo "--users 20 --senders 20 --conversations 1 --kind group --deliver topic --window 16" ;;
    many) echo "--users 50 --senders 50 --conversations 1000 --kind direct --deliver user --window 8" ;;
    esac
}

run() {
    local s=$1
    shift
    local also=() i
    for i in $(seq 1 $((N - 1))); do also+=("ws://${HTTP[$i]}/ws"); done
    local also_csv
    also_csv=$(IFS=,; echo "${also[*]}")
    log "chat $s on $N instances: $*"
    # shellcheck disable=SC2046 # the shape is a list of options
    "$LOADGEN" --url "ws://${HTTP[0]}/ws" --label "cluster-$N-$BUS/$s" --json "$JSON" \
        chat --http "http://${HTTP[0]}" $(shape "$s") --also-url "$also_csv" \
        --duration "$CHAT_SECS" --warmup 2 "$@"
}

for s in one many; do
    start_cluster
    run "$s"
    max=$(tail -n1 "$JSON" | jq '.extra.durable_per_s | floor')
    sleep 2
    run "$s" --rate $((max / 2))
done
stop_all
log "wrote $JSON"
