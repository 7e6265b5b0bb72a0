#!/usr/bin/env bash
# docker compose with the registry-free override: the compose tool this machine has (the
# `docker compose` plugin, else the standalone `docker-compose`) on
# deploy/docker-compose.yml + deploy/compose/offline.yml, reading deploy/.env.
#
#   deploy/compose/compose.sh ps
#   deploy/compose/compose.sh --profile loadtest run --rm loadtest eval
#   deploy/compose/compose.sh down -v
#
# ROLLOUT_COMPOSE_PROJECT names the project (default: COMPOSE_PROJECT_NAME of deploy/.env,
# "rollout"); ROLLOUT_COMPOSE_ENV_FILE replaces deploy/.env; ROLLOUT_COMPOSE_EXTRA_FILES
# adds override files (colon-separated, e.g. deploy/compose/observe.yml).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEPLOY="$(dirname "$HERE")"

if docker compose version >/dev/null 2>&1; then
    tool=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    tool=(docker-compose)
else
    echo "compose.sh: neither 'docker compose' nor 'docker-compose' is installed" >&2
    exit 69
fi

env_file="${ROLLOUT_COMPOSE_ENV_FILE:-$DEPLOY/.env}"
if [ ! -f "$env_file" ]; then
    echo "compose.sh: $env_file is missing: cp deploy/.env.example deploy/.env and change the passwords" >&2
    exit 66
fi
args=(--env-file "$env_file" -f "$DEPLOY/docker-compose.yml" -f "$HERE/offline.yml")
IFS=: read -r -a extra <<<"${ROLLOUT_COMPOSE_EXTRA_FILES:-}"
for file in "${extra[@]}"; do
    [ -n "$file" ] && args+=(-f "$file")
done
if [ -n "${ROLLOUT_COMPOSE_PROJECT:-}" ]; then
    args+=(-p "$ROLLOUT_COMPOSE_PROJECT")
fi
exec "${tool[@]}" "${args[@]}" "$@"
