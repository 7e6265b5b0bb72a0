//! Flag evaluation: rules and every operator, splits, active rollouts on the default and
//! on a rule, stickiness, label stages, and consistency across share changes and endings.

mod common;

use common::*;
use rollout_core::machine::{step, Event, RolloutState};
use rollout_core::{
    AttributeValue, CompiledFlag, Entity, Flag, Reason, RolloutView, Share, ViewAudience,
};
use serde_json::json;

fn entity(id: &str) -> Entity {
    Entity::with_id(id)
}

fn text(value: &str) -> AttributeValue {
    AttributeValue::String(value.to_owned())
}

fn number(value: f64) -> AttributeValue {
    AttributeValue::Number(value)
}

fn compiled(flag: &Flag, view: Option<&RolloutView>) -> CompiledFlag {
    match CompiledFlag::compile(flag, 7, view) {
        Ok(compiled) => compiled,
        Err(errors) => panic!("fixture flag invalid: {errors}"),
    }
}

fn share_view(share_ppm: u32, target: rollout_core::Target) -> RolloutView {
    RolloutView {
        rollout_id: "r-1".into(),
        target,
        baseline: "off".into(),
        candidate: "on".into(),
        salt: "salt-1".into(),
        stickiness: None,
        step: 2,
        audience: ViewAudience::Share(Share::from_ppm(share_ppm)),
    }
}

#[test]
fn a_disabled_flag_serves_its_off_variation() {
    let mut flag = flag();
    flag.enabled = false;
    flag.default = rollout_core::Serve::variation("on");
    let answer_flag = compiled(&flag, None);
    let answer = answer_flag.evaluate(&entity("u1").attribute("plan", text("beta")));
    assert_eq!((answer.variation, answer.reason), ("off", Reason::Disabled));
    assert_eq!(answer.value, &json!(false));
}

#[test]
fn the_first_matching_rule_wins_else_the_default() {
    let compiled_flag = compiled(&flag(), None);
    let beta = compiled_flag.evaluate(&entity("u1").attribute("plan", text("beta")));
    assert_eq!(
        (beta.variation, beta.reason, beta.rule_id),
        ("beta", Reason::RuleMatch, Some("beta"))
    );
    let other = compiled_flag.evaluate(&entity("u2").attribute("plan", text("pro")));
    assert_eq!(
        (other.variation, other.reason, other.rule_id),
        ("off", Reason::Default, None)
    );
    assert_eq!(compiled_flag.version(), 7);
}

fn matches(condition: serde_json::Value, subject: &Entity) -> bool {
    let flag: Flag = serde_json::from_value(json!({
        "key": "f", "variations": [{"id": "a", "value": 1}, {"id": "b", "value": 2}],
        "off_variation": "a", "default": {"variation": "a"},
        "rules": [{"id": "r", "conditions": [condition], "serve": {"variation": "b"}}]
    }))
    .expect("flag parses");
    compiled(&flag, None).evaluate(subject).variation == "b"
}

#[test]
fn every_condition_operator() {
    let user = entity("user-42")
        .attribute("country", text("de"))
        .attribute("email", text("ana@example.com"))
        .attribute("age", number(30.0))
        .attribute("beta", AttributeValue::Bool(true))
        .attribute("app_version", text("2.10.1"))
        .attribute(
            "groups",
            AttributeValue::List(vec!["staff".into(), "qa".into()]),
        );
    let cases = [
        (
            json!({"attribute": "country", "op": "equals", "values": ["de"]}),
            true,
        ),
        (
            json!({"attribute": "country", "op": "equals", "values": ["fr"]}),
            false,
        ),
        (
            json!({"attribute": "country", "op": "not_equals", "values": ["fr"]}),
            true,
        ),
        (
            json!({"attribute": "country", "op": "in", "values": ["fr", "de"]}),
            true,
        ),
        (
            json!({"attribute": "country", "op": "not_in", "values": ["fr", "de"]}),
            false,
        ),
        (
            json!({"attribute": "email", "op": "starts_with", "values": ["bob", "ana@"]}),
            true,
        ),
        (
            json!({"attribute": "email", "op": "ends_with", "values": ["@example.org"]}),
            false,
        ),
        (
            json!({"attribute": "email", "op": "ends_with", "values": ["@example.com"]}),
            true,
        ),
        (
            json!({"attribute": "email", "op": "contains", "values": ["@exa"]}),
            true,
        ),
        (
            json!({"attribute": "age", "op": "gt", "values": [29.5]}),
            true,
        ),
        (
            json!({"attribute": "age", "op": "gte", "values": [30]}),
            true,
        ),
        (
            json!({"attribute": "age", "op": "lt", "values": [30]}),
            false,
        ),
        (
            json!({"attribute": "age", "op": "lte", "values": [30]}),
            true,
        ),
        (
            json!({"attribute": "age", "op": "equals", "values": [30]}),
            true,
        ),
        // no type coercion: the number 30 is not the string "30"
        (
            json!({"attribute": "age", "op": "equals", "values": ["30"]}),
            false,
        ),
        (
            json!({"attribute": "beta", "op": "equals", "values": [true]}),
            true,
        ),
        // semver compares numerically: 2.10.1 > 2.9.0 (a string compare would say otherwise)
        (
            json!({"attribute": "app_version", "op": "semver_gt", "values": ["2.9.0"]}),
            true,
        ),
        (
            json!({"attribute": "app_version", "op": "semver_gte", "values": ["2.10.1"]}),
            true,
        ),
        (
            json!({"attribute": "app_version", "op": "semver_eq", "values": ["v2.10.1"]}),
            true,
        ),
        (
            json!({"attribute": "app_version", "op": "semver_lt", "values": ["2.10"]}),
            false,
        ),
        (
            json!({"attribute": "app_version", "op": "semver_lte", "values": ["3"]}),
            true,
        ),
        (
            json!({"attribute": "groups", "op": "in", "values": ["qa"]}),
            true,
        ),
        (
            json!({"attribute": "groups", "op": "contains", "values": ["sta"]}),
            true,
        ),
        (
            json!({"attribute": "groups", "op": "not_in", "values": ["qa"]}),
            false,
        ),
        (
            json!({"attribute": "groups", "op": "not_in", "values": ["ops"]}),
            true,
        ),
        (json!({"attribute": "country", "op": "present"}), true),
        (json!({"attribute": "missing", "op": "present"}), false),
        (json!({"attribute": "missing", "op": "absent"}), true),
        // a missing attribute matches nothing but absent, not even the negations
        (
            json!({"attribute": "missing", "op": "not_in", "values": ["x"]}),
            false,
        ),
        (
            json!({"attribute": "missing", "op": "not_equals", "values": ["x"]}),
            false,
        ),
        // `id` falls back to the entity id
        (
            json!({"attribute": "id", "op": "starts_with", "values": ["user-"]}),
            true,
        ),
        // a numeric operator on a string attribute does not match
        (
            json!({"attribute": "country", "op": "gt", "values": [1]}),
            false,
        ),
    ];
    for (condition, expected) in cases {
        assert_eq!(matches(condition.clone(), &user), expected, "{condition}");
    }
}

#[test]
fn a_split_gives_out_buckets_in_list_order() {
    let mut flag = flag();
    flag.default = serde_json::from_value(
        json!({"split": [{"variation": "on", "weight": 30}, {"variation": "off", "weight": 70}]}),
    )
    .expect("serve");
    let compiled_flag = compiled(&flag, None);
    let on = (0..20_000)
        .filter(|id| compiled_flag.evaluate(&entity(&format!("u{id}"))).variation == "on")
        .count();
    assert!(
        (5_400..6_600).contains(&on),
        "30 % of 20 000 is about 6000, got {on}"
    );
    let answer = compiled_flag.evaluate(&entity("u1"));
    assert_eq!(answer.reason, Reason::Split);
    let bucket = answer.bucket.expect("split buckets");
    assert_eq!(answer.variation == "on", bucket < 300_000);
}

#[test]
fn an_active_rollout_decides_by_bucket_and_explains_itself() {
    let compiled_flag = compiled(
        &flag(),
        Some(&share_view(250_000, rollout_core::Target::Default)),
    );
    let mut candidates = 0;
    for id in 0..10_000 {
        let user = entity(&format!("user-{id}"));
        let answer = compiled_flag.evaluate(&user);
        let bucket = answer.bucket.expect("rollouts bucket");
        assert_eq!(bucket, rollout_core::bucket("salt-1", &user.id));
        assert_eq!(answer.variation == "on", bucket < 250_000);
        assert_eq!(
            (answer.reason, answer.rollout_id, answer.step),
            (Reason::Rollout, Some("r-1"), Some(2))
        );
        candidates += usize::from(answer.variation == "on");
    }
    assert!((2_300..2_700).contains(&candidates), "{candidates}");
    // rules still come first: a beta user is not part of a default-serve rollout
    let beta = compiled_flag.evaluate(&entity("user-1").attribute("plan", text("beta")));
    assert_eq!((beta.variation, beta.reason), ("beta", Reason::RuleMatch));
}

#[test]
fn a_rule_level_rollout_moves_only_that_rules_audience() {
    let view = RolloutView {
        baseline: "beta".into(),
        ..share_view(1_000_000, rollout_core::Target::Rule("beta".into()))
    };
    let compiled_flag = compiled(&flag(), Some(&view));
    let beta = compiled_flag.evaluate(&entity("user-1").attribute("plan", text("beta")));
    assert_eq!(
        (beta.variation, beta.reason, beta.rule_id),
        ("on", Reason::Rollout, Some("beta"))
    );
    let other = compiled_flag.evaluate(&entity("user-1"));
    assert_eq!((other.variation, other.reason), ("off", Reason::Default));
}

#[test]
fn stickiness_buckets_on_the_named_attribute() {
    let view = RolloutView {
        stickiness: Some("account_id".into()),
        ..share_view(500_000, rollout_core::Target::Default)
    };
    let compiled_flag = compiled(&flag(), Some(&view));
    for account in 0..200 {
        let account_id = text(&format!("acct-{account}"));
        let first = compiled_flag
            .evaluate(&entity("user-a").attribute("account_id", account_id.clone()))
            .variation;
        let second = compiled_flag
            .evaluate(&entity("user-b").attribute("account_id", account_id))
            .variation;
        assert_eq!(first, second, "an account switches together");
    }
    let lacking = compiled_flag.evaluate(&entity("user-c"));
    assert_eq!(
        (lacking.variation, lacking.reason, lacking.bucket),
        ("off", Reason::StickinessMissing, None)
    );
}

#[test]
fn raising_the_share_from_10_to_20_percent_keeps_every_candidate() {
    let at_ten = compiled(
        &flag(),
        Some(&share_view(100_000, rollout_core::Target::Default)),
    );
    let at_twenty = compiled(
        &flag(),
        Some(&share_view(200_000, rollout_core::Target::Default)),
    );
    let mut gained = 0;
    for id in 0..10_000 {
        let user = entity(&format!("user-{id}"));
        let before = at_ten.evaluate(&user).variation;
        let after = at_twenty.evaluate(&user).variation;
        if before == "on" {
            assert_eq!(after, "on", "{} lost the candidate", user.id);
        }
        gained += usize::from(before == "off" && after == "on");
    }
    assert!(gained > 800, "about 1000 should join, {gained} did");
}

#[test]
fn label_stages_serve_the_candidate_to_released_stages_only() {
    let plan = plan(json!({"stages": [
        {"name": "canary", "labels": {"ring": "canary"}},
        {"name": "eu", "labels": {"region": "eu"}},
    ]}));
    let state = RolloutState::created(&plan, now()).state;
    let view = state.view("r-2", &plan).expect("running");
    let compiled_flag = compiled(&flag(), Some(&view));
    let canary = entity("m1").label("ring", "canary").label("region", "eu");
    let eu = entity("m2").label("region", "eu");
    assert_eq!(compiled_flag.evaluate(&canary).variation, "on");
    assert_eq!(compiled_flag.evaluate(&eu).variation, "off");
    let continued = step(&plan, &state, &Event::Continue, at(minutes(1)))
        .expect("continue")
        .state;
    let compiled_next = compiled(&flag(), continued.view("r-2", &plan).as_ref());
    assert_eq!(compiled_next.evaluate(&eu).variation, "on");
    assert_eq!(
        compiled_next.evaluate(&entity("m3")).variation,
        "off",
        "unassigned waits"
    );
    // stopping here leaves the same two stages on the candidate
    let stopped = step(
        &plan,
        &continued,
        &Event::Stop { percentage: None },
        at(minutes(2)),
    )
    .expect("stop")
    .state;
    let mut ended_flag = flag();
    ended_flag.default = stopped.final_serve(&plan).expect("finished");
    let ended = compiled(&ended_flag, None);
    for member in [&canary, &eu, &entity("m3")] {
        assert_eq!(
            ended.evaluate(member).variation,
            compiled_next.evaluate(member).variation,
            "{}",
            member.id
        );
    }
}

#[test]
fn the_serve_left_after_an_ending_serves_exactly_the_same_entities() {
    let plan = plan(
        json!({"phases": [{"percentage": 37.5, "duration": "1h"}, {"percentage": 100}], "stickiness": "account_id"}),
    );
    let running = RolloutState::created(&plan, now()).state;
    let live = compiled(&flag(), running.view("r-3", &plan).as_ref());
    let stopped = step(
        &plan,
        &running,
        &Event::Stop { percentage: None },
        at(minutes(5)),
    )
    .expect("stop")
    .state;
    let mut ended_flag = flag();
    ended_flag.default = stopped.final_serve(&plan).expect("finished");
    let ended = compiled(&ended_flag, None);
    for id in 0..5_000 {
        let user = entity(&format!("user-{id}"))
            .attribute("account_id", text(&format!("acct-{}", id % 700)));
        assert_eq!(
            ended.evaluate(&user).variation,
            live.evaluate(&user).variation,
            "{}",
            user.id
        );
    }
    // and one without the stickiness attribute stays on the baseline in both
    assert_eq!(ended.evaluate(&entity("lonely")).variation, "off");
    assert_eq!(live.evaluate(&entity("lonely")).variation, "off");
}
