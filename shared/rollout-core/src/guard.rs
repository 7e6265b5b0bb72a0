//! Health guards (SPEC §6): a condition on the outcome counters of a rollout's candidate
//! and baseline over a window. The verdict is pure; the counters come from Redis.

use serde::{Deserialize, Serialize};

use crate::error::ValidationErrors;
use crate::share::Share;
use crate::time::DurationMs;

/// A guard as written in a rollout spec or as a flag's kill switch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSpec {
    /// Only `error_rate` today.
    #[serde(default = "default_metric")]
    pub metric: String,
    /// Breach when the candidate's error rate exceeds the baseline's times this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ratio_to_baseline: Option<f64>,
    /// Breach when the candidate's error rate exceeds this percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Fewer samples than this in the window decide nothing: one number for both sides, or
    /// `{candidate: N, baseline: M}`.
    #[serde(default = "default_min_samples")]
    pub min_samples: MinSamples,
    /// Counting window, e.g. `5m`.
    #[serde(default = "default_window")]
    pub window: String,
    /// What a breach does to a rollout: `pause` (the default), `stop`, `rollback`,
    /// `rollback_gradual` (walking down `gradual`) or `warn` (an event and an audit entry,
    /// once per window while breached). A flag's kill switch always disables the flag and
    /// takes no action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The walk down of `rollback_gradual`: shares strictly decreasing, ending at 0 (those
    /// not below the share served at the breach are skipped), one every `every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradual: Option<GradualSpec>,
}

/// Minimum samples per side: one number for both, or each side's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MinSamples {
    /// The same on both sides.
    Both(u64),
    /// Per side.
    Sides {
        /// Candidate samples needed.
        candidate: u64,
        /// Baseline samples needed (where a ratio compares the baseline).
        baseline: u64,
    },
}

impl MinSamples {
    fn sides(self) -> (u64, u64) {
        match self {
            MinSamples::Both(both) => (both, both),
            MinSamples::Sides {
                candidate,
                baseline,
            } => (candidate, baseline),
        }
    }
}

/// A gradual walk down: `{steps: [50, 20, 0], every: "5m"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GradualSpec {
    /// Shares in percent, strictly decreasing, ending at 0.
    pub steps: Vec<f64>,
    /// Time between two, e.g. `5m`.
    pub every: String,
}

impl GradualSpec {
    /// Checks the walk, reporting problems under `path`; the shares and the interval.
    pub fn compile(
        &self,
        path: &str,
        errors: &mut ValidationErrors,
    ) -> Option<(Vec<Share>, DurationMs)> {
        // `path.steps`, or `steps` at the top of a command
        let field = |name: &str| {
            if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            }
        };
        let before = errors.errors.len();
        let mut shares = Vec::with_capacity(self.steps.len());
        if self.steps.is_empty() || self.steps.len() > MAX_GRADUAL_STEPS {
            errors.push(
                field("steps"),
                format!("give 1..={MAX_GRADUAL_STEPS} shares, ending at 0"),
            );
        }
        for (index, percentage) in self.steps.iter().enumerate() {
            let step_field = field(&format!("steps[{index}]"));
            match Share::from_percentage(*percentage) {
                Ok(share) => {
                    if shares.last().is_some_and(|previous| share >= *previous) {
                        errors.push(step_field, "must be below the previous share");
                    }
                    shares.push(share);
                }
                Err(message) => errors.push(step_field, message),
            }
        }
        if shares.last().is_some_and(|last| *last != Share::NONE) {
            errors.push(
                field(&format!("steps[{}]", self.steps.len() - 1)),
                "the last share is 0 (everyone back on the baseline)",
            );
        }
        let every = match DurationMs::parse(&self.every) {
            Ok(every) if every.as_millis() > 0 => Some(every),
            Ok(_) => {
                errors.push(field("every"), "must be greater than zero");
                None
            }
            Err(message) => {
                errors.push(field("every"), message);
                None
            }
        };
        (errors.errors.len() == before).then_some((shares, every?))
    }
}

/// Most shares one gradual rollback may walk through.
pub const MAX_GRADUAL_STEPS: usize = 100;

fn default_metric() -> String {
    "error_rate".to_owned()
}
fn default_min_samples() -> MinSamples {
    MinSamples::Both(100)
}
fn default_window() -> String {
    "5m".to_owned()
}

/// What a guard breach does to the rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    /// Hold at the current share until resumed.
    Pause,
    /// End as stopped at the current share.
    Stop,
    /// End as rolled back: everyone gets the baseline.
    Rollback,
    /// Walk the share back down gradually (the guard's `gradual`).
    RollbackGradual,
    /// Only tell: an event and an audit entry, once per window while breached.
    Warn,
}

impl GuardAction {
    /// How far the action goes, to pick one when several guards breach at once: a
    /// rollback over a gradual one over a stop over a pause; `warn` changes nothing.
    pub fn severity(self) -> u8 {
        match self {
            GuardAction::Warn => 0,
            GuardAction::Pause => 1,
            GuardAction::Stop => 2,
            GuardAction::RollbackGradual => 3,
            GuardAction::Rollback => 4,
        }
    }
}

/// A validated guard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Guard {
    /// Ratio limit against the baseline's error rate.
    pub max_ratio_to_baseline: Option<f64>,
    /// Absolute limit on the candidate's error rate, as a fraction (0.05 = 5 %).
    pub max_error_rate: Option<f64>,
    /// Minimum candidate samples (and baseline samples, unless `min_baseline_samples`).
    pub min_samples: u64,
    /// Minimum baseline samples, when it differs from `min_samples`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_baseline_samples: Option<u64>,
    /// Counting window.
    pub window: DurationMs,
    /// What a breach does.
    pub action: GuardAction,
    /// The walk down of `rollback_gradual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradual: Option<(Vec<Share>, DurationMs)>,
}

/// Outcome counters of one side over the guard's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SideCounts {
    /// Successful outcomes.
    pub success: u64,
    /// Failed outcomes.
    pub error: u64,
}

impl SideCounts {
    /// All samples.
    pub fn samples(self) -> u64 {
        self.success.saturating_add(self.error)
    }

    /// Errors over samples, 0 without samples.
    pub fn error_rate(self) -> f64 {
        let samples = self.samples();
        if samples == 0 {
            0.0
        } else {
            self.error as f64 / samples as f64
        }
    }
}

/// Counters of both sides of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Entities served the candidate.
    pub candidate: SideCounts,
    /// Entities served the baseline.
    pub baseline: SideCounts,
}

/// The figures behind a verdict, carried in breach events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuardFigures {
    /// Candidate error rate (fraction).
    pub candidate_error_rate: f64,
    /// Baseline error rate (fraction).
    pub baseline_error_rate: f64,
    pub candidate_samples: u64,
    pub baseline_samples: u64,
    /// Which limit was crossed, e.g. `error rate 7.5% > 5%`.
    pub limit: String,
}

/// What a guard says about the counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum GuardVerdict {
    /// Too few samples to judge.
    InsufficientData,
    /// Within limits.
    Healthy,
    /// A limit was crossed.
    Breached(GuardFigures),
}

impl GuardSpec {
    /// Validates and compiles; problems are reported under `path`.
    pub fn compile(&self, path: &str) -> Result<Guard, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if self.metric != "error_rate" {
            errors.push(
                format!("{path}.metric"),
                format!("unknown metric {:?}; supported: error_rate", self.metric),
            );
        }
        if self.max_ratio_to_baseline.is_none() && self.max_error_rate.is_none() {
            errors.push(
                path.to_owned(),
                "give max_ratio_to_baseline, max_error_rate or both",
            );
        }
        if let Some(ratio) = self.max_ratio_to_baseline {
            if !ratio.is_finite() || !(1.0..=1000.0).contains(&ratio) {
                errors.push(
                    format!("{path}.max_ratio_to_baseline"),
                    "must be between 1 and 1000",
                );
            }
        }
        if let Some(rate) = self.max_error_rate {
            if !rate.is_finite() || !(0.0..=100.0).contains(&rate) {
                errors.push(
                    format!("{path}.max_error_rate"),
                    "must be a percentage in 0..=100",
                );
            }
        }
        let (min_candidate, min_baseline) = self.min_samples.sides();
        for (side, samples) in [("candidate", min_candidate), ("baseline", min_baseline)] {
            if samples == 0 || samples > 1_000_000_000 {
                let field = match self.min_samples {
                    MinSamples::Both(_) => format!("{path}.min_samples"),
                    MinSamples::Sides { .. } => format!("{path}.min_samples.{side}"),
                };
                if !errors.has_field(&field) {
                    errors.push(field, "must be between 1 and 10^9");
                }
            }
        }
        let window = match DurationMs::parse(&self.window) {
            Ok(window) if window.as_millis() >= 1_000 && window <= DurationMs::from_hours(24) => {
                window
            }
            Ok(_) => {
                errors.push(format!("{path}.window"), "must be between 1s and 24h");
                DurationMs::default()
            }
            Err(message) => {
                errors.push(format!("{path}.window"), message);
                DurationMs::default()
            }
        };
        let action = match self.action.as_deref().unwrap_or("pause") {
            "pause" => GuardAction::Pause,
            "stop" => GuardAction::Stop,
            "rollback" => GuardAction::Rollback,
            "rollback_gradual" => GuardAction::RollbackGradual,
            "warn" => GuardAction::Warn,
            other => {
                errors.push(
                    format!("{path}.action"),
                    format!(
                        "unknown action {other:?}; use pause, stop, rollback, rollback_gradual or warn"
                    ),
                );
                GuardAction::Pause
            }
        };
        let gradual = match (&self.gradual, action) {
            (Some(gradual), GuardAction::RollbackGradual) => {
                gradual.compile(&format!("{path}.gradual"), &mut errors)
            }
            (None, GuardAction::RollbackGradual) => {
                errors.push(
                    format!("{path}.gradual"),
                    "rollback_gradual walks down {steps, every}; give them",
                );
                None
            }
            (Some(_), _) => {
                errors.push(
                    format!("{path}.gradual"),
                    "only the rollback_gradual action walks down",
                );
                None
            }
            (None, _) => None,
        };
        errors.into_result(Guard {
            max_ratio_to_baseline: self.max_ratio_to_baseline,
            max_error_rate: self.max_error_rate.map(|percentage| percentage / 100.0),
            min_samples: min_candidate,
            min_baseline_samples: (min_baseline != min_candidate).then_some(min_baseline),
            window,
            action,
            gradual,
        })
    }
}

impl Guard {
    /// Baseline samples a ratio limit needs.
    pub fn min_baseline(&self) -> u64 {
        self.min_baseline_samples.unwrap_or(self.min_samples)
    }

    /// Judges the counters. The absolute limit needs `min_samples` candidate samples; the
    /// ratio limit needs `min_samples` on both sides. A limit that lacks its samples is never
    /// taken as passed: without a breach of the other limit, the verdict is
    /// [`GuardVerdict::InsufficientData`].
    pub fn verdict(&self, counts: &OutcomeCounts) -> GuardVerdict {
        let candidate_samples = counts.candidate.samples();
        let baseline_samples = counts.baseline.samples();
        let candidate_rate = counts.candidate.error_rate();
        let baseline_rate = counts.baseline.error_rate();
        let figures = |limit: String| GuardFigures {
            candidate_error_rate: candidate_rate,
            baseline_error_rate: baseline_rate,
            candidate_samples,
            baseline_samples,
            limit,
        };
        if candidate_samples < self.min_samples {
            return GuardVerdict::InsufficientData;
        }
        if let Some(limit) = self.max_error_rate {
            if candidate_rate > limit {
                return GuardVerdict::Breached(figures(format!(
                    "candidate error rate {:.4}% > {:.4}%",
                    candidate_rate * 100.0,
                    limit * 100.0
                )));
            }
        }
        if let Some(ratio) = self.max_ratio_to_baseline {
            if baseline_samples < self.min_baseline() {
                return GuardVerdict::InsufficientData;
            }
            if candidate_rate > baseline_rate * ratio {
                return GuardVerdict::Breached(figures(format!(
                    "candidate error rate {:.4}% > baseline {:.4}% x {ratio}",
                    candidate_rate * 100.0,
                    baseline_rate * 100.0
                )));
            }
        }
        GuardVerdict::Healthy
    }

    /// What the guard lacks to judge `counts`, in words; `None` when every side it compares
    /// has `min_samples`.
    pub fn missing_samples(&self, counts: &OutcomeCounts) -> Option<String> {
        let candidate_samples = counts.candidate.samples();
        let baseline_samples = counts.baseline.samples();
        let compares_baseline = self.max_ratio_to_baseline.is_some();
        let enough = candidate_samples >= self.min_samples
            && (!compares_baseline || baseline_samples >= self.min_baseline());
        if enough {
            return None;
        }
        Some(
            if compares_baseline && self.min_baseline() != self.min_samples {
                format!(
                "{candidate_samples} candidate and {baseline_samples} baseline samples, {} and {} needed",
                self.min_samples,
                self.min_baseline()
            )
            } else if compares_baseline {
                format!(
                "{candidate_samples} candidate and {baseline_samples} baseline samples, {} needed on each side",
                self.min_samples
            )
            } else {
                format!(
                    "{candidate_samples} candidate samples, {} needed",
                    self.min_samples
                )
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_guard() -> GuardSpec {
        serde_json::from_str(
            r#"{"metric": "error_rate", "max_ratio_to_baseline": 1.5, "min_samples": 100,
                "window": "5m", "action": "rollback"}"#,
        )
        .expect("spec example parses")
    }

    fn counts(candidate: (u64, u64), baseline: (u64, u64)) -> OutcomeCounts {
        OutcomeCounts {
            candidate: SideCounts {
                success: candidate.0,
                error: candidate.1,
            },
            baseline: SideCounts {
                success: baseline.0,
                error: baseline.1,
            },
        }
    }

    #[test]
    fn ratio_guard_needs_samples_on_both_sides() {
        let guard = spec_guard().compile("guard").expect("valid");
        assert_eq!(guard.action, GuardAction::Rollback);
        assert_eq!(guard.window, DurationMs::from_minutes(5));
        assert_eq!(
            guard.verdict(&counts((50, 49), (1000, 10))),
            GuardVerdict::InsufficientData
        );
        assert_eq!(
            guard.verdict(&counts((990, 10), (50, 0))),
            GuardVerdict::InsufficientData
        );
    }

    #[test]
    fn ratio_guard_breaches_above_one_and_a_half_times_baseline() {
        let guard = spec_guard().compile("guard").expect("valid");
        // baseline 2 %, candidate 3 % = exactly 1.5x: healthy
        assert_eq!(
            guard.verdict(&counts((970, 30), (980, 20))),
            GuardVerdict::Healthy
        );
        // candidate 4 % > 3 %
        let verdict = guard.verdict(&counts((960, 40), (980, 20)));
        let GuardVerdict::Breached(figures) = verdict else {
            panic!("expected a breach, got {verdict:?}");
        };
        assert_eq!(figures.candidate_samples, 1000);
        assert!((figures.candidate_error_rate - 0.04).abs() < 1e-12);
        assert!((figures.baseline_error_rate - 0.02).abs() < 1e-12);
    }

    #[test]
    fn absolute_guard_breaches_above_its_rate() {
        let mut spec = spec_guard();
        spec.max_ratio_to_baseline = None;
        spec.max_error_rate = Some(5.0);
        let guard = spec.compile("guard").expect("valid");
        assert_eq!(
            guard.verdict(&counts((95, 5), (0, 0))),
            GuardVerdict::Healthy
        );
        assert!(matches!(
            guard.verdict(&counts((94, 6), (0, 0))),
            GuardVerdict::Breached(_)
        ));
    }

    #[test]
    fn a_ratio_limit_without_baseline_samples_never_passes() {
        // both limits: the candidate is within 5 %, but 10 baseline samples cannot say
        // whether it is within 1.5x the baseline, so the guard cannot call it healthy
        let mut spec = spec_guard();
        spec.max_error_rate = Some(5.0);
        let guard = spec.compile("guard").expect("valid");
        assert_eq!(
            guard.verdict(&counts((990, 10), (10, 0))),
            GuardVerdict::InsufficientData
        );
        assert!(matches!(
            guard.verdict(&counts((900, 100), (10, 0))),
            GuardVerdict::Breached(_)
        ));
        assert_eq!(
            guard.verdict(&counts((990, 10), (990, 10))),
            GuardVerdict::Healthy
        );
    }

    #[test]
    fn invalid_guards_name_each_field() {
        let spec = GuardSpec {
            metric: "latency".into(),
            max_ratio_to_baseline: Some(0.5),
            max_error_rate: None,
            min_samples: MinSamples::Both(0),
            window: "forever".into(),
            action: Some("explode".into()),
            gradual: None,
        };
        let errors = spec.compile("rollout.guard").expect_err("invalid");
        for field in [
            "rollout.guard.metric",
            "rollout.guard.max_ratio_to_baseline",
            "rollout.guard.min_samples",
            "rollout.guard.window",
            "rollout.guard.action",
        ] {
            assert!(errors.has_field(field), "missing {field}: {errors}");
        }
    }
}
