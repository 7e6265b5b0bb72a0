//! `loadtest agents`: a simulated fleet for demos (no measurement, a live summary).
//!
//! `--count` agents, spread over label sets by weight (`--labels 'env=prod,region=eu:10'`,
//! repeatable; the default spread matches the local cluster demo's stages: canary, prod in
//! the EU, prod in the US, dev). Each agent registers on `rollout.fleet.<ns>.register`,
//! heartbeats every `--heartbeat`, asks `desired` for `--flag` every `--poll`, and when the
//! desired variation changes "applies" it after a random delay up to `--apply-delay`, then
//! reports `applied` — or `failed`, with probability `--error-rate`, and tries again after
//! its next poll — on
//! `rollout.fleet.<ns>.report` (only while a rollout decides: without one there is nothing
//! to report to). Each agent is the SDK's `FleetAgent`, so one the evaluators do not know
//! (`not_found` on `agent_id`) registers again by itself. The fleet runs until `--duration`
//! or SIGINT/SIGTERM.
//!
//! With private servers a planner, an evaluator and a ticker run in process, and the flag
//! (variations `v1`, `v2`) and a label-stage rollout over the label sets, each stage
//! released 5 s after the one before, are created so the fleet has something to follow.
//! With `--nats-url` nothing is created: the flag and its rollout are the operator's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rollout_core::Labels;
use rollout_runtime::shutdown::Shutdown;
use rollout_sdk::{CommandClient, FleetAgent, RequestOptions};
use rollout_wire::codec::Encoding;
use rollout_wire::envelope::ErrorCode;
use rollout_wire::fleet::Desired;
use rollout_wire::subjects::{Namespace, Subjects};
use serde_json::json;
use ticker::TickerSettings;
use tokio::task::JoinSet;

use crate::cli::AgentsArgs;
use crate::progress::phase;
use crate::report::{Recorder, Report, Row};
use crate::servers::{InProcess, Servers};

/// The default spread: the local cluster demo's stages, and some agents in none of them.
const DEFAULT_LABELS: [&str; 4] = [
    "ring=canary,env=staging:4",
    "env=prod,region=eu:10",
    "env=prod,region=us:10",
    "env=dev,region=eu:6",
];
/// How long one fleet request waits for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Agents share this many NATS connections at most.
const CONNECTIONS: usize = 8;

/// A label set and its weight.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelSet {
    pub labels: Labels,
    /// Its share of the fleet, relative to the other sets.
    pub weight: u32,
}

/// Parses `key=value,key=value:weight` (weight 1 when omitted).
pub fn parse_label_set(text: &str) -> anyhow::Result<LabelSet> {
    let (pairs, weight) = match text.rsplit_once(':') {
        Some((pairs, weight)) if !weight.contains('=') => (
            pairs,
            weight
                .trim()
                .parse::<u32>()
                .with_context(|| format!("--labels {text:?}: the weight must be a whole number"))?,
        ),
        _ => (text, 1),
    };
    let mut labels = Labels::new();
    for pair in pairs
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--labels {text:?}: {pair:?} is not key=value"))?;
        anyhow::ensure!(
            !key.trim().is_empty(),
            "--labels {text:?}: a label needs a key"
        );
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    anyhow::ensure!(weight > 0, "--labels {text:?}: the weight must be above 0");
    Ok(LabelSet { labels, weight })
}

/// The label set of agent `index` of `count`: sets get agents in proportion to their
/// weights, in order.
pub fn set_of(sets: &[LabelSet], index: usize, count: usize) -> usize {
    let total: u64 = sets.iter().map(|set| u64::from(set.weight)).sum();
    // the agent's position on the weight line, at the middle of its slot
    let point = (2 * index as u64 + 1) * total / (2 * count.max(1) as u64);
    let mut cumulative = 0;
    for (position, set) in sets.iter().enumerate() {
        cumulative += u64::from(set.weight);
        if point < cumulative {
            return position;
        }
    }
    sets.len().saturating_sub(1)
}

/// What the fleet did, shared by every agent.
#[derive(Debug, Default)]
struct Tally {
    registered: AtomicU64,
    registrations: AtomicU64,
    heartbeats: AtomicU64,
    polls: AtomicU64,
    changes_seen: AtomicU64,
    applied: AtomicU64,
    failed: AtomicU64,
    request_errors: AtomicU64,
    running: Mutex<BTreeMap<String, u64>>,
    last_error: Mutex<Option<String>>,
}

impl Tally {
    fn error(&self, error: &anyhow::Error) {
        self.request_errors.fetch_add(1, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(format!("{error:#}"));
    }

    fn switch(&self, from: Option<&str>, to: &str) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(from) = from {
            if let Some(count) = running.get_mut(from) {
                *count = count.saturating_sub(1);
            }
        }
        *running.entry(to.to_owned()).or_default() += 1;
    }

    fn line(&self, total: usize, elapsed: Duration) -> String {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let spread: Vec<String> = running
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(variation, count)| format!("{variation}:{count}"))
            .collect();
        format!(
            "{:>4.0}s  agents {}/{total} registered | running {} | applied {} failed {} | polls {} | errors {}",
            elapsed.as_secs_f64(),
            self.registered.load(Ordering::Relaxed),
            if spread.is_empty() { "-".to_owned() } else { spread.join(" ") },
            self.applied.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.polls.load(Ordering::Relaxed),
            self.request_errors.load(Ordering::Relaxed),
        )
    }
}

/// What every agent needs.
#[derive(Debug)]
struct Fleet {
    subjects: Subjects,
    namespace: Namespace,
    flag: String,
    poll: Duration,
    heartbeat: Duration,
    apply_delay: Duration,
    error_rate: f64,
    tally: Tally,
}

/// Runs the fleet.
pub async fn run(args: &AgentsArgs) -> anyhow::Result<Report> {
    if !(0.0..=1.0).contains(&args.error_rate) {
        return Err(crate::usage("--error-rate must be between 0 and 1"));
    }
    if args.poll.is_zero() || args.heartbeat.is_zero() {
        return Err(crate::usage("--poll and --heartbeat must be above 0"));
    }
    let texts: Vec<String> = if args.labels.is_empty() {
        DEFAULT_LABELS
            .iter()
            .map(|text| (*text).to_owned())
            .collect()
    } else {
        args.labels.clone()
    };
    let sets = texts
        .iter()
        .map(|text| parse_label_set(text))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(|error| crate::usage(format!("{error:#}")))?;
    let servers = Servers::from_common(&args.common).await?;
    let namespace = crate::namespace(&args.common, "demo")?;
    let subjects = Subjects::new(args.common.subject_prefix.as_str())
        .map_err(|error| crate::usage(format!("--subject-prefix: {error}")))?;
    let count = usize::try_from(args.count).unwrap_or(1);
    let mut recorder = Recorder::new(
        "agents",
        servers.mode(),
        json!({
            "count": count,
            "labels": texts,
            "flag": args.flag,
            "poll_ms": args.poll.as_secs_f64() * 1000.0,
            "heartbeat_ms": args.heartbeat.as_secs_f64() * 1000.0,
            "error_rate": args.error_rate,
            "duration_secs": args.duration.as_secs_f64(),
            "namespace": namespace.as_str(),
        }),
    );

    let mut services = None;
    if servers.is_private() {
        let mut started = InProcess::new(&servers)?;
        started.start_planner().await?;
        started.start_evaluator(&namespace).await?;
        let ticker = started
            .ticker(TickerSettings {
                replica_id: Some("loadtest".to_owned()),
                ..TickerSettings::default()
            })
            .await?;
        started.run_ticker(ticker);
        let commands =
            CommandClient::new(servers.nats().await?, namespace.clone()).with_actor("loadtest");
        let rollout = demo_rollout(&commands, &args.flag, &sets).await?;
        recorder.note(format!(
            "private servers: created flag {} and stage rollout {rollout}",
            args.flag
        ));
        services = Some(started);
    }

    let fleet = Arc::new(Fleet {
        subjects,
        namespace,
        flag: args.flag.clone(),
        poll: args.poll,
        heartbeat: args.heartbeat,
        apply_delay: args.apply_delay,
        error_rate: args.error_rate,
        tally: Tally::default(),
    });
    let mut connections = Vec::new();
    for _ in 0..count.min(CONNECTIONS) {
        connections.push(servers.nats().await?);
    }
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    phase(format!(
        "{count} agents for {:?} on flag {} in namespace {} (Ctrl-C stops)",
        args.duration, fleet.flag, fleet.namespace
    ));
    let mut agents = JoinSet::new();
    for index in 0..count {
        let labels = sets[set_of(&sets, index, count)].labels.clone();
        let client = FleetAgent::new(
            connections[index % connections.len()].clone(),
            fleet.namespace.clone(),
            format!("{}-{index}", args.id_prefix),
            labels,
        )
        .with_subjects(fleet.subjects.clone())
        .with_options(RequestOptions {
            encoding: Encoding::MessagePack,
            timeout: REQUEST_TIMEOUT,
            retries: 0,
            retry_delay: Duration::ZERO,
        });
        let agent = Agent {
            client,
            fleet: Arc::clone(&fleet),
            running: None,
        };
        agents.spawn(agent.run(shutdown.clone()));
    }

    let started = Instant::now();
    let end = started + args.duration;
    let live = ProgressBar::new_spinner();
    live.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let mut last_print = Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(end.into()) => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let line = fleet.tally.line(count, started.elapsed());
        if live.is_hidden() {
            if last_print.elapsed() >= Duration::from_secs(5) {
                println!("{line}");
                last_print = Instant::now();
            }
        } else {
            live.set_message(line);
            live.tick();
        }
    }
    shutdown.trigger();
    live.finish_and_clear();
    while let Some(joined) = agents.join_next().await {
        if let Err(error) = joined {
            tracing::warn!(%error, "an agent task failed");
        }
    }
    println!("{}", fleet.tally.line(count, started.elapsed()));
    drop(connections);
    if let Some(services) = services {
        services.stop().await;
    }

    let tally = &fleet.tally;
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    let polls = tally.polls.load(Ordering::Relaxed);
    recorder.row(Row::new(
        "agents registered",
        tally.registered.load(Ordering::Relaxed) as f64,
        "",
    ));
    recorder.row(Row::new("desired polls/s", polls as f64 / seconds, "req/s"));
    recorder.row(Row::new(
        "applied reports",
        tally.applied.load(Ordering::Relaxed) as f64,
        "",
    ));
    recorder.row(Row::new(
        "failed reports",
        tally.failed.load(Ordering::Relaxed) as f64,
        "",
    ));
    recorder.detail(
        "fleet",
        json!({
            "registered": tally.registered.load(Ordering::Relaxed),
            "registrations": tally.registrations.load(Ordering::Relaxed),
            "heartbeats": tally.heartbeats.load(Ordering::Relaxed),
            "polls": polls,
            "changes_seen": tally.changes_seen.load(Ordering::Relaxed),
            "applied": tally.applied.load(Ordering::Relaxed),
            "failed": tally.failed.load(Ordering::Relaxed),
            "request_errors": tally.request_errors.load(Ordering::Relaxed),
            "running": *tally.running.lock().unwrap_or_else(PoisonError::into_inner),
            "last_error": *tally.last_error.lock().unwrap_or_else(PoisonError::into_inner),
        }),
    );
    Ok(recorder.finish())
}

/// Creates the demo flag (if missing) and a stage rollout over the label sets; returns the
/// rollout id.
async fn demo_rollout(
    commands: &CommandClient,
    flag: &str,
    sets: &[LabelSet],
) -> anyhow::Result<String> {
    let definition = serde_json::from_value(json!({
        "key": flag,
        "description": "configuration version the simulated agents run",
        "variations": [{"id": "v1", "value": "config-v1"}, {"id": "v2", "value": "config-v2"}],
        "off_variation": "v1", "enabled": true, "default": {"variation": "v1"},
    }))?;
    if let Err(error) = commands.create_flag(definition).await {
        if error.code() != ErrorCode::Conflict {
            return Err(anyhow::Error::new(error).context("creating the demo flag"));
        }
    }
    let stages: Vec<serde_json::Value> = sets
        .iter()
        .enumerate()
        .map(|(index, set)| {
            let name: Vec<&str> = set.labels.values().map(String::as_str).collect();
            json!({
                "name": format!("{}-{index}", name.join("-")),
                "labels": set.labels,
                "gate": {"after": "5s"},
            })
        })
        .collect();
    let spec = serde_json::from_value(json!({
        "flag": flag, "baseline": "v1", "candidate": "v2", "stages": stages,
    }))?;
    let created = commands
        .create_rollout(spec)
        .await
        .context("creating the demo rollout")?;
    Ok(created.rollout_id)
}

/// One simulated agent: the SDK's [`FleetAgent`] (which registers again by itself when the
/// evaluators lost it) and the variation it runs.
struct Agent {
    client: FleetAgent,
    fleet: Arc<Fleet>,
    /// The variation it runs.
    running: Option<String>,
}

/// A desired variation waiting to be applied.
struct Pending {
    at: tokio::time::Instant,
    desired: Desired,
}

impl Agent {
    async fn register(&self) -> bool {
        let tally = &self.fleet.tally;
        tally.registrations.fetch_add(1, Ordering::Relaxed);
        match self.client.register().await {
            Ok(()) => true,
            Err(error) => {
                tally.error(&anyhow::Error::new(error).context("register"));
                false
            }
        }
    }

    async fn run(mut self, shutdown: Shutdown) {
        let fleet = Arc::clone(&self.fleet);
        let tally = &fleet.tally;
        // agents do not all start in the same millisecond
        let stagger = fleet.poll.mul_f64(rand::random::<f64>());
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(stagger) => {}
        }
        while !self.register().await {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(fleet.poll) => {}
            }
        }
        tally.registered.fetch_add(1, Ordering::Relaxed);
        let mut poll = tokio::time::interval(fleet.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + fleet.heartbeat,
            fleet.heartbeat,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen: Option<String> = None;
        let mut pending: Option<Pending> = None;
        loop {
            let apply_at = pending.as_ref().map(|pending| pending.at);
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = poll.tick() => {
                    if let Some(desired) = self.poll_desired().await {
                        if seen.as_deref() != Some(desired.variation.as_str()) {
                            tally.changes_seen.fetch_add(1, Ordering::Relaxed);
                            seen = Some(desired.variation.clone());
                            let delay = fleet.apply_delay.mul_f64(rand::random::<f64>());
                            pending = Some(Pending { at: tokio::time::Instant::now() + delay, desired });
                        }
                    }
                }
                _ = heartbeat.tick() => self.heartbeat().await,
                () = sleep_until_some(apply_at) => {
                    if let Some(Pending { desired, .. }) = pending.take() {
                        self.apply(desired, &mut seen).await;
                    }
                }
            }
        }
    }

    async fn poll_desired(&self) -> Option<Desired> {
        let tally = &self.fleet.tally;
        tally.polls.fetch_add(1, Ordering::Relaxed);
        match self.client.desired(&self.fleet.flag).await {
            Ok(desired) => Some(desired),
            Err(error) => {
                tally.error(&anyhow::Error::new(error).context("desired"));
                None
            }
        }
    }

    async fn heartbeat(&self) {
        let tally = &self.fleet.tally;
        match self.client.heartbeat().await {
            Ok(()) => {
                tally.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => tally.error(&anyhow::Error::new(error).context("heartbeat")),
        }
    }

    /// Applies `desired` (or fails to, at the error rate, forgetting it was `seen` so the
    /// next poll tries again) and reports it when a rollout decided it.
    async fn apply(&mut self, desired: Desired, seen: &mut Option<String>) {
        let fleet = Arc::clone(&self.fleet);
        let tally = &fleet.tally;
        let failed = rand::random::<f64>() < fleet.error_rate;
        if failed {
            // tried again after the next poll, like an agent that retries
            *seen = None;
        } else {
            tally.switch(self.running.as_deref(), &desired.variation);
            self.running = Some(desired.variation.clone());
        }
        if desired.rollout_id.is_none() {
            // without a rollout there is nothing to report to
            return;
        }
        let reported = if failed {
            self.client
                .report_failed(&desired, "simulated failure")
                .await
        } else {
            self.client.report_applied(&desired).await
        };
        match reported {
            Ok(()) => {
                let counter = if failed {
                    &tally.failed
                } else {
                    &tally.applied
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => tally.error(&anyhow::Error::new(error).context("report")),
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_parse_with_and_without_weight() {
        let set = parse_label_set("env=prod,region=eu:10").expect("parses");
        assert_eq!(set.weight, 10);
        assert_eq!(set.labels.get("region").map(String::as_str), Some("eu"));
        let unweighted = parse_label_set("ring=canary").expect("parses");
        assert_eq!(unweighted.weight, 1);
        assert!(parse_label_set("env:3").is_err());
        assert!(parse_label_set("env=prod:0").is_err());
        assert!(parse_label_set("=prod:2").is_err());
    }

    #[test]
    fn agents_spread_in_proportion_to_weights() {
        let sets: Vec<LabelSet> = DEFAULT_LABELS
            .iter()
            .map(|text| parse_label_set(text).expect("default"))
            .collect();
        let mut counts = [0; 4];
        for index in 0..30 {
            counts[set_of(&sets, index, 30)] += 1;
        }
        assert_eq!(counts, [4, 10, 10, 6]);
        let mut few = [0; 4];
        for index in 0..3 {
            few[set_of(&sets, index, 3)] += 1;
        }
        assert_eq!(few.iter().sum::<i32>(), 3);
    }
}
