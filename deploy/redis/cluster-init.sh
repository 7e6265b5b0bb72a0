#!/bin/sh
# Forms the Redis Cluster of deploy/compose/redis-cluster.yml, once: the one-shot `redis`
# service runs it after every node answers. A cluster that is already formed (the project
# started again, the job rerun) is left as it is; fresh nodes are joined with
# `redis-cli --cluster create` (the first third masters, one replica each). Either way it
# then waits until every node reports the cluster ok and every master has its replica
# online, so the services' first commits find the replica their WAIT asks for.
#
# Environment: ROLLOUT_REDIS_CLUSTER_NODES (host:port, space-separated), REDISCLI_AUTH (the
# password of ACL user ROLLOUT_REDIS_CLUSTER_USER, default cluster-admin),
# ROLLOUT_REDIS_CLUSTER_REPLICAS (replicas per master, default 1). Only sh and redis-cli
# are needed (the offline image has nothing else).
set -eu
user="${ROLLOUT_REDIS_CLUSTER_USER:-cluster-admin}"
replicas="${ROLLOUT_REDIS_CLUSTER_REPLICAS:-1}"
nodes="$ROLLOUT_REDIS_CLUSTER_NODES"
first="${nodes%% *}"

cli() {
    node="$1"
    shift
    redis-cli --no-auth-warning --user "$user" -h "${node%:*}" -p "${node##*:}" "$@"
}
# redis-cli sleeps between repeats: the image has no sleep
pause() { cli "$first" -r 1 -i 1 ping >/dev/null 2>&1 || true; }

formed=0
fresh=0
count=0
for node in $nodes; do
    count=$((count + 1))
    info="$(cli "$node" cluster info)"
    case "$info" in
        *cluster_slots_assigned:16384*) formed=$((formed + 1)) ;;
    esac
    case "$info" in
        *"cluster_known_nodes:1"[!0-9]*"cluster_slots_assigned:0"[!0-9]* | \
            *"cluster_slots_assigned:0"[!0-9]*"cluster_known_nodes:1"[!0-9]*) fresh=$((fresh + 1)) ;;
    esac
done

if [ "$formed" -gt 0 ]; then
    echo "cluster-init: the cluster is already formed ($formed of $count nodes serve every slot); nothing to do"
elif [ "$fresh" -eq "$count" ]; then
    echo "cluster-init: forming a cluster of $count nodes, $replicas replica(s) per master"
    # shellcheck disable=SC2086 # one argument per node
    redis-cli --no-auth-warning --user "$user" --cluster create $nodes \
        --cluster-replicas "$replicas" --cluster-yes
else
    echo "cluster-init: the nodes are partly joined ($fresh of $count fresh, none serves every slot):" >&2
    echo "cluster-init: repair by hand (redis-cli --cluster check / fix) or start over with down -v" >&2
    exit 1
fi

attempts=0
while :; do
    waiting=""
    for node in $nodes; do
        case "$(cli "$node" cluster info 2>&1)" in
            *cluster_state:ok*) ;;
            *) waiting="$waiting $node:cluster_state" ;;
        esac
        replication="$(cli "$node" info replication 2>&1)"
        case "$replication" in
            *role:master*slave0:*state=online*) ;;
            *role:slave*master_link_status:up*) ;;
            *) waiting="$waiting $node:replication" ;;
        esac
    done
    if [ -z "$waiting" ]; then
        echo "cluster-init: every node reports the cluster ok and every master has its replica online"
        cli "$first" cluster nodes
        exit 0
    fi
    attempts=$((attempts + 1))
    if [ "$attempts" -ge 120 ]; then
        echo "cluster-init: still waiting after $attempts s for:$waiting" >&2
        exit 1
    fi
    pause
done
