//! The durable command stream replicated on a NATS cluster (SPEC §14): on a 3-node cluster
//! with `ROLLOUT_CMDS` at R3, two planners (started together, in process) and the operator
//! connected with every seed URL, the node leading the stream is killed (SIGKILL) in the
//! middle of a command storm, and every command the stream acknowledged is applied exactly
//! once — nothing lost, nothing doubled — while the storm goes on through the election; the
//! killed node, restarted, catches up.
//!
//! The kill is made the worst case for the planners: before the storm the stream's and the
//! planners' consumer's leadership are moved to a node no planner is connected to, so the
//! planners keep their connections while the pulls they had waiting die with the leader.
//! Every command carries its id as `Nats-Msg-Id` and a publish that fails or goes unanswered
//! is sent again under it, so the stream stores it once.
//!
//! Prints a report: commands acknowledged (before and after the kill), publish retries and
//! why, the election, how long publishes and commits paused, which clients the killed node
//! held, how many commands each planner handled, and how long the restarted node took to
//! catch up.

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use planner::Planner;
use rollout_runtime::connect::{connect_nats, connect_redis};
use rollout_runtime::shutdown::Shutdown;
use rollout_testkit::{NatsCluster, RedisServer};
use support::checks::{check_commands, Report};
use support::cluster::{boolean_flag, operator_commands};
use support::committed::CommittedReader;
use support::nats_cluster::{
    clients_on, in_step, move_leader, queued_commands_handled, stream_leader, stream_view,
    OutcomeLog, Storm, StreamView,
};
use support::{eventually, NS, PATIENCE};
use tokio::time::Instant;

/// Planners in process.
const PLANNERS: usize = 2;
/// Flags the storm updates in turn.
const FLAGS: usize = 8;
/// Concurrent publishers in the storm.
const PUBLISHERS: usize = 4;
/// Each publisher's pause after an acknowledged command.
const PAUSE: Duration = Duration::from_millis(10);
/// How long a publish attempt waits for the stream's acknowledgement before it is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Storm before the kill.
const BEFORE_KILL: Duration = Duration::from_secs(3);
/// Commands that must be acknowledged after the kill before the storm may stop.
const ACKED_AFTER_KILL: u64 = 200;
/// Storm once commands are acknowledged again after the kill.
const AFTER_RECOVERY: Duration = Duration::from_secs(2);
/// Bound on the election and on the stream taking commands again (4–9 s is usual after
/// a SIGKILL on a loaded machine).
const RECOVERY: Duration = Duration::from_secs(30);

fn millis(duration: Duration) -> u128 {
    duration.as_millis()
}

/// Now, in ms since the epoch, as the audit's (Redis) clock reads it on this machine.
fn wall_clock_ms() -> i64 {
    rollout_core::Timestamp::local_now().as_millis()
}

/// Starts a planner in process connected with every seed of `seeds`, the command stream at
/// R3 and its probe endpoints on a free port.
async fn start_planner(index: usize, seeds: &str, redis_url: &str, shutdown: Shutdown) -> Planner {
    let mut nats = rollout_sandbox::nats_settings(seeds);
    nats.name = Some(format!("planner-{index}"));
    let mut config =
        rollout_sandbox::planner_config(nats, rollout_sandbox::redis_settings(redis_url));
    config.planner.stream_replicas = 3;
    config.http.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    Planner::start(config, shutdown)
        .await
        .unwrap_or_else(|error| panic!("planner-{index} starts: {error}"))
}

/// Queued commands each planner has answered `ok`.
async fn handled_per_planner(probes: &[SocketAddr]) -> Vec<u64> {
    let mut handled = Vec::new();
    for probe in probes {
        handled.push(queued_commands_handled(*probe).await.unwrap_or(0));
    }
    handled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_node_lost_mid_command_storm_loses_and_doubles_nothing() {
    rollout_runtime::telemetry::init_for_tests();
    let began = Instant::now();
    let mut text = String::new();
    let cluster = tokio::task::block_in_place(NatsCluster::start).expect("a 3-node nats cluster");
    let redis = tokio::task::block_in_place(RedisServer::start).expect("redis");
    let seeds = cluster.url_list();
    assert_eq!(seeds.split(',').count(), 3, "{seeds}");

    // two planners, each connected with every seed; the first to come creates the stream R3
    let shutdown = Shutdown::new();
    let redis_url = redis.url();
    let planners = futures_util::future::join_all(
        (0..PLANNERS).map(|index| start_planner(index, &seeds, &redis_url, shutdown.clone())),
    )
    .await;
    let probes: Vec<SocketAddr> = planners
        .iter()
        .map(|planner| planner.probe_addr().expect("probe address"))
        .collect();
    let (_, placed) = eventually(
        "ROLLOUT_CMDS to have a leader and 2 current replicas",
        PATIENCE,
        || async { stream_leader(&cluster).filter(|(_, view)| view.settled()) },
    )
    .await;
    assert_eq!(placed.replicas, 3, "ROLLOUT_CMDS is R3: {placed:?}");
    assert_eq!(
        placed.followers.len(),
        2,
        "ROLLOUT_CMDS has a leader and 2 replicas: {placed:?}"
    );

    // the operator, connected with every seed too
    let mut operator_nats = rollout_sandbox::nats_settings(&seeds);
    operator_nats.name = Some("operator".to_owned());
    let client = connect_nats(&operator_nats, "operator")
        .await
        .expect("the operator connects");
    let commands = operator_commands(client.clone());
    let mut flags = Vec::new();
    for index in 0..FLAGS {
        let flag = format!("seeded-{index}");
        commands
            .create_flag(boolean_flag(&flag))
            .await
            .unwrap_or_else(|error| panic!("flag {flag}: {error}"));
        flags.push(flag);
    }
    // the worst case for the planners: the node to be killed leads both the stream and the
    // planners' consumer, and no planner is connected to it, so their connections survive
    // while the pulls they have waiting on the consumer's leader are lost with it (a
    // planner that reconnects pulls again anyway)
    eventually(
        "a node no planner is connected to to lead both the stream and its consumer",
        PATIENCE,
        || async {
            let (leader, view) = stream_leader(&cluster)?;
            let target = (0..cluster.size()).find(|&node| {
                !clients_on(&cluster, node)
                    .iter()
                    .any(|name| name.starts_with("planner"))
            })?;
            let target_name = cluster.node(target).server_name();
            let consumer = rollout_wire::subjects::COMMAND_CONSUMER;
            let moved = if leader != target {
                move_leader(&client, None, target_name).await
            } else if view.consumer_leader.as_deref() != Some(target_name) {
                move_leader(&client, Some(consumer), target_name).await
            } else if view.settled() {
                return Some(());
            } else {
                Ok(())
            };
            if let Err(error) = moved {
                eprintln!("moving leadership to {target_name}: {error}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            None
        },
    )
    .await;
    let outcomes = OutcomeLog::start(&client).await;
    let jetstream = async_nats::jetstream::new(client.clone());

    // the storm, then the stream's leader killed in the middle of it
    let storm_began = Instant::now();
    let storm = Storm::start(
        jetstream.clone(),
        flags.clone(),
        PUBLISHERS,
        PAUSE,
        ATTEMPT_TIMEOUT,
    );
    tokio::time::sleep(BEFORE_KILL).await;
    eventually("the storm to get going", PATIENCE, || async {
        (storm.acked() >= 100).then_some(())
    })
    .await;
    let (leader, before) = eventually("the stream's leader", PATIENCE, || async {
        stream_leader(&cluster)
    })
    .await;
    let leader_name = cluster.node(leader).server_name().to_owned();
    let consumer_leader = before.consumer_leader.clone().unwrap_or_default();
    let clients_on_leader = clients_on(&cluster, leader);
    let handled_before = handled_per_planner(&probes).await;
    tokio::task::block_in_place(|| cluster.node(leader).kill()).expect("the leader is killed");
    let killed_at = Instant::now();
    let killed_at_ms = wall_clock_ms();
    let acked_at_kill = storm.acked();
    let (new_leader, _) = eventually("a surviving node to lead the stream", RECOVERY, || async {
        stream_leader(&cluster).filter(|(node, _)| *node != leader)
    })
    .await;
    let elected_after = killed_at.elapsed();
    eventually(
        &format!("{ACKED_AFTER_KILL} commands acknowledged after the kill"),
        RECOVERY,
        || async { (storm.acked() >= acked_at_kill + ACKED_AFTER_KILL).then_some(()) },
    )
    .await;
    tokio::time::sleep(AFTER_RECOVERY).await;
    let counters = std::sync::Arc::clone(&storm.counters);
    let acked = storm.stop().await;
    let storm_lasted = storm_began.elapsed();
    let retries = counters.retries.load(Ordering::Relaxed);
    let duplicates = counters.duplicates.load(Ordering::Relaxed);
    let failures = counters.failures.lock().expect("failures").clone();

    // every stored command is consumed and acknowledged by a planner
    eventually("the command stream to drain", RECOVERY, || async {
        let mut stream = jetstream.get_stream("ROLLOUT_CMDS").await.ok()?;
        let info = stream.info().await.ok()?;
        (info.state.messages == 0).then_some(())
    })
    .await;

    // outcome: every acknowledged command applied exactly once
    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for command in &acked {
        sent.entry(command.flag.clone())
            .or_default()
            .push(command.id.clone());
    }
    let store = connect_redis(&rollout_sandbox::redis_settings(&redis.url()))
        .await
        .expect("redis connects");
    let committed = CommittedReader::new(store, NS);
    for (flag, ids) in &sent {
        eventually(
            &format!("{flag} to apply its {} commands", ids.len()),
            PATIENCE,
            || async { (committed.flag_version(flag).await > ids.len() as u64).then_some(()) },
        )
        .await;
    }
    let mut report = Report::new("nats node lost mid command storm");
    check_commands(&committed, &sent, &mut report).await;
    // when the planners committed the storm's commands (Redis time, the audit's)
    let mut commits: Vec<i64> = Vec::new();
    for flag in sent.keys() {
        commits.extend(
            committed
                .flag_audit(flag)
                .await
                .iter()
                .filter(|entry| {
                    entry.details["command_id"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("storm-"))
                })
                .map(|entry| entry.time.as_millis()),
        );
    }
    commits.sort_unstable();
    // the longest pause in commits that ended after the kill
    let stall = commits
        .windows(2)
        .filter(|pair| pair[1] > killed_at_ms)
        .max_by_key(|pair| pair[1] - pair[0])
        .map(|pair| (pair[0] - killed_at_ms, pair[1] - killed_at_ms))
        .unwrap_or_default();
    let mut versions = Vec::new();
    for (flag, ids) in &sent {
        let version = committed.flag_version(flag).await;
        versions.push((flag.clone(), version, 1 + ids.len() as u64));
    }
    let outcomes = outcomes.snapshot();

    // the killed node, restarted, catches up with the others
    let restarting = Instant::now();
    tokio::task::block_in_place(|| cluster.restart_node(leader)).expect("the node restarts");
    let rejoined_after = restarting.elapsed();
    let seen = std::sync::Mutex::new(Vec::new());
    let views: Vec<StreamView> = eventually(
        "the restarted node to hold the stream up to the others' last sequence",
        PATIENCE,
        || async {
            let views: Vec<Option<StreamView>> = (0..cluster.size())
                .map(|node| stream_view(&cluster, node))
                .collect();
            let mut seen = seen.lock().expect("seen");
            if *seen != views {
                // shown when the wait fails
                eprintln!("the stream on each node after the restart: {views:?}");
                seen.clone_from(&views);
            }
            in_step(&cluster, &views).filter(|views| views[0].messages == 0)
        },
    )
    .await;
    let caught_up_after = restarting.elapsed();
    let handled_after = handled_per_planner(&probes).await;

    // the report
    let after_kill: Vec<_> = acked
        .iter()
        .filter(|command| command.at > killed_at)
        .collect();
    let first_ack_after_kill = after_kill.first().map(|command| command.at - killed_at);
    let longest_gap = acked
        .windows(2)
        .map(|pair| pair[1].at - pair[0].at)
        .max()
        .unwrap_or_default();
    // the first command the stream took after the kill that a planner then applied
    let first_outcome_after_kill = after_kill
        .iter()
        .filter_map(|command| outcomes.get(&command.id)?.first())
        .map(|outcome| outcome.at - killed_at)
        .min();

    let failed_outcomes: Vec<String> = outcomes
        .iter()
        .flat_map(|(id, list)| {
            list.iter()
                .filter_map(move |outcome| Some(format!("{id}: {}", outcome.error.as_ref()?)))
        })
        .collect();
    let answered_twice = outcomes.values().filter(|list| list.len() > 1).count();
    let retried_commands = acked.iter().filter(|command| command.attempts > 1).count();
    let _ = writeln!(text, "=== nats node lost mid command storm ===");
    let _ = writeln!(
        text,
        "cluster:             3 nodes, ROLLOUT_CMDS R3 led by {} (consumer led by {consumer_leader}); killed {leader_name} (node {leader}), which held the clients {clients_on_leader:?}",
        before.leader
    );
    let _ = writeln!(
        text,
        "storm:               {} publishers, {:.1} s, {} commands acknowledged ({} before the kill, {} after)",
        PUBLISHERS,
        storm_lasted.as_secs_f64(),
        acked.len(),
        acked.len() - after_kill.len(),
        after_kill.len()
    );
    let _ = writeln!(
        text,
        "retries:             {retries} publish attempts retried over {retried_commands} commands, {duplicates} acknowledged as duplicates (stored by an earlier attempt); failures {failures:?}"
    );
    let _ = writeln!(
        text,
        "recovery:            new stream leader {} seen {} ms after the kill; publishes acknowledged again {} ms after it (longest gap between acknowledgements {} ms); commits paused from {} ms to {} ms after it ({} ms without a commit); the first command published after it answered at {} ms",
        cluster.node(new_leader).server_name(),
        millis(elected_after),
        first_ack_after_kill.map_or("-".to_owned(), |gap| millis(gap).to_string()),
        millis(longest_gap),
        stall.0,
        stall.1,
        stall.1 - stall.0,
        first_outcome_after_kill.map_or("-".to_owned(), |gap| millis(gap).to_string()),
    );
    let _ = writeln!(
        text,
        "planners:            queued commands handled {handled_before:?} before the kill, {:?} after",
        handled_after
            .iter()
            .zip(&handled_before)
            .map(|(after, before)| after - before)
            .collect::<Vec<_>>()
    );
    let _ = writeln!(
        text,
        "outcomes seen:       {} commands answered, {answered_twice} answered more than once, {} errors",
        outcomes.len(),
        failed_outcomes.len()
    );
    let _ = writeln!(
        text,
        "commands checked:    {} (lost {}, applied twice {})",
        report.commands_checked, report.lost_commands, report.twice_applied
    );
    let _ = writeln!(
        text,
        "restarted node:      rejoined in {} ms, caught up to sequence {} in {} ms",
        millis(rejoined_after),
        views[0].last_seq,
        millis(caught_up_after)
    );
    let _ = writeln!(
        text,
        "test time:           {:.1} s",
        began.elapsed().as_secs_f64()
    );
    for note in &report.notes {
        let _ = writeln!(text, "note: {note}");
    }
    println!("{text}");

    // the assertions: what a user observes
    assert!(
        after_kill.len() as u64 >= ACKED_AFTER_KILL,
        "the storm spanned the kill: {} commands acknowledged after it",
        after_kill.len()
    );
    assert_eq!(
        report.lost_commands, 0,
        "acknowledged commands lost\n{text}"
    );
    assert_eq!(report.twice_applied, 0, "commands applied twice\n{text}");
    for (flag, version, expected) in &versions {
        assert_eq!(
            version, expected,
            "{flag}: every acknowledged update applied once, nothing else\n{text}"
        );
    }
    assert!(
        failed_outcomes.is_empty(),
        "the planners refused commands: {failed_outcomes:?}"
    );
    assert!(
        first_outcome_after_kill.is_some(),
        "the planners applied commands published after the kill\n{text}"
    );
    for (index, (before, after)) in handled_before.iter().zip(&handled_after).enumerate() {
        assert!(
            *before > 0 && after > before,
            "planner-{index} took commands from the stream before and after the kill\n{text}"
        );
    }
    assert_eq!(
        views[0].last_seq,
        acked.len() as u64,
        "the stream stored each acknowledged command once\n{text}"
    );

    shutdown.trigger();
    for planner in planners {
        planner.wait().await;
    }
}
