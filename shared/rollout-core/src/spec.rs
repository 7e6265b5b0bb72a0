//! Rollout specs as operators write them (SPEC §3, §8.6): exactly one of `phases`, `preset`,
//! `manual`, `template` or `stages`. Fields keep their raw form (numbers, strings) so that
//! compilation can report each problem with its exact path.

use serde::{Deserialize, Serialize};

use crate::entity::Labels;
use crate::guard::GuardSpec;
use crate::window::WindowSpec;

/// A rollout as submitted with `rollout.create`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// Key of the flag whose target moves.
    pub flag: String,
    /// Rule id for a rule-level rollout; absent for the flag's default serve.
    #[serde(default)]
    pub rule: Option<String>,
    /// Variation the audience starts on.
    pub baseline: String,
    /// Variation the audience moves to.
    pub candidate: String,
    /// Percentage phases with durations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<Vec<PhaseSpec>>,
    /// One of `1hr`, `12hr`, `24hr`, `48hr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Weights at absolute times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<Vec<ManualStepSpec>>,
    /// Increment every hour, day or week.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateSpec>,
    /// Label stages for fleets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<StageSpec>>,
    /// Start at this UTC time (queued until then) instead of now.
    #[serde(default)]
    pub start_at: Option<String>,
    /// Wait in `queued` for an explicit `start` command.
    #[serde(default)]
    pub wait_for_start: bool,
    /// Reuse a cohort: the bucketing salt. Fresh and random when absent.
    #[serde(default)]
    pub salt: Option<String>,
    /// Attribute to bucket on instead of the entity id (e.g. `account_id`).
    #[serde(default)]
    pub stickiness: Option<String>,
    /// Health guard checked at every tick.
    #[serde(default)]
    pub guard: Option<GuardSpec>,
    /// Several guards instead of `guard` (SPEC §12), each judged on its own window with its
    /// own limits, minimum samples and action.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<GuardSpec>,
    /// Time windows: timer gates open only inside one of them (SPEC §12).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowSpec>,
    /// Start as written even when the target serves something other than the baseline or
    /// a split this rollout can continue (see [`crate::continuation`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace_current_serve: bool,
}

/// One percentage phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    /// Cumulative share, (0, 100], up to four decimals.
    pub percentage: f64,
    /// How long the phase lasts; optional on the final phase (then a bake time, if given).
    /// With an approval gate, the time runs from the approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// What else must happen before the next phase: an approval (SPEC §12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<PhaseGateSpec>,
}

/// A phase's extra gate: `{approval: {approvers: N}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseGateSpec {
    /// Distinct operators who must approve the phase before its duration runs.
    pub approval: ApprovalSpec,
}

/// An approval gate: `N` distinct actors send `rollout.approve` for the current step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    /// How many distinct actors must approve, 1..=[`crate::plan::MAX_APPROVERS`].
    pub approvers: u32,
}

/// One step of a manual schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualStepSpec {
    /// Cumulative share, (0, 100].
    pub weight: f64,
    /// When the step begins, RFC 3339 UTC.
    pub execute_at: String,
}

/// An increment repeated at a frequency until 100 %.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Percentage added per phase, (0, 100].
    pub increment: f64,
    /// `hourly`, `daily` or `weekly`.
    pub frequency: String,
    /// When phase 0 executes; now when absent.
    #[serde(default)]
    pub start_at: Option<String>,
}

/// One label stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Display name, unique; `unassigned` is reserved for the implicit last stage.
    pub name: String,
    /// Labels a member must all have, with equal values.
    #[serde(default)]
    pub labels: Labels,
    /// What releases the next stage once this one is released; `continue` when absent.
    /// With waves, each wave waits for it before the next wave (SPEC §12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<StageGateSpec>,
    /// Waves inside the stage (SPEC §12): the stage's members are released by cumulative
    /// share, bucketed like users on their id (`[10, 50, 100]`); strictly rising, ending at
    /// 100. The whole stage at once when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentages: Option<Vec<f64>>,
    /// One gate per wave, instead of `gate` for every wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<Vec<StageGateSpec>>,
}

/// A stage gate: after a duration, or when enough members completed, either of them
/// (or nothing more) after an approval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageGateSpec {
    /// Distinct operators who must approve the stage first; `after` then runs from the
    /// approval, and a completion gate is judged once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSpec>,
    /// Release the next stage this long after this one was released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Release the next stage once this percentage of members applied the candidate...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_completed_percentage: Option<f64>,
    /// ...and no more than this many reported errors (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<u64>,
}

/// One step of a `rollout.reschedule` (SPEC §12): a phase (`percentage`, `duration`, a
/// `gate` with an approval) for percentage rollouts, a stage (`name`, `labels`, `gate`) for
/// label-stage ones. Checked like a create's phases or stages, with paths under `steps`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RescheduleStepSpec {
    /// A phase's cumulative share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
    /// A phase's duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// A stage's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A stage's labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// A stage's gate, or a phase's approval (`{approval: {approvers: N}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<StageGateSpec>,
}
