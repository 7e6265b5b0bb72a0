//! Schedule edits (SPEC §12): `rollout.reschedule` replaces the steps after the current one,
//! checked like a create; the kept steps and everyone's answer stay as they were.

mod common;

use common::*;
use rollout_core::machine::{step, Event, Health, Lifecycle, RejectionCode, RolloutState};
use rollout_core::record::{FlagRecord, RolloutRecord};
use rollout_core::reschedule::RescheduleError;
use rollout_core::spec::RescheduleStepSpec;
use rollout_core::transition::{self, Transition};
use rollout_core::{Effect, Entity, Plan, PlanKind, Share, Timestamp};
use serde_json::json;

fn steps(value: serde_json::Value) -> Vec<RescheduleStepSpec> {
    serde_json::from_value(value).expect("steps parse")
}

fn record(plan: Plan, state: RolloutState) -> RolloutRecord {
    RolloutRecord {
        id: "r-1".into(),
        namespace: "test".into(),
        spec: spec(json!({"preset": "1hr"})),
        plan,
        state,
        created_at: now(),
        created_by: None,
        traceparent: None,
    }
}

fn flag_record() -> FlagRecord {
    FlagRecord {
        flag: flag(),
        active_rollout: Some("r-1".into()),
        last_rollout: None,
        created_at: now(),
        updated_at: now(),
    }
}

fn tick(plan: &Plan, state: &RolloutState, time: Timestamp) -> RolloutState {
    step(plan, state, &Event::Tick(Health::default()), time)
        .expect("tick")
        .state
}

/// Which of 2 000 entities the rollout serves the candidate.
fn served(record: &RolloutRecord) -> Vec<bool> {
    let view = record.state.view(&record.id, &record.plan);
    let compiled =
        rollout_core::CompiledFlag::compile(&flag(), 1, view.as_ref()).expect("compiles");
    (0..2_000)
        .map(|index| {
            compiled
                .evaluate(&Entity::with_id(format!("user-{index}")))
                .variation
                == "on"
        })
        .collect()
}

fn invalid(result: Result<Transition, RescheduleError>) -> Vec<String> {
    match result {
        Err(RescheduleError::Invalid(errors)) => {
            errors.errors.into_iter().map(|error| error.field).collect()
        }
        other => panic!("expected invalid steps, got {other:?}"),
    }
}

#[test]
fn the_steps_after_the_current_one_are_replaced_and_nobody_moves_at_the_edit() {
    let plan = plan(json!({"preset": "1hr"}));
    let running = tick(
        &plan,
        &RolloutState::created(&plan, now()).state,
        at(minutes(15)),
    );
    assert_eq!(running.served_share(&plan), Share::from_ppm(500_000));
    let before = record(plan, running);
    let edited = transition::reschedule(
        &flag_record(),
        &before,
        &steps(json!([{"percentage": 60, "duration": "2h"}, {"percentage": 100}])),
        at(minutes(20)),
    )
    .expect("rescheduled");
    let after = &edited.rollout;
    assert_eq!(
        after.plan.kind,
        PlanKind::Phases,
        "a preset edited is phases"
    );
    assert_eq!(after.plan.steps.len(), 4);
    assert_eq!(after.plan.steps[..2], before.plan.steps[..2]);
    assert_eq!(after.state.revision, before.state.revision + 1);
    assert_eq!(after.state.step, before.state.step);
    assert_eq!(served(after), served(&before), "the edit moves nobody");
    let Some(Effect::Rescheduled {
        at_step,
        old_steps,
        new_steps,
    }) = edited.effects.first()
    else {
        panic!("{:?}", edited.effects);
    };
    assert_eq!((*at_step, old_steps.len(), new_steps.len()), (1, 1, 2));
    // the current step's timer is unchanged; then the new steps run
    assert_eq!(after.state.due_at(&after.plan), Some(at(minutes(30))));
    let third = tick(&after.plan, &after.state, at(minutes(30)));
    assert_eq!(third.served_share(&after.plan), Share::from_ppm(600_000));
    assert_eq!(third.due_at(&after.plan), Some(at(minutes(150))));
    let done = tick(&after.plan, &third, at(minutes(150)));
    assert_eq!(done.lifecycle, Lifecycle::Completed);
}

#[test]
fn a_reschedule_that_would_move_backwards_or_is_malformed_names_its_fields() {
    let plan = plan(json!({"preset": "1hr"}));
    let running = tick(
        &plan,
        &RolloutState::created(&plan, now()).state,
        at(minutes(15)),
    );
    let before = record(plan, running);
    let edit = |value| transition::reschedule(&flag_record(), &before, &steps(value), now());
    assert_eq!(
        invalid(edit(
            json!([{"percentage": 40, "duration": "1h"}, {"percentage": 100}])
        )),
        ["steps[0].percentage"],
        "40% is below the 50% served now"
    );
    assert_eq!(
        invalid(edit(json!([{"percentage": 60}, {"percentage": 100}]))),
        ["steps[0].duration"]
    );
    assert_eq!(
        invalid(edit(
            json!([{"percentage": 60, "duration": "1h", "gate": {"after": "1h"}}, {"percentage": 100}])
        )),
        ["steps[0].gate"]
    );
    assert_eq!(
        invalid(edit(json!([{"name": "eu", "labels": {"region": "eu"}}]))),
        ["steps[0].name", "steps[0].percentage"]
    );
    assert_eq!(invalid(edit(json!([]))), ["steps"]);
}

#[test]
fn only_running_or_paused_rollouts_are_rescheduled() {
    let plan = plan(json!({"preset": "1hr", "wait_for_start": true}));
    let queued = record(plan.clone(), RolloutState::created(&plan, now()).state);
    let refused = transition::reschedule(
        &flag_record(),
        &queued,
        &steps(json!([{"percentage": 100}])),
        now(),
    );
    let Err(RescheduleError::Rejected(rejection)) = refused else {
        panic!("{refused:?}");
    };
    assert_eq!(rejection.code, RejectionCode::FailedPrecondition);
    assert_eq!(rejection.field.as_deref(), Some("rollout_id"));
}

#[test]
fn a_stage_rollout_takes_new_stages_after_the_released_ones() {
    let plan = plan(json!({"stages": [
        {"name": "canary", "labels": {"ring": "canary"}},
        {"name": "eu", "labels": {"region": "eu"}}
    ]}));
    let running = RolloutState::created(&plan, now()).state;
    let before = record(plan, running);
    let edited = transition::reschedule(
        &flag_record(),
        &before,
        &steps(json!([
            {"name": "eu-west", "labels": {"region": "eu", "zone": "west"}, "gate": {"approval": {"approvers": 1}}},
            {"name": "eu", "labels": {"region": "eu"}}
        ])),
        now(),
    )
    .expect("rescheduled");
    let names: Vec<String> = edited
        .rollout
        .plan
        .steps
        .iter()
        .map(|step| match &step.audience {
            rollout_core::Audience::Stage { name, .. } => name.clone(),
            rollout_core::Audience::Share(_) => String::new(),
        })
        .collect();
    assert_eq!(names, ["canary", "eu-west", "eu", "unassigned"]);
    assert_eq!(edited.rollout.plan.kind, PlanKind::Stages);
    let again = transition::reschedule(
        &flag_record(),
        &before,
        &steps(json!([{"name": "canary", "labels": {"ring": "canary"}}])),
        now(),
    );
    assert_eq!(invalid(again), ["steps[0].name"]);
}
