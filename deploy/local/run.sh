#!/usr/bin/env bash
# The local cluster: NATS (JetStream) and Redis on their own ports and data folders, one
# planner, three tickers, two evaluators and the web console, all logging into one folder,
# then a demo a newcomer can watch. Ctrl-C stops everything cleanly.
#
#   deploy/local/run.sh            # build, start, run the demo, keep running until Ctrl-C
#   deploy/local/run.sh --no-demo  # just the cluster
#   deploy/local/run.sh --release  # optimised binaries (a longer first build)
#   deploy/local/run.sh --keep-data  # keep NATS and Redis data of the previous run
#   deploy/local/run.sh --no-build # run the binaries already built
#
# Ports (override with the environment): NATS 14222 (monitoring 18222), Redis 16379,
# evaluator HTTP 18081 and 18082, console 18090, planner probes 18091, ticker probes
# 18092-18094 (/healthz, /readyz, /metrics). State lives in .local-cluster/
# (git-ignored; ROLLOUT_LOCAL_STATE=<folder> puts it elsewhere).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
DEMO=1
PROFILE=dev
KEEP_DATA=0
BUILD=1
for argument in "$@"; do
    case "$argument" in
        --no-demo) DEMO=0 ;;
        --release) PROFILE=release ;;
        --keep-data) KEEP_DATA=1 ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $argument" >&2; exit 64 ;;
    esac
done

NATS_PORT="${NATS_PORT:-14222}"
NATS_MONITOR_PORT="${NATS_MONITOR_PORT:-18222}"
REDIS_PORT="${REDIS_PORT:-16379}"
EVAL_PORTS=("${EVAL_PORT_1:-18081}" "${EVAL_PORT_2:-18082}")
CONSOLE_PORT="${CONSOLE_PORT:-18090}"
PLANNER_PORT="${PLANNER_PORT:-18091}"
TICKER_PORT="${TICKER_PORT:-18092}"
STATE="${ROLLOUT_LOCAL_STATE:-$ROOT/.local-cluster}"
LOGS="$STATE/logs"
if [ "$KEEP_DATA" = 0 ]; then
    rm -rf "$STATE/nats" "$STATE/redis"
fi
mkdir -p "$STATE/nats" "$STATE/redis" "$LOGS"

say() { printf '\033[1m== %s\033[0m\n' "$*"; }

say "installing tools (nats-server >= 2.10, redis-server, ...) if missing"
bash deploy/tools/install.sh >"$LOGS/install.log" 2>&1 || { cat "$LOGS/install.log"; exit 1; }
NATS_SERVER="$ROOT/.tools/bin/nats-server"

if [ "$BUILD" = 1 ]; then
    say "building planner, ticker, evaluator, console, rolloutctl, loadtest ($PROFILE profile)"
    cargo build --profile "$PROFILE" -q -p planner -p ticker -p evaluator -p rollout-console -p rolloutctl -p loadtest
fi
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ "$PROFILE" = dev ]; then BIN="$TARGET/debug"; else BIN="$TARGET/release"; fi

PIDS=()
STOPPING=0
cleanup() {
    trap - INT TERM EXIT
    STOPPING=1
    say "stopping the cluster"
    # services first (they drain), then the servers
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    say "stopped; logs are in $LOGS"
}
trap cleanup INT TERM EXIT

start() { # name, command...
    local name="$1"; shift
    "$@" >"$LOGS/$name.log" 2>&1 &
    PIDS+=("$!")
    printf '   %-12s pid %-7s log %s\n' "$name" "$!" "$LOGS/$name.log"
}

wait_port() { # port, name
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "run.sh: $2 did not open port $1; see $LOGS" >&2
    exit 1
}

say "starting NATS and Redis"
start nats "$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" -js -sd "$STATE/nats" --server_name local
start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$STATE/redis" --appendonly yes --save ""
wait_port "$NATS_PORT" nats
wait_port "$REDIS_PORT" redis

export ROLLOUT_NATS__URL="nats://127.0.0.1:$NATS_PORT"
export ROLLOUT_REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
export ROLLOUT_LOG__LEVEL="${ROLLOUT_LOG__LEVEL:-info}"
# Each service refuses settings of sections it does not have, so service-specific
# settings go to that service only. Second-scale demo schedules: manual steps may be one
# second apart.
PLANNER_MIN_PHASE_INTERVAL="${PLANNER_MIN_PHASE_INTERVAL:-1s}"

say "starting the services"
start planner env ROLLOUT_PLANNER__MIN_PHASE_INTERVAL="$PLANNER_MIN_PHASE_INTERVAL" \
    ROLLOUT_HTTP__LISTEN="127.0.0.1:$PLANNER_PORT" "$BIN/planner"
for index in 1 2 3; do
    start "ticker-$index" env ROLLOUT_TICKER__REPLICA_ID="ticker-$index" \
        ROLLOUT_HTTP__LISTEN="127.0.0.1:$((TICKER_PORT + index - 1))" "$BIN/ticker"
done
for index in 0 1; do
    start "evaluator-$((index + 1))" env ROLLOUT_HTTP__LISTEN="127.0.0.1:${EVAL_PORTS[$index]}" ROLLOUT_HTTP__NAMESPACE=demo "$BIN/evaluator"
done
# the console's demo accounts: an operator and a viewer, hashed afresh each run
CONSOLE_USER="${CONSOLE_USER:-admin}"
CONSOLE_PASSWORD="${CONSOLE_PASSWORD:-rollout-demo}"
operator_hash=$("$BIN/console-hash-password" <<<"$CONSOLE_PASSWORD")
viewer_hash=$("$BIN/console-hash-password" <<<"viewer-demo")
start console env -u ROLLOUT_REDIS__URL ROLLOUT_HTTP__LISTEN="127.0.0.1:$CONSOLE_PORT" ROLLOUT_CONSOLE__NAMESPACES=demo \
    ROLLOUT_CONSOLE__USERS="$CONSOLE_USER:operator:$operator_hash;viewer:viewer:$viewer_hash" \
    ROLLOUT_CONSOLE__SESSION_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" "$BIN/console"
for port in "${EVAL_PORTS[@]}" "$CONSOLE_PORT" "$PLANNER_PORT"; do
    ready=0
    for _ in $(seq 1 300); do
        if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then ready=1; break; fi
        sleep 0.1
    done
    if [ "$ready" = 0 ]; then
        echo "run.sh: the service on port $port is not ready; see $LOGS" >&2
        exit 1
    fi
done
sleep 1
for pid in "${PIDS[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "run.sh: a process exited at start; see the logs in $LOGS:" >&2
        tail -n 3 "$LOGS"/*.log >&2
        exit 1
    fi
done
say "cluster up: NATS $ROLLOUT_NATS__URL, Redis $ROLLOUT_REDIS__URL, evaluators ${EVAL_PORTS[*]}"
say "console: http://127.0.0.1:$CONSOLE_PORT/  sign in as $CONSOLE_USER / $CONSOLE_PASSWORD (operator) or viewer / viewer-demo (read-only)"

if [ "$DEMO" = 1 ]; then
    LOGS="$LOGS" bash "$ROOT/deploy/local/demo.sh" "$BIN"
fi

say "the cluster keeps running; console http://127.0.0.1:$CONSOLE_PORT/ ($CONSOLE_USER / $CONSOLE_PASSWORD); try: $BIN/rolloutctl -n demo --nats-url $ROLLOUT_NATS__URL flag list   (Ctrl-C stops)"
wait -n "${PIDS[@]}" || true
if [ "$STOPPING" = 0 ]; then
    say "a process exited; see $LOGS"
fi
