#!/usr/bin/env bash
# Seeds corpus/<target>/ from the documented message examples (../shapes/*.json), so the
# fuzzer starts from valid messages. Targets whose first byte picks a verb, kind or reply
# type get each example once per selector value. Idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
shapes=../shapes

seed() { # target selector-count files...
    local target="$1" count="$2"
    shift 2
    mkdir -p "corpus/$target"
    local file base selector
    for file in "$@"; do
        base="$(basename "$file" .json)"
        if [ "$count" = 0 ]; then
            cp "$file" "corpus/$target/$base"
        else
            for ((selector = 0; selector < count; selector++)); do
                { printf "\\x$(printf %02x "$selector")"; cat "$file"; } >"corpus/$target/$base-$selector"
            done
        fi
    done
}

seed commands 14 "$shapes"/flag_*.json "$shapes"/rollout_create*.json "$shapes"/rollout_action.json "$shapes"/rollout_stop.json
seed queries 6 "$shapes"/*_query.json
seed eval_requests 0 "$shapes"/eval_request*.json
seed fleet_requests 4 "$shapes"/agent_*.json "$shapes"/desired_query.json
seed outcome_batches 0 "$shapes"/outcome_*.json
seed change_events 0 "$shapes"/change_event*.json
seed replies 13 "$shapes"/reply_*.json "$shapes"/*result.json "$shapes"/*list.json "$shapes"/audit_page.json "$shapes"/plan_preview.json "$shapes"/rollout_status.json "$shapes"/desired.json "$shapes"/deleted.json "$shapes"/eval_many.json
echo "seeded: $(find corpus -type f | wc -l) files"
