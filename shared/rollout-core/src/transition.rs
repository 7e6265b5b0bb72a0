//! One rollout transition, from decision to the records to write: the step function's
//! outcome and what it does to the rollout's flag (SPEC §5), and when the ticker should
//! look at the rollout next. The planner (commands), the ticker (ticks, kill switches) and
//! every fixture that creates or moves a rollout go through [`create`] or [`apply`], so
//! there is one rule for what a move leaves behind.

use crate::machine::{
    step, Effect, Event, Lifecycle, Rejection, RolloutState, StepOutcome, WaitingFor,
};
use crate::plan::{Plan, Target};
use crate::record::{FlagRecord, RolloutRecord};
use crate::reschedule::{rescheduled_plan, steps_after, RescheduleError};
use crate::spec::RescheduleStepSpec;
use crate::spec::RolloutSpec;
use crate::time::{DurationMs, Timestamp};

/// How soon the ticker looks again at a running rollout that waits on health (a guard or a
/// completion gate).
pub const HEALTH_CHECK_INTERVAL: DurationMs = DurationMs::from_millis(1_000);

/// The records after a transition, and what happened.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The flag after it (its timestamp at least is new).
    pub flag: FlagRecord,
    /// The rollout after it.
    pub rollout: RolloutRecord,
    /// What happened, in order; empty when nothing changed.
    pub effects: Vec<Effect>,
    /// Whether the flag record differs from the one the transition started from beyond
    /// its timestamp (`updated_at`): a store need not write it again otherwise.
    pub flag_changed: bool,
    /// Whether the rollout's definition (everything but its state: spec, plan, creation)
    /// differs from the one the transition started from, or the rollout is new.
    pub definition_changed: bool,
}

impl Transition {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        !self.effects.is_empty()
    }

    /// When the ticker should next look at the rollout ([`next_look`]).
    pub fn next_look(&self, now: Timestamp) -> Option<Timestamp> {
        next_look(&self.rollout, now)
    }
}

/// A rollout about to be created: everything but its state, which [`create`] derives.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRollout {
    /// Rollout id.
    pub id: String,
    pub namespace: String,
    /// The spec as submitted.
    pub spec: RolloutSpec,
    /// The compiled plan.
    pub plan: Plan,
    /// Who creates it.
    pub created_by: Option<String>,
    /// W3C traceparent of the creating command.
    pub traceparent: Option<String>,
}

/// A new rollout taking its flag's active slot at `now`, created running at step 0 when it
/// starts now, else queued; the flag is settled with the effects of starting.
pub fn create(flag: &FlagRecord, new: NewRollout, now: Timestamp) -> Transition {
    let created = RolloutState::created(&new.plan, now);
    let rollout = RolloutRecord {
        id: new.id,
        namespace: new.namespace,
        spec: new.spec,
        plan: new.plan,
        state: created.state,
        created_at: now,
        created_by: new.created_by,
        traceparent: new.traceparent,
    };
    let mut flag = FlagRecord {
        active_rollout: Some(rollout.id.clone()),
        ..flag.clone()
    };
    settle_flag(&mut flag, &rollout, &created.effects, now);
    Transition {
        flag,
        rollout,
        effects: created.effects,
        flag_changed: true,
        definition_changed: true,
    }
}

/// Applies `event` to `rollout` (a rollout of `flag`) at `now`: the step function, then
/// what its outcome does to the flag ([`settle_flag`]). A refusal changes nothing.
pub fn apply(
    flag: &FlagRecord,
    rollout: &RolloutRecord,
    event: &Event,
    now: Timestamp,
) -> Result<Transition, Rejection> {
    let outcome = step(&rollout.plan, &rollout.state, event, now)?;
    Ok(settle(flag.clone(), rollout.clone(), outcome, now))
}

/// Replaces the steps of `rollout` (a rollout of `flag`) after its current one with `steps`
/// at `now` ([`crate::reschedule`]); the state moves only in its revision.
pub fn reschedule(
    flag: &FlagRecord,
    rollout: &RolloutRecord,
    steps: &[RescheduleStepSpec],
    now: Timestamp,
) -> Result<Transition, RescheduleError> {
    let plan = rescheduled_plan(&rollout.plan, &rollout.state, steps)?;
    let at_step = rollout.state.step.unwrap_or(0);
    let effect = Effect::Rescheduled {
        at_step,
        old_steps: steps_after(&rollout.plan, at_step),
        new_steps: steps_after(&plan, at_step),
    };
    let rollout = RolloutRecord {
        plan,
        state: RolloutState {
            revision: rollout.state.revision + 1,
            ..rollout.state.clone()
        },
        ..rollout.clone()
    };
    let mut flag = flag.clone();
    flag.updated_at = now;
    Ok(Transition {
        flag,
        rollout,
        effects: vec![effect],
        flag_changed: false,
        definition_changed: true,
    })
}

/// The transition a step `outcome` of `rollout` (a rollout of `flag`) makes at `now`, for a
/// caller that ran the step function before reading the flag (the ticker reads the flag
/// only when a tick changed something).
pub fn settle(
    mut flag: FlagRecord,
    rollout: RolloutRecord,
    outcome: StepOutcome,
    now: Timestamp,
) -> Transition {
    let rollout = RolloutRecord {
        state: outcome.state,
        ..rollout
    };
    let flag_changed = settle_flag(&mut flag, &rollout, &outcome.effects, now);
    Transition {
        flag,
        rollout,
        effects: outcome.effects,
        flag_changed,
        definition_changed: false,
    }
}

/// What a rollout's step outcome does to its flag (SPEC §5): starting enables a disabled
/// flag; ending frees the flag's active slot and writes the serve the rollout leaves behind
/// into its target (the default serve or the rule), so the same entities keep the same
/// variation. Returns whether the flag record changed beyond its timestamp.
pub fn settle_flag(
    flag: &mut FlagRecord,
    rollout: &RolloutRecord,
    effects: &[Effect],
    now: Timestamp,
) -> bool {
    let mut changed = false;
    if effects
        .iter()
        .any(|effect| matches!(effect, Effect::Started { .. }))
        && !flag.flag.enabled
    {
        flag.flag.enabled = true;
        changed = true;
    }
    if rollout.state.lifecycle.is_finished()
        && flag.active_rollout.as_deref() == Some(rollout.id.as_str())
    {
        flag.active_rollout = None;
        flag.last_rollout = Some(rollout.id.clone());
        if let Some(serve) = rollout.state.final_serve(&rollout.plan) {
            match &rollout.plan.target {
                Target::Default => flag.flag.default = serve,
                Target::Rule(rule_id) => {
                    if let Some(rule) = flag.flag.rules.iter_mut().find(|rule| &rule.id == rule_id)
                    {
                        rule.serve = serve;
                    }
                }
            }
        }
        changed = true;
    }
    flag.updated_at = now;
    changed
}

/// When the ticker should next look at a rollout: its due time, or soon when it waits on
/// health or carries a guard; `None` when nothing but a command can move it.
pub fn next_look(record: &RolloutRecord, now: Timestamp) -> Option<Timestamp> {
    let due = record.state.due_at(&record.plan);
    let running = record.state.lifecycle == Lifecycle::Running;
    let waits_on_health = running
        && (record.plan.guards().next().is_some()
            || record.state.waiting_for(&record.plan) == Some(WaitingFor::Guard));
    let health_check = waits_on_health.then(|| now.plus(HEALTH_CHECK_INTERVAL));
    match (due, health_check) {
        (Some(due), Some(check)) => Some(due.min(check)),
        (due, check) => due.or(check),
    }
}
