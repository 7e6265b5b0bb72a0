//! Waves inside label stages (SPEC §12): `percentages: [10, 50, 100]` releases a stage's
//! members by share, bucketed on their ids like users, each wave behind its own gate. What a
//! member is served is asserted through the compiled flag, as evaluators serve it.

mod common;

use std::collections::BTreeSet;

use common::{apply, at, compile_kind, flag, minutes, now, plan, tick};
use proptest::prelude::*;
use rollout_core::machine::{Event, RolloutState};
use rollout_core::plan::{Audience, Gate};
use rollout_core::{CompiledFlag, Entity, Lifecycle, Plan};
use serde_json::json;

/// 200 machines: 50 canaries, 100 in eu, 50 elsewhere.
fn fleet() -> Vec<Entity> {
    (0..200)
        .map(|index| {
            let machine = Entity::with_id(format!("host-{index:03}"));
            match index {
                0..=49 => machine.label("ring", "canary"),
                50..=149 => machine.label("region", "eu"),
                _ => machine.label("region", "us"),
            }
        })
        .collect()
}

/// The machines served the candidate while `state` stands.
fn served(plan: &Plan, state: &RolloutState) -> BTreeSet<String> {
    let compiled =
        CompiledFlag::compile(&flag(), 1, state.view("r-w", plan).as_ref()).expect("compiles");
    fleet()
        .iter()
        .filter(|machine| compiled.evaluate(machine).variation == "on")
        .map(|machine| machine.id.clone())
        .collect()
}

fn in_group(ids: &BTreeSet<String>, low: usize, high: usize) -> usize {
    ids.iter()
        .filter(|id| {
            let index: usize = id[5..].parse().expect("index");
            (low..=high).contains(&index)
        })
        .count()
}

fn waved_plan() -> Plan {
    plan(json!({"stages": [
        {"name": "canary", "labels": {"ring": "canary"}},
        {"name": "eu", "labels": {"region": "eu"}, "percentages": [10, 50, 100],
         "gate": {"after": "30m"}},
    ]}))
}

#[test]
fn each_wave_is_a_step_with_its_share_and_gate() {
    let plan = waved_plan();
    let audiences: Vec<(String, Option<u32>)> = plan
        .steps
        .iter()
        .map(|step| match &step.audience {
            Audience::Stage { name, wave, .. } => (name.clone(), wave.map(|wave| wave.ppm())),
            Audience::Share(_) => panic!("a share step in a staged plan"),
        })
        .collect();
    assert_eq!(
        audiences,
        [
            ("canary".to_owned(), None),
            ("eu".to_owned(), Some(100_000)),
            ("eu".to_owned(), Some(500_000)),
            ("eu".to_owned(), None),
            ("unassigned".to_owned(), None),
        ]
    );
    assert_eq!(plan.steps[0].gate, Gate::Continue);
    for wave in 1..=3 {
        assert_eq!(plan.steps[wave].gate, Gate::Timer(minutes(30)));
    }
    assert_eq!(plan.stage_labels().len(), 2, "a waved stage counts once");
    assert_eq!(plan.stage_names(), ["canary", "eu", "unassigned"]);
    let per_wave = common::plan(json!({"stages": [
        {"name": "eu", "labels": {"region": "eu"}, "percentages": [25, 100],
         "gates": [{"after": "10m"}, {"min_completed_percentage": 90}]},
    ]}));
    assert_eq!(per_wave.steps[0].gate, Gate::Timer(minutes(10)));
    assert!(matches!(per_wave.steps[1].gate, Gate::Completion { .. }));
}

#[test]
fn bad_waves_are_refused_naming_the_field() {
    let cases = [
        (
            json!([10, 5, 100]),
            None,
            "rollout.stages[0].percentages[1]",
        ),
        (json!([10, 50]), None, "rollout.stages[0].percentages[1]"),
        (json!([0, 100]), None, "rollout.stages[0].percentages[0]"),
        (json!([]), None, "rollout.stages[0].percentages"),
        (
            json!([10, 100]),
            Some(json!([{"after": "1m"}])),
            "rollout.stages[0].gates",
        ),
    ];
    for (percentages, gates, field) in cases {
        let mut stage =
            json!({"name": "eu", "labels": {"region": "eu"}, "percentages": percentages});
        if let Some(gates) = gates {
            stage["gates"] = gates;
        }
        let errors = compile_kind(json!({"stages": [stage]})).expect_err("refused");
        assert!(errors.has_field(field), "{field}: {errors}");
    }
    let both = compile_kind(json!({"stages": [{"name": "eu", "labels": {"region": "eu"},
        "percentages": [10, 100], "gate": {"after": "1m"}, "gates": [{"after": "1m"}, {"after": "1m"}]}]}))
    .expect_err("gate and gates");
    assert!(both.has_field("rollout.stages[0].gates"), "{both}");
    let stray = compile_kind(
        json!({"stages": [{"name": "eu", "labels": {"region": "eu"}, "gates": [{"after": "1m"}]}]}),
    )
    .expect_err("gates without waves");
    assert!(stray.has_field("rollout.stages[0].gates"), "{stray}");
}

#[test]
fn waves_release_a_stage_by_share_each_a_superset_of_the_last() {
    let plan = waved_plan();
    let mut state = RolloutState::created(&plan, now()).state;
    let mut before = served(&plan, &state);
    assert_eq!(in_group(&before, 0, 49), 50, "the canaries first");
    assert_eq!(in_group(&before, 50, 199), 0);
    // continue releases eu's first wave; each timer the next
    state = apply(&plan, &state, Event::Continue, at(minutes(1)));
    let mut eu_counts = Vec::new();
    for wave in 0..3 {
        if wave > 0 {
            let due = state.due_at(&plan).expect("a timer");
            state = apply(&plan, &state, tick(), due);
        }
        let now_served = served(&plan, &state);
        assert!(
            before.is_subset(&now_served),
            "wave {wave}: nobody served the candidate goes back"
        );
        assert_eq!(in_group(&now_served, 0, 49), 50);
        assert_eq!(
            in_group(&now_served, 150, 199),
            0,
            "us waits for unassigned"
        );
        eu_counts.push(in_group(&now_served, 50, 149));
        before = now_served;
    }
    // bucketed like users: about 10 % and 50 % of eu's 100, then all of them
    assert!((3..=20).contains(&eu_counts[0]), "{eu_counts:?}");
    assert!((35..=65).contains(&eu_counts[1]), "{eu_counts:?}");
    assert_eq!(eu_counts[2], 100);
    let due = state.due_at(&plan).expect("the last wave's timer");
    state = apply(&plan, &state, tick(), due);
    assert_eq!(state.lifecycle, Lifecycle::Completed);
}

#[test]
fn a_rollout_stopped_mid_wave_keeps_serving_exactly_the_same_machines() {
    let plan = waved_plan();
    let mut state = RolloutState::created(&plan, now()).state;
    state = apply(&plan, &state, Event::Continue, at(minutes(1)));
    state = apply(&plan, &state, tick(), state.due_at(&plan).expect("timer"));
    let live = served(&plan, &state);
    assert!(in_group(&live, 50, 149) > 0 && in_group(&live, 50, 149) < 100);
    let stopped = apply(
        &plan,
        &state,
        Event::Stop { percentage: None },
        at(minutes(45)),
    );
    let mut ended_flag = flag();
    ended_flag.default = stopped.final_serve(&plan).expect("finished");
    let ended = CompiledFlag::compile(&ended_flag, 2, None).expect("compiles");
    let after: BTreeSet<String> = fleet()
        .iter()
        .filter(|machine| ended.evaluate(machine).variation == "on")
        .map(|machine| machine.id.clone())
        .collect();
    assert_eq!(after, live);
}

#[test]
fn the_releasing_step_of_a_member_is_the_first_wave_that_holds_it() {
    let plan = waved_plan();
    let seed = rollout_core::BucketSeed::from_salt(&plan.salt);
    for machine in fleet() {
        let stage = rollout_core::plan::stage_of(&plan.stage_labels(), &machine.labels);
        let step = plan
            .releasing_step(stage, seed.bucket(&machine.id))
            .expect("a step");
        // released at that step, not at the one before
        let at_step = |index: usize| {
            let mut state = RolloutState::created(&plan, now()).state;
            state.step = Some(index);
            served(&plan, &state).contains(&machine.id)
        };
        assert!(at_step(step), "{} at its step {step}", machine.id);
        if step > 0 {
            assert!(!at_step(step - 1), "{} before its step {step}", machine.id);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the waves, every step serves a superset of the step before, and a wave
    /// serves about its share of its stage.
    #[test]
    fn waves_only_ever_add_members(cuts in proptest::collection::btree_set(1u32..100, 0..5)) {
        let mut percentages: Vec<u32> = cuts.into_iter().collect();
        percentages.push(100);
        let plan = common::plan(json!({"stages": [
            {"name": "eu", "labels": {"region": "eu"}, "percentages": percentages},
        ]}));
        let mut previous = BTreeSet::new();
        for index in 0..plan.steps.len() {
            let mut state = RolloutState::created(&plan, now()).state;
            state.step = Some(index);
            let members = served(&plan, &state);
            prop_assert!(previous.is_subset(&members), "step {index}");
            if index < percentages.len() {
                let eu = in_group(&members, 50, 149);
                let expected = percentages[index] as usize;
                prop_assert!(eu.abs_diff(expected) <= 20, "wave {index}: {eu} of 100 for {expected} %");
            }
            previous = members;
        }
    }
}
