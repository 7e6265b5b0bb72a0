//! Gradual rollback and guard actions (SPEC §12): the share walks down, the last adopters
//! revert first, and every lower share is a subset of the higher; guards pause, stop, roll
//! back at once or gradually, or only warn, each with minimum samples per side.

mod common;

use common::*;
use proptest::prelude::*;
use rollout_core::machine::{
    step, Effect, EndCause, Event, Health, Lifecycle, RejectionCode, RolloutState, WaitingFor,
};
use rollout_core::{CompiledFlag, DurationMs, Entity, GuardAction, Plan, Share};
use serde_json::json;

fn gradually(shares: &[u32], every_minutes: i64) -> Event {
    Event::RollbackGradually {
        shares: shares.iter().map(|share| percent(*share)).collect(),
        every: minutes(every_minutes),
    }
}

/// Which of 3 000 entities get the candidate under `state`.
fn adopters(plan: &Plan, state: &RolloutState) -> Vec<bool> {
    let view = state.view("r-1", plan);
    let compiled = CompiledFlag::compile(&flag(), 1, view.as_ref()).expect("compiles");
    (0..3_000)
        .map(|index| {
            compiled
                .evaluate(&Entity::with_id(format!("user-{index}")))
                .variation
                == plan.candidate
        })
        .collect()
}

fn subset(lower: &[bool], higher: &[bool]) -> bool {
    lower.iter().zip(higher).all(|(low, high)| !low || *high)
}

/// 60 % for an hour, then 100 %.
fn at_sixty() -> (Plan, RolloutState) {
    let plan = plan(json!({"phases": [{"percentage": 60, "duration": "1h"}, {"percentage": 100}]}));
    let state = RolloutState::created(&plan, now()).state;
    (plan, state)
}

#[test]
fn the_share_walks_down_and_the_last_adopters_revert_first() {
    let (plan, running) = at_sixty();
    let before = adopters(&plan, &running);
    let started = step(&plan, &running, &gradually(&[30, 10, 0], 5), at(minutes(1))).expect("go");
    assert!(matches!(
        started.effects[0],
        Effect::RollingBack {
            cause: EndCause::Command,
            ..
        }
    ));
    let thirty = started.state;
    assert_eq!(thirty.lifecycle, Lifecycle::RollingBack);
    assert!(thirty.lifecycle.is_active(), "it keeps the flag's slot");
    assert_eq!(thirty.served_share(&plan), percent(30));
    assert_eq!(thirty.waiting_for(&plan), Some(WaitingFor::Timer));
    assert_eq!(thirty.due_at(&plan), Some(at(minutes(6))));
    assert_eq!(
        thirty
            .eta(&plan, at(minutes(1)))
            .and_then(|eta| eta.completes_at),
        Some(at(minutes(11)))
    );
    let at_thirty = adopters(&plan, &thirty);
    assert!(subset(&at_thirty, &before), "30 % is a subset of 60 %");

    let ten = step(&plan, &thirty, &tick(), at(minutes(6))).expect("tick");
    assert_eq!(
        ten.effects,
        [Effect::ShareLowered {
            from: percent(30),
            to: percent(10),
            planned_at: at(minutes(6))
        }]
    );
    let at_ten = adopters(&plan, &ten.state);
    assert!(subset(&at_ten, &at_thirty));
    let count = |served: &[bool]| served.iter().filter(|adopted| **adopted).count();
    assert!(count(&at_ten) < count(&at_thirty) && count(&at_thirty) < count(&before));

    let done = step(&plan, &ten.state, &tick(), at(minutes(11))).expect("tick");
    assert_eq!(done.state.lifecycle, Lifecycle::RolledBack);
    assert!(matches!(
        done.effects.last(),
        Some(Effect::RolledBack {
            cause: EndCause::Command
        })
    ));
    assert_eq!(count(&adopters(&plan, &done.state)), 0);
}

#[test]
fn catch_up_lowers_the_share_in_one_move_and_commands_still_act() {
    let (plan, running) = at_sixty();
    let thirty = apply(
        &plan,
        &running,
        gradually(&[50, 40, 20, 0], 5),
        at(minutes(1)),
    );
    // the ticker was away for 12 minutes: straight to where the clock says (20 %)
    let late = step(&plan, &thirty, &tick(), at(minutes(13))).expect("tick");
    assert_eq!(
        late.effects,
        [Effect::ShareLowered {
            from: percent(50),
            to: percent(20),
            planned_at: at(minutes(11))
        }]
    );
    // stop keeps the share it has reached; rollback ends it at once
    let stopped = apply(
        &plan,
        &late.state,
        Event::Stop { percentage: None },
        at(minutes(14)),
    );
    assert_eq!(
        (stopped.lifecycle, stopped.served_share(&plan)),
        (Lifecycle::Stopped, percent(20))
    );
    let now_back = apply(&plan, &late.state, Event::Rollback, at(minutes(14)));
    assert_eq!(now_back.lifecycle, Lifecycle::RolledBack);
    for refused in [
        Event::Promote,
        Event::Continue,
        Event::Pause,
        Event::Resume,
        gradually(&[10, 0], 1),
    ] {
        let rejection = step(&plan, &late.state, &refused, at(minutes(14))).expect_err("refused");
        assert_eq!(
            rejection.code,
            RejectionCode::FailedPrecondition,
            "{refused:?}"
        );
    }
}

#[test]
fn a_walk_that_does_not_go_down_to_zero_is_refused_naming_the_step() {
    let (plan, running) = at_sixty();
    let cases: [(&[u32], &str); 3] = [
        (&[60, 0], "steps[0]"),
        (&[30, 40, 0], "steps[1]"),
        (&[30, 10], "steps[1]"),
    ];
    for (shares, field) in cases {
        let rejection =
            step(&plan, &running, &gradually(shares, 5), at(minutes(1))).expect_err("invalid walk");
        assert_eq!(rejection.code, RejectionCode::InvalidArgument, "{shares:?}");
        assert_eq!(rejection.field.as_deref(), Some(field), "{shares:?}");
    }
    let stages = plan_stages();
    let staged = RolloutState::created(&stages, now()).state;
    let rejection =
        step(&stages, &staged, &gradually(&[0], 5), at(minutes(1))).expect_err("stages");
    assert_eq!(rejection.field.as_deref(), Some("mode"));
}

fn plan_stages() -> Plan {
    plan(json!({"stages": [{"name": "canary", "labels": {"ring": "canary"}}]}))
}

fn guarded(guard: serde_json::Value) -> Plan {
    plan(
        json!({"phases": [{"percentage": 60, "duration": "1h"}, {"percentage": 100}], "guard": guard}),
    )
}

fn outcomes(candidate: (u64, u64), baseline: (u64, u64)) -> Event {
    Event::Tick(Health {
        outcomes: vec![outcome_counts(candidate, baseline)],
        current_stage: None,
        freezes: Default::default(),
    })
}

#[test]
fn a_guard_may_roll_back_gradually_from_the_share_it_finds() {
    let plan = guarded(
        json!({"max_error_rate": 5, "min_samples": 100, "window": "5m",
        "action": "rollback_gradual", "gradual": {"steps": [80, 30, 0], "every": "10m"}}),
    );
    let running = RolloutState::created(&plan, now()).state;
    let breached =
        step(&plan, &running, &outcomes((90, 10), (0, 0)), at(minutes(2))).expect("tick");
    let kinds: Vec<&str> = breached
        .effects
        .iter()
        .map(|effect| match effect {
            Effect::GuardBreached { action, .. } => {
                assert_eq!(*action, GuardAction::RollbackGradual);
                "breached"
            }
            Effect::RollingBack { shares, cause, .. } => {
                // 80 % is above the 60 % served: skipped
                assert_eq!(shares, &[percent(30), Share::NONE]);
                assert_eq!(*cause, EndCause::Guard);
                "rolling back"
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["breached", "rolling back"]);
    assert_eq!(breached.state.served_share(&plan), percent(30));
    let done = apply(&plan, &breached.state, tick(), at(minutes(12)));
    assert_eq!(done.lifecycle, Lifecycle::RolledBack);
}

#[test]
fn a_warning_guard_tells_once_per_window_and_changes_nothing_else() {
    let plan = guarded(
        json!({"max_error_rate": 5, "min_samples": 100, "window": "5m",
        "action": "warn"}),
    );
    let running = RolloutState::created(&plan, now()).state;
    let warned = step(&plan, &running, &outcomes((90, 10), (0, 0)), at(minutes(1))).expect("tick");
    assert!(matches!(
        warned.effects[..],
        [Effect::GuardBreached {
            action: GuardAction::Warn,
            ..
        }]
    ));
    assert_eq!(warned.state.lifecycle, Lifecycle::Running);
    assert_eq!(warned.state.served_share(&plan), percent(60));
    // still breached a minute later: nothing new
    let quiet = step(
        &plan,
        &warned.state,
        &outcomes((90, 10), (0, 0)),
        at(minutes(2)),
    )
    .expect("t");
    assert!(!quiet.changed());
    // a window later it tells again
    let again = step(
        &plan,
        &warned.state,
        &outcomes((90, 10), (0, 0)),
        at(minutes(6)),
    )
    .expect("t");
    assert!(again.changed());
    // and its timers run as they would: the hour ends, the rollout completes
    let done = step(
        &plan,
        &warned.state,
        &outcomes((90, 10), (0, 0)),
        at(minutes(60)),
    )
    .expect("t");
    assert_eq!(done.state.lifecycle, Lifecycle::Completed);
}

#[test]
fn minimum_samples_are_counted_per_side() {
    let plan = guarded(
        json!({"max_ratio_to_baseline": 2, "window": "5m", "action": "pause",
        "min_samples": {"candidate": 50, "baseline": 1000}}),
    );
    let guard = plan.guard.clone().expect("guard");
    let running = RolloutState::created(&plan, now()).state;
    // candidate 20 % errors against a 1 % baseline, but only 500 baseline samples: no verdict
    let unsure = step(
        &plan,
        &running,
        &outcomes((40, 10), (495, 5)),
        at(minutes(1)),
    )
    .expect("t");
    assert!(!unsure.changed());
    let counts = outcome_counts((40, 10), (495, 5));
    assert_eq!(
        guard.missing_samples(&counts).as_deref(),
        Some("50 candidate and 500 baseline samples, 50 and 1000 needed")
    );
    let sure = step(
        &plan,
        &running,
        &outcomes((40, 10), (990, 10)),
        at(minutes(1)),
    )
    .expect("t");
    assert_eq!(sure.state.lifecycle, Lifecycle::Paused);

    let errors = compile_kind(json!({"phases": [{"percentage": 100}], "guard": {
        "max_error_rate": 5, "min_samples": {"candidate": 0, "baseline": 10},
        "action": "rollback_gradual"}}))
    .expect_err("invalid");
    let fields: Vec<&str> = errors.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "rollout.guard.min_samples.candidate",
            "rollout.guard.gradual"
        ]
    );
}

proptest! {
    /// Whatever the walk and the ticks, the share only ever goes down and each lower share's
    /// adopters are a subset of the higher's.
    #[test]
    fn a_gradual_rollback_only_ever_narrows(
        mut cuts in proptest::collection::btree_set(1u32..60, 0..6),
        ticks in proptest::collection::vec(1i64..30, 1..12),
    ) {
        let (plan, running) = at_sixty();
        cuts.insert(0);
        let shares: Vec<u32> = cuts.into_iter().rev().collect();
        let mut state = apply(&plan, &running, gradually(&shares, 7), at(minutes(1)));
        let mut served = adopters(&plan, &state);
        let mut time = at(minutes(1));
        for later in ticks {
            time = time.plus(DurationMs::from_minutes(later));
            state = apply(&plan, &state, tick(), time);
            let now_served = adopters(&plan, &state);
            prop_assert!(subset(&now_served, &served));
            served = now_served;
            if state.lifecycle.is_finished() {
                prop_assert_eq!(state.lifecycle, Lifecycle::RolledBack);
                prop_assert!(served.iter().all(|adopted| !adopted));
                break;
            }
        }
    }
}
