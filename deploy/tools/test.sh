#!/usr/bin/env bash
# THE one command that runs every test of the workspace:
#   1. deploy/tools/install.sh (nats-server >= 2.10, redis-server, cargo-nextest);
#   2. cargo fmt --check and cargo clippy --all-targets -- -D warnings (style and lints are
#      part of green);
#   3. cargo nextest run --workspace --all-targets (profile "ci");
#   4. cargo test --workspace --doc (nextest does not run doctests).
# Tests start their own nats-server/redis-server on free ports (see
# shared/rollout-testkit); the machine's servers on 4222/6379 are not used.
# Exits non-zero if anything fails; every step runs even if an earlier one failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

bash deploy/tools/install.sh

# The test kit finds .tools/bin on its own; exporting keeps every process
# (and any tool run from a test) on the same binary.
export ROLLOUT_NATS_SERVER_BIN="${ROLLOUT_NATS_SERVER_BIN:-$ROOT/.tools/bin/nats-server}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The build must fit on a machine whose disk is shared and sometimes nearly full (a CI run
# once died with "No space left on device" while linking doctests): no debug information
# (tests still print panics and backtraces with function names) and no incremental caches
# roughly quarter the target directory. Set them yourself to override.
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-0}"
export CARGO_PROFILE_TEST_DEBUG="${CARGO_PROFILE_TEST_DEBUG:-0}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "=== disk before the build ==="
df -h "$ROOT" /tmp 2>/dev/null || true

status=0

echo "=== cargo fmt --all -- --check ==="
cargo fmt --all -- --check || status=$?

echo "=== cargo clippy --workspace --all-targets -- -D warnings ==="
cargo clippy --workspace --all-targets -- -D warnings || status=$?

echo "=== cargo nextest run --workspace --all-targets ==="
cargo nextest run --workspace --all-targets --no-fail-fast --profile ci || status=$?

echo "=== cargo test --workspace --doc ==="
cargo test --workspace --doc --no-fail-fast || status=$?

echo "=== disk after the tests ==="
df -h "$ROOT" /tmp 2>/dev/null || true
du -sh "${CARGO_TARGET_DIR:-$ROOT/target}" 2>/dev/null || true

if [ "$status" -ne 0 ]; then
    echo "test.sh: FAILED (exit $status)"
else
    echo "test.sh: all tests passed"
fi
exit "$status"
