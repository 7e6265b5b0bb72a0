//! Fixtures shared by the core's integration tests.
#![allow(dead_code)]

use rollout_core::machine::{step, Event, Health, RolloutState};
use rollout_core::{
    compile, CompileContext, DurationMs, Flag, OutcomeCounts, Plan, RolloutSpec, Share, SideCounts,
    Timestamp, ValidationErrors,
};

/// 2026-12-01T00:00:00Z, the fixed "now" of these tests.
pub const NOW_MS: i64 = 1_796_083_200_000;

pub fn now() -> Timestamp {
    Timestamp::from_millis(NOW_MS)
}

pub fn at(offset: DurationMs) -> Timestamp {
    now().plus(offset)
}

pub fn minutes(count: i64) -> DurationMs {
    DurationMs::from_minutes(count)
}

pub fn seconds(count: i64) -> DurationMs {
    DurationMs::from_millis(count * 1000)
}

/// The SPEC §8.6 example flag with an extra rule for rule-level rollouts.
pub fn flag() -> Flag {
    serde_json::from_value(serde_json::json!({
        "key": "new-checkout",
        "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}, {"id": "beta", "value": true}],
        "off_variation": "off", "enabled": true, "default": {"variation": "off"},
        "rules": [{"id": "beta", "conditions": [{"attribute": "plan", "op": "in", "values": ["beta"]}],
                   "serve": {"variation": "beta"}}]
    }))
    .expect("fixture flag parses")
}

/// A rollout spec from the JSON fields of one kind, on the fixture flag, off → on.
pub fn spec(kind: serde_json::Value) -> RolloutSpec {
    let mut value =
        serde_json::json!({"flag": "new-checkout", "baseline": "off", "candidate": "on"});
    if let (Some(object), Some(extra)) = (value.as_object_mut(), kind.as_object()) {
        for (key, field) in extra {
            object.insert(key.clone(), field.clone());
        }
    }
    serde_json::from_value(value).expect("fixture spec parses")
}

pub fn context() -> CompileContext<'static> {
    CompileContext {
        now: now(),
        min_phase_interval: DurationMs::from_minutes(5),
        fresh_salt: "fresh-salt",
    }
}

pub fn compile_kind(kind: serde_json::Value) -> Result<Plan, ValidationErrors> {
    compile(&spec(kind), &flag(), &context())
}

pub fn plan(kind: serde_json::Value) -> Plan {
    match compile_kind(kind) {
        Ok(plan) => plan,
        Err(errors) => panic!("fixture plan is invalid: {errors}"),
    }
}

/// RFC 3339 text of now + offset.
pub fn time_text(offset: DurationMs) -> String {
    at(offset).to_rfc3339()
}

/// A tick with nothing known about health.
pub fn tick() -> Event {
    Event::Tick(Health::default())
}

/// The state after `event` at `time`; a rejection fails the test.
pub fn apply(plan: &Plan, state: &RolloutState, event: Event, time: Timestamp) -> RolloutState {
    match step(plan, state, &event, time) {
        Ok(outcome) => outcome.state,
        Err(rejection) => panic!("{event:?} rejected: {rejection}"),
    }
}

/// Outcome counts of a guard window from `(successes, errors)` of each side.
pub fn outcome_counts(candidate: (u64, u64), baseline: (u64, u64)) -> OutcomeCounts {
    OutcomeCounts {
        candidate: SideCounts {
            success: candidate.0,
            error: candidate.1,
        },
        baseline: SideCounts {
            success: baseline.0,
            error: baseline.1,
        },
    }
}

/// A whole percentage as a share.
pub fn percent(value: u32) -> Share {
    Share::from_ppm(value * 10_000)
}
