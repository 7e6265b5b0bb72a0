#!/usr/bin/env bash
# Installs Unleash Edge into <repo>/.tools/bin, idempotently, for the
# `loadtest edge` benchmark peer (SPEC §10: OFREP vs Unleash Edge's frontend
# API). A benchmark peer only: neither CI nor the test suite needs it.
# `cargo install` compiles it from crates.io, which takes many minutes on a
# small machine. Prints the installed version. Safe to run again and again.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
EDGE_CRATE_SPEC="${ROLLOUT_UNLEASH_EDGE_VERSION:+--version $ROLLOUT_UNLEASH_EDGE_VERSION}"

say() { printf 'install-unleash-edge.sh: %s\n' "$*"; }

# unleash-edge has no --version: cargo's record of what it installed says it
edge_version() { cargo install --list --root "$TOOLS" | sed -n 's/^unleash-edge \(v[^:]*\):$/\1/p'; }

if [ -x "$BIN/unleash-edge" ]; then
    say "unleash-edge already present: $(edge_version) ($BIN/unleash-edge)"
    exit 0
fi

say "installing unleash-edge with cargo install into $TOOLS (takes many minutes)"
# without CARGO_TARGET_DIR cargo builds in a temporary directory it removes afterwards,
# rather than filling the project's target directory with Edge's dependencies
# shellcheck disable=SC2086 # the version spec is either empty or two words
env -u CARGO_TARGET_DIR nice -n 10 cargo install --locked unleash-edge $EDGE_CRATE_SPEC --root "$TOOLS"
say "installed unleash-edge $(edge_version) ($BIN/unleash-edge)"
