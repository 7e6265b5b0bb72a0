#!/usr/bin/env bash
# Waits until every running container of the compose project with a health check reports
# healthy (at most SECONDS, default 180); prints the unhealthy ones and their last log lines
# and exits 1 if time runs out. A one-shot container (restart policy "no", such as the Redis
# Cluster variant's `redis` job) counts once it has exited 0; exited otherwise, it fails.
#   deploy/compose/wait-healthy.sh [SECONDS]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
limit="${1:-180}"
deadline=$(( $(date +%s) + limit ))
while :; do
    pending=()
    for id in $(bash "$HERE/compose.sh" ps -q); do
        state="$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.HostConfig.RestartPolicy.Name}} {{.State.ExitCode}}' "$id")"
        read -r name status health restart code <<<"$state"
        if [ "$status" = exited ] && [ "$restart" = no ]; then
            if [ "$code" != 0 ]; then
                echo "wait-healthy.sh: the one-shot ${name#/} exited $code" >&2
                docker logs --tail 20 "$id" >&2 || true
                exit 1
            fi
            continue
        fi
        if [ "$status" != running ] || { [ "$health" != healthy ] && [ "$health" != none ]; }; then
            pending+=("${name#/}:$status/$health")
        fi
    done
    if [ ${#pending[@]} -eq 0 ]; then
        echo "wait-healthy.sh: every service is healthy"
        exit 0
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "wait-healthy.sh: not healthy after ${limit}s: ${pending[*]}" >&2
        for entry in "${pending[@]}"; do
            echo "--- ${entry%%:*}" >&2
            docker logs --tail 20 "${entry%%:*}" >&2 || true
        done
        exit 1
    fi
    sleep 1
done
