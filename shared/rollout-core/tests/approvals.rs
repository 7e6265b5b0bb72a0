//! Approval gates (SPEC §12): a step waits for `N` distinct actors' `approve`; its timer
//! runs from the approval; catch-up, `continue` and ticks never cross an unapproved step.

mod common;

use common::*;
use proptest::prelude::*;
use rollout_core::machine::{
    step, Effect, EntryCause, Event, Lifecycle, RejectionCode, RolloutState, WaitingFor,
};
use rollout_core::{Plan, Share};
use serde_json::json;

fn approve(actor: &str) -> Event {
    Event::Approve {
        actor: actor.to_owned(),
    }
}

/// 10 % for 10 minutes, 50 % for 30 minutes once two people approved it, then 100 %.
fn approved_phases() -> Plan {
    plan(json!({"phases": [
        {"percentage": 10, "duration": "10m"},
        {"percentage": 50, "duration": "30m", "gate": {"approval": {"approvers": 2}}},
        {"percentage": 100}
    ]}))
}

#[test]
fn a_step_waits_for_distinct_approvers_and_its_timer_runs_from_the_approval() {
    let plan = approved_phases();
    let running = RolloutState::created(&plan, now()).state;
    // the timer of step 0 carries the rollout into the approval step, not beyond
    let at_approval = apply(&plan, &running, tick(), at(minutes(10)));
    assert_eq!(at_approval.step, Some(1));
    assert_eq!(at_approval.served_share(&plan), percent(50));
    assert_eq!(at_approval.waiting_for(&plan), Some(WaitingFor::Approval));
    assert_eq!(at_approval.due_at(&plan), None);
    // no clock opens it: a day later it is still there
    let much_later = step(&plan, &at_approval, &tick(), at(minutes(24 * 60))).expect("tick");
    assert!(!much_later.changed());

    let first = step(&plan, &at_approval, &approve("ana"), at(minutes(60))).expect("approve");
    assert_eq!(
        first.effects,
        [Effect::Approved {
            step: 1,
            actor: "ana".into(),
            approvals: 1,
            required: 2
        }]
    );
    assert_eq!(first.state.waiting_for(&plan), Some(WaitingFor::Approval));
    // the same actor twice does not count twice
    let again = step(&plan, &first.state, &approve("ana"), at(minutes(61))).expect_err("twice");
    assert_eq!(again.code, RejectionCode::FailedPrecondition);
    assert_eq!(again.field.as_deref(), Some("actor"));
    assert!(again.message.contains("already approved"), "{again}");

    let second = apply(&plan, &first.state, approve("bo"), at(minutes(70)));
    assert_eq!(second.step, Some(1), "the approved step's timer runs first");
    assert_eq!(second.waiting_for(&plan), Some(WaitingFor::Timer));
    assert_eq!(
        second.due_at(&plan),
        Some(at(minutes(100))),
        "30m from approval"
    );
    let eta = second.eta(&plan, at(minutes(70))).expect("eta");
    assert_eq!(eta.completes_at, Some(at(minutes(100))));

    let done = step(&plan, &second, &tick(), at(minutes(100))).expect("tick");
    assert_eq!(done.state.lifecycle, Lifecycle::Completed);
    assert_eq!(done.state.served_share(&plan), Share::ALL);
}

#[test]
fn catch_up_stops_at_an_approval_step_and_status_shows_what_it_waits_for() {
    let plan = approved_phases();
    let running = RolloutState::created(&plan, now()).state;
    let eta = running.eta(&plan, now()).expect("eta");
    assert_eq!(eta.blocked_at_step, Some(1));
    assert_eq!(eta.blocked_by, Some(WaitingFor::Approval));
    assert_eq!(eta.blocked_from, Some(at(minutes(10))));
    let starts = running.projected_starts(&plan, now());
    assert_eq!(starts, [Some(now()), Some(at(minutes(10))), None]);
    // the ticker was down for hours: catch-up lands on the approval step and stays
    let caught_up = apply(&plan, &running, tick(), at(minutes(600)));
    assert_eq!(caught_up.step, Some(1));
    assert_eq!(caught_up.lifecycle, Lifecycle::Running);
    assert!(caught_up.approvals.is_empty());
}

#[test]
fn continue_does_not_bypass_an_approval_but_promote_overrides_it() {
    let plan = approved_phases();
    let at_approval = apply(
        &plan,
        &RolloutState::created(&plan, now()).state,
        tick(),
        at(minutes(10)),
    );
    let refused = step(&plan, &at_approval, &Event::Continue, at(minutes(11))).expect_err("held");
    assert_eq!(refused.code, RejectionCode::FailedPrecondition);
    assert!(refused.message.contains("0 of 2 approved"), "{refused}");
    // once approved, continue cuts the running timer short as it does anywhere
    let approved = apply(&plan, &at_approval, approve("ana"), at(minutes(12)));
    let approved = apply(&plan, &approved, approve("bo"), at(minutes(13)));
    let continued = apply(&plan, &approved, Event::Continue, at(minutes(14)));
    assert_eq!(continued.lifecycle, Lifecycle::Completed);
    // promote is the operator's explicit override
    let promoted = apply(&plan, &at_approval, Event::Promote, at(minutes(11)));
    assert_eq!(promoted.lifecycle, Lifecycle::Completed);
}

#[test]
fn approvals_are_refused_where_no_approval_is_asked_for() {
    let plan = approved_phases();
    let running = RolloutState::created(&plan, now()).state;
    let early = step(&plan, &running, &approve("ana"), at(minutes(1))).expect_err("step 0");
    assert_eq!(early.code, RejectionCode::FailedPrecondition);
    assert_eq!(early.field.as_deref(), Some("rollout_id"));
    assert!(
        early.message.contains("step 1 has no approval gate"),
        "{early}"
    );
    assert!(early.message.contains("step(s) 2"), "{early}");

    let plain = plan_without_approvals();
    let plain_state = RolloutState::created(&plain, now()).state;
    let none = step(&plain, &plain_state, &approve("ana"), at(minutes(1))).expect_err("none");
    assert_eq!(none.message, "this rollout has no approval gates");

    let at_approval = apply(&plan, &running, tick(), at(minutes(10)));
    let anonymous = step(&plan, &at_approval, &approve(" "), at(minutes(11))).expect_err("anon");
    assert_eq!(anonymous.code, RejectionCode::InvalidArgument);
    assert_eq!(anonymous.field.as_deref(), Some("actor"));

    let paused = apply(&plan, &at_approval, Event::Pause, at(minutes(11)));
    let while_paused = step(&plan, &paused, &approve("ana"), at(minutes(12))).expect_err("paused");
    assert!(while_paused.message.contains("resume"), "{while_paused}");
    // a resumed rollout still waits for its approval
    let resumed = apply(&plan, &paused, Event::Resume, at(minutes(20)));
    assert_eq!(resumed.waiting_for(&plan), Some(WaitingFor::Approval));
    assert_eq!(resumed.step, Some(1));
}

fn plan_without_approvals() -> Plan {
    plan(json!({"phases": [{"percentage": 10, "duration": "10m"}, {"percentage": 100}]}))
}

#[test]
fn a_stage_approved_alone_releases_the_next_stage_at_the_approval() {
    let plan = plan(json!({"stages": [
        {"name": "canary", "labels": {"ring": "canary"}, "gate": {"approval": {"approvers": 1}}},
        {"name": "eu", "labels": {"ring": "eu"},
         "gate": {"approval": {"approvers": 1}, "after": "1h"}}
    ]}));
    let running = RolloutState::created(&plan, now()).state;
    assert_eq!(running.released_stages(), 1);
    assert_eq!(running.waiting_for(&plan), Some(WaitingFor::Approval));
    let approved = step(&plan, &running, &approve("ana"), at(minutes(5))).expect("approve");
    let Some(Effect::StepEntered { to, cause, .. }) = approved.effects.get(1) else {
        panic!(
            "the approval releases the next stage: {:?}",
            approved.effects
        );
    };
    assert_eq!((*to, *cause), (1, EntryCause::Approval));
    // eu waits for its own approval (the earlier one does not carry over), then an hour
    assert!(approved.state.approvals.is_empty());
    assert_eq!(
        approved.state.waiting_for(&plan),
        Some(WaitingFor::Approval)
    );
    let eu = apply(&plan, &approved.state, approve("ana"), at(minutes(30)));
    assert_eq!(eu.due_at(&plan), Some(at(minutes(90))));
    let done = apply(&plan, &eu, tick(), at(minutes(90)));
    assert_eq!(done.lifecycle, Lifecycle::Completed);
}

#[test]
fn bad_approval_gates_are_refused_with_their_field() {
    let errors = compile_kind(json!({"phases": [
        {"percentage": 10, "duration": "10m", "gate": {"approval": {"approvers": 0}}},
        {"percentage": 100, "gate": {"approval": {"approvers": 17}}}
    ]}))
    .expect_err("invalid");
    let fields: Vec<&str> = errors.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "rollout.phases[0].gate.approval.approvers",
            "rollout.phases[1].gate.approval.approvers"
        ]
    );
    let stage_errors = compile_kind(json!({"stages": [
        {"name": "a", "labels": {"ring": "a"},
         "gate": {"approval": {"approvers": 1}, "after": "1h", "min_completed_percentage": 50}}
    ]}))
    .expect_err("both");
    assert_eq!(stage_errors.errors[0].field, "rollout.stages[0].gate");
    // an unknown gate field is not silently dropped
    let spec: Result<rollout_core::RolloutSpec, _> = serde_json::from_value(json!({
        "flag": "new-checkout", "baseline": "off", "candidate": "on",
        "phases": [{"percentage": 100, "gate": {"approvals": 2}}]}));
    assert!(spec.is_err());
}

proptest! {
    /// Whatever ticks, continues and approvals arrive, a step with an approval gate is
    /// never left before as many distinct actors as it asks for approved it.
    #[test]
    fn no_approval_step_is_left_unapproved(
        events in proptest::collection::vec((0u8..4, 0u8..3, 1i64..40), 1..40)
    ) {
        let plan = approved_phases();
        let mut state = RolloutState::created(&plan, now()).state;
        let mut time = now();
        let actors = ["ana", "bo", "cy"];
        for (kind, actor, minutes_later) in events {
            time = time.plus(minutes(minutes_later));
            let event = match kind {
                0 => tick(),
                1 => Event::Continue,
                2 => approve(actors[actor as usize]),
                _ => Event::Pause,
            };
            let before = state.clone();
            if let Ok(outcome) = step(&plan, &state, &event, time) {
                state = outcome.state;
            }
            if before.step == Some(1) && state.step != Some(1) {
                let mut approvers: Vec<&str> =
                    before.approvals.iter().map(|a| a.actor.as_str()).collect();
                if let Event::Approve { actor } = &event {
                    approvers.push(actor);
                }
                approvers.sort_unstable();
                approvers.dedup();
                prop_assert!(approvers.len() >= 2, "left step 1 with {approvers:?} after {event:?}");
            }
            if state.lifecycle == Lifecycle::Paused {
                state = apply(&plan, &state, Event::Resume, time);
            }
            if state.lifecycle.is_finished() {
                break;
            }
        }
    }
}
