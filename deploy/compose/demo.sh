#!/usr/bin/env bash
# The local demo (deploy/local/demo.sh: a phased rollout watched to completion, then a
# label-staged fleet rollout with 30 simulated agents) against the compose cluster, from
# this machine through its published NATS port: commands as the operator, evaluations as
# the prod SDK user, the agents as the loadtest user, in namespace prod.
#   deploy/compose/demo.sh [--profile release|dev]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
profile=release
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        *) echo "demo.sh: unknown option $1" >&2; exit 64 ;;
    esac
done
case "$profile" in release) dir=release ;; dev|debug) dir=debug ;; *) dir="$profile" ;; esac
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$dir"
[ -x "$BIN/rolloutctl" ] && [ -x "$BIN/loadtest" ] || {
    echo "demo.sh: $BIN/rolloutctl and loadtest are missing: run deploy/compose/up.sh --profile $profile first" >&2
    exit 66
}

env_file="${ROLLOUT_COMPOSE_ENV_FILE:-$ROOT/deploy/.env}"
value() { sed -n "s/^$1=//p" "$env_file" | tail -n 1; }

export ROLLOUT_NATS__URL="nats://127.0.0.1:$(value ROLLOUT_NATS_PORT | grep . || echo 4222)"
export ROLLOUT_NATS__USER=operator
export ROLLOUT_NATS__PASSWORD="$(value ROLLOUT_OPERATOR_PASSWORD)"
export ROLLOUT_NATS__INBOX_PREFIX=_INBOX_operator
export DEMO_NAMESPACE=prod
export DEMO_EVAL_USER=sdk-prod DEMO_EVAL_PASSWORD="$(value ROLLOUT_SDK_PROD_PASSWORD)"
export DEMO_AGENTS_USER=loadtest DEMO_AGENTS_PASSWORD="$(value ROLLOUT_LOADTEST_PASSWORD)"
export LOGS="${LOGS:-$(mktemp -d /tmp/rollout-compose-demo.XXXXXX)}"
exec bash "$ROOT/deploy/local/demo.sh" "$BIN"
