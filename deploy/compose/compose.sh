#!/usr/bin/env bash
# docker compose with the registry-free override: the compose tool this machine has (the
# `docker compose` plugin, else the standalone `docker-compose`) on
# deploy/docker-compose.yml + deploy/compose/offline.yml, reading deploy/.env.
#
#   deploy/compose/compose.sh ps
#   deploy/compose/compose.sh --profile loadtest run --rm loadtest eval
#   deploy/compose/compose.sh down -v
#
# --redis-cluster (first), or ROLLOUT_COMPOSE_REDIS_CLUSTER=1, adds
# deploy/compose/redis-cluster.yml: a Redis Cluster of six nodes in place of the single
# Redis. A project that already has the cluster's nodes gets it without asking, so
# `compose.sh down -v` takes them down too.
#   deploy/compose/compose.sh --redis-cluster ps
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
redis_cluster="${ROLLOUT_COMPOSE_REDIS_CLUSTER:-0}"
if [ "${1:-}" = --redis-cluster ]; then
    redis_cluster=1
    shift
fi
project="${ROLLOUT_COMPOSE_PROJECT:-$(sed -n 's/^COMPOSE_PROJECT_NAME=//p' "$env_file" | tail -n 1)}"
if [ "$redis_cluster" != 1 ] && [ -n "$project" ] && [ -n "$(docker ps -aq \
    --filter "label=com.docker.compose.project=$project" \
    --filter label=com.docker.compose.service=redis-1 2>/dev/null)" ]; then
    redis_cluster=1
fi
args=(--env-file "$env_file" -f "$DEPLOY/docker-compose.yml" -f "$HERE/offline.yml")
if [ "$redis_cluster" = 1 ]; then
    args+=(-f "$HERE/redis-cluster.yml")
fi
IFS=: read -r -a extra <<<"${ROLLOUT_COMPOSE_EXTRA_FILES:-}"
for file in "${extra[@]}"; do
    [ -n "$file" ] && args+=(-f "$file")
done
if [ -n "${ROLLOUT_COMPOSE_PROJECT:-}" ]; then
    args+=(-p "$ROLLOUT_COMPOSE_PROJECT")
fi
exec "${tool[@]}" "${args[@]}" "$@"
