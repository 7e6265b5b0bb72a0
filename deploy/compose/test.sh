#!/usr/bin/env bash
# The compose cluster's full run (issue 18), beyond CI's smoke test:
#   1. faults across containers, judged by the served-content oracle and the invariant
#      checks (tests/compose_cluster.rs, the ignored test included): docker kill of the
#      ticker leader, of a NATS node and of Redis (AOF restart), network disconnect of an
#      evaluator and of the leader, docker pause of the leader past its lease;
#   2. the demo (deploy/compose/demo.sh: a phased rollout watched to completion, a
#      label-staged fleet rollout with 30 simulated agents) through the cluster;
#   3. the load scenarios eval, commands and ticker from the `loadtest` container against
#      the cluster, each beside its baseline measured in the same run inside the cluster's
#      network, rendered as one table.
#
#   deploy/compose/test.sh [--profile release|dev] [--skip-faults] [--skip-load] [--redis-cluster]
#
# --redis-cluster runs all of it with the Redis Cluster variant (deploy/compose/redis-cluster.yml:
# 3 masters with a replica each) in place of the single Redis; the fault run's Redis kill is
# then a master's, failed over to its replica.
#
# --profile picks the binaries of the load run's image (release by default: the numbers
# mean something; the fault run always uses the dev build the tests use). Needs a Docker
# engine and a compose tool; installs the rest (deploy/tools/install.sh). Results land in
# target/compose-load/ (JSON and report.md).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

profile=release
faults=1
load=1
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --skip-faults) faults=0; shift ;;
        --skip-load) load=0; shift ;;
        --redis-cluster) export ROLLOUT_COMPOSE_REDIS_CLUSTER=1; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "test.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
done

bash deploy/tools/install.sh
export ROLLOUT_NATS_SERVER_BIN="${ROLLOUT_NATS_SERVER_BIN:-$ROOT/.tools/bin/nats-server}"
status=0

if [ "$faults" = 1 ]; then
    echo "=== compose: faults across containers (tests/compose_cluster.rs) ==="
    cargo nextest run -p system-tests --test compose_cluster --run-ignored all \
        --no-fail-fast --no-capture || status=$?
fi

if [ "$load" = 1 ]; then
    echo "=== compose: load scenarios from the loadtest container ==="
    out="${CARGO_TARGET_DIR:-$ROOT/target}/compose-load"
    rm -rf "$out" && mkdir -p "$out" && chmod 0777 "$out"
    env_file="$(mktemp -d)/.env"
    cp deploy/.env.example "$env_file"
    export ROLLOUT_COMPOSE_ENV_FILE="$env_file" ROLLOUT_COMPOSE_PROJECT="rollout-load-$$"
    trap 'bash "$HERE/compose.sh" down -v --remove-orphans >/dev/null 2>&1 || true' EXIT
    # the load run publishes nothing it does not need: free host ports
    for variable in ROLLOUT_NATS_PORT ROLLOUT_NATS_MONITOR_PORT ROLLOUT_EVALUATOR_1_PORT \
        ROLLOUT_EVALUATOR_2_PORT ROLLOUT_EVALUATOR_3_PORT ROLLOUT_CONSOLE_PORT ROLLOUT_TRACES_PORT; do
        echo "$variable=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')" >>"$env_file"
    done
    bash "$HERE/up.sh" --profile "$profile"
    echo "=== compose: the demo through the cluster ==="
    bash "$HERE/demo.sh" --profile "$profile" || status=$?
    loadtest() {
        bash "$HERE/compose.sh" --profile loadtest run --rm -T -v "$out:/out" loadtest "$@"
    }
    loadtest eval --skip-memory --json-out /out/eval.json || status=$?
    loadtest commands --count 2000 --concurrency 32 --json-out /out/commands.json || status=$?
    loadtest ticker --rollouts 20000 --spread 8s --burst 5000 --json-out /out/ticker.json || status=$?
    case "$profile" in release) bin=release ;; dev|debug) bin=debug ;; *) bin="$profile" ;; esac
    "${CARGO_TARGET_DIR:-$ROOT/target}/$bin/loadtest" report "$out"/*.json --out "$out/report.md" \
        --expect eval,commands,ticker && cat "$out/report.md" || status=$?
fi

if [ "$status" -ne 0 ]; then
    echo "compose/test.sh: FAILED (exit $status)"
else
    echo "compose/test.sh: passed"
fi
exit "$status"
