//! The whole system on a Redis Cluster (SPEC §14): planners, tickers and evaluators run
//! against three masters with a replica each, namespaces spread over the masters, every
//! script single-slot (a namespace's hash tag) and the reads over several namespaces one
//! request per slot. What a user sees must be what a single Redis gives: phased rollouts in
//! several namespaces complete, every step entered once, and every evaluator replica serves
//! exactly what is committed.

use std::collections::BTreeSet;
use std::time::Duration;

use rollout_core::{Entity, Lifecycle, RolloutSpec};
use rollout_sandbox::{boolean_flag, wait_until_within, Sandbox};
use rollout_sdk::{CommandClient, EvalClient, Namespace};
use rollout_testkit::RedisClusterOptions;
use serde_json::json;

/// Namespaces beside the sandbox's own.
const NAMESPACES: usize = 6;
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn phased_rollouts_complete_and_are_served_as_committed_on_a_redis_cluster() {
    let sandbox = Sandbox::builder()
        .redis_cluster(RedisClusterOptions::default().replicas_per_master(1))
        .planners(2)
        .tickers(2)
        .evaluators(2)
        .start()
        .await;
    let cluster = sandbox.redis_cluster.as_ref().expect("a cluster");
    let mut namespaces: Vec<Namespace> = vec![sandbox.namespace().clone()];
    namespaces.extend(
        (0..NAMESPACES).map(|index| Namespace::new(format!("spread-{index}")).expect("namespace")),
    );
    // the namespaces' keys live on more than one master
    let masters: BTreeSet<u16> = namespaces
        .iter()
        .map(|namespace| {
            cluster
                .node_for_key(&format!("ro:{{{namespace}}}:flags"))
                .expect("a node")
                .port()
        })
        .collect();
    assert!(masters.len() >= 2, "namespaces on {masters:?}");

    let mut rollouts = Vec::new();
    for namespace in &namespaces {
        let commands = CommandClient::new(sandbox.client.clone(), namespace.clone());
        commands
            .create_flag(boolean_flag("checkout"))
            .await
            .unwrap_or_else(|error| panic!("flag in {namespace}: {error}"));
        let spec: RolloutSpec = serde_json::from_value(json!({
            "flag": "checkout", "baseline": "off", "candidate": "on",
            "phases": [
                {"percentage": 10, "duration": "700ms"},
                {"percentage": 50, "duration": "700ms"},
                {"percentage": 100},
            ],
        }))
        .expect("spec");
        let created = commands
            .create_rollout(spec)
            .await
            .unwrap_or_else(|error| panic!("rollout in {namespace}: {error}"));
        assert_eq!(created.state, Lifecycle::Running);
        rollouts.push((namespace.clone(), commands, created.rollout_id));
    }
    // while they move, what is served is what is committed (the sandbox's namespace)
    rollout_sandbox::oracle::assert_served_matches_committed(&sandbox).await;

    for (namespace, commands, rollout_id) in &rollouts {
        let status = wait_until_within(
            &format!("the rollout of {namespace} to complete"),
            PATIENCE,
            || async {
                let status = commands.rollout_status(rollout_id).await.ok()?;
                (status.state == Lifecycle::Completed).then_some(status)
            },
        )
        .await;
        // every step started once, in order
        let entered: Vec<_> = status
            .steps
            .iter()
            .map(|step| {
                assert!(!step.skipped, "{namespace}: step {} skipped", step.index);
                step.started_at.expect("every step started")
            })
            .collect();
        assert!(
            entered.windows(2).all(|pair| pair[0] <= pair[1]),
            "{namespace}: {entered:?}"
        );
        // applications in that namespace are served the candidate, at the flag's version
        let flag = commands.get_flag("checkout").await.expect("flag");
        let eval = EvalClient::connect(sandbox.client.clone(), namespace.clone())
            .await
            .expect("eval client");
        let served = wait_until_within(
            &format!("{namespace}'s checkout at v{}", flag.version),
            PATIENCE,
            || async {
                let answer = eval
                    .evaluate("checkout", &Entity::with_id("user-7"))
                    .await
                    .ok()?;
                (answer.version == flag.version).then_some(answer)
            },
        )
        .await;
        assert_eq!(served.variation, "on", "{namespace}");
    }
    rollout_sandbox::oracle::assert_served_matches_committed(&sandbox).await;
    // it all went to the cluster: the single server beside it holds nothing
    assert_eq!(
        sandbox.redis.command(&["DBSIZE"]).expect("dbsize"),
        rollout_testkit::RedisReply::Integer(0)
    );
    let mut keys_per_master = Vec::new();
    for master in cluster.masters().expect("masters") {
        keys_per_master.push(master.command(&["DBSIZE"]).expect("dbsize"));
    }
    println!("keys per master: {keys_per_master:?}");
    sandbox.stop().await;
}
