//! The report of a simulation run: operations by kind and how they went, faults by kind,
//! the counted outcomes of the chaos [`Report`], each invariant's checks and violations, the
//! generators switched off for open defects, and — in every failure message — the seed and
//! the command that replays it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::invariants::{Findings, INVARIANTS, LIVENESS};
use super::replay_command;
use crate::support::checks::Report;

/// What one simulation run did and found.
#[derive(Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub schedule_digest: u64,
    /// How long the chaos phase lasted (operations and faults).
    pub chaos: Duration,
    /// The whole run, start-up and checks included.
    pub wall: Duration,
    /// Operations by kind, then by how they went (`ok`, an error code, `unanswered`).
    pub operations: BTreeMap<String, BTreeMap<String, u64>>,
    /// Operations not performed, by kind and why.
    pub skipped: BTreeMap<String, u64>,
    /// Generators switched off, with why (the open defect each hides).
    pub switched_off: Vec<(String, String)>,
    /// Faults, leader changes, fence rejections, steps, commands, versions, oracle.
    pub counted: Report,
    pub findings: Findings,
}

impl SimReport {
    pub fn print(&self) {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "=== simulation seed={} (schedule digest {:016x}) ===",
            self.seed, self.schedule_digest
        );
        let _ = writeln!(
            text,
            "chaos phase {} s, whole run {} s",
            self.chaos.as_secs(),
            self.wall.as_secs()
        );
        let total: u64 = self
            .operations
            .values()
            .flat_map(|outcomes| outcomes.values())
            .sum();
        let _ = writeln!(text, "operations: {total}");
        for (kind, outcomes) in &self.operations {
            let count: u64 = outcomes.values().sum();
            let how: Vec<String> = outcomes
                .iter()
                .map(|(outcome, times)| format!("{outcome} {times}"))
                .collect();
            let _ = writeln!(text, "  {kind:<42} {count:>6}  ({})", how.join(", "));
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(text, "not performed:");
            for (what, count) in &self.skipped {
                let _ = writeln!(text, "  {what}: {count}");
            }
        }
        for (generator, why) in &self.switched_off {
            let _ = writeln!(
                text,
                "switched off: {generator} — {why} (ROLLOUT_SIM_ENABLE={generator} runs it)"
            );
        }
        let _ = writeln!(text, "invariants (checked / violated):");
        for invariant in INVARIANTS {
            let tally = self.findings.tally(invariant);
            let _ = writeln!(
                text,
                "  {invariant:<60} {:>7} / {}",
                tally.checked, tally.violations
            );
        }
        for (invariant, examples) in &self.findings.examples {
            for example in examples {
                let _ = writeln!(text, "VIOLATION [{invariant}] {example}");
            }
        }
        println!("{text}");
        self.counted.print();
    }

    /// Everything that makes the run fail: violations, and checks that had nothing to check.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for (what, count) in self.counted.counted_violations() {
            if count > 0 {
                failures.push(format!("{count} {what}"));
            }
        }
        for invariant in INVARIANTS {
            let tally = self.findings.tally(invariant);
            if tally.violations > 0 {
                failures.push(format!("{} violations of: {invariant}", tally.violations));
            }
        }
        let vacuous = [
            (self.counted.faults_total(), "injected no fault"),
            (self.counted.steps_entered, "saw no step entered"),
            (
                self.counted.oracle_samples,
                "compared no served answer with the committed state",
            ),
            (
                self.counted.commands_checked,
                "checked no command in the audit",
            ),
            (
                self.findings.tally(LIVENESS).checked,
                "checked no due transition after the faults",
            ),
        ];
        for (count, what) in vacuous {
            if count == 0 {
                failures.push(format!(
                    "the run {what}: a check that cannot fail proves nothing"
                ));
            }
        }
        failures
    }

    /// Prints, then fails with the seed and the replay command if anything failed.
    pub fn assert_clean(&self) {
        self.print();
        let failures = self.failures();
        assert!(
            failures.is_empty(),
            "simulation seed={} failed:\n- {}\nreplay: {}\n(timing comes from real servers, so a replay runs the same operations but may interleave them differently)",
            self.seed,
            failures.join("\n- "),
            replay_command(self.seed)
        );
    }
}
