//! The whole system on a Redis Cluster (SPEC §14): planners, tickers and evaluators run
//! against three masters with a replica each, namespaces spread over the masters, every
//! script single-slot (a namespace's hash tag) and the reads over several namespaces one
//! request per slot. What a user sees must be what a single Redis gives: phased rollouts in
//! several namespaces complete, every step entered once, and every evaluator replica serves
//! exactly what is committed.
//!
//! A master dying with a replica promoted loses nothing a caller was told about: every
//! commit is confirmed on a replica (`redis.wait_replicas = 1`) before it is acknowledged or
//! published. The test first stalls the replication stream (an iptables drop of the
//! master's packets to its replica's connection; a stopped replica would still receive
//! them into its socket buffer), so the master runs ahead of its replica, then kills the
//! master and lets the replica take over: commands sent meanwhile are refused as
//! unavailable and retried with their command id — while the promoted master has no replica
//! of its own, a retry is not acknowledged either, though its first attempt may have
//! committed there — until the killed master is back as the new one's replica; afterwards
//! each acknowledged command is applied exactly once and what is served is what is
//! committed. Without the wait the commands the master acknowledged during the stall are
//! lost, and the test says so.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rollout_core::{Entity, Lifecycle, RolloutSpec};
use rollout_sandbox::{boolean_flag, wait_until_within, Sandbox};
use rollout_sdk::{CommandClient, EvalClient, Namespace};
use rollout_testkit::RedisClusterOptions;
use serde_json::json;
use support::cluster::flag_update_storm;

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

/// An iptables rule dropping a master's packets on its replica's replication connection
/// (found with `CLIENT LIST TYPE replica`); removed by [`ReplicationStall::end`] or on drop.
struct ReplicationStall {
    rule: Vec<String>,
    active: AtomicBool,
}

impl ReplicationStall {
    /// The stall of `master`'s replication, when iptables can be used here (root).
    fn of(master: &rollout_testkit::RedisServer) -> Option<ReplicationStall> {
        let listed = master
            .command(&["CLIENT", "LIST", "TYPE", "replica"])
            .ok()?;
        let rollout_testkit::RedisReply::Bulk(Some(text)) = listed else {
            return None;
        };
        let text = String::from_utf8_lossy(&text).into_owned();
        let port = text
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr="))
            .and_then(|addr| addr.rsplit_once(':'))
            .map(|(_, port)| port.to_owned())?;
        let rule: Vec<String> = [
            "OUTPUT",
            "-o",
            "lo",
            "-p",
            "tcp",
            "--sport",
            &master.port().to_string(),
            "--dport",
            &port,
            "-j",
            "DROP",
        ]
        .iter()
        .map(|part| (*part).to_owned())
        .collect();
        let usable = std::process::Command::new("iptables")
            .args(["-C"])
            .args(&rule)
            .output()
            .ok()?;
        // exit 1: the rule does not exist yet (iptables works); anything else: it does not
        (usable.status.code() == Some(1)).then(|| ReplicationStall {
            rule,
            active: AtomicBool::new(false),
        })
    }

    fn start(&self) {
        let status = std::process::Command::new("iptables")
            .arg("-I")
            .args(&self.rule)
            .status()
            .expect("iptables runs");
        assert!(status.success(), "iptables -I {:?}", self.rule);
        self.active.store(true, Ordering::Relaxed);
    }

    fn end(&self) {
        if self.active.swap(false, Ordering::Relaxed) {
            let _ = std::process::Command::new("iptables")
                .arg("-D")
                .args(&self.rule)
                .status();
        }
    }
}

impl Drop for ReplicationStall {
    fn drop(&mut self) {
        self.end();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_lost_with_its_replica_behind_loses_no_acknowledged_command() {
    let sandbox = Sandbox::builder()
        .redis_cluster(RedisClusterOptions::default().replicas_per_master(1))
        .planners(1)
        .evaluators(2)
        .start()
        .await;
    assert_eq!(sandbox.redis_settings().wait_replicas, 1);
    let cluster = sandbox.redis_cluster.as_ref().expect("a cluster");
    let namespace = sandbox.namespace().clone();
    let commands = sandbox.operator();
    let flags: Vec<String> = (0..4).map(|index| format!("storm-{index}")).collect();
    for flag in &flags {
        commands
            .create_flag(boolean_flag(flag))
            .await
            .unwrap_or_else(|error| panic!("{flag}: {error}"));
    }
    let master = cluster
        .node_for_key(&format!("ro:{{{namespace}}}:flags"))
        .expect("the namespace's master");
    assert!(
        !cluster.replicas_of(master).expect("replicas").is_empty(),
        "the master has a replica"
    );

    let Some(stall) = ReplicationStall::of(master) else {
        println!("skipped: cannot stall replication without iptables as root");
        sandbox.stop().await;
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let storm = flag_update_storm(commands.clone(), flags.clone(), "storm", Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // the replication stream stalls: the master runs ahead of its replica
    stall.start();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    master.kill().expect("SIGKILL the master");
    stall.end();
    let lost_at = tokio::time::Instant::now();
    tokio::task::block_in_place(|| {
        cluster
            .wait_for_failover(master, Duration::from_secs(30))
            .expect("the replica takes over")
    });
    println!("fail-over took {:?}", lost_at.elapsed());
    // the storm goes on through the new master for a while: with no replica to confirm
    // them, its commits are not acknowledged (nor are the retries of their command ids)
    tokio::time::sleep(Duration::from_secs(2)).await;
    // the killed master comes back as the new one's replica: commands are acknowledged
    // again, the storm's pending command among them
    tokio::task::block_in_place(|| {
        master.restart().expect("the old master starts again");
        master
            .wait_replicating(Duration::from_secs(30))
            .expect("the old master replicates the new one");
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, refused) = storm.await.expect("storm");
    let total: usize = acknowledged.values().map(Vec::len).sum();
    println!("{total} commands acknowledged, {refused} attempts refused while the master was behind or gone");
    assert!(refused > 0, "the stall and the kill were felt");

    // every acknowledged command is applied exactly once
    let store = sandbox.store().await;
    let keys = rollout_store::Keys::new(&namespace);
    for (flag, ids) in &acknowledged {
        let mut connection = store.clone();
        let (_, audit): (u64, Vec<rollout_wire::queries::AuditEntry>) =
            rollout_store::reads::audit_page(
                &mut connection,
                &keys,
                rollout_store::reads::AuditLog::Flag(flag),
                0,
                u32::MAX,
            )
            .await
            .expect("audit");
        for id in ids {
            // a flag update is one audit entry carrying its command id
            let applied = audit
                .iter()
                .filter(|entry| entry.details["command_id"].as_str() == Some(id.as_str()))
                .count();
            assert_eq!(applied, 1, "{flag}: command {id} applied {applied} times");
        }
        let version = rollout_store::reads::flag_version(&mut connection, &keys, flag)
            .await
            .expect("version");
        assert_eq!(version, 1 + ids.len() as u64, "{flag}");
    }
    rollout_sandbox::oracle::assert_served_matches_committed(&sandbox).await;
    sandbox.stop().await;
}
