#!/usr/bin/env bash
# The local cluster's demo (run by run.sh once the cluster is up): a phased rollout shown
# by `status` and `watch` until it completes, then a label-staged fleet rollout with
# simulated agents and a `continue`, an approval gate under a namespace freeze, and a slow
# rollout left running for the console.
# Usage: demo.sh BIN_DIR
#
# NATS comes from ROLLOUT_NATS__* (URL and the operator's credentials). On a cluster with
# NATS users (the compose one, deploy/compose/demo.sh) the operator may not evaluate or
# talk fleet: DEMO_NAMESPACE picks the namespace (default demo), DEMO_EVAL_USER /
# DEMO_EVAL_PASSWORD the user that evaluates (an SDK user of that namespace) and
# DEMO_AGENTS_USER / DEMO_AGENTS_PASSWORD the one the simulated agents log in as.
set -euo pipefail
BIN="$1"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NS="${DEMO_NAMESPACE:-demo}"
CTL=("$BIN/rolloutctl" -n "$NS")
step() { printf '\n\033[1;36m-- %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ rolloutctl -n %s %s\033[0m\n' "$NS" "$*"; "${CTL[@]}" "$@"; }
# `as_user USER PASSWORD command...`: the command logs in to NATS as USER (when given),
# receiving replies under its own inbox prefix
as_user() {
    local user="$1" password="$2"
    shift 2
    if [ -n "$user" ]; then
        ROLLOUT_NATS__USER="$user" ROLLOUT_NATS__PASSWORD="$password" \
            ROLLOUT_NATS__INBOX_PREFIX="_INBOX_$user" "$@"
    else
        "$@"
    fi
}

step "1. a flag"
show flag create -f "$HERE/demo/flag.yaml" || show flag get demo-checkout

step "2. a phased rollout: 10 % → 25 % → 50 % → 100 %, four seconds each"
# --replace-current-serve: a re-run on kept data (run.sh --keep-data) finds the flag
# serving what the last run completed; a real rollout would be refused there instead
created=$("${CTL[@]}" --json rollout create -f "$HERE/demo/phased.yaml" --replace-current-serve)
rollout_id=$(printf '%s' "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rollout_id"])')
echo "created rollout $rollout_id"
show rollout status "$rollout_id"

step "3. which side do entities get? (evaluated by the evaluators, in memory)"
for user in user-1 user-2 user-3 user-4 user-5; do
    printf '%s → ' "$user"
    as_user "${DEMO_EVAL_USER:-}" "${DEMO_EVAL_PASSWORD:-}" \
        "${CTL[@]}" eval demo-checkout --entity "$user" --explain | head -n 1
done

step "4. watch the tickers advance it (Ctrl-C leaves the cluster running)"
show rollout watch "$rollout_id"
show rollout status "$rollout_id"

step "5. a fleet rollout by label stages, with 30 simulated agents"
show flag create -f "$HERE/demo/agent-flag.yaml" || true
as_user "${DEMO_AGENTS_USER:-}" "${DEMO_AGENTS_PASSWORD:-}" \
    "$BIN/loadtest" agents --nats-url "$ROLLOUT_NATS__URL" --namespace "$NS" --flag demo-collector-config \
    --count 30 --duration 90s >"${LOGS:-/tmp}/agents.log" 2>&1 &
agents=$!
trap 'kill $agents 2>/dev/null || true' EXIT
sleep 2
staged=$("${CTL[@]}" --json rollout create -f "$HERE/demo/stages.yaml" --replace-current-serve)
staged_id=$(printf '%s' "$staged" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rollout_id"])')
echo "created rollout $staged_id: the canary stage is released, agents apply v2"
sleep 6
show rollout status "$staged_id"
echo "the canary gate (80 % applied) releases prod-eu by itself; prod-us waits for continue"
sleep 6
show rollout status "$staged_id"

step "6. continue: release prod-us"
show rollout continue "$staged_id"
sleep 6
show rollout status "$staged_id"
show rollout audit --rollout "$staged_id"
kill "$agents" 2>/dev/null || true

step "7. release controls: an approval gate, a namespace freeze"
show flag create -f "$HERE/demo/banner-flag.yaml" || true
gated=$("${CTL[@]}" --json rollout create -f "$HERE/demo/approval.yaml" --replace-current-serve)
gated_id=$(printf '%s' "$gated" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rollout_id"])')
echo "created rollout $gated_id: 20 % waits for two approvals before its 4 s run"
show rollout status "$gated_id"
show --actor ana rollout approve "$gated_id"
echo "freeze the namespace: the approved step's timer holds until the freeze ends"
show namespace freeze --reason "demo: release freeze"
show --actor bo rollout approve "$gated_id"
sleep 5
show rollout status "$gated_id"
show namespace unfreeze
sleep 6
show rollout status "$gated_id"
show namespace audit

step "8. a slow rollout left running, for the console"
show flag create -f "$HERE/demo/search-flag.yaml" || true
show rollout create -f "$HERE/demo/slow.yaml" --replace-current-serve
step "demo done"
