#!/usr/bin/env bash
# The load test suite (SPEC §10): eval, commands, ticker, failover, scale, propagation, sse and ofrep, each
# measured beside its baseline in the same run, sized for a 2-core machine (about three
# minutes after the build). Writes loadtest/RESULTS.md (the table, the machine, every run's
# settings) and the figures block of loadtest/README.md; the JSON and logs of each
# scenario stay in <target>/bench/.
#
#   deploy/local/bench.sh             # every scenario on its own private servers
#   deploy/local/bench.sh --cluster   # eval, commands, ticker and propagation against the
#                                     # running local cluster (deploy/local/run.sh --no-demo);
#                                     # failover, scale, sse and ofrep always start their own servers
#   deploy/local/bench.sh --peer unleash-edge
#                                     # also `loadtest edge`: OFREP beside a real Unleash Edge
#                                     # (installed by deploy/tools/install-unleash-edge.sh, a
#                                     # long first build), added to the table
#
# Environment: CARGO_TARGET_DIR (where the release build goes), NATS_PORT, REDIS_PORT,
# EVAL_PORT_1, EVAL_PORT_2 (the local cluster's ports, as in run.sh). Exit status 1 when a
# scenario did not run; targets missed are marked in the table, not in the status.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
CLUSTER=0
PEERS=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --cluster) CLUSTER=1 ;;
        --peer)
            [ "$#" -ge 2 ] || { echo "bench.sh: --peer needs a name (unleash-edge)" >&2; exit 64; }
            PEERS+=("$2"); shift ;;
        --peer=*) PEERS+=("${1#--peer=}") ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $1" >&2; exit 64 ;;
    esac
    shift
done
EDGE_PEER=0
for peer in "${PEERS[@]}"; do
    case "$peer" in
        unleash-edge) EDGE_PEER=1 ;;
        *) echo "bench.sh: unknown peer $peer (known: unleash-edge)" >&2; exit 64 ;;
    esac
done

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET/release"
OUT="$TARGET/bench"
mkdir -p "$OUT"
rm -f "$OUT"/*.json

say() { printf '\033[1m== %s\033[0m\n' "$*"; }

say "installing tools (nats-server >= 2.10, redis-server) if missing"
bash deploy/tools/install.sh >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }

if [ "$EDGE_PEER" = 1 ]; then
    say "installing unleash-edge if missing (a long build the first time)"
    bash deploy/tools/install-unleash-edge.sh >"$OUT/install-unleash-edge.log" 2>&1 \
        || { cat "$OUT/install-unleash-edge.log"; exit 1; }
    tail -n 1 "$OUT/install-unleash-edge.log"
fi

say "building loadtest and ticker (release)"
cargo build --release -q -p loadtest -p ticker

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
TARGET_ARGS=()
PROPAGATION_ARGS=(--replicas 3)
MODE="each scenario on its own private nats-server and redis-server, services in process (failover: three ticker processes)"
if [ "$CLUSTER" = 1 ]; then
    NATS_URL="nats://127.0.0.1:${NATS_PORT:-14222}"
    REDIS_URL="redis://127.0.0.1:${REDIS_PORT:-16379}"
    TARGET_ARGS=(--nats-url "$NATS_URL" --redis-url "$REDIS_URL")
    PROPAGATION_ARGS=(--evaluator-http "127.0.0.1:${EVAL_PORT_1:-18081},127.0.0.1:${EVAL_PORT_2:-18082}")
    MODE="against the local cluster ($NATS_URL, $REDIS_URL); failover on its own private servers"
fi

FAILED=()
scenario() { # name, arguments...
    local name="$1"; shift
    say "loadtest $name $*"
    if "$BIN/loadtest" "$name" "$@" --json-out "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log"; then
        return 0
    fi
    FAILED+=("$name")
    echo "bench.sh: $name failed; see $OUT/$name.log" >&2
}

scenario eval "${TARGET_ARGS[@]}" --duration 5s --warmup 1s --in-flight 64 --connections 2 --flags 10000
scenario commands "${TARGET_ARGS[@]}" --count 3000 --concurrency 32 --baseline-duration 5s
scenario ticker "${TARGET_ARGS[@]}" --rollouts 100000 --spread 16s --burst 20000 --script-duration 5s
scenario failover --kills 5 --interval 4s --rollouts 200 --step 1s --lease-ttl 2s --ticker-bin "$BIN/ticker"
# ticker replicas sharing the shards, N = 1, 2, 3 (private servers in both modes)
# as root, each ticker runs on a host of its own (network namespaces on a bridge)
scale_hosts=()
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then scale_hosts=(--hosts); fi
scenario scale --replicas 3 --rollouts 20000 --namespaces 64 --ticker-bin "$BIN/ticker" "${scale_hosts[@]}"
scenario propagation "${TARGET_ARGS[@]}" "${PROPAGATION_ARGS[@]}" --changes 300 --pause 20ms
# OFREP change streams held by one evaluator of its own (private servers in both modes)
scenario sse --clients 1000 --changes 50
# OFREP over HTTP (single flag, bulk of 5, 64 connections and sequential) from one evaluator
# of its own beside a bare axum responder with the same-sized bodies (private servers in both modes)
scenario ofrep --connections 64 --duration 5s --warmup 1s
REPORT_INPUTS=(eval commands ticker failover scale propagation sse ofrep)
if [ "$EDGE_PEER" = 1 ]; then
    # OFREP (single flag, bulk of 5) beside a real Unleash Edge's frontend API, same flags
    # as toggles, 64 connections (private servers in both modes)
    scenario edge --connections 64 --duration 5s --warmup 1s --edge-bin "$ROOT/.tools/bin/unleash-edge"
    REPORT_INPUTS+=(edge)
fi

mem_field() { free -h | awk -v column="$1" '/^Mem:/ { print $column }'; }
{
    echo "| | |"
    echo "|---|---|"
    echo "| CPUs (\`nproc\`) | $(nproc) |"
    echo "| CPU model | $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') |"
    echo "| memory (\`free -h\`) | $(mem_field 2) total, $(mem_field 7) available |"
    echo "| kernel | $(uname -sr) |"
    echo "| load average before / after | $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg) |"
    echo "| run | $STARTED → $(date -u +%Y-%m-%dT%H:%M:%SZ) |"
    echo "| servers | $MODE |"
    echo "| build | release, \`$(rustc --version)\` |"
    echo
    echo '```text'
    echo '$ free -h'
    free -h
    echo '```'
} >"$OUT/machine.md"

say "writing loadtest/RESULTS.md"
REPORT_FILES=()
for name in "${REPORT_INPUTS[@]}"; do REPORT_FILES+=("$OUT/$name.json"); done
"$BIN/loadtest" report \
    "${REPORT_FILES[@]}" \
    --expect "$(IFS=,; echo "${REPORT_INPUTS[*]}")" \
    --machine "$OUT/machine.md" \
    --out "$ROOT/loadtest/RESULTS.md" \
    --readme "$ROOT/loadtest/README.md"
cat "$ROOT/loadtest/RESULTS.md"

if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "bench.sh: did not run: ${FAILED[*]}" >&2
    exit 1
fi
