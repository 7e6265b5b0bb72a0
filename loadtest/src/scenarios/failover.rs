//! `loadtest failover` (SPEC §10: after a leader crash, kill -9, the next due transition
//! fires ≤ 3 s later; SPEC §11: 0 double advances).
//!
//! On private servers, three ticker processes run (the built `ticker` binary: `--ticker-bin`,
//! else `ticker` beside this executable — `cargo build --release -p ticker` puts it there —
//! else this binary's hidden `serve-ticker` role, which runs the same library). `--rollouts`
//! running rollouts have steps of `--step` each, staggered so that transitions come due
//! continuously (rollouts ÷ step per second) for the whole run. Then `--kills` times: wait
//! `--interval` under load (plus a random part of the renewal period, so kills land
//! anywhere in the leader's renewal cycle), read which replica leads the namespace's shard
//! (the replicas share 64 shards; the others lead shards of their own), SIGKILL it, and
//! wait until another replica leads that shard and a transition is seen; a replacement process is started
//! so three run again.
//!
//! Afterwards every rollout's record and audit are read back, and for each kill (all times
//! Redis time):
//! - **to next transition**: the kill → the first step entered after it;
//! - **first due after the kill**: the first step whose planned time is after the kill →
//!   the transition that entered it (or passed over it in a catch-up);
//!
//! and the run counts **double advances**: a step entered twice (in the history or in the
//! audit) or a history out of order. The baseline is the lease time to live: a dead
//! leader's lease must run out before anyone takes over.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use rollout_core::Timestamp;
use rollout_store::Connection;
use rollout_store::{load_rollout, redis_time, RolloutRecord};

use rollout_store::Keys;
use rollout_wire::events::EventKind;
use rollout_wire::queries::AuditEntry;
use rollout_wire::subjects::{Namespace, Subjects};
use serde::Serialize;
use serde_json::json;

use crate::cli::FailoverArgs;
use crate::latency::Latency;
use crate::procs::{TickerChild, TickerProgram};
use crate::progress::phase;
use crate::report::{Recorder, Report, Row, Target};
use crate::seed::Seeder;
use crate::servers::Servers;
use crate::watch::{unix_micros, StepWatcher};

/// Time from the end of seeding to the first due step.
const LEAD_IN_MS: i64 = 3_000;
/// Longest a recovery (new leader and a transition) may take before the run fails.
const RECOVERY_PATIENCE: Duration = Duration::from_secs(30);
/// Replicas kept running.
const REPLICAS: usize = 3;

/// Runs the scenario.
pub async fn run(args: &FailoverArgs) -> anyhow::Result<Report> {
    if args.common.nats_url.is_some() || args.common.redis_url.is_some() {
        return Err(crate::usage(
            "failover starts its own servers and three ticker processes: it cannot kill the leader of a running cluster (run it without --nats-url/--redis-url)",
        ));
    }
    let program = TickerProgram::find(args.ticker_bin.as_deref())?;
    let servers = Servers::start_private().await?;
    let namespace = crate::namespace(&args.common, "bench-failover")?;
    let subjects = Subjects::default();
    let redis = servers.redis("seeding").await?;
    let nats = servers.nats().await?;
    let mut recorder = Recorder::new(
        "failover",
        servers.mode(),
        json!({
            "kills": args.kills,
            "interval_secs": args.interval.as_secs_f64(),
            "rollouts": args.rollouts,
            "step_secs": args.step.as_secs_f64(),
            "lease_ttl_secs": args.lease_ttl.as_secs_f64(),
            "ticker": program.describe(),
            "namespace": namespace.as_str(),
        }),
    );
    if matches!(program, TickerProgram::SelfServe(_)) {
        recorder.note("no ticker binary found beside loadtest: the tickers ran as `loadtest serve-ticker` (the same library); pass --ticker-bin to use the binary");
    }

    let step_ms = i64::try_from(args.step.as_millis())
        .unwrap_or(i64::MAX)
        .max(50);
    let lease_ms = i64::try_from(args.lease_ttl.as_millis()).unwrap_or(i64::MAX);
    let interval_ms = i64::try_from(args.interval.as_millis()).unwrap_or(i64::MAX);
    // every kill costs the interval, the lease running out and the recovery; keep steps
    // due until well after the last one
    let run_ms = LEAD_IN_MS + i64::from(args.kills) * (interval_ms + lease_ms + 3_000) + 10_000;
    let steps = u32::try_from(run_ms / step_ms + 2)
        .unwrap_or(u32::MAX)
        .clamp(2, 10_000);
    let seeder = Seeder::new(redis.clone());
    let now = seeder.now().await?;
    let rollouts = args.rollouts;
    let lead_in_ms = LEAD_IN_MS + i64::from(rollouts) / 5;
    phase(format!(
        "seeding {rollouts} rollouts of {steps} steps of {step_ms} ms ({:.0} transitions/s)",
        f64::from(rollouts) * 1000.0 / step_ms as f64
    ));
    let prefix = "failover";
    seeder
        .flags_with_rollouts(&namespace, prefix, rollouts, now, 64, |index| {
            let offset = lead_in_ms + i64::from(index) * step_ms / i64::from(rollouts.max(1));
            phases(steps, offset, step_ms)
        })
        .await?;

    let (log_dir, _temporary) = crate::procs::log_dir(args.log_dir.as_deref())?;
    let env = vec![
        ("ROLLOUT_NATS__URL".to_owned(), servers.nats_url()),
        (
            "ROLLOUT_REDIS__URL".to_owned(),
            servers.require_redis("tickers")?,
        ),
        (
            "ROLLOUT_TICKER__LEASE_TTL".to_owned(),
            format!("{lease_ms}ms"),
        ),
        ("ROLLOUT_LOG__LEVEL".to_owned(), "info".to_owned()),
    ];
    let mut fleet = Fleet {
        program,
        env,
        log_dir,
        children: Vec::new(),
        started: 0,
    };
    for _ in 0..REPLICAS {
        fleet.spawn()?;
    }
    let watcher = StepWatcher::start(&nats, &subjects, &namespace).await?;
    let (first_leader, _) = wait_leader(&redis, &namespace, &mut fleet, 0).await?;
    phase(format!(
        "{first_leader} leads; waiting for the first transitions"
    ));
    wait_transition_after(&watcher, unix_micros()).await?;

    let mut kills = Vec::new();
    for kill in 1..=args.kills {
        // a random part of a renewal period more, so kills land anywhere in the leader's
        // renewal cycle rather than always just after a renewal
        let jitter = (args.lease_ttl / 3).mul_f64(rand::random::<f64>());
        tokio::time::sleep(args.interval + jitter).await;
        let (holder, epoch) = shard_holder(&redis, &namespace)
            .await?
            .context("no replica leads the namespace's shard")?;
        let child_index = fleet
            .children
            .iter()
            .position(|child| child.replica == holder)
            .with_context(|| format!("the lease holder {holder} is not one of ours"))?;
        let mut victim = fleet.children.remove(child_index);
        victim.kill().await?;
        let killed_local = unix_micros();
        let mut connection = redis.clone();
        let killed_at = redis_time(&mut connection).await?;
        phase(format!(
            "kill {kill}/{}: SIGKILL {holder} (epoch {epoch})",
            args.kills
        ));
        let waiting = Instant::now();
        let (leader, new_epoch) = wait_leader(&redis, &namespace, &mut fleet, epoch).await?;
        let takeover_ms = waiting.elapsed().as_secs_f64() * 1000.0;
        wait_transition_after(&watcher, killed_local).await?;
        phase(format!(
            "kill {kill}/{}: {leader} leads (epoch {new_epoch}) after {takeover_ms:.0} ms",
            args.kills
        ));
        kills.push(Kill {
            victim: holder,
            old_epoch: epoch,
            new_leader: leader,
            new_epoch,
            killed_at,
            takeover_seen_ms: takeover_ms,
        });
        fleet.spawn()?;
    }
    // let the last recovery's catch-up settle, then stop every ticker
    tokio::time::sleep(Duration::from_secs(2)).await;
    for mut child in fleet.children.drain(..) {
        child.kill().await?;
    }
    drop(watcher);

    phase("reading back every rollout and its audit");
    let keys = Keys::new(&namespace);
    let records = read_back(&redis, &keys, prefix, rollouts).await?;
    let analysis = analyse(&records, &kills)?;

    let (to_next, first_due_gap) = (&analysis.to_next, &analysis.first_due_gap);
    recorder.row(
        Row::new(
            format!(
                "kill -9 of the leader → next transition, max of {}",
                args.kills
            ),
            to_next.summary().max_ms,
            "ms",
        )
        .baseline("lease ttl", lease_ms as f64)
        .target(Target::value_at_most(3000.0, "≤ 3 s")),
    );
    recorder.row(
        Row::new(
            "kill -9 → next transition, p50",
            to_next.quantile_ms(0.5),
            "ms",
        )
        .baseline("lease ttl", lease_ms as f64),
    );
    recorder.row(
        Row::new(
            "first step due after the kill → fired, max",
            first_due_gap.summary().max_ms,
            "ms",
        )
        .baseline("lease ttl", lease_ms as f64)
        .target(Target::value_at_most(3000.0, "≤ 3 s")),
    );
    recorder.row(
        Row::new(
            "first step due after the kill → fired, p50",
            first_due_gap.quantile_ms(0.5),
            "ms",
        )
        .baseline("lease ttl", lease_ms as f64),
    );
    recorder.row(
        Row::new("double advances", analysis.double_advances as f64, "")
            .target(Target::value_at_most(0.0, "0")),
    );
    recorder.detail("kills", &analysis.per_kill);
    recorder.detail(
        "transitions",
        json!({
            "steps_entered": analysis.entered,
            "steps_skipped_by_catch_up": analysis.skipped,
            "rollouts": rollouts,
            "steps_per_rollout": steps,
            "double_advances": analysis.double_advances,
            "problems": analysis.problems,
            "to_next_transition": to_next.summary(),
            "first_due_gap": first_due_gap.summary(),
        }),
    );
    if let Some(dir) = &args.log_dir {
        recorder.note(format!("ticker logs are in {}", dir.display()));
    }
    Ok(recorder.finish())
}

/// `steps` phases: the first ends `first_ms` after creation, each later one lasts
/// `step_ms`; the last completes the rollout on entry.
fn phases(steps: u32, first_ms: i64, step_ms: i64) -> serde_json::Value {
    let phases: Vec<serde_json::Value> = (1..=steps)
        .map(|step| {
            let percentage =
                (f64::from(step) * 100.0 / f64::from(steps) * 10_000.0).round() / 10_000.0;
            if step == steps {
                json!({"percentage": 100})
            } else if step == 1 {
                json!({"percentage": percentage, "duration": format!("{}ms", first_ms.max(1))})
            } else {
                json!({"percentage": percentage, "duration": format!("{step_ms}ms")})
            }
        })
        .collect();
    json!({ "phases": phases })
}

/// The ticker processes.
struct Fleet {
    program: TickerProgram,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    children: Vec<TickerChild>,
    started: usize,
}

impl Fleet {
    fn spawn(&mut self) -> anyhow::Result<()> {
        self.started += 1;
        let replica = format!("ticker-{}", self.started);
        let child = TickerChild::spawn(&self.program, &replica, &self.env, &self.log_dir, None)?;
        self.children.push(child);
        Ok(())
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            if child.exited() {
                bail!(
                    "ticker {} exited by itself; see its log in {}",
                    child.replica,
                    self.log_dir.display()
                );
            }
        }
        Ok(())
    }
}

/// The replica leading `namespace`'s shard, and the epoch of its lease.
async fn shard_holder(
    redis: &Connection,
    namespace: &Namespace,
) -> anyhow::Result<Option<(String, u64)>> {
    let mut connection = redis.clone();
    rollout_store::lease::holder_of(&mut connection, namespace.as_str())
        .await
        .context("reading the shard lease")
}

/// Waits (bounded) until one of our replicas leads `namespace`'s shard at an epoch above
/// `above`.
async fn wait_leader(
    redis: &Connection,
    namespace: &Namespace,
    fleet: &mut Fleet,
    above: u64,
) -> anyhow::Result<(String, u64)> {
    let deadline = Instant::now() + RECOVERY_PATIENCE;
    loop {
        if let Some((replica, epoch)) = shard_holder(redis, namespace).await? {
            let ours = fleet.children.iter().any(|child| child.replica == replica);
            if epoch > above && ours {
                return Ok((replica, epoch));
            }
        }
        fleet.check_alive()?;
        if Instant::now() > deadline {
            bail!("no new leader within {RECOVERY_PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until a transition arrives after `micros` (Unix time).
async fn wait_transition_after(watcher: &StepWatcher, micros: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + RECOVERY_PATIENCE;
    let mut cursor = 0;
    loop {
        let fresh = watcher.since(cursor);
        cursor += fresh.len();
        if fresh.iter().any(|seen| seen.arrived_micros > micros) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no transition within {RECOVERY_PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One kill.
struct Kill {
    victim: String,
    old_epoch: u64,
    new_leader: String,
    new_epoch: u64,
    killed_at: Timestamp,
    takeover_seen_ms: f64,
}

/// One rollout as read back.
struct ReadBack {
    record: RolloutRecord,
    audit: Vec<AuditEntry>,
}

async fn read_back(
    redis: &Connection,
    keys: &Keys,
    prefix: &str,
    rollouts: u32,
) -> anyhow::Result<Vec<ReadBack>> {
    let reads = futures_util::stream::iter(0..rollouts)
        .map(|index| {
            let mut connection = redis.clone();
            let rollout_id = format!("r-{prefix}-{index}");
            async move {
                let record = load_rollout(&mut connection, keys, &rollout_id)
                    .await?
                    .with_context(|| format!("rollout {rollout_id} is missing"))?;
                let (_, audit) = rollout_store::reads::audit_page::<_, AuditEntry>(
                    &mut connection,
                    keys,
                    rollout_store::reads::AuditLog::Rollout(&rollout_id),
                    0,
                    u32::MAX,
                )
                .await
                .with_context(|| format!("audit of {rollout_id}"))?;
                Ok::<_, anyhow::Error>(ReadBack { record, audit })
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    reads.into_iter().collect()
}

/// One kill as reported.
#[derive(Serialize)]
struct KillReport {
    victim: String,
    old_epoch: u64,
    new_leader: String,
    new_epoch: u64,
    killed_at: String,
    takeover_seen_ms: f64,
    to_next_transition_ms: Option<i64>,
    first_due_after_kill: Option<String>,
    first_due_gap_ms: Option<i64>,
}

struct Analysis {
    to_next: Latency,
    first_due_gap: Latency,
    per_kill: Vec<KillReport>,
    double_advances: u64,
    problems: Vec<String>,
    entered: u64,
    skipped: u64,
}

fn analyse(records: &[ReadBack], kills: &[Kill]) -> anyhow::Result<Analysis> {
    // (planned, fired) of every step that became due, and every entry time
    let mut due_steps: Vec<(Timestamp, Timestamp)> = Vec::new();
    let mut entries: Vec<Timestamp> = Vec::new();
    let mut double_advances = 0_u64;
    let mut problems = Vec::new();
    let (mut entered, mut skipped) = (0_u64, 0_u64);
    for read in records {
        let history = &read.record.state.history;
        for (position, step) in history.iter().enumerate() {
            if step.index != position {
                double_advances += 1;
                problems.push(format!(
                    "{}: history position {position} holds step {}",
                    read.record.id, step.index
                ));
            }
            if step.skipped {
                skipped += 1;
            } else {
                entered += 1;
            }
            if position == 0 {
                continue;
            }
            // a skipped step fired with the catch-up transition that passed over it
            let fired = history[position..]
                .iter()
                .find_map(|later| later.entered_at);
            if let Some(fired) = fired {
                due_steps.push((step.planned_at, fired));
            }
            if let Some(entered_at) = step.entered_at {
                entries.push(entered_at);
            }
        }
        let mut entered_by_audit: HashMap<u64, u32> = HashMap::new();
        for entry in &read.audit {
            if entry.kind == EventKind::RolloutStep {
                let to = entry.details["to"].as_u64().or_else(|| {
                    entry
                        .to
                        .as_deref()
                        .and_then(|to| to.strip_prefix("step "))
                        // the audit's text counts steps from 1
                        .and_then(|number| number.parse::<u64>().ok()?.checked_sub(1))
                });
                if let Some(to) = to {
                    *entered_by_audit.entry(to).or_default() += 1;
                }
            }
        }
        for (step, times) in entered_by_audit {
            if times > 1 {
                double_advances += u64::from(times - 1);
                problems.push(format!(
                    "{}: step {step} entered {times} times in the audit",
                    read.record.id
                ));
            }
        }
    }
    due_steps.sort_unstable();
    entries.sort_unstable();
    let mut to_next = Latency::new()?;
    let mut first_due_gap = Latency::new()?;
    let mut per_kill = Vec::new();
    for kill in kills {
        let next = entries
            .iter()
            .find(|entered_at| **entered_at > kill.killed_at)
            .map(|entered_at| entered_at.millis_since(kill.killed_at));
        let first_due = due_steps
            .iter()
            .find(|(planned, _)| *planned >= kill.killed_at);
        if let Some(next) = next {
            to_next.record_millis(next);
        }
        if let Some((planned, fired)) = first_due {
            first_due_gap.record_millis(fired.millis_since(*planned));
        }
        per_kill.push(KillReport {
            victim: kill.victim.clone(),
            old_epoch: kill.old_epoch,
            new_leader: kill.new_leader.clone(),
            new_epoch: kill.new_epoch,
            killed_at: kill.killed_at.to_rfc3339(),
            takeover_seen_ms: kill.takeover_seen_ms,
            to_next_transition_ms: next,
            first_due_after_kill: first_due.map(|(planned, _)| planned.to_rfc3339()),
            first_due_gap_ms: first_due.map(|(planned, fired)| fired.millis_since(*planned)),
        });
    }
    problems.truncate(20);
    Ok(Analysis {
        to_next,
        first_due_gap,
        per_kill,
        double_advances,
        problems,
        entered,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_rise_strictly_and_end_at_full_share() {
        let spec = phases(7, 3_000, 1_000);
        let phases = spec["phases"].as_array().expect("phases");
        assert_eq!(phases.len(), 7);
        let percentages: Vec<f64> = phases
            .iter()
            .map(|phase| phase["percentage"].as_f64().expect("percentage"))
            .collect();
        assert!(percentages.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(percentages.last().copied(), Some(100.0));
        assert_eq!(phases[0]["duration"], "3000ms");
        assert_eq!(phases[1]["duration"], "1000ms");
        assert!(phases[6].get("duration").is_none());
    }
}
