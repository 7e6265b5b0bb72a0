//! Rollout commands: create, the lifecycle verbs (start, pause, resume, continue, promote,
//! stop, rollback), delete.

use rollout_core::continuation::{continuation, Continuation};
use rollout_core::machine::Event;
use rollout_core::reschedule::RescheduleError;
use rollout_core::spec::RescheduleStepSpec;
use rollout_core::transition::{self, NewRollout};
use rollout_core::{compile, CompileContext, Flag};
use rollout_store::{Change, FlagRecord, Happened, RolloutRecord};
use rollout_wire::commands::{CommandReply, Deleted, RolloutResult, SideEffect};
use rollout_wire::envelope::WireError;
use rollout_wire::events::EventKind;

use super::{changed, existing_flag, served_share, DecideContext, Decision, Loaded};

pub(super) fn create(
    spec: &rollout_core::RolloutSpec,
    loaded: &Loaded,
    context: &DecideContext,
) -> Result<Decision, WireError> {
    let (stored, record) = existing_flag(loaded, &spec.flag, "rollout.flag")?;
    if let Some(active) = &record.active_rollout {
        return Err(WireError::conflict(format!(
            "flag {} already has active rollout {active}; one active rollout per flag (flag-level and rule-level exclude each other)",
            spec.flag
        ))
        .with_field("rollout.flag"));
    }
    let compile_context = CompileContext {
        now: context.now,
        min_phase_interval: context.min_phase_interval,
        fresh_salt: &context.fresh_salt,
    };
    let plan = compile_from_current_serve(spec, &record.flag, &compile_context)?;
    let created = transition::create(
        record,
        NewRollout {
            id: context.new_rollout_id.clone(),
            namespace: context.namespace.clone(),
            spec: spec.clone(),
            plan,
            created_by: context.actor.clone(),
            traceparent: context.traceparent.clone(),
        },
        context.now,
    );
    let reply = rollout_reply(record, &created, context);
    Ok(changed(
        Change::rollout_created(stored.version, false, created),
        reply,
    ))
}

/// Compiles `spec` so that it starts from what its target serves now (SPEC §11.1): a
/// split left by an earlier rollout is continued with its salt and no step below its
/// share; any other serve but the baseline is refused unless the spec replaces it.
/// Invalid specs are refused as such before the current serve is looked at.
pub(crate) fn compile_from_current_serve(
    spec: &rollout_core::RolloutSpec,
    flag: &Flag,
    context: &CompileContext<'_>,
) -> Result<rollout_core::Plan, WireError> {
    let as_written = compile(spec, flag, context)?;
    match continuation(spec, flag).map_err(|mismatch| {
        WireError::failed_precondition(format!("flag {}: {mismatch}", flag.key))
            .with_field("rollout.replace_current_serve")
    })? {
        Continuation::Fresh => Ok(as_written),
        split => Ok(split.apply_to_plan(compile(&split.apply_to_spec(spec), flag, context)?)),
    }
}

fn existing_rollout<'a>(
    rollout_id: &str,
    loaded: &'a Loaded,
) -> Result<&'a RolloutRecord, WireError> {
    loaded
        .rollout
        .as_ref()
        .filter(|rollout| rollout.id == rollout_id)
        .ok_or_else(|| {
            WireError::not_found(format!("rollout {rollout_id} does not exist"))
                .with_field("rollout_id")
        })
}

/// Refuses a command expecting its rollout in another step than the one it is in.
fn check_expected_step(rollout: &RolloutRecord, context: &DecideContext) -> Result<(), WireError> {
    match context.expected_step {
        Some(expected) if rollout.state.step != Some(expected) => {
            let now = rollout.state.step.map_or_else(
                || rollout.state.lifecycle.as_str().to_owned(),
                |step| format!("step index {step}"),
            );
            Err(WireError::conflict(format!(
                "rollout {} is at {now}, not at the expected step index {expected}: it moved meanwhile; nothing was done, read its status again",
                rollout.id
            ))
            .with_field("expected_step"))
        }
        _ => Ok(()),
    }
}

pub(super) fn apply(
    rollout_id: &str,
    event: Event,
    loaded: &Loaded,
    context: &DecideContext,
) -> Result<Decision, WireError> {
    let rollout = existing_rollout(rollout_id, loaded)?;
    check_expected_step(rollout, context)?;
    let (stored, record) = existing_flag(loaded, &rollout.plan.flag, "rollout_id")?;
    let moved = transition::apply(record, rollout, &event, context.now)?;
    let reply = rollout_reply(record, &moved, context);
    if moved.effects.is_empty() {
        return Ok(Decision::Unchanged(reply));
    }
    Ok(changed(
        Change::rollout_moved_on_stored_flag(stored.version, &rollout.state, moved),
        reply,
    ))
}

/// Replaces the steps after the rollout's current one (SPEC §12); `expected_step` was
/// required by the command's validation, so an edit made on a step the rollout has left is
/// `conflict`.
pub(super) fn reschedule(
    rollout_id: &str,
    steps: &[RescheduleStepSpec],
    loaded: &Loaded,
    context: &DecideContext,
) -> Result<Decision, WireError> {
    let rollout = existing_rollout(rollout_id, loaded)?;
    check_expected_step(rollout, context)?;
    let (stored, record) = existing_flag(loaded, &rollout.plan.flag, "rollout_id")?;
    let moved =
        transition::reschedule(record, rollout, steps, context.now).map_err(
            |error| match error {
                RescheduleError::Rejected(rejection) => WireError::from(rejection),
                RescheduleError::Invalid(errors) => WireError::from(errors),
            },
        )?;
    let reply = rollout_reply(record, &moved, context);
    Ok(changed(
        Change::rollout_moved_on_stored_flag(stored.version, &rollout.state, moved),
        reply,
    ))
}

/// Deleting an active rollout stops it first (keeping its current share, as Bucketeer
/// does), then removes the record; its audit history stays readable.
pub(super) fn delete(
    rollout_id: &str,
    loaded: &Loaded,
    context: &DecideContext,
) -> Result<Decision, WireError> {
    let rollout = existing_rollout(rollout_id, loaded)?;
    check_expected_step(rollout, context)?;
    let flag_key = rollout.plan.flag.clone();
    let stored_flag = loaded
        .flag
        .as_ref()
        .and_then(|stored| stored.record.as_ref().map(|record| (stored, record)));
    let mut reply = Deleted {
        flag: flag_key.clone(),
        rollout_id: Some(rollout.id.clone()),
        side_effects: Vec::new(),
    };
    let flag_version = loaded.flag.as_ref().map_or(0, |stored| stored.version);
    let mut change = Change::of_flag(&flag_key, flag_version);
    match stored_flag {
        Some((_, record)) if rollout.state.lifecycle.is_active() => {
            let stopped = transition::apply(
                record,
                rollout,
                &Event::Stop { percentage: None },
                context.now,
            )?;
            reply.side_effects.push(SideEffect::SplitKept {
                rollout_id: rollout.id.clone(),
                share: served_share(&stopped.rollout),
            });
            change = Change::rollout_moved(flag_version, &rollout.state, stopped);
            // the record goes: the stop is told by its events, not written
            change.rollout = None;
            if let Some(flag) = change.flag.as_mut() {
                forget_rollout(flag, &rollout.id);
            }
        }
        Some((_, record)) => {
            let mut flag = FlagRecord {
                updated_at: context.now,
                ..record.clone()
            };
            forget_rollout(&mut flag, &rollout.id);
            change.flag = Some(flag);
        }
        // a finished rollout of a deleted flag (a flag with an active rollout cannot be
        // deleted): the record goes, the flag's tombstone stays deleted at a new version
        None if rollout.state.lifecycle.is_active() => {
            return Err(WireError::internal(format!(
                "active rollout {rollout_id} belongs to missing flag {flag_key}"
            )));
        }
        None => {}
    }
    change.deleted_rollout = Some(rollout.clone());
    // deleted comes after stopped
    change
        .happened
        .push(Happened::event(EventKind::RolloutDeleted, Some(rollout_id)));
    Ok(changed(change, CommandReply::Deleted(reply)))
}

/// The reply to a rollout command that made `moved` of the flag loaded as `before`: where
/// the rollout stands, and [`SideEffect::FlagEnabled`] when it enabled a disabled flag.
fn rollout_reply(
    before: &FlagRecord,
    moved: &rollout_core::Transition,
    context: &DecideContext,
) -> CommandReply {
    let mut result = RolloutResult::new(
        &moved.rollout.id,
        &moved.rollout.plan,
        &moved.rollout.state,
        context.now,
    );
    if !before.flag.enabled && moved.flag.flag.enabled {
        result.side_effects.push(SideEffect::FlagEnabled {
            flag: moved.flag.flag.key.clone(),
        });
    }
    CommandReply::Rollout(result)
}

/// A deleted rollout is no longer the flag's last one: agents' reports cannot count for it.
fn forget_rollout(flag: &mut FlagRecord, rollout_id: &str) {
    if flag.last_rollout.as_deref() == Some(rollout_id) {
        flag.last_rollout = None;
    }
}
