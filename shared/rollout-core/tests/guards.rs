//! Several guards on one rollout (SPEC §12 "Guard actions"): each judges its own window
//! with its own limits, minimum samples per side and action; a `warn` guard only tells
//! (once per its window), and when guards that act breach together the one that goes
//! furthest acts. Asserted on what a user sees: the lifecycle, the share served, the effects
//! (events) and the gate hold.

mod common;

use common::{at, compile_kind, minutes, now, outcome_counts, plan, seconds};
use rollout_core::machine::{step, Effect, Event, Health, RolloutState};
use rollout_core::{GuardAction, Lifecycle, OutcomeCounts, Plan, Share};
use serde_json::json;

/// A 60 % phase for an hour, then 100 %, guarded by a fast `warn` guard on the error rate
/// (1 minute, 5 %) and a slower guard comparing with the baseline (10 minutes, 2×) that
/// takes `action`.
fn two_guards(action: &str) -> Plan {
    plan(
        json!({"phases": [{"percentage": 60, "duration": "1h"}, {"percentage": 100}],
        "guards": [
            {"max_error_rate": 5, "min_samples": 50, "window": "1m", "action": "warn"},
            {"max_ratio_to_baseline": 2, "min_samples": {"candidate": 100, "baseline": 100},
             "window": "10m", "action": action},
        ]}),
    )
}

/// A tick where each guard reads its own window's counts.
fn tick(per_guard: Vec<OutcomeCounts>) -> Event {
    Event::Tick(Health {
        outcomes: per_guard,
        ..Health::default()
    })
}

fn breaches(effects: &[Effect]) -> Vec<(usize, GuardAction)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::GuardBreached { guard, action, .. } => Some((*guard, *action)),
            _ => None,
        })
        .collect()
}

#[test]
fn guard_and_guards_are_exclusive_and_each_guard_is_checked_at_its_path() {
    let both = compile_kind(json!({"phases": [{"percentage": 100}],
        "guard": {"max_error_rate": 5},
        "guards": [{"max_error_rate": 5}]}))
    .expect_err("both");
    assert!(both.has_field("rollout.guards"), "{both}");
    let bad = compile_kind(json!({"phases": [{"percentage": 100}],
        "guards": [{"max_error_rate": 5}, {"max_error_rate": 5, "window": "2d"}]}))
    .expect_err("a bad window");
    assert!(bad.has_field("rollout.guards[1].window"), "{bad}");
    let plan = two_guards("pause");
    assert_eq!(plan.guards().count(), 2);
}

#[test]
fn a_warn_guard_tells_once_per_its_window_while_the_rollout_moves_on() {
    let plan = two_guards("pause");
    let state = RolloutState::created(&plan, now()).state;
    // the fast guard sees 10 % errors; the slow one is healthy
    let noisy = outcome_counts((90, 10), (1000, 10));
    let healthy = outcome_counts((990, 10), (1000, 10));
    let first = step(&plan, &state, &tick(vec![noisy, healthy]), at(seconds(5))).expect("tick");
    assert_eq!(breaches(&first.effects), [(0, GuardAction::Warn)]);
    assert_eq!(first.state.lifecycle, Lifecycle::Running);
    // within its minute: silent; after it: tells again
    let again = step(
        &plan,
        &first.state,
        &tick(vec![noisy, healthy]),
        at(seconds(30)),
    )
    .expect("tick");
    assert!(breaches(&again.effects).is_empty());
    let later = step(
        &plan,
        &again.state,
        &tick(vec![noisy, healthy]),
        at(seconds(70)),
    )
    .expect("tick");
    assert_eq!(breaches(&later.effects), [(0, GuardAction::Warn)]);
    // and the timer still moves it on
    let moved = step(
        &plan,
        &later.state,
        &tick(vec![noisy, healthy]),
        at(minutes(61)),
    )
    .expect("tick");
    assert_eq!(moved.state.served_share(&plan), Share::ALL);
}

#[test]
fn the_acting_guard_acts_on_its_own_window_and_both_breaches_are_told() {
    let plan = two_guards("pause");
    let state = RolloutState::created(&plan, now()).state;
    let noisy = outcome_counts((90, 10), (1000, 10));
    let bad_ratio = outcome_counts((900, 100), (1000, 10));
    let outcome = step(&plan, &state, &tick(vec![noisy, bad_ratio]), at(seconds(5))).expect("tick");
    assert_eq!(
        breaches(&outcome.effects),
        [(0, GuardAction::Warn), (1, GuardAction::Pause)]
    );
    assert_eq!(outcome.state.lifecycle, Lifecycle::Paused);
    assert_eq!(outcome.state.served_share(&plan), Share::from_ppm(600_000));
}

#[test]
fn when_several_guards_act_the_one_that_goes_furthest_wins() {
    let plan = plan(
        json!({"phases": [{"percentage": 60, "duration": "1h"}, {"percentage": 100}],
        "guards": [
            {"max_error_rate": 5, "min_samples": 50, "window": "1m", "action": "pause"},
            {"max_error_rate": 5, "min_samples": 50, "window": "5m", "action": "rollback"},
            {"max_error_rate": 5, "min_samples": 50, "window": "5m", "action": "stop"},
        ]}),
    );
    let state = RolloutState::created(&plan, now()).state;
    let noisy = outcome_counts((90, 10), (0, 0));
    let outcome = step(&plan, &state, &tick(vec![noisy; 3]), at(seconds(5))).expect("tick");
    assert_eq!(outcome.state.lifecycle, Lifecycle::RolledBack);
    assert_eq!(outcome.state.served_share(&plan), Share::NONE);
    assert_eq!(breaches(&outcome.effects).len(), 3, "every breach is told");
    // the pause guard alone pauses
    let quiet = outcome_counts((100, 0), (0, 0));
    let paused = step(
        &plan,
        &state,
        &tick(vec![noisy, quiet, quiet]),
        at(seconds(5)),
    )
    .expect("tick");
    assert_eq!(paused.state.lifecycle, Lifecycle::Paused);
}

#[test]
fn a_completion_gate_waits_for_every_guard_to_judge() {
    let plan = plan(json!({"stages": [
        {"name": "canary", "labels": {"ring": "canary"}, "gate": {"min_completed_percentage": 50}}],
    "guards": [
        {"max_error_rate": 5, "min_samples": 10, "window": "1m"},
        {"max_error_rate": 5, "min_samples": 1000, "window": "10m"},
    ]}));
    let state = RolloutState::created(&plan, now()).state;
    let health = Health {
        outcomes: vec![
            outcome_counts((100, 0), (0, 0)),
            outcome_counts((100, 0), (0, 0)),
        ],
        current_stage: Some(rollout_core::StageCounts {
            members: 4,
            completed: 4,
            ..Default::default()
        }),
        ..Health::default()
    };
    let hold = state.gate_hold(&plan, &health).expect("held");
    assert!(
        hold.reason.starts_with("guard 2 cannot judge yet"),
        "{}",
        hold.reason
    );
    let held = step(&plan, &state, &Event::Tick(health), at(seconds(5))).expect("tick");
    assert_eq!(held.state.step, Some(0), "silence never opens a gate");
}
