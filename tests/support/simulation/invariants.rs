//! What a simulation run checks besides the counted outcomes of [`Report`] (steps entered
//! twice or skipped, lost and twice-applied commands, served-version regressions, served ≠
//! committed): each invariant counts what it checked and what violated it, so a run can tell
//! a clean check from one that had nothing to look at.
//!
//! - **Replies**: every reply to a command id that is an outcome (not `unavailable` or
//!   `internal`) equals its first, over request-reply and the stream alike, unless Redis
//!   lost data in between.
//! - **Stream order**: commands on one flag that travelled only on the stream are applied
//!   (their first audit entry) in stream-sequence order; and the stream drains.
//! - **Step timing**: no step is entered before its planned time (audit time, and the
//!   arrival of its event), and a timer transition's planned time is what the plan gives:
//!   the previous step's planned start plus its timer (plus every timer caught up on), moved
//!   by the pauses in between.
//! - **Moves**: `continue` enters the next step, `promote` the last, a completion gate the
//!   next, catch-up lists exactly the steps between; a `continue` with `expected_step` lands
//!   on the step after it.
//! - **Gates and guards**: a completion gate opens only when the completions reported for the
//!   rollout reach its percentage of the stage's registered members (silent ones included);
//!   a guard's breach counts no more samples than were reported since its rollout began.
//! - **Outbox**: committed events leave the outbox within 3 s whenever NATS and Redis are up.
//! - **Liveness**: after the faults, every due transition happens within lease + 1 s.
//! - **Served flags**: once settled, no replica serves a flag Redis no longer holds (deleted,
//!   or lost with Redis's data) — the oracle judges only the flags Redis holds.
//!
//! The audit-based checks ([`AuditCheck`]) run at the end and, before each fault that makes
//! Redis lose data, over what is settled then, so no data epoch goes unchecked.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollout_core::plan::stage_of;
use rollout_core::{DurationMs, Effect, EntryCause, Gate, Lifecycle, Share, Timestamp};
use rollout_store::Connection;
use rollout_store::Keys;
use rollout_store::RolloutRecord;
use rollout_wire::events::{ChangeEvent, EventKind};
use rollout_wire::queries::AuditEntry;
use rollout_wire::CommandVerb;
use serde_json::json;
use tokio::time::Instant;

use super::faults::OutageClock;
use super::ledger::{FleetEvidence, Ledger};
use super::schedule::{AgentSpec, Generator, Transport};
use super::Enabled;
use crate::support::checks::{check_commands, check_rollouts, Report, CLOCK_SLACK_MS};
use crate::support::cluster::{wall_clock_now, Cluster};

pub const REPLIES: &str = "retries of a command id get its first reply";
pub const STREAM_ORDER: &str = "stream commands on one flag apply in stream order";
pub const STREAM_DRAINED: &str = "every queued command is consumed (the stream drains)";
pub const NOT_EARLY: &str = "no step entered before its planned time";
pub const PLANNED_TIMES: &str = "timer transitions at the time the plan implies";
pub const MOVES: &str = "continue, promote, gates and catch-up move as decided";
pub const GATES: &str = "completion gates open only on reported completions";
pub const GUARDS: &str = "guards judge only their own rollout's outcomes";
pub const OUTBOX: &str = "events leave the outbox within 3 s outside outages";
pub const LIVENESS: &str = "after the faults, due transitions within lease + 1 s";
pub const SERVED_FLAGS: &str = "replicas serve no flag that redis does not hold";

/// Every invariant, in the order the report lists them.
pub const INVARIANTS: [&str; 11] = [
    REPLIES,
    STREAM_ORDER,
    STREAM_DRAINED,
    NOT_EARLY,
    PLANNED_TIMES,
    MOVES,
    GATES,
    GUARDS,
    OUTBOX,
    LIVENESS,
    SERVED_FLAGS,
];

/// Probe rollouts the liveness check starts once the faults are over.
pub const LIVENESS_PROBES: usize = 3;

/// The flag of liveness probe `index`.
pub fn liveness_probe_flag(index: usize) -> String {
    format!("live-{index}")
}

/// Examples kept per invariant.
const EXAMPLES_PER_INVARIANT: usize = 6;
/// How long an outbox entry may wait while NATS and Redis are up.
const OUTBOX_DELIVERY: Duration = Duration::from_secs(3);
/// Slack around a fleet call or outcome report's time when judging a gate or guard: the
/// call's effect may land a little after it was sent, and the evidence a little before.
const EVIDENCE_SLACK: DurationMs = DurationMs::from_millis(1_000);

/// Checked and violated, for one invariant.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub checked: u64,
    pub violations: u64,
}

/// What the invariants found.
#[derive(Debug, Default)]
pub struct Findings {
    pub tallies: BTreeMap<&'static str, Tally>,
    pub examples: BTreeMap<&'static str, Vec<String>>,
}

impl Findings {
    pub fn checked(&mut self, invariant: &'static str) {
        self.tallies.entry(invariant).or_default().checked += 1;
    }

    pub fn violated(&mut self, invariant: &'static str, what: String) {
        let tally = self.tallies.entry(invariant).or_default();
        tally.checked += 1;
        tally.violations += 1;
        let examples = self.examples.entry(invariant).or_default();
        if examples.len() < EXAMPLES_PER_INVARIANT {
            examples.push(what);
        }
    }

    /// Checks `holds` for `invariant`, recording `what` when it does not.
    pub fn expect(&mut self, invariant: &'static str, holds: bool, what: impl FnOnce() -> String) {
        if holds {
            self.checked(invariant);
        } else {
            self.violated(invariant, what());
        }
    }

    pub fn tally(&self, invariant: &str) -> Tally {
        self.tallies.get(invariant).copied().unwrap_or_default()
    }

    pub fn violations(&self) -> u64 {
        self.tallies.values().map(|tally| tally.violations).sum()
    }
}

/// Shortens a JSON value for a message.
fn brief(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.len() > 300 {
        format!("{}…", &text[..300])
    } else {
        text
    }
}

/// Every outcome reply of a command id equals the first one of its data epoch. While the
/// generator of retries after `invalid_argument` is switched off for its open defect, the
/// replies of a command first refused so are not compared either (a retry sent before the
/// refusal was known, or a stream redelivery, still reaches the planner).
pub fn check_replies(ledger: &Ledger, enabled: &Enabled, findings: &mut Findings) {
    let compare_invalid = enabled.allows(Generator::RetriesOfInvalidInput);
    for (id, command) in &ledger.commands {
        let first_invalid = command
            .first_outcome()
            .is_some_and(|reply| reply.code() == "invalid_argument");
        if first_invalid && !compare_invalid {
            continue;
        }
        let mut first_by_epoch: HashMap<u64, &serde_json::Value> = HashMap::new();
        for reply in command
            .replies
            .iter()
            .filter(|reply| reply.is_outcome() && reply.within_one_epoch())
        {
            let Some(first) = first_by_epoch.get(&reply.reply_epoch) else {
                first_by_epoch.insert(reply.reply_epoch, &reply.envelope);
                continue;
            };
            findings.expect(REPLIES, reply.envelope == **first, || {
                format!(
                    "command {id} ({}, first sent over {}): a reply over {} was {}, the first was {}",
                    command.verb,
                    command.first_transport.as_str(),
                    reply.transport.as_str(),
                    brief(&reply.envelope),
                    brief(first)
                )
            });
        }
    }
}

/// A `continue` that named its step and was accepted lands on the step after it.
pub fn check_expected_steps(ledger: &Ledger, findings: &mut Findings) {
    for (id, command) in &ledger.commands {
        if command.verb != CommandVerb::RolloutContinue {
            continue;
        }
        let (Some(expected), Some(reply)) = (
            command.body["expected_step"].as_u64(),
            command.first_outcome(),
        ) else {
            continue;
        };
        if reply.code() != "ok" {
            continue;
        }
        let result = &reply.envelope["result"];
        let landed = result["current_step"].as_u64();
        findings.expect(
            MOVES,
            landed == Some(expected + 1) || result["state"] == json!("completed"),
            || {
                format!(
                    "command {id}: continue with expected_step {expected} answered at step {landed:?} ({})",
                    brief(result)
                )
            },
        );
    }
}

/// Commands that travelled only on the stream apply in their stream order, per flag.
pub fn check_stream_order(
    ledger: &Ledger,
    flag_audits: &BTreeMap<String, Vec<AuditEntry>>,
    findings: &mut Findings,
) {
    let mut queued: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    for (id, command) in &ledger.commands {
        let stream_only = command.first_transport == Transport::Stream
            && command
                .replies
                .iter()
                .all(|reply| reply.transport == Transport::Stream);
        if let (true, Some(flag), Some(sequence)) = (
            stream_only,
            command.flag.as_deref(),
            command.stream_sequences.first(),
        ) {
            queued
                .entry(flag)
                .or_default()
                .push((*sequence, id.as_str()));
        }
    }
    for (flag, mut commands) in queued {
        let Some(audit) = flag_audits.get(flag) else {
            continue;
        };
        let mut first_entry: HashMap<&str, usize> = HashMap::new();
        for (position, entry) in audit.iter().enumerate() {
            if let Some(id) = entry.details["command_id"].as_str() {
                first_entry.entry(id).or_insert(position);
            }
        }
        commands.sort_unstable();
        let applied: Vec<(u64, &str, usize)> = commands
            .into_iter()
            .filter_map(|(sequence, id)| {
                first_entry
                    .get(id)
                    .map(|position| (sequence, id, *position))
            })
            .collect();
        for pair in applied.windows(2) {
            let ((earlier_seq, earlier, earlier_at), (later_seq, later, later_at)) =
                (pair[0], pair[1]);
            findings.expect(STREAM_ORDER, earlier_at < later_at, || {
                format!(
                    "flag {flag}: {later} (stream sequence {later_seq}) was applied before {earlier} (sequence {earlier_seq})"
                )
            });
        }
    }
}

/// The audit-based checks of what Redis holds now: every rollout of the ledger (with
/// [`check_rollout`] and the chaos suite's `check_rollouts`), the commands accepted in the
/// current data epoch (applied exactly once: `check_commands`) and the order of stream
/// commands. Run at the end, and before Redis loses data (whose audits go with it) — then
/// only over rollouts that finished, whose audits no longer change.
pub struct AuditCheck<'a> {
    pub cluster: &'a Cluster,
    pub ledger: &'a Ledger,
    pub agents: &'a [AgentSpec],
    /// Only rollouts that finished.
    pub finished_only: bool,
    /// The data epoch now: commands accepted in it are in the audits.
    pub epoch: u64,
}

impl AuditCheck<'_> {
    /// Runs the checks over what `audited` does not hold yet (a restore of an older copy
    /// could bring a rollout back), adding it there.
    pub async fn run(
        &self,
        audited: &mut HashSet<String>,
        counted: &mut Report,
        findings: &mut Findings,
    ) {
        let cluster = self.cluster;
        let arrivals = cluster.events.arrivals();
        let evidence = Evidence {
            ledger: self.ledger,
            agents: self.agents,
            arrivals: &arrivals,
        };
        let mut checked = Vec::new();
        for birth in &self.ledger.rollouts {
            let id = &birth.rollout_id;
            if audited.contains(id) {
                continue;
            }
            let Some(record) = cluster.find_rollout(id).await else {
                continue;
            };
            if self.finished_only && !record.state.lifecycle.is_finished() {
                continue;
            }
            let audit = cluster.rollout_audit(id).await;
            check_rollout(&record, &audit, &evidence, findings);
            audited.insert(id.clone());
            checked.push(id.clone());
        }
        // at a checkpoint the last events of a rollout that just finished may still be
        // on their way: the audit alone then
        let events = cluster.events.events();
        let events_complete = !self.finished_only && !nats_restarted(counted);
        check_rollouts(
            &cluster.committed(),
            &checked,
            events_complete.then_some(&events[..]),
            counted,
        )
        .await;
        check_commands(
            &cluster.committed(),
            &commands_to_find_in_audits(self.ledger, self.epoch),
            counted,
        )
        .await;
        let commanded_flags: BTreeSet<&String> = self
            .ledger
            .commands
            .values()
            .filter_map(|command| command.flag.as_ref())
            .collect();
        let mut flag_audits = BTreeMap::new();
        for flag in commanded_flags {
            flag_audits.insert(flag.clone(), cluster.flag_audit(flag).await);
        }
        check_stream_order(self.ledger, &flag_audits, findings);
    }
}

/// Whether NATS restarted so far: events published while the test's subscriber was away
/// are lost to it, so steps are then checked against the audit alone.
pub fn nats_restarted(counted: &Report) -> bool {
    counted
        .faults
        .keys()
        .any(|fault| fault.starts_with("nats restart"))
}

/// What the per-rollout checks read besides the rollout itself.
pub struct Evidence<'a> {
    pub ledger: &'a Ledger,
    pub agents: &'a [AgentSpec],
    /// Change events with their arrival times.
    pub arrivals: &'a [(ChangeEvent, Timestamp)],
}

/// The step-timing, move, gate and guard checks of one rollout, from its audit (oldest
/// first) and the events of its steps.
pub fn check_rollout(
    record: &RolloutRecord,
    audit: &[AuditEntry],
    evidence: &Evidence<'_>,
    findings: &mut Findings,
) {
    let id = &record.id;
    let plan = &record.plan;
    // the planned start of the current step, moved by pauses since
    let mut anchor: Option<Timestamp> = None;
    for entry in audit {
        let Ok(effect) = serde_json::from_value::<Effect>(entry.details.clone()) else {
            continue;
        };
        match effect {
            Effect::StepEntered {
                from,
                to,
                skipped,
                cause,
                planned_at,
                ..
            } => {
                findings.expect(
                    NOT_EARLY,
                    entry.time.millis_since(planned_at) >= -CLOCK_SLACK_MS,
                    || {
                        format!(
                            "{id}: step {to} entered at {} (audit), planned for {planned_at}",
                            entry.time
                        )
                    },
                );
                let between: Vec<usize> = from.map_or(Vec::new(), |from| (from + 1..to).collect());
                match (cause, from) {
                    (EntryCause::Timer, Some(from)) => {
                        findings.expect(MOVES, skipped == between && to > from, || {
                            format!(
                                "{id}: timer moved {from} → {to} listing {skipped:?} as skipped"
                            )
                        });
                        let timers: Option<i64> = (from..to)
                            .map(|index| match plan.steps.get(index).map(|step| &step.gate) {
                                Some(Gate::Timer(duration)) => Some(duration.as_millis()),
                                _ => None,
                            })
                            .sum();
                        if let (Some(anchor), Some(timers)) = (anchor, timers) {
                            let implied = anchor.plus(DurationMs::from_millis(timers));
                            findings.expect(PLANNED_TIMES, implied == planned_at, || {
                                format!(
                                    "{id}: step {to} planned for {planned_at}; the plan implies {implied} (step {from} from {anchor}, timers {timers} ms)"
                                )
                            });
                        } else {
                            findings.violated(
                                PLANNED_TIMES,
                                format!("{id}: a timer moved {from} → {to} across a gate that is no timer"),
                            );
                        }
                    }
                    (
                        EntryCause::Continue | EntryCause::Gate | EntryCause::Approval,
                        Some(from),
                    ) => {
                        findings.expect(MOVES, to == from + 1 && skipped.is_empty(), || {
                            format!("{id}: {cause:?} moved {from} → {to} (skipped {skipped:?})")
                        });
                        if cause == EntryCause::Gate {
                            check_gate(record, from, entry.time, evidence, findings);
                        }
                    }
                    (EntryCause::Promote, _) => {
                        findings.expect(
                            MOVES,
                            to == plan.last_step() && skipped.is_empty(),
                            || {
                                format!(
                                    "{id}: promote moved {from:?} → {to}, the last step is {}",
                                    plan.last_step()
                                )
                            },
                        );
                    }
                    (EntryCause::Start, _) => {
                        findings.expect(MOVES, to == 0 && from.is_none(), || {
                            format!("{id}: start entered step {to} from {from:?}")
                        });
                    }
                    (cause, None) => findings.violated(
                        MOVES,
                        format!("{id}: {cause:?} entered step {to} of a rollout that had no step"),
                    ),
                }
                anchor = Some(planned_at);
            }
            Effect::Resumed { paused_ms } => {
                anchor = anchor.map(|at| at.plus(DurationMs::from_millis(paused_ms)));
            }
            Effect::GuardBreached { figures, .. } => {
                check_guard(record, entry.time, &figures, evidence, findings);
            }
            _ => {}
        }
    }
    for (event, arrived) in evidence.arrivals {
        if event.rollout_id.as_deref() != Some(id.as_str()) || event.kind != EventKind::RolloutStep
        {
            continue;
        }
        let Ok(Effect::StepEntered { planned_at, to, .. }) =
            serde_json::from_value::<Effect>(event.details.clone())
        else {
            continue;
        };
        findings.expect(
            NOT_EARLY,
            arrived.millis_since(planned_at) >= -CLOCK_SLACK_MS,
            || {
                format!(
                    "{id}: the event of step {to} arrived at {arrived}, planned for {planned_at}"
                )
            },
        );
    }
}

/// A completion gate that opened at `opened_at` on stage `stage` of `record`: the
/// completions reported for the rollout (at most) must reach its share of the stage's
/// registered members (at least), silent members counting as not completed.
fn check_gate(
    record: &RolloutRecord,
    stage: usize,
    opened_at: Timestamp,
    evidence: &Evidence<'_>,
    findings: &mut Findings,
) {
    let plan = &record.plan;
    let Some(Gate::Completion { min_completed, .. }) = plan.steps.get(stage).map(|step| &step.gate)
    else {
        findings.violated(
            MOVES,
            format!(
                "{}: a gate opened on step {stage}, whose gate is no completion gate",
                record.id
            ),
        );
        return;
    };
    let stages = plan.stage_labels();
    let ledger = evidence.ledger;
    let since_loss = ledger.last_data_loss_before(opened_at);
    let registered_before = opened_at.minus(EVIDENCE_SLACK);
    let members: Vec<&str> = evidence
        .agents
        .iter()
        .filter(|agent| stage_of(&stages, &agent.labels) == stage)
        .filter(|agent| {
            ledger.fleet.iter().any(|call| {
                call.agent == agent.id
                    && call.evidence == FleetEvidence::Registered
                    && call.acked_at.is_some_and(|acked| {
                        acked <= registered_before && since_loss.is_none_or(|loss| acked >= loss)
                    })
            })
        })
        .map(|agent| agent.id.as_str())
        .collect();
    let reported_by = opened_at.plus(EVIDENCE_SLACK);
    let completed: HashSet<&str> = ledger
        .fleet
        .iter()
        .filter(|call| {
            call.sent_at <= reported_by
                && matches!(&call.evidence, FleetEvidence::Applied { rollout_id, variation }
                    if *rollout_id == record.id && *variation == plan.candidate)
        })
        .map(|call| call.agent.as_str())
        .filter(|agent| members.contains(agent))
        .collect();
    let enough = u128::from(completed.len() as u64) * u128::from(Share::ALL.ppm())
        >= u128::from(members.len() as u64) * u128::from(min_completed.ppm());
    findings.expect(GATES, enough, || {
        // members no fleet call was acknowledged from lately: silent ones
        let heard_since = opened_at.minus(EVIDENCE_SLACK).minus(EVIDENCE_SLACK);
        let quiet: Vec<&&str> = members
            .iter()
            .filter(|member| {
                !ledger.fleet.iter().any(|call| {
                    call.agent == **member
                        && call
                            .acked_at
                            .is_some_and(|acked| acked >= heard_since && acked <= opened_at)
                })
            })
            .collect();
        format!(
            "{}: the completion gate of stage {stage} (≥ {} %) opened at {opened_at} with {} of its {} registered members reporting completion ({:?} of {members:?}; not heard from in the 2 s before: {quiet:?})",
            record.id,
            min_completed.percentage(),
            completed.len(),
            members.len(),
            completed
        )
    });
}

/// A guard breach at `breached_at` counted no more samples of either side than were
/// reported for the flag since the rollout was created.
fn check_guard(
    record: &RolloutRecord,
    breached_at: Timestamp,
    figures: &rollout_core::guard::GuardFigures,
    evidence: &Evidence<'_>,
    findings: &mut Findings,
) {
    let plan = &record.plan;
    let since = record.created_at.minus(EVIDENCE_SLACK);
    let reported = |variation: &str| -> u64 {
        evidence
            .ledger
            .outcomes
            .iter()
            .filter(|sent| {
                sent.flag == plan.flag
                    && sent.variation == variation
                    && sent.sent_at >= since
                    && sent.sent_at <= breached_at
            })
            .map(|sent| sent.reports)
            .sum()
    };
    for (side, variation, counted) in [
        ("candidate", &plan.candidate, figures.candidate_samples),
        ("baseline", &plan.baseline, figures.baseline_samples),
    ] {
        let sent = reported(variation);
        findings.expect(GUARDS, counted <= sent, || {
            format!(
                "{}: its guard breached at {breached_at} counting {counted} {side} samples of `{variation}`, but only {sent} were reported since the rollout was created at {}",
                record.id, record.created_at
            )
        });
    }
}

/// Commands whose first outcome was a change that must be in their flag's audit exactly
/// once: accepted (`ok`) in the data epoch that lasted to the end, of a verb that never
/// answers `ok` without changing something.
pub fn commands_to_find_in_audits(
    ledger: &Ledger,
    final_epoch: u64,
) -> BTreeMap<String, Vec<String>> {
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, command) in &ledger.commands {
        let always_changes = !matches!(
            command.verb,
            CommandVerb::FlagEnable | CommandVerb::FlagDisable | CommandVerb::RolloutPromote
        );
        let Some(first) = command.first_outcome() else {
            continue;
        };
        if always_changes
            && first.code() == "ok"
            && first.reply_epoch == final_epoch
            && first.within_one_epoch()
        {
            if let Some(flag) = &command.flag {
                expected.entry(flag.clone()).or_default().push(id.clone());
            }
        }
    }
    expected
}

/// Watches the age of the oldest outbox entry while NATS and Redis are up.
pub struct OutboxMonitor {
    state: Arc<Mutex<Findings>>,
    task: tokio::task::JoinHandle<()>,
}

impl OutboxMonitor {
    pub fn start(redis: Connection, keys: Keys, outages: OutageClock) -> OutboxMonitor {
        let state = Arc::new(Mutex::new(Findings::default()));
        let sink = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut reported: Option<String> = None;
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let Some(quiet_since) = outages.quiet_since() else {
                    continue;
                };
                let mut connection = redis.clone();
                let oldest = rollout_store::outbox::oldest(&mut connection, &keys).await;
                let mut findings = sink.lock().expect("outbox findings");
                let Ok(oldest) = oldest else {
                    continue;
                };
                let Some((entry_id, created)) = oldest else {
                    findings.checked(OUTBOX);
                    continue;
                };
                let waiting_since = quiet_since.map_or(created, |quiet| quiet.max(created));
                let waited = wall_clock_now().millis_since(waiting_since);
                if waited > i64::try_from(OUTBOX_DELIVERY.as_millis()).unwrap_or(i64::MAX) {
                    if reported.as_deref() != Some(entry_id.as_str()) {
                        reported = Some(entry_id.clone());
                        findings.violated(
                            OUTBOX,
                            format!(
                                "outbox entry {entry_id} (committed at {created}) still undelivered after {waited} ms with nats and redis up"
                            ),
                        );
                    }
                } else {
                    findings.checked(OUTBOX);
                }
            }
        });
        OutboxMonitor { state, task }
    }

    pub fn finish(self, findings: &mut Findings) {
        self.task.abort();
        let mut watched = self.state.lock().expect("outbox findings");
        let tally = watched.tally(OUTBOX);
        let entry = findings.tallies.entry(OUTBOX).or_default();
        entry.checked += tally.checked;
        entry.violations += tally.violations;
        findings
            .examples
            .entry(OUTBOX)
            .or_default()
            .append(watched.examples.entry(OUTBOX).or_default());
    }
}

/// After the faults: starts probe rollouts on fresh flags, then until they complete (and at
/// least lease + 1 s more) watches every running or queued rollout's next due time: each
/// must be left within lease + 1 s of it (or of the start of this check, if later). A late
/// one counts once, reported when it is finally left with how late it was and which ticker
/// led at its deadline (the check waits for it, up to 30 s). Returns the probe rollouts.
pub async fn check_liveness(
    cluster: &Cluster,
    lease: Duration,
    findings: &mut Findings,
) -> Vec<String> {
    let allowance = DurationMs::from_millis(
        i64::try_from((lease + Duration::from_secs(1)).as_millis()).unwrap_or(i64::MAX),
    );
    let quiet_start = cluster.now().await;
    let mut probes = Vec::new();
    for index in 0..LIVENESS_PROBES {
        let flag = liveness_probe_flag(index);
        cluster
            .commands
            .create_flag(crate::support::cluster::boolean_flag(&flag))
            .await
            .unwrap_or_else(|error| panic!("liveness probe flag {flag}: {error}"));
        let spec = serde_json::from_value(json!({
            "flag": flag, "baseline": "off", "candidate": "on",
            "phases": [{"percentage": 25, "duration": "600ms"}, {"percentage": 50, "duration": "600ms"},
                       {"percentage": 100}],
        }))
        .expect("probe spec");
        let created = cluster
            .commands
            .create_rollout(spec)
            .await
            .unwrap_or_else(|error| panic!("liveness probe rollout on {flag}: {error}"));
        probes.push(created.rollout_id);
    }
    let keys = cluster.keys();
    let give_up = Instant::now() + Duration::from_secs(30);
    // (rollout, due time) → deadline, for due points not yet left
    let mut pending: HashMap<(String, Timestamp), Timestamp> = HashMap::new();
    // due points judged late, each once: when their deadline passed and who led then
    let mut late: HashMap<(String, Timestamp), (Timestamp, String)> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = cluster.now().await;
        let mut connection = cluster.redis_conn.clone();
        let active = rollout_store::reads::rollout_ids(
            &mut connection,
            &keys,
            rollout_wire::queries::ListState::Active,
        )
        .await
        .expect("active rollouts");
        let mut due_now: HashSet<(String, Timestamp)> = HashSet::new();
        for id in active {
            let Some(record) = cluster.find_rollout(&id).await else {
                continue;
            };
            if !matches!(
                record.state.lifecycle,
                Lifecycle::Running | Lifecycle::Queued
            ) {
                continue;
            }
            if let Some(due) = record.state.due_at(&record.plan) {
                let point = (id, due);
                if !late.contains_key(&point) {
                    let deadline = due.max(quiet_start).plus(allowance);
                    pending.entry(point.clone()).or_insert(deadline);
                }
                due_now.insert(point);
            }
        }
        let mut overdue = Vec::new();
        pending.retain(|point, deadline| {
            if !due_now.contains(point) {
                // left that due point in time
                findings.checked(LIVENESS);
                return false;
            }
            if now > *deadline {
                overdue.push((point.clone(), *deadline));
                return false;
            }
            true
        });
        if !overdue.is_empty() {
            let leader = match cluster.leader().await {
                Some((replica, epoch)) => format!("{replica} (epoch {epoch})"),
                None => "no ticker".to_owned(),
            };
            for (point, deadline) in overdue {
                late.insert(point, (deadline, leader.clone()));
            }
        }
        // a late due point is reported once it is left (or when the check ends), with how
        // late it was: a few milliseconds under load and seconds of stall read differently
        late.retain(|(id, due), (deadline, leader)| {
            if due_now.contains(&(id.clone(), *due)) {
                return true;
            }
            findings.violated(
                LIVENESS,
                format!(
                    "{id}: due at {due}, seen left {} ms after its deadline {deadline} (lease + 1 s after {}); {leader} led at the deadline",
                    now.millis_since(*deadline),
                    (*due).max(quiet_start)
                ),
            );
            false
        });
        let mut finished = 0;
        for probe in &probes {
            if cluster
                .find_rollout(probe)
                .await
                .is_some_and(|record| record.state.lifecycle.is_finished())
            {
                finished += 1;
            }
        }
        let long_enough = now.millis_since(quiet_start) > allowance.as_millis() + 1_000;
        if finished == probes.len() && long_enough && late.is_empty() {
            return probes;
        }
        if Instant::now() > give_up {
            for ((id, due), (deadline, leader)) in late {
                findings.violated(
                    LIVENESS,
                    format!("{id}: due at {due}, still there at {now}, 30 s after the check began (deadline {deadline}; {leader} led at the deadline)"),
                );
            }
            findings.violated(
                LIVENESS,
                format!(
                    "{} of {} probe rollouts never finished ({probes:?})",
                    probes.len() - finished,
                    probes.len()
                ),
            );
            return probes;
        }
    }
}

/// Copies the [`LIVENESS`] tally of `findings` into the counted `report`.
pub fn count_liveness(findings: &Findings, report: &mut Report) {
    let liveness = findings.tally(LIVENESS);
    report.liveness_checked = liveness.checked;
    report.liveness_violations = liveness.violations;
}

/// Once everything settled, the replica serving OFREP at `addr` serves no flag beyond
/// `existing` (those Redis holds), within the evaluators' resync interval and then some.
pub async fn check_served_flags(
    replica: &str,
    addr: std::net::SocketAddr,
    existing: &[String],
    findings: &mut Findings,
) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let served = crate::support::http::served_versions(addr, crate::support::NS).await;
        let extra: Vec<(String, u64)> = served
            .iter()
            .flatten()
            .filter(|(flag, _)| !existing.contains(flag))
            .map(|(flag, version)| (flag.clone(), *version))
            .collect();
        if served.is_some() && extra.is_empty() {
            findings.checked(SERVED_FLAGS);
            return;
        }
        if Instant::now() > until {
            findings.violated(
                SERVED_FLAGS,
                format!(
                    "{replica} still serves {extra:?} (flag, version), which redis does not hold"
                ),
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
