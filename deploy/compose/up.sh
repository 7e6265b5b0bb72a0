#!/usr/bin/env bash
# The compose cluster on a machine WITHOUT a container registry, in one command: builds the
# image from this machine's binaries (images.sh), starts deploy/docker-compose.yml with
# deploy/compose/offline.yml, and waits until every service's health check passes.
#
#   deploy/compose/up.sh [--profile release|dev] [--no-build] [--redis-cluster] [--demo]
#
# --redis-cluster runs a Redis Cluster (3 masters with a replica each,
# deploy/compose/redis-cluster.yml) in place of the single Redis; later compose.sh calls on
# the project add that file by themselves. --demo then runs deploy/local/demo.sh against it
# (a phased and a label-staged rollout).
# deploy/.env is made from deploy/.env.example on first use (change its passwords for
# anything but a try-out). Stop with: deploy/compose/compose.sh down -v
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

profile=release
build_args=()
demo=0
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --no-build) build_args+=(--no-build); shift ;;
        --demo) demo=1; shift ;;
        --redis-cluster) export ROLLOUT_COMPOSE_REDIS_CLUSTER=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "up.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
done

if [ ! -f deploy/.env ] && [ -z "${ROLLOUT_COMPOSE_ENV_FILE:-}" ]; then
    cp deploy/.env.example deploy/.env
    echo "up.sh: made deploy/.env from deploy/.env.example: its passwords are the examples', change them for anything but a try-out"
fi

bash "$HERE/images.sh" --profile "$profile" "${build_args[@]}"
bash "$HERE/compose.sh" up -d --no-build --remove-orphans
bash "$HERE/wait-healthy.sh" 180

if [ "${ROLLOUT_COMPOSE_REDIS_CLUSTER:-0}" = 1 ]; then
    echo "up.sh: Redis runs as a cluster of 3 masters with a replica each (redis-1 … redis-6; the redis service formed it):"
    bash "$HERE/compose.sh" logs --no-color redis | sed -n 's/^.*| //p' | grep -E 'master|slave' || true
fi
cat <<'INFO'
up.sh: the cluster is up (deploy/compose/compose.sh ps):
  NATS      nats://127.0.0.1:4222 (users in deploy/nats/accounts.conf, passwords in deploy/.env)
  OFREP     http://127.0.0.1:8081 .. 8083 (Authorization: Bearer <token of ROLLOUT_OFREP_TOKENS>)
  console   http://127.0.0.1:8090 (admin / change-me-console-admin)
  traces    http://127.0.0.1:16686
  stop      deploy/compose/compose.sh down -v
INFO

if [ "$demo" = 1 ]; then
    bash "$HERE/demo.sh" --profile "$profile"
fi
