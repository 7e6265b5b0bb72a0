//! The counted outcome of a fault run (SPEC §11): double advances, skipped steps, lost and
//! twice-applied commands, served-version regressions and served answers that disagreed with
//! the committed state for more than 2 s (the [`super::oracle`]), beside the faults
//! injected, leader changes and fence rejections, printed as one report and then asserted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollout_core::{Effect, Timestamp};
use rollout_wire::events::{ChangeEvent, EventKind};
use rollout_wire::queries::AuditEntry;

use super::committed::CommittedReader;
use super::http;
use super::NS;
pub use rollout_sandbox::Replica;

/// Slack between two readings of time on one machine (one clock; ms rounding).
pub const CLOCK_SLACK_MS: i64 = 5;

/// What one fault run did and found.
#[derive(Debug, Default)]
pub struct Report {
    pub scenario: String,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    pub leader_changes: u64,
    pub fence_rejections: u64,
    /// Steps entered across the checked rollouts.
    pub steps_entered: u64,
    /// Steps passed over by catch-up and listed as skipped in the transition's audit entry
    /// and event (allowed).
    pub catch_up_skips: u64,
    /// A step entered twice (two audit entries or two events entering it, or a repeated
    /// index in the history).
    pub double_advances: u64,
    /// A step missing from the history, or skipped without being listed as skipped.
    pub skipped_steps: u64,
    /// Steps entered before their planned time (by the audit entry's time).
    pub early_steps: u64,
    /// Due transitions watched after the faults, and those not made within lease + 1 s.
    pub liveness_checked: u64,
    pub liveness_violations: u64,
    pub commands_checked: u64,
    pub lost_commands: u64,
    pub twice_applied: u64,
    pub version_samples: u64,
    pub regressions: u64,
    /// Served answers the oracle compared with the committed state.
    pub oracle_samples: u64,
    /// Served answers that disagreed with every state committed in the 2 s before, after
    /// disagreeing for more than 2 s.
    pub oracle_violations: u64,
    pub notes: Vec<String>,
}

impl Report {
    /// Adds what an oracle monitor found.
    pub fn add_oracle(&mut self, findings: rollout_sandbox::oracle::OracleFindings) {
        self.oracle_samples += findings.samples;
        self.oracle_violations += findings.violations;
        for note in findings.notes {
            self.note(note);
        }
    }

    pub fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.to_owned(),
            ..Report::default()
        }
    }

    pub fn fault(&mut self, kind: &str) {
        *self.faults.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn faults_total(&self) -> u64 {
        self.faults.values().sum()
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Prints the report (visible with `--nocapture`, and in nextest's output of a failure).
    pub fn print(&self) {
        let mut text = String::new();
        let _ = writeln!(text, "=== chaos report: {} ===", self.scenario);
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(kind, count)| format!("{kind} x{count}"))
            .collect();
        let _ = writeln!(
            text,
            "faults injected:      {} ({})",
            self.faults_total(),
            faults.join(", ")
        );
        let _ = writeln!(text, "leader changes:       {}", self.leader_changes);
        let _ = writeln!(text, "fence rejections:     {}", self.fence_rejections);
        let _ = writeln!(
            text,
            "steps entered:        {} (catch-up skips listed in events: {})",
            self.steps_entered, self.catch_up_skips
        );
        let _ = writeln!(text, "double advances:      {}", self.double_advances);
        let _ = writeln!(text, "skipped steps:        {}", self.skipped_steps);
        let _ = writeln!(text, "steps entered early:  {}", self.early_steps);
        if self.liveness_checked > 0 {
            let _ = writeln!(
                text,
                "liveness:             {} due transitions watched after the faults, {} late",
                self.liveness_checked, self.liveness_violations
            );
        } else {
            let _ = writeln!(text, "liveness:             not checked in this scenario");
        }
        let _ = writeln!(
            text,
            "commands checked:     {} (lost {}, applied twice {})",
            self.commands_checked, self.lost_commands, self.twice_applied
        );
        let _ = writeln!(
            text,
            "served versions:      {} samples, {} regressions",
            self.version_samples, self.regressions
        );
        let _ = writeln!(
            text,
            "served = committed:   {} samples, {} violations",
            self.oracle_samples, self.oracle_violations
        );
        for note in &self.notes {
            let _ = writeln!(text, "note: {note}");
        }
        println!("{text}");
    }

    /// The counted outcomes that must be zero, by what they count.
    pub fn counted_violations(&self) -> [(&'static str, u64); 8] {
        [
            ("double advances", self.double_advances),
            ("skipped steps", self.skipped_steps),
            ("steps entered before their planned time", self.early_steps),
            (
                "due transitions not made within lease + 1 s after the faults",
                self.liveness_violations,
            ),
            ("lost commands", self.lost_commands),
            ("commands applied twice", self.twice_applied),
            ("served-version regressions", self.regressions),
            (
                "served answers that disagreed with the committed state for more than 2 s",
                self.oracle_violations,
            ),
        ]
    }

    /// Prints, then asserts every violation count is zero, and that the oracle compared
    /// something (a check that compared nothing cannot fail).
    pub fn assert_clean(&self) {
        self.print();
        for (what, count) in self.counted_violations() {
            assert_eq!(count, 0, "{}: {what}", self.scenario);
        }
        assert!(
            self.oracle_samples > 0,
            "{}: the oracle compared no served answer with the committed state",
            self.scenario
        );
    }
}

/// Checks every rollout in `ids`: its history holds each step index once, in order, none
/// passed over but by `promote` (which jumps to the last step); each
/// entered step has exactly one `rollout_step` audit entry (and, with `events`, exactly one
/// distinct `rollout_step` event); each step skipped by catch-up is listed by exactly one
/// audit entry (and one event); the rollout started at most once. Adds to `report`.
pub async fn check_rollouts(
    cluster: &CommittedReader,
    ids: &[String],
    events: Option<&[ChangeEvent]>,
    report: &mut Report,
) {
    let mut by_rollout: HashMap<&str, BTreeMap<u64, &ChangeEvent>> = HashMap::new();
    if let Some(events) = events {
        for event in events {
            if let Some(id) = event.rollout_id.as_deref() {
                // the same event may be published twice (a sweep after a crash): one per version
                by_rollout
                    .entry(id)
                    .or_default()
                    .insert(event.version * 100 + kind_rank(event.kind), event);
            }
        }
    }
    for id in ids {
        let record = cluster.rollout(id).await;
        let audit = cluster.rollout_audit(id).await;
        let history = &record.state.history;
        // `promote` jumps to the last step: the only entry that may pass over steps unlisted
        let promoted_to: BTreeSet<u64> = audit
            .iter()
            .filter(|entry| {
                entry.kind == EventKind::RolloutStep && entry.details["cause"] == "promote"
            })
            .filter_map(|entry| entry.details["to"].as_u64())
            .collect();
        let mut next_index = 0;
        for step in history {
            if step.index < next_index {
                report.double_advances += 1;
                report.note(format!("{id}: history {history:?}"));
            } else if step.index > next_index && !promoted_to.contains(&(step.index as u64)) {
                report.skipped_steps += 1;
                report.note(format!("{id}: history {history:?}"));
            }
            next_index = step.index + 1;
        }
        let started = audit
            .iter()
            .filter(|entry| entry.kind == EventKind::RolloutStarted)
            .count();
        if started > 1 {
            report.double_advances += 1;
            report.note(format!("{id}: started {started} times"));
        }
        for entry in &audit {
            if let Ok(Effect::StepEntered { to, planned_at, .. }) =
                serde_json::from_value::<Effect>(entry.details.clone())
            {
                if entry.time.millis_since(planned_at) < -CLOCK_SLACK_MS {
                    report.early_steps += 1;
                    report.note(format!(
                        "{id}: step {to} entered at {} (audit), planned for {planned_at}",
                        entry.time
                    ));
                }
            }
        }
        let mut entered_by_audit: HashMap<usize, usize> = HashMap::new();
        let mut skipped_by_audit: HashMap<usize, usize> = HashMap::new();
        for entry in audit
            .iter()
            .filter(|entry| entry.kind == EventKind::RolloutStep)
        {
            if let Some(to) = entry.details["to"].as_u64() {
                *entered_by_audit.entry(to as usize).or_default() += 1;
            }
            for skipped in entry.details["skipped"].as_array().into_iter().flatten() {
                if let Some(index) = skipped.as_u64() {
                    *skipped_by_audit.entry(index as usize).or_default() += 1;
                }
            }
        }
        let mut entered_by_event: HashMap<usize, usize> = HashMap::new();
        let mut skipped_by_event: HashMap<usize, usize> = HashMap::new();
        if let Some(rollout_events) = by_rollout.get(id.as_str()) {
            for event in rollout_events.values() {
                if event.kind != EventKind::RolloutStep {
                    continue;
                }
                if let Some(to) = event.to_step {
                    *entered_by_event.entry(to).or_default() += 1;
                }
                for index in &event.skipped {
                    *skipped_by_event.entry(*index).or_default() += 1;
                }
            }
        }
        for step in history {
            if step.skipped {
                let listed = skipped_by_audit.get(&step.index).copied().unwrap_or(0);
                let evented = skipped_by_event.get(&step.index).copied().unwrap_or(0);
                if listed != 1 || (events.is_some() && evented != 1) {
                    report.skipped_steps += 1;
                    report.note(format!(
                        "{id}: step {} skipped, listed by {listed} audit entries and {evented} events",
                        step.index
                    ));
                } else {
                    report.catch_up_skips += 1;
                }
            } else {
                report.steps_entered += 1;
                let audited = entered_by_audit.get(&step.index).copied().unwrap_or(0);
                let evented = entered_by_event.get(&step.index).copied().unwrap_or(0);
                if audited > 1 || evented > 1 {
                    report.double_advances += 1;
                    report.note(format!(
                        "{id}: step {} entered by {audited} audit entries and {evented} events",
                        step.index
                    ));
                } else if audited == 0 || (events.is_some() && evented == 0) {
                    report.skipped_steps += 1;
                    report.note(format!(
                        "{id}: step {} in the history without an audit entry ({audited}) or event ({evented})",
                        step.index
                    ));
                }
            }
        }
        // nothing entered or listed that the history does not hold
        let known: BTreeSet<usize> = history.iter().map(|step| step.index).collect();
        for index in entered_by_audit.keys().chain(entered_by_event.keys()) {
            if !known.contains(index) {
                report.double_advances += 1;
                report.note(format!("{id}: step {index} entered but not in the history"));
            }
        }
    }
}

/// Orders events of one commit (same version) apart.
fn kind_rank(kind: EventKind) -> u64 {
    match kind {
        EventKind::RolloutCreated => 1,
        EventKind::RolloutStarted => 2,
        EventKind::RolloutStep => 3,
        EventKind::RolloutCompleted => 4,
        EventKind::RolloutStopped => 5,
        _ => 9,
    }
}

/// Commands of a run and whether each was applied: `expected[flag]` lists the command ids
/// that must each have been committed exactly once, as read from the flag's audit. One
/// commit may append several entries (a rollout created and started, a step entered and the
/// rollout completed); they stand together in the audit with one time, so a commit is a run
/// of adjacent entries of the command with the same time and no kind twice.
pub async fn check_commands(
    cluster: &CommittedReader,
    expected: &BTreeMap<String, Vec<String>>,
    report: &mut Report,
) {
    for (flag, ids) in expected {
        let audit = cluster.flag_audit(flag).await;
        let commits = commits_by_command(&audit);
        for id in ids {
            report.commands_checked += 1;
            match commits.get(id.as_str()).copied().unwrap_or(0) {
                0 => {
                    report.lost_commands += 1;
                    report.note(format!("{flag}: command {id} never applied"));
                }
                1 => {}
                times => {
                    report.twice_applied += 1;
                    report.note(format!("{flag}: command {id} applied {times} times"));
                }
            }
        }
    }
}

/// How many commits each command id made, from an audit read oldest first (see
/// [`check_commands`]).
pub fn commits_by_command(audit: &[AuditEntry]) -> HashMap<&str, usize> {
    let mut commits: HashMap<&str, usize> = HashMap::new();
    let mut run: Option<(&str, Timestamp, Vec<EventKind>)> = None;
    for entry in audit {
        let Some(id) = entry.details["command_id"].as_str() else {
            run = None;
            continue;
        };
        let continues = run.as_ref().is_some_and(|(run_id, time, kinds)| {
            *run_id == id && *time == entry.time && !kinds.contains(&entry.kind)
        });
        match (&mut run, continues) {
            (Some((_, _, kinds)), true) => kinds.push(entry.kind),
            _ => {
                *commits.entry(id).or_default() += 1;
                run = Some((id, entry.time, vec![entry.kind]));
            }
        }
    }
    commits
}

#[derive(Debug, Default)]
struct MonitorState {
    last: HashMap<(String, String), u64>,
    samples: u64,
    regressions: u64,
    examples: Vec<String>,
    /// Until when versions may go back without counting (Redis lost its data: versions
    /// restart at 1, the one allowed exception).
    forgive_until: Option<tokio::time::Instant>,
}

/// Polls every watched replica for the versions it serves of `flags`, every 10 ms, and
/// counts any version lower than one the same replica served before.
pub struct VersionMonitor {
    state: Arc<Mutex<MonitorState>>,
    task: tokio::task::JoinHandle<()>,
}

impl VersionMonitor {
    pub fn start(replicas: Vec<Replica>, flags: Vec<String>) -> VersionMonitor {
        let state = Arc::new(Mutex::new(MonitorState::default()));
        let sink = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                for replica in &replicas {
                    let (name, seen): (&str, Vec<(String, u64)>) = match replica {
                        Replica::InProcess(name, handle) => (
                            name,
                            flags
                                .iter()
                                .filter_map(|flag| {
                                    handle.served_version(NS, flag).map(|v| (flag.clone(), v))
                                })
                                .collect(),
                        ),
                        Replica::Http(name, _) | Replica::Remote { name, .. } => {
                            match http::served_versions_as(
                                replica.http_addr(),
                                replica.bearer_token(),
                                NS,
                            )
                            .await
                            {
                                Some(versions) => (
                                    name,
                                    versions
                                        .into_iter()
                                        .filter(|(flag, _)| flags.contains(flag))
                                        .collect(),
                                ),
                                None => (name, Vec::new()),
                            }
                        }
                    };
                    let mut state = sink.lock().expect("monitor");
                    let forgiving = state
                        .forgive_until
                        .is_some_and(|until| tokio::time::Instant::now() < until);
                    for (flag, version) in seen {
                        state.samples += 1;
                        let key = (name.to_owned(), flag);
                        let last = state.last.get(&key).copied().unwrap_or(0);
                        if forgiving {
                            // what a replica serves before it rebuilt is no baseline
                            state.last.remove(&key);
                        } else if version < last {
                            state.regressions += 1;
                            if state.examples.len() < 5 {
                                state.examples.push(format!(
                                    "{} served {} at version {version} after {last}",
                                    key.0, key.1
                                ));
                            }
                        } else {
                            state.last.insert(key, version);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        VersionMonitor { state, task }
    }

    /// Redis loses its data (or goes back to an older copy): per-flag versions start again,
    /// so from now until `grace` has passed (the replicas' time to notice and rebuild)
    /// nothing counts, and the first version each replica serves after it is the new
    /// baseline. Called when the loss begins and again when Redis is back.
    pub fn data_lost(&self, grace: Duration) {
        let mut state = self.state.lock().expect("monitor");
        state.last.clear();
        state.forgive_until = Some(tokio::time::Instant::now() + grace);
    }

    /// Stops watching and adds the counts to `report`.
    pub fn finish(self, report: &mut Report) {
        self.task.abort();
        let state = self.state.lock().expect("monitor");
        report.version_samples += state.samples;
        report.regressions += state.regressions;
        for example in &state.examples {
            report.note(example.clone());
        }
    }
}
