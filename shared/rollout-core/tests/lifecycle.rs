//! The rollout step function (SPEC §5, §3.5, §6): every command and tick, the rejections,
//! and property tests for pause/resume and catch-up.

mod common;

use common::*;
use proptest::prelude::*;
use rollout_core::machine::{
    step, Effect, EndCause, EntryCause, Event, Health, Lifecycle, RejectionCode, RolloutState,
    WaitingFor,
};
use rollout_core::{DurationMs, Plan, Share, Timestamp};
use serde_json::json;

fn ten_phases() -> Plan {
    // ten one-minute phases, then a 100 % bake of one minute
    let mut phases: Vec<serde_json::Value> = (1..=10)
        .map(|k| json!({"percentage": k * 9, "duration": "1m"}))
        .collect();
    phases.push(json!({"percentage": 100, "duration": "1m"}));
    plan(json!({ "phases": phases }))
}

#[test]
fn waiting_for_start_needs_the_start_command() {
    let plan = plan(json!({"preset": "1hr", "wait_for_start": true}));
    let queued = RolloutState::created(&plan, now()).state;
    assert_eq!(queued.lifecycle, Lifecycle::Queued);
    assert_eq!(queued.waiting_for(&plan), Some(WaitingFor::Start));
    assert_eq!(queued.due_at(&plan), None);
    assert!(
        !step(&plan, &queued, &tick(), at(DurationMs::from_hours(100)))
            .expect("tick")
            .changed()
    );
    let started = step(&plan, &queued, &Event::Start, at(minutes(7))).expect("start");
    assert!(matches!(started.effects[0], Effect::Started { .. }));
    assert_eq!(started.state.lifecycle, Lifecycle::Running);
    assert_eq!(started.state.due_at(&plan), Some(at(minutes(22))));
    let again =
        step(&plan, &started.state, &Event::Start, at(minutes(8))).expect_err("already running");
    assert_eq!(again.code, RejectionCode::FailedPrecondition);
}

#[test]
fn timers_advance_one_phase_at_a_time_from_the_planned_start() {
    let plan = plan(json!({"preset": "1hr"}));
    let running = RolloutState::created(&plan, now()).state;
    assert_eq!(running.served_share(&plan), Share::from_ppm(100_000));
    assert_eq!(running.waiting_for(&plan), Some(WaitingFor::Timer));
    // fired 2 s late: the next step's timer still counts from the planned time
    let second = step(&plan, &running, &tick(), at(minutes(15).plus_millis(2000))).expect("tick");
    let Effect::StepEntered {
        from,
        to,
        lag_ms,
        cause,
        ref skipped,
        ..
    } = second.effects[0]
    else {
        panic!("expected a step transition: {:?}", second.effects);
    };
    assert_eq!(
        (from, to, lag_ms, cause),
        (Some(0), 1, 2000, EntryCause::Timer)
    );
    assert!(skipped.is_empty());
    assert_eq!(second.state.due_at(&plan), Some(at(minutes(30))));
    assert_eq!(second.state.revision, running.revision + 1);
}

#[test]
fn continue_opens_a_manual_gate_or_cuts_a_timer_short() {
    let plan = plan(json!({"preset": "12hr"}));
    let running = RolloutState::created(&plan, now()).state;
    let cut = step(&plan, &running, &Event::Continue, at(minutes(1))).expect("continue");
    assert_eq!(cut.state.step, Some(1));
    // the new step's timer starts at the continue
    assert_eq!(cut.state.due_at(&plan), Some(at(minutes(181))));
}

#[test]
fn pause_keeps_the_remaining_step_time_and_shifts_later_times() {
    let plan = plan(json!({"preset": "1hr"}));
    let running = RolloutState::created(&plan, now()).state;
    let paused = step(&plan, &running, &Event::Pause, at(minutes(5))).expect("pause");
    assert_eq!(
        paused.effects,
        vec![Effect::Paused {
            remaining_ms: Some(minutes(10).as_millis())
        }]
    );
    // a paused rollout ignores the clock and keeps serving its share
    let held = step(&plan, &paused.state, &tick(), at(DurationMs::from_hours(5))).expect("tick");
    assert!(!held.changed());
    assert_eq!(paused.state.served_share(&plan), Share::from_ppm(100_000));
    let resumed = step(&plan, &paused.state, &Event::Resume, at(minutes(65))).expect("resume");
    assert_eq!(
        resumed.effects,
        vec![Effect::Resumed {
            paused_ms: minutes(60).as_millis()
        }]
    );
    assert_eq!(resumed.state.due_at(&plan), Some(at(minutes(75))));
    let projected = resumed.state.projected_starts(&plan, at(minutes(65)));
    assert_eq!(
        projected,
        vec![Some(now()), Some(at(minutes(75))), Some(at(minutes(90)))]
    );
}

#[test]
fn commands_in_the_wrong_state_are_refused_and_change_nothing() {
    let plan = plan(json!({"preset": "1hr"}));
    let running = RolloutState::created(&plan, now()).state;
    let paused = apply(&plan, &running, Event::Pause, at(minutes(1)));
    let cases = [
        (&running, Event::Resume),
        (&paused, Event::Pause),
        (&paused, Event::Continue),
        (&paused, Event::Start),
    ];
    for (state, event) in cases {
        let rejection = step(&plan, state, &event, at(minutes(2))).expect_err("refused");
        assert_eq!(
            rejection.code,
            RejectionCode::FailedPrecondition,
            "{event:?}"
        );
    }
    let rolled_back = apply(&plan, &running, Event::Rollback, at(minutes(2)));
    for event in [
        Event::Pause,
        Event::Resume,
        Event::Continue,
        Event::Promote,
        Event::Rollback,
        Event::Stop { percentage: None },
    ] {
        let rejection = step(&plan, &rolled_back, &event, at(minutes(3))).expect_err("finished");
        assert_eq!(
            rejection.code,
            RejectionCode::FailedPrecondition,
            "{event:?}"
        );
    }
    let bad_share = step(
        &plan,
        &running,
        &Event::Stop {
            percentage: Some(101.0),
        },
        at(minutes(2)),
    )
    .expect_err("101 %");
    assert_eq!(bad_share.code, RejectionCode::InvalidArgument);
    assert_eq!(bad_share.field.as_deref(), Some("percentage"));
}

#[test]
fn promote_jumps_to_the_final_step_now() {
    let plan = plan(
        json!({"phases": [{"percentage": 5, "duration": "1h"}, {"percentage": 50, "duration": "1h"}, {"percentage": 100, "duration": "30m"}]}),
    );
    let running = RolloutState::created(&plan, now()).state;
    let promoted = step(&plan, &running, &Event::Promote, at(minutes(3))).expect("promote");
    assert_eq!(promoted.state.step, Some(2));
    assert_eq!(promoted.state.served_share(&plan), Share::ALL);
    // the bake time still applies, from now
    assert_eq!(promoted.state.lifecycle, Lifecycle::Running);
    assert_eq!(promoted.state.due_at(&plan), Some(at(minutes(33))));
    let without_bake = plan_without_bake();
    let done = step(
        &without_bake,
        &RolloutState::created(&without_bake, now()).state,
        &Event::Promote,
        at(minutes(1)),
    )
    .expect("promote");
    assert_eq!(done.state.lifecycle, Lifecycle::Completed);
}

fn plan_without_bake() -> Plan {
    plan(json!({"phases": [{"percentage": 5, "duration": "1h"}, {"percentage": 100}]}))
}

#[test]
fn rollback_serves_the_baseline_to_everyone() {
    let plan = plan(json!({"preset": "24hr"}));
    let running = RolloutState::created(&plan, now()).state;
    let rolled_back = step(&plan, &running, &Event::Rollback, at(minutes(1))).expect("rollback");
    assert_eq!(
        rolled_back.effects,
        vec![Effect::RolledBack {
            cause: EndCause::Command
        }]
    );
    assert_eq!(rolled_back.state.served_share(&plan), Share::NONE);
    assert_eq!(
        rolled_back.state.final_serve(&plan),
        Some(rollout_core::Serve::variation("off"))
    );
    assert_eq!(rolled_back.state.view("r-1", &plan), None);
}

#[test]
fn completion_leaves_the_candidate_at_the_final_share() {
    let plan = plan_without_bake();
    let running = RolloutState::created(&plan, now()).state;
    let done = apply(&plan, &running, tick(), at(DurationMs::from_hours(1)));
    assert_eq!(done.lifecycle, Lifecycle::Completed);
    assert_eq!(
        done.final_serve(&plan),
        Some(rollout_core::Serve::variation("on"))
    );
    assert_eq!(
        done.due_at(&plan),
        None,
        "a finished rollout leaves the due index"
    );
}

#[test]
fn catch_up_after_a_ten_step_outage_is_one_transition() {
    let plan = ten_phases();
    let running = RolloutState::created(&plan, now()).state;
    // the ticker was down for 10.5 minutes: the clock implies step 10 (100 %, baking)
    let caught_up = step(
        &plan,
        &running,
        &tick(),
        at(DurationMs::from_millis(630_000)),
    )
    .expect("tick");
    let transitions: Vec<&Effect> = caught_up
        .effects
        .iter()
        .filter(|effect| matches!(effect, Effect::StepEntered { .. }))
        .collect();
    assert_eq!(transitions.len(), 1, "{:?}", caught_up.effects);
    let Effect::StepEntered {
        from,
        to,
        skipped,
        planned_at,
        ..
    } = transitions[0]
    else {
        unreachable!()
    };
    assert_eq!((*from, *to), (Some(0), 10));
    assert_eq!(skipped, &(1..10).collect::<Vec<_>>());
    assert_eq!(*planned_at, at(minutes(10)));
    assert_eq!(caught_up.state.revision, running.revision + 1);
    // the skipped steps are recorded with their planned times
    let skipped_records: Vec<_> = caught_up
        .state
        .history
        .iter()
        .filter(|record| record.skipped)
        .collect();
    assert_eq!(skipped_records.len(), 9);
    assert_eq!(skipped_records[0].planned_at, at(minutes(1)));
    // and the bake still runs from the planned entry of step 10
    assert_eq!(caught_up.state.due_at(&plan), Some(at(minutes(11))));
}

#[test]
fn catch_up_stops_at_a_manual_gate() {
    let plan = plan(json!({"stages": [
        {"name": "a", "labels": {"s": "a"}, "gate": {"after": "1m"}},
        {"name": "b", "labels": {"s": "b"}, "gate": {"after": "1m"}},
        {"name": "c", "labels": {"s": "c"}},
        {"name": "d", "labels": {"s": "d"}, "gate": {"after": "1m"}},
    ]}));
    let running = RolloutState::created(&plan, now()).state;
    let caught_up = step(&plan, &running, &tick(), at(DurationMs::from_hours(10))).expect("tick");
    assert_eq!(
        caught_up.state.step,
        Some(2),
        "held at stage c's continue gate"
    );
    assert_eq!(
        caught_up.state.waiting_for(&plan),
        Some(WaitingFor::Continue)
    );
}

#[test]
fn catch_up_stops_at_a_health_gate() {
    let plan = plan(json!({"stages": [
        {"name": "a", "labels": {"s": "a"}, "gate": {"after": "1m"}},
        {"name": "b", "labels": {"s": "b"}, "gate": {"min_completed_percentage": 50}},
        {"name": "c", "labels": {"s": "c"}, "gate": {"after": "1m"}},
    ]}));
    let running = RolloutState::created(&plan, now()).state;
    // counts that would open b's gate are about the stage current at the tick (a), not b
    let health = Health {
        outcomes: Vec::new(),
        current_stage: Some(rollout_core::StageCounts {
            members: 1,
            completed: 1,
            ..Default::default()
        }),
        freezes: Default::default(),
    };
    let caught_up = step(
        &plan,
        &running,
        &Event::Tick(health),
        at(DurationMs::from_hours(10)),
    )
    .expect("tick");
    assert_eq!(caught_up.state.step, Some(1));
    assert_eq!(caught_up.state.waiting_for(&plan), Some(WaitingFor::Guard));
}

fn silent_stage() -> Plan {
    plan(json!({"stages": [
        {"name": "canary", "labels": {"ring": "canary"}, "gate": {"min_completed_percentage": 50}},
        {"name": "fleet", "labels": {"ring": "fleet"}, "gate": {"min_completed_percentage": 50}},
    ]}))
}

fn stage_tick(counts: rollout_core::StageCounts) -> Event {
    Event::Tick(Health {
        outcomes: Vec::new(),
        current_stage: Some(counts),
        freezes: Default::default(),
    })
}

#[test]
fn silent_members_never_open_a_completion_gate() {
    let plan = silent_stage();
    let running = RolloutState::created(&plan, now()).state;
    // every member of the canary stage stopped heartbeating without reporting
    let all_silent = rollout_core::StageCounts {
        members: 3,
        stale: 3,
        ..Default::default()
    };
    let held = step(&plan, &running, &stage_tick(all_silent), at(minutes(10))).expect("tick");
    assert!(!held.changed(), "{:?}", held.effects);
    assert_eq!(held.state.step, Some(0));
    assert_eq!(held.state.waiting_for(&plan), Some(WaitingFor::Guard));
    let silent_health = Health {
        outcomes: Vec::new(),
        current_stage: Some(all_silent),
        freezes: Default::default(),
    };
    let hold = running
        .gate_hold(&plan, &silent_health)
        .expect("status can say what holds the gate");
    assert_eq!(hold.held_by, rollout_core::HeldBy::Completion);
    assert!(
        hold.reason.starts_with("0 of 3 members completed") && hold.reason.contains("3 stale"),
        "{}",
        hold.reason
    );
    // one of three applied, two went silent: 33 % < 50 %
    let one_applied = rollout_core::StageCounts {
        members: 3,
        completed: 1,
        stale: 2,
        ..Default::default()
    };
    assert!(
        !step(&plan, &running, &stage_tick(one_applied), at(minutes(10)))
            .expect("tick")
            .changed()
    );
    // they come back and report applied: the gate opens
    let applied = rollout_core::StageCounts {
        members: 3,
        completed: 2,
        stale: 1,
        ..Default::default()
    };
    let opened = step(&plan, &running, &stage_tick(applied), at(minutes(11))).expect("tick");
    assert_eq!(opened.state.step, Some(1));
    let applied_health = Health {
        outcomes: Vec::new(),
        current_stage: Some(applied),
        freezes: Default::default(),
    };
    assert_eq!(running.gate_hold(&plan, &applied_health), None);
    // a stage with no members at all still passes through
    let empty = step(
        &plan,
        &opened.state,
        &stage_tick(rollout_core::StageCounts::default()),
        at(minutes(12)),
    )
    .expect("tick");
    assert_eq!(empty.state.step, Some(2));
}

#[test]
fn a_guard_without_enough_samples_holds_a_completion_gate() {
    let plan = plan(json!({"stages": [
            {"name": "canary", "labels": {"ring": "canary"}, "gate": {"min_completed_percentage": 50}},
            {"name": "fleet", "labels": {"ring": "fleet"}},
        ],
        "guard": {"max_ratio_to_baseline": 1.5, "min_samples": 100, "window": "5m", "action": "pause"}}));
    let running = RolloutState::created(&plan, now()).state;
    let all_applied = rollout_core::StageCounts {
        members: 4,
        completed: 4,
        ..Default::default()
    };
    let with_outcomes = |candidate: u64, baseline: u64| Health {
        outcomes: vec![outcome_counts((candidate, 0), (baseline, 0))],
        current_stage: Some(all_applied),
        freezes: Default::default(),
    };
    // every member applied, but the guard has heard nothing, or too little on one side
    for (candidate, baseline) in [(0, 0), (500, 99), (99, 500)] {
        let health = with_outcomes(candidate, baseline);
        let held = step(
            &plan,
            &running,
            &Event::Tick(health.clone()),
            at(minutes(5)),
        )
        .expect("tick");
        assert!(
            !held.changed(),
            "{candidate}/{baseline} samples: {:?}",
            held.effects
        );
        let hold = running.gate_hold(&plan, &health).expect("the guard holds");
        assert_eq!(hold.held_by, rollout_core::HeldBy::Guard);
        assert!(hold.reason.contains("100"), "{}", hold.reason);
    }
    // no outcome figures at all hold it too
    let unread = Health {
        outcomes: Vec::new(),
        current_stage: Some(all_applied),
        freezes: Default::default(),
    };
    assert!(!step(&plan, &running, &Event::Tick(unread), at(minutes(5)))
        .expect("tick")
        .changed());
    // enough healthy samples on both sides: the gate opens
    let opened = step(
        &plan,
        &running,
        &Event::Tick(with_outcomes(100, 100)),
        at(minutes(5)),
    )
    .expect("tick");
    assert_eq!(opened.state.step, Some(1));
}

fn guarded(action: &str) -> Plan {
    plan(
        json!({"preset": "1hr", "guard": {"max_error_rate": 5, "min_samples": 100, "window": "5m", "action": action}}),
    )
}

fn breaching() -> Event {
    Event::Tick(Health {
        outcomes: vec![outcome_counts((90, 10), (0, 0))],
        current_stage: None,
        freezes: Default::default(),
    })
}

#[test]
fn a_guard_breach_pauses_stops_or_rolls_back_with_the_figures() {
    for (action, lifecycle) in [
        ("pause", Lifecycle::Paused),
        ("stop", Lifecycle::Stopped),
        ("rollback", Lifecycle::RolledBack),
    ] {
        let plan = guarded(action);
        let running = RolloutState::created(&plan, now()).state;
        let outcome = step(&plan, &running, &breaching(), at(minutes(20))).expect("tick");
        assert_eq!(outcome.state.lifecycle, lifecycle, "{action}");
        let Effect::GuardBreached { figures, .. } = &outcome.effects[0] else {
            panic!("no breach effect: {:?}", outcome.effects);
        };
        assert_eq!(figures.candidate_samples, 100);
        assert!((figures.candidate_error_rate - 0.1).abs() < 1e-12);
        // a breach wins over a due timer: no step was entered
        assert!(!outcome
            .effects
            .iter()
            .any(|effect| matches!(effect, Effect::StepEntered { .. })));
    }
}

#[test]
fn a_resumed_guard_judges_only_outcomes_since_the_resume() {
    let plan = guarded("pause");
    let window = minutes(5);
    let running = RolloutState::created(&plan, now()).state;
    assert_eq!(
        running.guard_window_start(window, at(minutes(20))),
        at(minutes(15))
    );
    let paused = step(&plan, &running, &breaching(), at(minutes(20))).expect("tick");
    assert_eq!(paused.state.lifecycle, Lifecycle::Paused);
    // resumed ten minutes later: the outcomes that paused it are out of reach at once,
    // though the window alone would still cover them a minute on
    let resumed = apply(&plan, &paused.state, Event::Resume, at(minutes(30)));
    assert_eq!(
        resumed.guard_window_start(window, at(minutes(31))),
        at(minutes(30))
    );
    assert_eq!(
        resumed.guard_window_start(window, at(minutes(40))),
        at(minutes(35))
    );
    // promote out of a pause resumes too
    let paused_again = apply(&plan, &resumed, Event::Pause, at(minutes(41)));
    let promoted = apply(&plan, &paused_again, Event::Promote, at(minutes(50)));
    assert_eq!(
        promoted.guard_window_start(window, at(minutes(51))),
        at(minutes(50))
    );
    // records written before the field existed read as never resumed
    let mut old_record = serde_json::to_value(&running).expect("state serialises");
    assert!(old_record.get("resumed_at").is_none());
    old_record
        .as_object_mut()
        .expect("object")
        .insert("revision".into(), json!(1));
    let old_state: RolloutState = serde_json::from_value(old_record).expect("old record reads");
    assert_eq!(old_state.resumed_at, None);
}

#[test]
fn guards_still_apply_during_bake() {
    let plan = plan(json!({"phases": [{"percentage": 100, "duration": "1h"}],
                           "guard": {"max_error_rate": 5, "action": "rollback"}}));
    let baking = RolloutState::created(&plan, now()).state;
    let outcome = step(&plan, &baking, &breaching(), at(minutes(30))).expect("tick");
    assert_eq!(outcome.state.lifecycle, Lifecycle::RolledBack);
}

#[test]
fn views_follow_the_served_audience() {
    let plan = plan(json!({"preset": "1hr"}));
    let running = RolloutState::created(&plan, now()).state;
    let view = running.view("r-1", &plan).expect("running has a view");
    assert_eq!(
        view.audience,
        rollout_core::ViewAudience::Share(Share::from_ppm(100_000))
    );
    assert_eq!(view.salt, "fresh-salt");
    let paused = apply(&plan, &running, Event::Pause, at(minutes(1)));
    assert_eq!(
        paused.view("r-1", &plan).map(|view| view.audience),
        Some(rollout_core::ViewAudience::Share(Share::from_ppm(100_000)))
    );
}

trait PlusMillis {
    fn plus_millis(self, millis: i64) -> DurationMs;
}

impl PlusMillis for DurationMs {
    fn plus_millis(self, millis: i64) -> DurationMs {
        DurationMs::from_millis(self.as_millis() + millis)
    }
}

proptest! {
    /// Pausing at any point and resuming any time later leaves exactly the remaining step
    /// time, and every later projected start moves by the pause length.
    #[test]
    fn pause_then_resume_keeps_the_remaining_step_time(
        pause_after_ms in 0_i64..900_000,
        pause_length_ms in 0_i64..86_400_000,
    ) {
        let plan = plan(json!({"preset": "1hr"}));
        let running = RolloutState::created(&plan, now()).state;
        let due_before = running.due_at(&plan).expect("timer runs");
        let pause_time = now().plus(DurationMs::from_millis(pause_after_ms));
        let paused = apply(&plan, &running, Event::Pause, pause_time);
        let resume_time = pause_time.plus(DurationMs::from_millis(pause_length_ms));
        let resumed = apply(&plan, &paused, Event::Resume, resume_time);
        let remaining_before = due_before.millis_since(pause_time);
        let due_after = resumed.due_at(&plan).expect("timer runs");
        prop_assert_eq!(due_after.millis_since(resume_time), remaining_before);
        let projected_before = running.projected_starts(&plan, pause_time);
        let projected_after = resumed.projected_starts(&plan, resume_time);
        for index in 1..plan.steps.len() {
            let before = projected_before[index].expect("timer chain");
            let after = projected_after[index].expect("timer chain");
            prop_assert_eq!(after.millis_since(before), pause_length_ms);
        }
    }

    /// After an outage of any length, one tick makes at most one step transition, lands on
    /// the step the clock implies, and names every step it passed over.
    #[test]
    fn catch_up_is_one_transition_to_the_clock_implied_step(outage_ms in 0_i64..1_000_000) {
        let plan = ten_phases();
        let running = RolloutState::created(&plan, now()).state;
        let time = now().plus(DurationMs::from_millis(outage_ms));
        let outcome = step(&plan, &running, &tick(), time).expect("tick");
        let transitions: Vec<&Effect> = outcome.effects.iter().filter(|effect| matches!(effect, Effect::StepEntered { .. })).collect();
        prop_assert!(transitions.len() <= 1);
        let implied_step = usize::try_from(outage_ms / 60_000).expect("small").min(10);
        let completes = outage_ms >= 660_000;
        if completes {
            prop_assert_eq!(outcome.state.lifecycle, Lifecycle::Completed);
        } else {
            prop_assert_eq!(outcome.state.step, Some(implied_step));
        }
        if let Some(Effect::StepEntered { to, skipped, .. }) = transitions.first() {
            prop_assert_eq!(skipped.len(), to - 1);
        }
        // a second tick at the same time changes nothing
        let again = step(&plan, &outcome.state, &tick(), time).expect("tick");
        prop_assert!(!again.changed());
    }

    /// Whatever sequence of events arrives, the current step never goes backwards and the
    /// revision rises by exactly one per accepted change.
    #[test]
    fn steps_never_go_backwards(events in proptest::collection::vec(0_u8..8, 1..40)) {
        let plan = ten_phases();
        let mut state = RolloutState::created(&plan, now()).state;
        let mut time = now();
        for code in events {
            time = time.plus(DurationMs::from_millis(20_000));
            let event = match code {
                0..=2 => tick(),
                3 => Event::Pause,
                4 => Event::Resume,
                5 => Event::Continue,
                6 => Event::Promote,
                _ => Event::Stop { percentage: None },
            };
            if let Ok(outcome) = step(&plan, &state, &event, time) {
                prop_assert!(outcome.state.step >= state.step);
                let expected_revision = state.revision + u64::from(outcome.changed());
                prop_assert_eq!(outcome.state.revision, expected_revision);
                state = outcome.state;
            }
        }
    }
}

#[test]
fn the_eta_adds_up_the_timers_ahead_and_names_the_first_wait_no_clock_ends() {
    // ten one-minute phases and a one-minute bake: done eleven minutes after the start
    let plan = ten_phases();
    let running = RolloutState::created(&plan, now()).state;
    let eta = running.eta(&plan, now()).expect("running");
    assert_eq!(eta.completes_at, Some(at(minutes(11))));
    assert_eq!(eta.blocked_by, None);
    // three phases in (whatever the ticker's lateness), still eleven minutes after the start
    let later = apply(&plan, &running, tick(), at(seconds(200)));
    assert_eq!(later.step, Some(3));
    assert_eq!(
        later
            .eta(&plan, at(seconds(200)))
            .expect("running")
            .completes_at,
        Some(at(minutes(11)))
    );
    // paused: a resume decides, so no ETA; resumed after five minutes, five minutes later
    let paused = apply(&plan, &later, Event::Pause, at(minutes(4)));
    assert_eq!(paused.eta(&plan, at(minutes(6))), None);
    let resumed = apply(&plan, &paused, Event::Resume, at(minutes(9)));
    assert_eq!(
        resumed
            .eta(&plan, at(minutes(9)))
            .expect("running")
            .completes_at,
        Some(at(minutes(16)))
    );
    // finished: nothing ahead
    let done = apply(&plan, &resumed, tick(), at(minutes(30)));
    assert_eq!(done.lifecycle, Lifecycle::Completed);
    assert_eq!(done.eta(&plan, at(minutes(30))), None);
}

#[test]
fn the_eta_of_a_manual_gate_says_where_the_timers_lead_and_what_waits_there() {
    // stage a for a minute, then stage b until an operator continues, then the rest
    let plan = plan(json!({"stages": [
        {"name": "a", "labels": {"s": "a"}, "gate": {"after": "1m"}},
        {"name": "b", "labels": {"s": "b"}},
    ]}));
    let running = RolloutState::created(&plan, now()).state;
    let eta = running.eta(&plan, now()).expect("running");
    assert_eq!(eta.completes_at, None);
    assert_eq!(eta.blocked_at_step, Some(1));
    assert_eq!(eta.blocked_by, Some(WaitingFor::Continue));
    assert_eq!(
        eta.blocked_from,
        Some(at(minutes(1))),
        "reached when the timer ends"
    );
    // there now: it waits from now on
    let waiting = apply(&plan, &running, tick(), at(minutes(2)));
    let eta = waiting.eta(&plan, at(minutes(2))).expect("running");
    assert_eq!(eta.blocked_at_step, Some(1));
    assert_eq!(eta.blocked_from, Some(at(minutes(2))));
    // continued: the final stage (everyone else) completes on entry
    let continued = apply(&plan, &waiting, Event::Continue, at(minutes(3)));
    assert_eq!(continued.lifecycle, Lifecycle::Completed, "{continued:?}");
    assert_eq!(continued.eta(&plan, at(minutes(3))), None);
}

#[test]
fn the_eta_of_a_queued_rollout_runs_from_its_start_or_waits_for_it() {
    let scheduled = plan(json!({"preset": "1hr", "start_at": time_text(minutes(30))}));
    let queued = RolloutState::created(&scheduled, now()).state;
    assert_eq!(queued.lifecycle, Lifecycle::Queued);
    let eta = queued.eta(&scheduled, now()).expect("queued");
    let last = scheduled.last_step();
    let total: i64 = scheduled
        .steps
        .iter()
        .map(|step| match step.gate {
            rollout_core::plan::Gate::Timer(duration) => duration.as_millis(),
            _ => 0,
        })
        .sum();
    assert!(last > 0);
    assert_eq!(
        eta.completes_at,
        Some(at(minutes(30)).plus(DurationMs::from_millis(total)))
    );
    let on_command = plan(json!({"preset": "1hr", "wait_for_start": true}));
    let waiting = RolloutState::created(&on_command, now()).state;
    let eta = waiting.eta(&on_command, now()).expect("queued");
    assert_eq!(eta.blocked_by, Some(WaitingFor::Start));
    assert_eq!(eta.blocked_at_step, None);
    assert_eq!(eta.completes_at, None);
}

proptest! {
    /// A timer-only rollout completes exactly at the ETA it shows, whenever it is asked and
    /// however late the ticks come: one millisecond before, it is still running.
    #[test]
    fn a_timer_only_rollout_completes_exactly_at_its_eta(
        durations in proptest::collection::vec(1_i64..600, 1..8),
        bake_secs in 0_i64..600,
        asked_after_ms in 0_i64..3_600_000,
    ) {
        let mut phases: Vec<serde_json::Value> = durations
            .iter()
            .enumerate()
            .map(|(index, secs)| json!({"percentage": index + 1, "duration": format!("{secs}s")}))
            .collect();
        phases.push(if bake_secs > 0 {
            json!({"percentage": 100, "duration": format!("{bake_secs}s")})
        } else {
            json!({"percentage": 100})
        });
        let plan = plan(json!({"phases": phases}));
        let running = RolloutState::created(&plan, now()).state;
        // asked at some point along the way (after a tick then)
        let asked = now().plus(DurationMs::from_millis(asked_after_ms));
        let current = apply(&plan, &running, tick(), asked);
        prop_assume!(current.lifecycle == Lifecycle::Running);
        let eta = current.eta(&plan, asked).expect("running").completes_at.expect("timers only");
        let before = apply(&plan, &current, tick(), Timestamp::from_millis(eta.as_millis() - 1));
        prop_assert_eq!(before.lifecycle, Lifecycle::Running);
        let at_eta = apply(&plan, &current, tick(), eta);
        prop_assert_eq!(at_eta.lifecycle, Lifecycle::Completed);
    }
}
