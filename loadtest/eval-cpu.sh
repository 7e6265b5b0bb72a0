#!/usr/bin/env bash
# The evaluator's own CPU per evaluation over NATS: runs `loadtest eval` (private servers),
# reads the `serve-evaluator` child's utime + stime from /proc 3 s and 8 s after it starts
# (inside its 1-replica closed loop), and divides by the rate that loop measured. Steadier
# from run to run than the throughput ratio, which the machine's other load moves.
#   loadtest/eval-cpu.sh            # uses <target>/release/loadtest (build it first)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
LOADTEST="$TARGET/release/loadtest"
[ -x "$LOADTEST" ] || { echo "eval-cpu.sh: build it first: cargo build --release -p loadtest" >&2; exit 1; }
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT

"$LOADTEST" eval --duration 8s --warmup 1s --skip-memory >"$LOG" 2>&1 &
RUN=$!
EVALUATOR=""
for _ in $(seq 1 600); do
    EVALUATOR="$(pgrep -f 'loadtest serve-evaluator' | head -1 || true)"
    [ -n "$EVALUATOR" ] && break
    sleep 0.1
done
[ -n "$EVALUATOR" ] || { echo "eval-cpu.sh: no evaluator started" >&2; cat "$LOG" >&2; exit 1; }
ticks() { awk '{print $14 + $15}' "/proc/$EVALUATOR/stat"; }
sleep 3; FIRST=$(ticks); sleep 5; LAST=$(ticks)
wait "$RUN"
RATE="$(sed -n 's/^evaluations\/s, closed loop [0-9]* in flight, 1 replica *\([0-9 ]*\) req\/s.*/\1/p' "$LOG" | tr -d ' ')"
[ -n "$RATE" ] || { echo "eval-cpu.sh: no rate measured" >&2; cat "$LOG" >&2; exit 1; }
HZ="$(getconf CLK_TCK)"
awk -v ticks=$((LAST - FIRST)) -v hz="$HZ" -v rate="$RATE" \
    'BEGIN { printf "evaluator CPU per request: %.2f us (%d ticks in 5 s at %d req/s)\n", ticks / hz / 5 * 1e6 / rate, ticks, rate }'
grep 'req/s' "$LOG"
