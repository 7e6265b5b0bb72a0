//! Read-side pieces shared by command results and queries: a rollout's steps (audience,
//! gate, planned and actual times, stage counts), its gates and kind, and the pure mappings
//! that build them from the core's [`Plan`] and [`RolloutState`].

use rollout_core::plan::{Audience, Gate, PlanKind, Step, Target};
use rollout_core::{DurationMs, Labels, Plan, RolloutState, Share, StageCounts, Timestamp};
use serde::{Deserialize, Serialize};

/// Which kind of spec a rollout was created from (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutKind {
    /// Percentage phases with durations.
    Phases,
    /// A named preset (`24hr`); the name travels beside it as `preset`.
    Preset,
    /// Weights at absolute times.
    Manual,
    /// Increment at a frequency.
    Template,
    /// Label stages.
    Stages,
}

impl RolloutKind {
    /// The kind of a compiled plan.
    pub fn of(kind: &PlanKind) -> RolloutKind {
        match kind {
            PlanKind::Phases => RolloutKind::Phases,
            PlanKind::Preset(_) => RolloutKind::Preset,
            PlanKind::Manual => RolloutKind::Manual,
            PlanKind::Template => RolloutKind::Template,
            PlanKind::Stages => RolloutKind::Stages,
        }
    }

    /// The preset name of a preset plan.
    pub fn preset_name(kind: &PlanKind) -> Option<String> {
        match kind {
            PlanKind::Preset(name) => Some(name.clone()),
            _ => None,
        }
    }
}

/// The rule id a rule-level plan moves; `None` for the default serve.
pub(crate) fn target_rule(plan: &Plan) -> Option<String> {
    match &plan.target {
        Target::Default => None,
        Target::Rule(rule) => Some(rule.clone()),
    }
}

/// What kind of gate ends a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    /// Time spent in the step.
    Timer,
    /// An operator's `continue`.
    Continue,
    /// Enough stage members applied the candidate with few enough errors.
    Completion,
    /// Opens at once (a final step that completes on entry).
    Immediate,
}

/// A gate as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateStatus {
    /// Which gate.
    pub kind: GateKind,
    /// Timer length (`6h`), for timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<DurationMs>,
    /// Share of stage members that must have applied the candidate, for completion gates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_completed_percentage: Option<Share>,
    /// Most error reports tolerated, for completion gates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<u64>,
    /// Distinct approvers the step waits for before this gate runs (a timer then counts
    /// from the approval); absent when the step needs no approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<u32>,
}

impl GateStatus {
    /// The gate of `step`, with the approval it waits for first.
    pub fn of_step(step: &Step) -> GateStatus {
        GateStatus {
            approvers: step.approval.map(|approval| approval.approvers),
            ..GateStatus::from(&step.gate)
        }
    }
}

impl From<&Gate> for GateStatus {
    fn from(gate: &Gate) -> GateStatus {
        let bare = |kind| GateStatus {
            kind,
            duration: None,
            min_completed_percentage: None,
            max_errors: None,
            approvers: None,
        };
        match gate {
            Gate::Timer(duration) => GateStatus {
                duration: Some(*duration),
                ..bare(GateKind::Timer)
            },
            Gate::Continue => bare(GateKind::Continue),
            Gate::Completion {
                min_completed,
                max_errors,
            } => GateStatus {
                min_completed_percentage: Some(*min_completed),
                max_errors: Some(*max_errors),
                ..bare(GateKind::Completion)
            },
            Gate::Immediate => bare(GateKind::Immediate),
        }
    }
}

/// One step of a rollout as `status`, `create` and `plan` replies show it: a share
/// (`percentage`) or a label stage (`name` + `labels`), its gate, planned and actual start,
/// and for stages the fleet counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStatus {
    /// Position in the plan, from 0.
    pub index: usize,
    /// Cumulative share of a percentage step, as a percentage number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Share>,
    /// Stage name of a label-stage step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels a member of the stage has (empty for `unassigned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// A wave before its stage's last (SPEC §12): the share of the stage's members it
    /// releases, bucketed on their ids (its counts are the members it releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<Share>,
    /// When the step began or, projected from now, will begin; absent beyond a gate that
    /// waits for a command or for health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_at: Option<Timestamp>,
    /// When it actually began; absent if not yet, or skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// Passed over by catch-up after downtime.
    #[serde(default)]
    pub skipped: bool,
    /// What ends this step.
    pub gate: GateStatus,
    /// Per-stage fleet counts, for label stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<StageCounts>,
}

impl StepStatus {
    /// Every step of `plan` as it stands in `state` at `now` (the one clock): recorded times
    /// for steps reached, projected times for later ones. `counts` are left for the caller,
    /// who reads them from Redis.
    pub fn for_rollout(plan: &Plan, state: &RolloutState, now: Timestamp) -> Vec<StepStatus> {
        let planned = state.projected_starts(plan, now);
        plan.steps
            .iter()
            .enumerate()
            .map(|(index, step)| {
                let record = state.history.iter().find(|record| record.index == index);
                let (percentage, name, labels, wave) = match &step.audience {
                    Audience::Share(share) => (Some(*share), None, None, None),
                    Audience::Stage { name, labels, wave } => {
                        (None, Some(name.clone()), Some(labels.clone()), *wave)
                    }
                };
                StepStatus {
                    index,
                    percentage,
                    name,
                    labels,
                    wave,
                    planned_at: planned.get(index).copied().flatten(),
                    started_at: record.and_then(|record| record.entered_at),
                    skipped: record.is_some_and(|record| record.skipped),
                    gate: GateStatus::of_step(step),
                    counts: None,
                }
            })
            .collect()
    }

    /// The steps of a plan that has not been stored: planned times as if it were created at
    /// `now`, nothing started.
    pub fn for_plan(plan: &Plan, now: Timestamp) -> Vec<StepStatus> {
        let created = RolloutState::created(plan, now);
        let mut steps = StepStatus::for_rollout(plan, &created.state, now);
        for step in &mut steps {
            step.started_at = None;
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::plan::{compile, CompileContext, DEFAULT_MIN_PHASE_INTERVAL};
    use rollout_core::{Flag, RolloutSpec};

    fn flag() -> Flag {
        serde_json::from_value(serde_json::json!({
            "key": "new-checkout",
            "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
            "off_variation": "off", "default": {"variation": "off"}}))
        .expect("flag")
    }

    fn plan(spec: serde_json::Value, now: Timestamp) -> Plan {
        let spec: RolloutSpec = serde_json::from_value(spec).expect("spec");
        let context = CompileContext {
            now,
            min_phase_interval: DEFAULT_MIN_PHASE_INTERVAL,
            fresh_salt: "salt",
        };
        compile(&spec, &flag(), &context).expect("compiles")
    }

    #[test]
    fn phases_project_their_times_from_now() {
        let now = Timestamp::parse_rfc3339("2026-12-01T09:00:00Z").expect("time");
        let plan = plan(
            serde_json::json!({"flag": "new-checkout", "baseline": "off", "candidate": "on",
                "phases": [{"percentage": 5, "duration": "6h"}, {"percentage": 100}]}),
            now,
        );
        let created = RolloutState::created(&plan, now);
        let steps = StepStatus::for_rollout(&plan, &created.state, now);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].percentage, Some(Share::from_ppm(50_000)));
        assert_eq!(steps[0].gate.kind, GateKind::Timer);
        assert_eq!(steps[0].gate.duration, Some(DurationMs::from_hours(6)));
        assert_eq!(steps[0].planned_at, Some(now));
        assert_eq!(steps[0].started_at, Some(now));
        assert_eq!(
            steps[1].planned_at,
            Some(now.plus(DurationMs::from_hours(6)))
        );
        assert_eq!(steps[1].started_at, None);
        assert_eq!(steps[1].gate.kind, GateKind::Immediate);

        let preview = StepStatus::for_plan(&plan, now);
        assert_eq!(preview[0].started_at, None);
        assert_eq!(preview[1].planned_at, steps[1].planned_at);
    }

    #[test]
    fn a_late_transition_is_overdue_and_a_pause_keeps_what_is_left() {
        use crate::queries::{RolloutStatus, RolloutSummary, OVERDUE_AFTER};
        let now = Timestamp::parse_rfc3339("2026-12-01T09:00:00Z").expect("time");
        let plan = plan(
            serde_json::json!({"flag": "new-checkout", "baseline": "off", "candidate": "on",
                "phases": [{"percentage": 5, "duration": "1h"}, {"percentage": 100}]}),
            now,
        );
        let mut state = RolloutState::created(&plan, now).state;
        let due = now.plus(DurationMs::from_hours(1));
        // on time, and a little late (a ticker taking over): not overdue
        for at in [now, due.plus(OVERDUE_AFTER)] {
            let status = RolloutStatus::new("r-1", &plan, &state, now, at);
            assert_eq!((status.due_at, status.overdue_ms), (Some(due), None));
        }
        // 42 s beyond the grace: overdue, in the status and in the list alike
        let late = due
            .plus(OVERDUE_AFTER)
            .plus(DurationMs::from_millis(42_000));
        let status = RolloutStatus::new("r-1", &plan, &state, now, late);
        let late_ms = u64::try_from(OVERDUE_AFTER.as_millis()).expect("positive") + 42_000;
        assert_eq!(status.overdue_ms, Some(late_ms));
        assert_eq!(status.at, Some(late));
        assert_eq!(
            RolloutSummary::new("r-1", &plan, &state, now, late).overdue_ms,
            Some(late_ms)
        );
        // paused 20 minutes in: 40 minutes of the step are left, and nothing is due
        state.lifecycle = rollout_core::Lifecycle::Paused;
        state.paused_at = Some(now.plus(DurationMs::from_minutes(20)));
        let paused = RolloutStatus::new("r-1", &plan, &state, now, late);
        assert_eq!(paused.remaining_ms, Some(40 * 60_000));
        assert_eq!((paused.due_at, paused.overdue_ms), (None, None));
    }

    #[test]
    fn stages_show_name_labels_and_gate() {
        let now = Timestamp::from_millis(0);
        let plan = plan(
            serde_json::json!({"flag": "new-checkout", "baseline": "off", "candidate": "on",
                "stages": [{"name": "canary", "labels": {"env": "staging"},
                            "gate": {"min_completed_percentage": 90, "max_errors": 2}}]}),
            now,
        );
        let steps = StepStatus::for_plan(&plan, now);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].name.as_deref(), Some("canary"));
        assert_eq!(steps[0].gate.kind, GateKind::Completion);
        assert_eq!(steps[0].gate.max_errors, Some(2));
        assert_eq!(steps[1].name.as_deref(), Some("unassigned"));
        assert_eq!(RolloutKind::of(&plan.kind), RolloutKind::Stages);
    }
}
