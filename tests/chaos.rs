//! Chaos with real processes (SPEC §11): the faults that must lose nothing, each run as its
//! own test (so nextest runs them side by side) against a whole system on private servers.
//!
//! How the processes are found: the tickers (and, where a process must die, planners and
//! evaluators) are the services' own `main.rs` compiled as this package's binaries
//! `sut-ticker`, `sut-planner`, `sut-evaluator` (see `tests/Cargo.toml`), so cargo builds
//! them fresh before these tests and `env!("CARGO_BIN_EXE_…")` names them. Planners and
//! evaluators run in process wherever no process has to die.
//!
//! Every run prints a report — faults injected, leader changes, fence rejections, steps
//! entered and catch-up skips, commands checked, served-version samples, served answers
//! compared with the committed state — and asserts 0 double advances, 0 skipped steps (a
//! step passed over by catch-up counts only when the transition's audit entry and event
//! list it), 0 steps entered before their planned time, every transition due after the
//! faults made within lease + 1 s (probe rollouts are started then, as in the simulation),
//! 0 lost or twice-applied commands, 0 served-version regressions and 0 served
//! answers that disagreed with the committed state for more than 2 s (the served-content
//! oracle runs in the background of every scenario, see `support::oracle`). The workload is a few hundred phased rollouts whose 1 s
//! steps all fall due at the same instants, so every step boundary is a burst of
//! transitions a fault can interrupt. A SIGSTOP or Redis-blackhole run whose stale leader
//! never had a write refused by the fence is inconclusive and fails.
//!
//! Seeds: each run prints the seed of its random fault points; `CHAOS_SEED=<n>` replays one.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rollout_core::Timestamp;
use rollout_sdk::{EvalClient, Namespace};
use support::checks::{check_commands, check_rollouts, Replica, Report, VersionMonitor};
use support::cluster::{
    boolean_flag, flag_update_storm, publish_until_acked, storm_update, Cluster, ClusterOptions,
    EvaluatorProcess, Workload,
};
use support::oracle::{Oracle, OracleMonitor};
use support::procs::Service;
use support::proxy::Link;
use support::simulation::invariants::{check_liveness, count_liveness, Findings, LIVENESS};
use support::{eventually, NS, PATIENCE};

/// How many times the leader is killed, and frozen.
const ROUNDS: usize = 20;

fn rng(scenario: &str) -> StdRng {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("{scenario}: seed {seed} (CHAOS_SEED={seed} replays the fault points)");
    StdRng::seed_from_u64(seed)
}

async fn sleep_ms(millis: u64) {
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

/// A cluster with tickers as processes, a phased workload, a served-version monitor and the
/// served-content oracle.
struct PhasedRun {
    cluster: Cluster,
    workload: Workload,
    monitor: VersionMonitor,
    oracle: OracleMonitor,
    report: Report,
}

impl PhasedRun {
    async fn start(
        scenario: &str,
        options: ClusterOptions,
        proxy_redis: bool,
        proxy_nats: bool,
        rollouts: usize,
        phases: usize,
    ) -> PhasedRun {
        let mut cluster = Cluster::start(options).await;
        cluster.add_tickers(3, proxy_redis, proxy_nats).await;
        cluster.wait_for_leader(None).await;
        let workload = cluster
            .phased_workload(
                "chaos",
                rollouts,
                phases,
                Duration::from_secs(1),
                // room to create up to 300 flags and rollouts on a loaded 2-core machine
                Duration::from_secs(6),
            )
            .await;
        let monitor = VersionMonitor::start(cluster.replicas(), workload.flags.clone());
        let oracle = OracleMonitor::start(Oracle::of_sandbox(&cluster).await);
        let run = PhasedRun {
            cluster,
            workload,
            monitor,
            oracle,
            report: Report::new(scenario),
        };
        run.wait_until(run.workload.start).await;
        run
    }

    /// Sleeps until Redis time `at`.
    async fn wait_until(&self, at: Timestamp) {
        let now = self.cluster.now().await;
        let wait = at.millis_since(now);
        if wait > 0 {
            sleep_ms(u64::try_from(wait).unwrap_or(0)).await;
        }
    }

    /// Waits for the next step boundary and then until its burst of transitions is under
    /// way (some rollouts advanced, not all); returns the boundary and the replica leading
    /// then, or `None` if the burst was over before it was seen.
    async fn catch_burst(&self) -> Option<(Timestamp, String)> {
        let now = self.cluster.now().await;
        let (_, boundary) = self
            .workload
            .next_boundary(Timestamp::from_millis(now.as_millis() + 50))
            .expect("the plan is long enough for every round");
        self.wait_until(Timestamp::from_millis(boundary.as_millis() - 20))
            .await;
        let total = self.workload.rollouts.len();
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < until {
            let advanced = self.cluster.advanced_past(boundary).await;
            if advanced >= total {
                return None;
            }
            if advanced > 0 {
                let (leader, _) = self.cluster.leader().await?;
                return Some((boundary, leader));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        None
    }

    /// Stops the workload, lets everything settle, checks every invariant and asserts the
    /// report clean.
    async fn finish(mut self) -> Report {
        let cluster = &self.cluster;
        // the faults are over: every due transition is made within lease + 1 s
        let mut findings = Findings::default();
        check_liveness(cluster, cluster.options.lease, &mut findings).await;
        count_liveness(&findings, &mut self.report);
        assert!(
            self.report.liveness_checked > 0,
            "{}: the liveness check watched no due transition",
            self.report.scenario
        );
        self.report
            .notes
            .extend(findings.examples.remove(LIVENESS).unwrap_or_default());
        cluster.stop_all(&self.workload).await;
        cluster.wait_converged(&self.workload.flags).await;
        // late events (sweeps of crashed committers) have arrived once the outbox is empty
        sleep_ms(300).await;
        let events = cluster.events.events();
        check_rollouts(
            &cluster.committed(),
            &self.workload.rollouts,
            Some(&events),
            &mut self.report,
        )
        .await;
        self.report.leader_changes = cluster.takeovers();
        self.report.fence_rejections = cluster.fence_rejections() as u64;
        self.monitor.finish(&mut self.report);
        self.report.add_oracle(self.oracle.finish());
        self.report.assert_clean();
        // a run that injected no fault, or in which no step was entered, proved nothing
        assert!(
            self.report.faults_total() > 0,
            "{}: injected no fault",
            self.report.scenario
        );
        assert!(
            self.report.steps_entered > 0,
            "{}: saw no step entered",
            self.report.scenario
        );
        self.cluster.shutdown().await;
        self.report
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_9_at_random_points() {
    let mut rng = rng("leader kill -9");
    let mut run = PhasedRun::start(
        "leader kill -9 at random points",
        ClusterOptions::default(),
        false,
        false,
        200,
        45,
    )
    .await;
    let mut takeover_ms = Vec::new();
    for _ in 0..ROUNDS {
        sleep_ms(rng.random_range(50..1_100)).await;
        let (leader, epoch) = run.cluster.wait_for_leader(None).await;
        run.cluster.ticker(&leader).process.kill();
        let killed = tokio::time::Instant::now();
        run.report.fault("leader kill -9");
        let (_, next_epoch) = run.cluster.wait_for_leader(Some(&leader)).await;
        takeover_ms.push(killed.elapsed().as_millis());
        assert!(next_epoch > epoch, "a new term has a higher epoch");
        // keep three replicas
        run.cluster.add_ticker(false, false).await;
    }
    takeover_ms.sort_unstable();
    run.report.note(format!(
        "lease 500 ms; takeover after a kill: median {} ms, max {} ms",
        takeover_ms[takeover_ms.len() / 2],
        takeover_ms.last().copied().unwrap_or(0)
    ));
    let report = run.finish().await;
    assert!(report.leader_changes >= ROUNDS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_frozen_past_its_lease_is_fenced_when_it_thaws() {
    let mut rng = rng("leader SIGSTOP");
    let lease = Duration::from_millis(500);
    let mut run = PhasedRun::start(
        "leader SIGSTOP for 1.5-5x its lease",
        ClusterOptions {
            lease,
            ..ClusterOptions::default()
        },
        false,
        false,
        200,
        80,
    )
    .await;
    let mut frozen = 0;
    let mut refused_rounds = 0;
    let mut missed = 0;
    while frozen < ROUNDS {
        let Some((boundary, leader)) = run.catch_burst().await else {
            missed += 1;
            assert!(missed < 20, "could not catch a burst in progress");
            continue;
        };
        let before = run
            .cluster
            .ticker(&leader)
            .process
            .count("refused by the fence");
        run.cluster.ticker(&leader).process.signal(Signal::SIGSTOP);
        let advanced = run.cluster.advanced_past(boundary).await;
        run.report.fault("leader SIGSTOP");
        frozen += 1;
        let hold = lease.mul_f64(rng.random_range(1.5..5.0));
        sleep_ms(u64::try_from(hold.as_millis()).unwrap_or(0)).await;
        // a follower took over within the lease and finished the burst
        run.cluster.wait_for_leader(Some(&leader)).await;
        run.cluster.ticker(&leader).process.signal(Signal::SIGCONT);
        // the thawed leader resumes holding the rollouts it had in flight: its writes come
        // back refused by the fence
        let refused = {
            let until = tokio::time::Instant::now() + Duration::from_millis(1_500);
            loop {
                let now = run
                    .cluster
                    .ticker(&leader)
                    .process
                    .count("refused by the fence");
                if now > before || tokio::time::Instant::now() >= until {
                    break now - before;
                }
                sleep_ms(20).await;
            }
        };
        if refused > 0 {
            refused_rounds += 1;
        }
        println!(
            "froze {leader} at {advanced}/{} of a burst for {} ms: {refused} stale writes refused on thawing",
            run.workload.rollouts.len(),
            hold.as_millis()
        );
    }
    run.report.note(format!(
        "{refused_rounds} of {frozen} thawed leaders had writes refused by the fence ({missed} bursts missed)"
    ));
    let report = run.finish().await;
    assert!(
        report.fence_rejections > 0,
        "INCONCLUSIVE: no stale write ever reached the fence"
    );
}

/// Cuts the leader's link to Redis (`redis`) or NATS, alternating blackhole and sever, at
/// a burst in progress, until another replica leads (Redis) or for a few step boundaries
/// (NATS), then heals it.
async fn cut_off_leader(redis: bool) -> Report {
    let server = if redis { "redis" } else { "nats" };
    let mut rng = rng(&format!("leader cut off from {server}"));
    let mut run = PhasedRun::start(
        &format!("leader cut off from {server}"),
        ClusterOptions::default(),
        redis,
        !redis,
        300,
        40,
    )
    .await;
    let mut stalled_rounds = 0;
    for round in 0..4 {
        let link = if round % 2 == 0 {
            Link::Blackhole
        } else {
            Link::Severed
        };
        let (boundary, leader) = match run.catch_burst().await {
            Some(caught) => caught,
            None => {
                let (leader, _) = run.cluster.wait_for_leader(None).await;
                (run.cluster.now().await, leader)
            }
        };
        let ticker = run.cluster.ticker(&leader);
        let proxy = if redis {
            ticker.redis_proxy.as_ref()
        } else {
            ticker.nats_proxy.as_ref()
        }
        .expect("tickers run behind proxies");
        proxy.set(link);
        run.report
            .fault(&format!("leader cut off from {server} ({link:?})"));
        if redis {
            // the lease runs out; another replica takes over and finishes the burst
            run.cluster.wait_for_leader(Some(&leader)).await;
            let total = run.workload.rollouts.len();
            eventually("the burst to finish", PATIENCE, || async {
                (run.cluster.advanced_past(boundary).await >= total).then_some(())
            })
            .await;
            sleep_ms(rng.random_range(200..800)).await;
        } else {
            // still leading (it has Redis): do transitions go on without NATS?
            let now = run.cluster.now().await;
            let (_, next) = run
                .workload
                .next_boundary(now)
                .expect("the plan is long enough");
            run.wait_until(Timestamp::from_millis(next.as_millis() + 700))
                .await;
            let advanced = run.cluster.advanced_past(next).await;
            if advanced < run.workload.rollouts.len() {
                stalled_rounds += 1;
            }
            println!(
                "{leader} cut off from nats ({link:?}): {advanced}/{} rollouts entered the step due 700 ms ago",
                run.workload.rollouts.len()
            );
            // the leader still has Redis: it must keep advancing without NATS, leaving
            // the events in the outbox for the sweep once NATS is back
            let total = run.workload.rollouts.len();
            eventually(
                "transitions to go on while the leader is cut off from nats",
                PATIENCE,
                || async { (run.cluster.advanced_past(next).await >= total).then_some(()) },
            )
            .await;
            sleep_ms(rng.random_range(500..1_500)).await;
        }
        let ticker = run.cluster.ticker(&leader);
        let proxy = if redis {
            ticker.redis_proxy.as_ref()
        } else {
            ticker.nats_proxy.as_ref()
        }
        .expect("proxy");
        proxy.set(Link::Open);
        sleep_ms(1_000).await;
    }
    if !redis {
        run.report.note(format!(
            "transitions lagged past 700 ms in {stalled_rounds} of 4 rounds while the leader was cut off from nats (all advanced)"
        ));
    }
    run.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_cut_off_from_redis() {
    let report = cut_off_leader(true).await;
    assert!(report.leader_changes >= 4, "every cut forces a new leader");
    assert!(
        report.fence_rejections > 0,
        "INCONCLUSIVE: no write held back by the partition reached the fence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_cut_off_from_nats() {
    cut_off_leader(false).await;
}

async fn create_flags(cluster: &Cluster, prefix: &str, count: usize) -> Vec<String> {
    let mut flags = Vec::new();
    for index in 0..count {
        let flag = format!("{prefix}-{index}");
        cluster
            .commands
            .create_flag(boolean_flag(&flag))
            .await
            .expect("flag created");
        flags.push(flag);
    }
    flags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_kill_9_and_restart_with_aof() {
    let mut rng = rng("redis kill -9");
    let mut run = PhasedRun::start(
        "redis kill -9 and restart (aof, appendfsync everysec as shipped)",
        ClusterOptions {
            appendonly: true,
            ..ClusterOptions::default()
        },
        false,
        false,
        200,
        30,
    )
    .await;
    let command_flags = create_flags(&run.cluster, "acked", 8).await;
    let stop = Arc::new(AtomicBool::new(false));
    let stream = flag_update_storm(
        run.cluster.commands.clone(),
        command_flags.clone(),
        "acked",
        Arc::clone(&stop),
    );
    for _ in 0..3 {
        sleep_ms(rng.random_range(500..2_000)).await;
        run.cluster.redis.kill().expect("redis killed");
        run.report.fault("redis kill -9");
        sleep_ms(rng.random_range(200..1_000)).await;
        let redis = &run.cluster.redis;
        tokio::task::block_in_place(|| redis.restart()).expect("redis restarts from its aof");
        run.cluster.wait_redis().await;
    }
    sleep_ms(1_000).await;
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, _) = stream.await.expect("command stream");
    check_commands(&run.cluster.committed(), &acknowledged, &mut run.report).await;
    for (flag, ids) in &acknowledged {
        let version = run.cluster.flag_version(flag).await;
        assert_eq!(
            version,
            1 + ids.len() as u64,
            "{flag}: every acknowledged update applied once, nothing else"
        );
    }
    run.cluster.wait_converged(&command_flags).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_restart_during_a_command_storm() {
    let mut run = PhasedRun::start(
        "nats restart during a command storm (durable stream)",
        ClusterOptions::default(),
        false,
        false,
        50,
        30,
    )
    .await;
    let flags = create_flags(&run.cluster, "storm", 20).await;
    let jetstream = async_nats::jetstream::new(run.cluster.client.clone());
    let total = 800_usize;
    let publishers = 4_usize;
    let retries = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for publisher in 0..publishers {
        let jetstream = jetstream.clone();
        let flags = flags.clone();
        let retries = Arc::clone(&retries);
        let published = Arc::clone(&published);
        tasks.push(tokio::spawn(async move {
            let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for index in (publisher..total).step_by(publishers) {
                let flag = &flags[index % flags.len()];
                let id = format!("storm-{index}");
                let body = storm_update(flag, &id, index);
                publish_until_acked(
                    &jetstream,
                    &format!("rollout.cmdq.{NS}.flag.update"),
                    &body,
                    &retries,
                )
                .await;
                sent.entry(flag.clone()).or_default().push(id);
                published.fetch_add(1, Ordering::Relaxed);
                sleep_ms(5).await;
            }
            sent
        }));
    }
    // restart NATS a quarter and two thirds of the way through the storm
    for mark in [total / 4, total * 2 / 3] {
        let mark = mark as u64;
        eventually("the storm to get going", PATIENCE, || async {
            (published.load(Ordering::Relaxed) >= mark).then_some(())
        })
        .await;
        let nats = &run.cluster.nats;
        tokio::task::block_in_place(|| nats.restart()).expect("nats restarts");
        run.report.fault("nats restart (storm in flight)");
    }
    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for task in tasks {
        for (flag, ids) in task.await.expect("publisher") {
            sent.entry(flag).or_default().extend(ids);
        }
    }
    // every stored command is consumed and acknowledged
    eventually(
        "the command stream to drain",
        Duration::from_secs(60),
        || async {
            let mut stream = jetstream.get_stream("ROLLOUT_CMDS").await.ok()?;
            let info = stream.info().await.ok()?;
            (info.state.messages == 0).then_some(())
        },
    )
    .await;
    for (flag, ids) in &sent {
        eventually(
            &format!("{flag} to apply every command"),
            PATIENCE,
            || async { (run.cluster.flag_version(flag).await > ids.len() as u64).then_some(()) },
        )
        .await;
    }
    check_commands(&run.cluster.committed(), &sent, &mut run.report).await;
    for (flag, ids) in &sent {
        assert_eq!(
            run.cluster.flag_version(flag).await,
            1 + ids.len() as u64,
            "{flag}"
        );
    }
    run.report.note(format!(
        "{total} commands through the durable stream, {} publishes retried",
        retries.load(Ordering::Relaxed)
    ));
    run.cluster.wait_converged(&flags).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planner_killed_mid_command() {
    let mut run = PhasedRun::start(
        "planner killed right after a commit (failpoint)",
        ClusterOptions::default(),
        false,
        false,
        50,
        30,
    )
    .await;
    let flags = create_flags(&run.cluster, "crash", 3).await;
    // from here on only planners that abort right after their next commit serve
    run.cluster.shutdown_planners().await;
    let env = std::collections::HashMap::from([
        ("ROLLOUT_NATS__URL".to_owned(), run.cluster.nats.url()),
        ("ROLLOUT_REDIS__URL".to_owned(), run.cluster.redis.url()),
        (
            "ROLLOUT_PLANNER__STREAM_ACK_WAIT".to_owned(),
            "2s".to_owned(),
        ),
        (
            "ROLLOUT_PLANNER__RELAY_GRACE".to_owned(),
            "500ms".to_owned(),
        ),
        (
            "ROLLOUT_FAILPOINTS".to_owned(),
            "write.after_commit".to_owned(),
        ),
        ("ROLLOUT_LOG__FORMAT".to_owned(), "json".to_owned()),
    ]);
    let jetstream = async_nats::jetstream::new(run.cluster.client.clone());
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut doomed = Service::Planner.spawn("doomed", run.cluster.dir.path(), &env);
    eventually(
        "the doomed planner to consume the stream",
        PATIENCE,
        || async { jetstream.get_stream("ROLLOUT_CMDS").await.ok().map(|_| ()) },
    )
    .await;
    let rounds = 6;
    for round in 0..rounds {
        let flag = flags[round % flags.len()].clone();
        let id = format!("crash-{round}");
        let mut definition = boolean_flag(&flag);
        definition.description = Some(format!("crash {round}"));
        let update = rollout_wire::FlagUpdate {
            command_id: Some(id.clone()),
            actor: None,
            flag: definition,
            expected_version: None,
        };
        let pending = if round % 2 == 0 {
            // request-reply: the planner dies before replying; the client's retry (same id)
            // reaches the next planner, which answers with the stored outcome
            let commands = run.cluster.commands.clone();
            let command = rollout_wire::Command::FlagUpdate(update);
            Some(tokio::spawn(async move { commands.send(command).await }))
        } else {
            // the durable stream: the message is redelivered to the next planner
            let body = rollout_wire::codec::encode(&update, rollout_wire::Encoding::MessagePack)
                .expect("encodes");
            jetstream
                .publish(format!("rollout.cmdq.{NS}.flag.update"), body.into())
                .await
                .expect("publish")
                .await
                .expect("stored");
            None
        };
        let status = tokio::task::block_in_place(|| doomed.wait_exit(PATIENCE))
            .expect("the failpoint aborts the planner after its commit");
        assert!(!status.success());
        run.report.fault("planner abort right after a commit");
        expected.entry(flag.clone()).or_default().push(id);
        // the next planner (doomed again, except after the last round)
        if round + 1 < rounds {
            doomed.respawn();
        } else {
            run.cluster.add_planner().await;
        }
        if let Some(pending) = pending {
            pending
                .await
                .expect("command task")
                .expect("the retried command is answered from its stored outcome");
        }
    }
    for (flag, ids) in &expected {
        eventually(
            &format!("{flag} at its final version"),
            PATIENCE,
            || async { (run.cluster.flag_version(flag).await > ids.len() as u64).then_some(()) },
        )
        .await;
        assert_eq!(run.cluster.flag_version(flag).await, 1 + ids.len() as u64);
    }
    check_commands(&run.cluster.committed(), &expected, &mut run.report).await;
    run.cluster.wait_converged(&flags).await;
    drop(doomed);
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evaluator_killed_and_restarted() {
    let mut rng = rng("evaluator kill -9");
    let mut cluster = Cluster::start(ClusterOptions {
        evaluators: 0,
        ..ClusterOptions::default()
    })
    .await;
    cluster.add_tickers(3, false, false).await;
    cluster.wait_for_leader(None).await;
    let mut evaluators: Vec<EvaluatorProcess> = (0..2)
        .map(|index| cluster.spawn_evaluator_process(&format!("evaluator-{index}")))
        .collect();
    for evaluator in &evaluators {
        evaluator.wait_ready().await;
    }
    let workload = cluster
        .phased_workload(
            "chaos",
            100,
            30,
            Duration::from_secs(1),
            Duration::from_secs(3),
        )
        .await;
    let mut report = Report::new("evaluator kill -9 and restart");
    let replicas: Vec<Replica> = evaluators.iter().map(EvaluatorProcess::watched).collect();
    let monitor = VersionMonitor::start(replicas.clone(), workload.flags.clone());
    let oracle = OracleMonitor::start(Oracle::new(
        cluster.redis_conn.clone(),
        cluster.client.clone(),
        NS,
        replicas,
    ));
    // an application evaluating through the queue group all along
    let failures = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicU64::new(0));
    let eval_client = EvalClient::builder(cluster.client.clone(), Namespace::new(NS).expect("ns"))
        .timeout(Duration::from_millis(1_000))
        .retries(3)
        .cache_capacity(0)
        .connect()
        .await
        .expect("eval client");
    let application = {
        let (failures, answered, stop) = (
            Arc::clone(&failures),
            Arc::clone(&answered),
            Arc::clone(&stop),
        );
        let flags = workload.flags.clone();
        tokio::spawn(async move {
            let mut index = 0;
            while stop.load(Ordering::Relaxed) == 0 {
                let entity = rollout_sdk::Entity::with_id(format!("user-{index}"));
                match eval_client
                    .evaluate(&flags[index % flags.len()], &entity)
                    .await
                {
                    Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        println!("evaluation failed: {error}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
                index += 1;
                sleep_ms(5).await;
            }
        })
    };
    for round in 0..6 {
        sleep_ms(rng.random_range(300..1_200)).await;
        let victim = &mut evaluators[round % 2];
        victim.kill();
        report.fault("evaluator kill -9");
        sleep_ms(rng.random_range(200..800)).await;
        victim.restart().await;
    }
    stop.store(1, Ordering::Relaxed);
    application.await.expect("application");
    cluster.stop_all(&workload).await;
    // both replicas converge on what Redis holds
    for evaluator in &evaluators {
        cluster
            .wait_served_over_http(evaluator.addr, &workload.flags)
            .await;
    }
    let events = cluster.events.events();
    check_rollouts(
        &cluster.committed(),
        &workload.rollouts,
        Some(&events),
        &mut report,
    )
    .await;
    monitor.finish(&mut report);
    report.add_oracle(oracle.finish());
    report.leader_changes = cluster.takeovers();
    report.fence_rejections = cluster.fence_rejections() as u64;
    report.note(format!(
        "application evaluations through the queue group: {} answered, {} failed",
        answered.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    ));
    report.assert_clean();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "evaluations failed while an evaluator restarted"
    );
    cluster.shutdown().await;
}
