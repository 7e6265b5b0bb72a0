//! A seeded simulation of the whole system under faults, in the spirit of Jepsen and
//! FoundationDB's simulator: one `u64` seed draws a whole [`schedule::Schedule`] of operator
//! commands (every verb, retries of a command id over request-reply and the durable stream,
//! stream bursts), fleet agents (register, heartbeat, applied/failed reports, going silent),
//! outcome reports and faults (ticker kill -9 and SIGSTOP, cut links, Redis restarts keeping
//! or losing data, NATS restarts, evaluators replaced, a rogue subscriber); a run performs it
//! against real processes on private servers while the served-content oracle, the
//! served-version monitor and an outbox monitor watch; at the end it checks the counted
//! outcomes of SPEC §11 and the invariants of [`invariants`], and reports operations,
//! faults and violations ([`report::SimReport`]).
//!
//! Replays: the schedule is a pure function of the seed and the duration, so a replay
//! performs the same operations at the same offsets; the servers' timing is real, so how
//! the operations interleave with each other and with the system's own transitions — and so
//! what the system answers — can differ. A replay reproduces a failure often, not always.
//!
//! Generators that expose a defect still open elsewhere are switched off by
//! [`OPEN_DEFECTS`] (their operations stay in the schedule and are counted as not
//! performed, so the seed's schedule is the same with them on or off);
//! `ROLLOUT_SIM_ENABLE=all` (or a comma-separated list of generator names) switches them
//! on, `ROLLOUT_SIM_DISABLE=<names>` switches others off.

pub mod clients;
pub mod faults;
pub mod invariants;
pub mod ledger;
pub mod report;
pub mod schedule;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollout_core::DurationMs;
use tokio::time::Instant;

use self::clients::World;
use self::faults::{FaultLane, OutageClock};
use self::invariants::{
    check_expected_steps, check_liveness, check_replies, check_served_flags, count_liveness,
    liveness_probe_flag, nats_restarted, AuditCheck, OutboxMonitor, LIVENESS_PROBES,
    STREAM_DRAINED,
};
use self::ledger::{DataEpoch, Ledger, RolloutBirth, SharedLedger};
use self::report::SimReport;
use self::schedule::{flag_key, Generator, Schedule, FLAG_SLOTS};
use crate::support::checks::{Replica, Report, VersionMonitor};
use crate::support::cluster::{Cluster, ClusterOptions, EvaluatorProcess};
use crate::support::oracle::{Oracle, OracleMonitor, SilentAgents};
use crate::support::{eventually, NS, PATIENCE};

/// The tickers' lease.
pub const LEASE: Duration = Duration::from_millis(500);
/// When a silent agent counts as stale, for every service.
pub const STALE_AGENT_AFTER: Duration = Duration::from_secs(2);
/// The chaos phase of the CI run (`ROLLOUT_SIM_DURATION` overrides it).
pub const CI_CHAOS: Duration = Duration::from_secs(75);
/// Evaluator processes.
const EVALUATORS: usize = 2;
/// Ticker processes, each behind its own proxies to Redis and NATS.
const TICKERS: usize = 3;

/// A generator switched off because it exposes a defect that is still open.
#[derive(Clone, Copy, Debug)]
pub struct OpenDefect {
    pub generator: Generator,
    pub defect: &'static str,
}

/// Generators switched off until their defect is fixed; each entry names the defect. None
/// is open: the last one (a state-dependent `invalid_argument` refusal not remembered under
/// its command id, so that a retry could apply after the flag changed) is fixed.
pub const OPEN_DEFECTS: &[OpenDefect] = &[];

/// The command that replays `seed`.
pub fn replay_command(seed: u64) -> String {
    format!("ROLLOUT_SIM_SEED={seed} cargo nextest run -p system-tests --test simulation")
}

/// Which generators run.
#[derive(Clone, Debug, Default)]
pub struct Enabled {
    switched_off: BTreeMap<Generator, String>,
}

impl Enabled {
    /// [`OPEN_DEFECTS`] off, unless `ROLLOUT_SIM_ENABLE` names them (or says `all`); and
    /// whatever `ROLLOUT_SIM_DISABLE` names off too.
    pub fn from_env() -> Enabled {
        let listed = |variable: &str| -> Vec<String> {
            std::env::var(variable)
                .unwrap_or_default()
                .split(',')
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
                .collect()
        };
        let enable = listed("ROLLOUT_SIM_ENABLE");
        let disable = listed("ROLLOUT_SIM_DISABLE");
        let known = |name: &String| {
            Generator::ALL
                .iter()
                .any(|generator| generator.name() == name)
                || name == "all"
        };
        for name in enable.iter().chain(&disable) {
            assert!(
                known(name),
                "unknown generator {name:?}; known: {:?}",
                Generator::ALL.map(Generator::name)
            );
        }
        let mut switched_off = BTreeMap::new();
        for open in OPEN_DEFECTS {
            let enabled = enable
                .iter()
                .any(|name| name == "all" || name == open.generator.name());
            if !enabled {
                switched_off.insert(open.generator, format!("open defect: {}", open.defect));
            }
        }
        for generator in Generator::ALL {
            if disable.iter().any(|name| name == generator.name()) {
                switched_off.insert(generator, "named in ROLLOUT_SIM_DISABLE".to_owned());
            }
        }
        Enabled { switched_off }
    }

    pub fn allows(&self, generator: Generator) -> bool {
        !self.switched_off.contains_key(&generator)
    }

    /// Generators switched off, with why.
    pub fn switched_off(&self) -> Vec<(String, String)> {
        self.switched_off
            .iter()
            .map(|(generator, why)| (generator.name().to_owned(), why.clone()))
            .collect()
    }
}

/// Waits until `planned` is due (its offset after `start`); `false` when its generator is
/// switched off, which is recorded in `ledger` as an operation not performed.
pub async fn wait_for_turn(
    planned: &schedule::Planned,
    start: Instant,
    enabled: &Enabled,
    ledger: &SharedLedger,
) -> bool {
    tokio::time::sleep_until(start + planned.at).await;
    let generator = planned.op.generator();
    if enabled.allows(generator) {
        return true;
    }
    ledger.lock().expect("ledger").skip(
        &planned.op.kind(),
        &format!("generator {} switched off", generator.name()),
    );
    false
}

/// One run's seed, length and generators.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// How long operations and faults go on.
    pub chaos: Duration,
    pub enabled: Enabled,
}

impl SimConfig {
    /// `ROLLOUT_SIM_SEED` (else a fresh seed), `ROLLOUT_SIM_DURATION` (else [`CI_CHAOS`]),
    /// and the generators of [`Enabled::from_env`].
    pub fn from_env() -> SimConfig {
        let seed = std::env::var("ROLLOUT_SIM_SEED")
            .ok()
            .map(|text| {
                text.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("ROLLOUT_SIM_SEED={text:?} is not a u64"))
            })
            .unwrap_or_else(rand::random::<u64>);
        let chaos = std::env::var("ROLLOUT_SIM_DURATION")
            .ok()
            .map(|text| {
                let parsed = DurationMs::parse(text.trim())
                    .unwrap_or_else(|error| panic!("ROLLOUT_SIM_DURATION: {error}"));
                let chaos = Duration::from_millis(u64::try_from(parsed.as_millis()).unwrap_or(0));
                assert!(
                    chaos >= Duration::from_secs(10),
                    "ROLLOUT_SIM_DURATION must be at least 10s"
                );
                chaos
            })
            .unwrap_or(CI_CHAOS);
        SimConfig {
            seed,
            chaos,
            enabled: Enabled::from_env(),
        }
    }

    /// Prints the seed and how to replay it, and makes every panic (in any task) repeat
    /// them.
    pub fn announce(&self) {
        let seed = self.seed;
        println!(
            "simulation seed={seed}, chaos phase {} s; replay: {}",
            self.chaos.as_secs(),
            replay_command(seed)
        );
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            eprintln!("simulation seed={seed}; replay: {}", replay_command(seed));
        }));
    }
}

/// Runs one simulation: starts the system, performs the schedule of `config.seed` with the
/// monitors watching, waits for liveness after the faults, lets everything settle and runs
/// every check. Returns the report (not yet asserted).
pub async fn run(config: SimConfig) -> SimReport {
    let began = Instant::now();
    let schedule = Schedule::generate(config.seed, config.chaos);
    let mut report = SimReport {
        seed: config.seed,
        schedule_digest: schedule.digest(),
        counted: Report::new(&format!("simulation seed={}", config.seed)),
        ..SimReport::default()
    };
    println!(
        "schedule: {} operations, digest {:016x}",
        schedule.ops.len(),
        report.schedule_digest
    );
    for (kind, count) in schedule.census() {
        println!("  scheduled {kind}: {count}");
    }

    let mut cluster = Cluster::start(ClusterOptions {
        appendonly: true,
        planners: 1,
        evaluators: 0,
        lease: LEASE,
        stale_agent_after: STALE_AGENT_AFTER,
        ..ClusterOptions::default()
    })
    .await;
    cluster.add_tickers(TICKERS, true, true).await;
    let first_epoch = cluster.epoch_counter().await;
    let mut evaluators: Vec<EvaluatorProcess> = (0..EVALUATORS)
        .map(|index| cluster.spawn_evaluator_process(&format!("evaluator-{index}")))
        .collect();
    for evaluator in &evaluators {
        evaluator.wait_ready().await;
    }
    let replicas: Vec<Replica> = evaluators.iter().map(EvaluatorProcess::watched).collect();
    let silent = SilentAgents::default();
    let oracle = Oracle::new(
        cluster.redis_conn.clone(),
        cluster.client.clone(),
        NS,
        replicas.clone(),
    )
    .with_silent_agents(Arc::clone(&silent));
    let oracle_monitor = OracleMonitor::start(oracle.clone());
    let watched_flags: Vec<String> = (0..FLAG_SLOTS)
        .map(flag_key)
        .chain((0..LIVENESS_PROBES).map(liveness_probe_flag))
        .collect();
    let versions = VersionMonitor::start(replicas, watched_flags);
    let outages = OutageClock::default();
    let outbox = OutboxMonitor::start(cluster.redis_conn.clone(), cluster.keys(), outages.clone());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let epoch = DataEpoch::default();
    let enabled = Arc::new(config.enabled);
    let world = World::new(
        &cluster,
        &schedule.agents,
        Arc::clone(&ledger),
        epoch.clone(),
        Arc::clone(&silent),
        Arc::clone(&enabled),
    );
    let outcome_listener = world.listen_for_outcomes().await;
    println!(
        "system up after {} ms; chaos begins",
        began.elapsed().as_millis()
    );

    // the chaos phase: the client lane in its own task, the fault lane here
    let (client_ops, fault_ops) = schedule.lanes();
    let start = Instant::now();
    let client_lane = tokio::spawn(world.run_lane(client_ops, start));
    let mut lane = FaultLane {
        cluster: &mut cluster,
        evaluators: &mut evaluators,
        agents: &schedule.agents,
        epoch: epoch.clone(),
        ledger: Arc::clone(&ledger),
        versions: &versions,
        outages,
        enabled: &enabled,
    }
    .run(fault_ops, start, &mut report)
    .await;
    client_lane.await.expect("the client lane");
    report.chaos = start.elapsed();
    println!(
        "chaos over after {} s; checking liveness",
        report.chaos.as_secs()
    );

    // after the faults: liveness, then a fixed state for the checks
    let probes = check_liveness(&cluster, LEASE, &mut report.findings).await;
    count_liveness(&report.findings, &mut report.counted);
    let rollouts: Vec<String> = {
        let mut ledger = ledger.lock().expect("ledger");
        ledger
            .rollouts
            .extend(
                probes
                    .into_iter()
                    .enumerate()
                    .map(|(index, rollout_id)| RolloutBirth {
                        rollout_id,
                        flag: liveness_probe_flag(index),
                    }),
            );
        ledger
            .rollouts
            .iter()
            .map(|birth| birth.rollout_id.clone())
            .collect()
    };
    cluster.stop_rollouts(&rollouts).await;
    eventually("the outbox to drain", PATIENCE, || async {
        (cluster.outbox_len().await == 0).then_some(())
    })
    .await;
    check_stream_drained(&cluster, &ledger, &mut report.findings).await;
    let existing_flags = oracle.flag_keys().await.expect("flag keys");
    for evaluator in &evaluators {
        cluster
            .wait_served_over_http(evaluator.addr, &existing_flags)
            .await;
        check_served_flags(
            &evaluator.process.name,
            evaluator.addr,
            &existing_flags,
            &mut report.findings,
        )
        .await;
    }
    oracle.assert_served_matches_committed().await;
    // events of the last commits (and sweeps) arrive
    tokio::time::sleep(Duration::from_millis(300)).await;
    outcome_listener.abort();

    // the checks; nothing records any more
    let ledger = std::mem::take(&mut *ledger.lock().expect("ledger"));
    AuditCheck {
        cluster: &cluster,
        ledger: &ledger,
        agents: &schedule.agents,
        finished_only: false,
        epoch: epoch.now(),
    }
    .run(&mut lane.audited, &mut report.counted, &mut report.findings)
    .await;
    report.counted.note(if nats_restarted(&report.counted) {
        "steps checked against the audit only: nats restarted, so the test's event subscriber may have missed events"
    } else {
        "steps checked against the audit and the events"
    });
    check_replies(&ledger, &enabled, &mut report.findings);
    check_expected_steps(&ledger, &mut report.findings);
    versions.finish(&mut report.counted);
    report.counted.add_oracle(oracle_monitor.finish());
    outbox.finish(&mut report.findings);
    report.counted.leader_changes =
        (lane.terms_lost + cluster.epoch_counter().await).saturating_sub(first_epoch);
    report.counted.fence_rejections = cluster.fence_rejections() as u64;

    report.operations = ledger.command_census();
    for (kind, outcomes) in &ledger.operations {
        report
            .operations
            .entry(kind.clone())
            .or_default()
            .extend(outcomes.iter().map(|(how, count)| (how.clone(), *count)));
    }
    report.skipped = ledger.skipped;
    report.switched_off = enabled.switched_off();
    cluster.shutdown().await;
    if !report.failures().is_empty() {
        keep_logs(&cluster, config.seed, &mut report);
    }
    report.wall = began.elapsed();
    report
}

/// Keeps the process logs (tickers, evaluators) of a failed run and every change event
/// the test received (`events.jsonl`: arrival time and event, one a line) in
/// `<target>/tmp/simulation-seed-<seed>/`, and notes where.
fn keep_logs(cluster: &Cluster, seed: u64, report: &mut SimReport) {
    let kept =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("simulation-seed-{seed}"));
    let copied = std::fs::create_dir_all(&kept).and_then(|()| {
        let events: String = cluster
            .events
            .arrivals()
            .iter()
            .map(|(event, arrived)| {
                format!(
                    "{}\n",
                    serde_json::json!({"arrived": arrived, "event": event})
                )
            })
            .collect();
        std::fs::write(kept.join("events.jsonl"), events)?;
        for entry in std::fs::read_dir(cluster.dir.path())? {
            let path = entry?.path();
            if path.extension().is_some_and(|extension| extension == "log") {
                if let Some(name) = path.file_name() {
                    std::fs::copy(&path, kept.join(name))?;
                }
            }
        }
        Ok(())
    });
    report.counted.note(match copied {
        Ok(()) => format!("process logs kept in {}", kept.display()),
        Err(error) => format!("process logs could not be kept: {error}"),
    });
}

/// Every command queued on the durable stream is consumed: the stream holds nothing once
/// the planners had time to apply (or refuse) each.
async fn check_stream_drained(
    cluster: &Cluster,
    ledger: &SharedLedger,
    findings: &mut invariants::Findings,
) {
    let jetstream = async_nats::jetstream::new(cluster.client.clone());
    let until = Instant::now() + Duration::from_secs(20);
    let mut left = u64::MAX;
    while Instant::now() < until {
        if let Ok(mut stream) = jetstream.get_stream("ROLLOUT_CMDS").await {
            if let Ok(info) = stream.info().await {
                left = info.state.messages;
                if left == 0 {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let queued: Vec<(String, bool)> = ledger
        .lock()
        .expect("ledger")
        .commands
        .iter()
        .filter(|(_, command)| !command.stream_sequences.is_empty())
        .map(|(id, command)| {
            let answered = command
                .replies
                .iter()
                .any(|reply| reply.transport == schedule::Transport::Stream);
            (id.clone(), answered)
        })
        .collect();
    if left == 0 {
        for _ in &queued {
            findings.checked(STREAM_DRAINED);
        }
        return;
    }
    let unanswered: Vec<&String> = queued
        .iter()
        .filter(|(_, answered)| !answered)
        .map(|(id, _)| id)
        .collect();
    findings.violated(
        STREAM_DRAINED,
        format!(
            "the command stream still holds {left} messages 20 s after the last command; never answered: {unanswered:?}"
        ),
    );
}
