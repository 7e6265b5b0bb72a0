//! Namespace freezes (SPEC §12): timers, completion gates and start times hold while a
//! freeze does; when it ends, each held timer opens once and the next runs from there, so
//! catch-up never jumps across the steps whose time passed while frozen. Commands still
//! act and guards still protect.

mod common;

use common::*;
use rollout_core::freeze::Freezes;
use rollout_core::machine::{step, Effect, Event, Health, Lifecycle, RolloutState};
use rollout_core::{Plan, StageCounts};
use serde_json::json;

fn frozen(from: i64, until: Option<i64>) -> Freezes {
    let mut freezes = Freezes::default();
    freezes
        .freeze(
            "release freeze",
            until.map(|until| at(minutes(until))),
            Some("ana"),
            at(minutes(from)),
        )
        .expect("frozen");
    freezes
}

fn tick_with(freezes: &Freezes) -> Event {
    Event::Tick(Health {
        freezes: freezes.clone(),
        ..Health::default()
    })
}

/// Five ten-minute phases, then 100 %.
fn five_phases() -> Plan {
    plan(json!({"phases": [
        {"percentage": 10, "duration": "10m"}, {"percentage": 20, "duration": "10m"},
        {"percentage": 30, "duration": "10m"}, {"percentage": 40, "duration": "10m"},
        {"percentage": 50, "duration": "10m"}, {"percentage": 100}
    ]}))
}

#[test]
fn a_freeze_holds_timers_and_its_end_opens_them_one_step_at_a_time() {
    let plan = five_phases();
    let running = RolloutState::created(&plan, now()).state;
    // frozen from minute 5, lifted at minute 60: five timers ran out meanwhile
    let mut freezes = frozen(5, None);
    let held = step(&plan, &running, &tick_with(&freezes), at(minutes(30))).expect("tick");
    assert!(!held.changed(), "nothing moves while frozen");
    freezes
        .unfreeze(Some("bo"), at(minutes(60)))
        .expect("lifted");
    let thawed = step(&plan, &running, &tick_with(&freezes), at(minutes(61))).expect("tick");
    let Some(Effect::StepEntered {
        to,
        planned_at,
        skipped,
        ..
    }) = thawed.effects.first()
    else {
        panic!("{:?}", thawed.effects);
    };
    // one step, planned at the thaw, not the five the clock alone would give
    assert_eq!((*to, *planned_at), (1, at(minutes(60))));
    assert!(skipped.is_empty());
    assert_eq!(thawed.state.due_at(&plan), Some(at(minutes(70))));
    // the past freeze keeps holding a ticker that looks late, after it ended
    let late = step(&plan, &running, &tick_with(&freezes), at(minutes(75))).expect("tick");
    let Some(Effect::StepEntered { to, skipped, .. }) = late.effects.first() else {
        panic!("{:?}", late.effects);
    };
    assert_eq!((*to, skipped.as_slice()), (2, &[1][..]));
    assert_eq!(late.state.history[1].planned_at, at(minutes(60)));
    assert_eq!(late.state.history[2].planned_at, at(minutes(70)));
}

#[test]
fn a_freeze_with_an_end_opens_by_itself_and_holds_start_times() {
    let plan = plan(json!({"start_at": time_text(minutes(20)),
        "phases": [{"percentage": 10, "duration": "10m"}, {"percentage": 100}]}));
    let queued = RolloutState::created(&plan, now()).state;
    let freezes = frozen(10, Some(45));
    let waiting = step(&plan, &queued, &tick_with(&freezes), at(minutes(30))).expect("tick");
    assert!(!waiting.changed(), "the start time falls in the freeze");
    let started = apply(&plan, &queued, tick_with(&freezes), at(minutes(45)));
    assert_eq!(started.lifecycle, Lifecycle::Running);
    assert_eq!(started.step_anchor, Some(at(minutes(45))));
    assert_eq!(started.due_at(&plan), Some(at(minutes(55))));
}

#[test]
fn commands_still_act_and_guards_still_protect_while_frozen() {
    let plan = five_phases();
    let running = RolloutState::created(&plan, now()).state;
    let freezes = frozen(1, None);
    let continued = apply(&plan, &running, Event::Continue, at(minutes(2)));
    assert_eq!(continued.step, Some(1));
    let guarded = plan_guarded();
    let state = RolloutState::created(&guarded, now()).state;
    let breach = Event::Tick(Health {
        outcomes: vec![outcome_counts((50, 50), (0, 0))],
        freezes: freezes.clone(),
        ..Health::default()
    });
    let rolled_back = apply(&guarded, &state, breach, at(minutes(3)));
    assert_eq!(rolled_back.lifecycle, Lifecycle::RolledBack);
}

fn plan_guarded() -> Plan {
    plan(
        json!({"phases": [{"percentage": 10, "duration": "10m"}, {"percentage": 100}],
        "guard": {"max_error_rate": 5, "min_samples": 10, "window": "5m", "action": "rollback"}}),
    )
}

#[test]
fn a_completion_gate_is_judged_only_once_the_freeze_ends() {
    let plan = plan(json!({"stages": [
        {"name": "canary", "labels": {"ring": "canary"}, "gate": {"min_completed_percentage": 50}},
        {"name": "eu", "labels": {"region": "eu"}}
    ]}));
    let running = RolloutState::created(&plan, now()).state;
    let all_done = |freezes: &Freezes| {
        Event::Tick(Health {
            current_stage: Some(StageCounts {
                members: 2,
                completed: 2,
                ..StageCounts::default()
            }),
            freezes: freezes.clone(),
            ..Health::default()
        })
    };
    let mut freezes = frozen(1, None);
    let held = step(&plan, &running, &all_done(&freezes), at(minutes(5))).expect("tick");
    assert!(!held.changed());
    freezes.unfreeze(None, at(minutes(6))).expect("lifted");
    let opened = apply(&plan, &running, all_done(&freezes), at(minutes(7)));
    assert_eq!(opened.step, Some(1));
}
