//! Schedule edits (SPEC §12): `rollout.reschedule` replaces the steps after a running or
//! paused rollout's current one. The steps kept — those entered and the current one, with
//! its gate and timer — stay exactly as they are, so nobody's answer changes at the edit;
//! the new steps are checked as a create's phases or stages would be, and a percentage
//! rollout's first new step must rise above the share it serves now (shares never move
//! backwards). A percentage plan becomes a `phases` plan.

use crate::error::ValidationErrors;
use crate::machine::{Lifecycle, Rejection, RejectionCode, RolloutState};
use crate::plan::{compile_phases, compile_stages, Audience, Plan, PlanKind, Step, MAX_STEPS};
use crate::spec::{PhaseGateSpec, PhaseSpec, RescheduleStepSpec, StageSpec};

/// Why a reschedule is refused: the rollout cannot be rescheduled now, or the steps are
/// invalid (every problem, with its path under `steps`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RescheduleError {
    /// Not in a state that can be rescheduled.
    Rejected(Rejection),
    /// The new steps are invalid.
    Invalid(ValidationErrors),
}

/// The plan with the steps after the current one replaced by `steps`.
pub fn rescheduled_plan(
    plan: &Plan,
    state: &RolloutState,
    steps: &[RescheduleStepSpec],
) -> Result<Plan, RescheduleError> {
    let current = match (state.lifecycle, state.step) {
        (Lifecycle::Running | Lifecycle::Paused, Some(current)) => current,
        (Lifecycle::Queued, _) => {
            return Err(rejected(
                "rollout has not started: delete it and create it with the new plan",
            ))
        }
        (lifecycle, _) => {
            return Err(rejected(format!(
                "rollout is {}; only a running or paused rollout can be rescheduled",
                lifecycle.as_str()
            )))
        }
    };
    let kept = &plan.steps[..=current.min(plan.last_step())];
    if let Some(Audience::Stage {
        name,
        wave: Some(_),
        ..
    }) = kept.last().map(|step| &step.audience)
    {
        return Err(rejected(format!(
            "step {current} is a wave of stage {name:?} before its last: reschedule once the stage is released whole"
        )));
    }
    let mut errors = ValidationErrors::default();
    if steps.is_empty() {
        errors.push("steps", "give at least one step");
        return Err(RescheduleError::Invalid(errors));
    }
    // steps that do not even have their kind's fields are reported alone: compiling the
    // rest would misnumber them
    let new_steps = if plan.is_staged() {
        let stages = stages_of(steps, &mut errors);
        let kept_names: Vec<&str> = kept
            .iter()
            .filter_map(|step| match &step.audience {
                Audience::Stage { name, .. } => Some(name.as_str()),
                Audience::Share(_) => None,
            })
            .collect();
        match stages.len() == steps.len() {
            true => compile_stages(&stages, "steps", &kept_names, &mut errors).unwrap_or_default(),
            false => Vec::new(),
        }
    } else {
        let phases = phases_of(steps, &mut errors);
        match phases.len() == steps.len() {
            true => compile_phases(&phases, "steps", Some(plan.share_at(current)), &mut errors),
            false => Vec::new(),
        }
    };
    let total = kept.len() + new_steps.len();
    if total > MAX_STEPS {
        errors.push(
            "steps",
            format!("a plan may have at most {MAX_STEPS} steps; this one would have {total}"),
        );
    }
    if !errors.is_empty() {
        return Err(RescheduleError::Invalid(errors));
    }
    let mut rescheduled = plan.clone();
    rescheduled.steps = kept.iter().cloned().chain(new_steps).collect();
    if !plan.is_staged() {
        rescheduled.kind = PlanKind::Phases;
    }
    Ok(rescheduled)
}

/// The steps of `plan` after step `current`.
pub fn steps_after(plan: &Plan, current: usize) -> Vec<Step> {
    plan.steps.get(current + 1..).unwrap_or_default().to_vec()
}

fn phases_of(steps: &[RescheduleStepSpec], errors: &mut ValidationErrors) -> Vec<PhaseSpec> {
    steps
        .iter()
        .enumerate()
        .filter_map(|(index, step)| {
            let path = format!("steps[{index}]");
            if step.name.is_some() || step.labels.is_some() {
                errors.push(
                    format!("{path}.name"),
                    "a percentage rollout's steps take percentage, duration and gate, not stages",
                );
            }
            let gate = match &step.gate {
                None => None,
                Some(gate)
                    if gate.after.is_none()
                        && gate.min_completed_percentage.is_none()
                        && gate.max_errors.is_none() =>
                {
                    gate.approval
                        .clone()
                        .map(|approval| PhaseGateSpec { approval })
                }
                Some(_) => {
                    errors.push(
                        format!("{path}.gate"),
                        "a phase's gate takes only an approval; its time is its duration",
                    );
                    None
                }
            };
            let Some(percentage) = step.percentage else {
                errors.push(format!("{path}.percentage"), "give the step's percentage");
                return None;
            };
            Some(PhaseSpec {
                percentage,
                duration: step.duration.clone(),
                gate,
            })
        })
        .collect()
}

fn stages_of(steps: &[RescheduleStepSpec], errors: &mut ValidationErrors) -> Vec<StageSpec> {
    steps
        .iter()
        .enumerate()
        .filter_map(|(index, step)| {
            let path = format!("steps[{index}]");
            if step.percentage.is_some() || step.duration.is_some() {
                errors.push(
                    format!("{path}.percentage"),
                    "a label-stage rollout's steps take name, labels and gate, not percentages",
                );
            }
            let Some(name) = &step.name else {
                errors.push(format!("{path}.name"), "give the stage's name");
                return None;
            };
            Some(StageSpec {
                name: name.clone(),
                labels: step.labels.clone().unwrap_or_default(),
                gate: step.gate.clone(),
                percentages: None,
                gates: None,
            })
        })
        .collect()
}

fn rejected(message: impl Into<String>) -> RescheduleError {
    RescheduleError::Rejected(Rejection {
        code: RejectionCode::FailedPrecondition,
        message: message.into(),
        field: Some("rollout_id".into()),
    })
}
