//! Every rule the seeds state (SPEC §3, §5), as literal cases: Bindplane label stages,
//! Bucketeer templates and manual schedules, IBM phases and presets.

mod common;

use common::*;
use rollout_core::machine::{step, Event, Health, Lifecycle, RolloutState, StageCounts};
use rollout_core::plan::{stage_of, Audience, Gate, StartMode, UNASSIGNED_STAGE};
use rollout_core::{DurationMs, Labels, Share};
use serde_json::json;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn shares(plan: &rollout_core::Plan) -> Vec<f64> {
    plan.steps
        .iter()
        .map(|step| match &step.audience {
            Audience::Share(share) => share.percentage(),
            Audience::Stage { .. } => f64::NAN,
        })
        .collect()
}

fn gates(plan: &rollout_core::Plan) -> Vec<Gate> {
    plan.steps.iter().map(|step| step.gate.clone()).collect()
}

// ---------------------------------------------------------------- Bindplane: label stages

fn bindplane_stages() -> rollout_core::Plan {
    plan(json!({"stages": [
        {"name": "dev", "labels": {"env": "dev"}},
        {"name": "staging-eu", "labels": {"env": "staging", "region": "eu"}},
        {"name": "prod", "labels": {"env": "prod"}},
    ]}))
}

#[test]
fn bindplane_an_entity_joins_the_first_stage_whose_labels_it_all_has() {
    let plan = bindplane_stages();
    let stages = plan.stage_labels();
    assert_eq!(
        stage_of(&stages, &labels(&[("env", "dev"), ("region", "us")])),
        0
    );
    assert_eq!(
        stage_of(&stages, &labels(&[("env", "staging"), ("region", "eu")])),
        1
    );
    // has only one of stage 2's labels: not a member
    assert_eq!(
        stage_of(&stages, &labels(&[("env", "staging"), ("region", "us")])),
        3
    );
    // equal values are required
    assert_eq!(stage_of(&stages, &labels(&[("env", "Prod")])), 3);
}

#[test]
fn bindplane_a_collector_already_counted_in_stage_1_is_not_counted_in_stage_3() {
    let plan = plan(json!({"stages": [
        {"name": "canary", "labels": {"canary": "true"}},
        {"name": "eu", "labels": {"region": "eu"}},
        {"name": "prod", "labels": {"env": "prod"}},
    ]}));
    let stages = plan.stage_labels();
    // matches stage 1 (canary) and stage 3 (env: prod): counted in stage 1 only
    let collector = labels(&[("canary", "true"), ("env", "prod")]);
    assert_eq!(stage_of(&stages, &collector), 0);
    let prod_only = labels(&[("env", "prod")]);
    assert_eq!(stage_of(&stages, &prod_only), 2);
}

#[test]
fn bindplane_a_final_unassigned_stage_is_always_added() {
    let plan = bindplane_stages();
    assert_eq!(plan.steps.len(), 4);
    let Audience::Stage { name, labels, .. } = &plan.steps[3].audience else {
        panic!("last step is not a stage");
    };
    assert_eq!(name, UNASSIGNED_STAGE);
    assert!(labels.is_empty());
    // collectors matching no stage belong to it
    assert_eq!(stage_of(&plan.stage_labels(), &labels_of_nothing()), 3);
}

fn labels_of_nothing() -> Labels {
    Labels::new()
}

#[test]
fn bindplane_unassigned_is_a_reserved_name() {
    let errors = compile_kind(json!({"stages": [{"name": "unassigned", "labels": {"a": "b"}}]}))
        .expect_err("reserved");
    assert!(errors.has_field("rollout.stages[0].name"), "{errors}");
}

#[test]
fn bindplane_start_releases_only_stage_1_and_continue_releases_the_next() {
    let plan = bindplane_stages();
    let created = RolloutState::created(&plan, now());
    assert_eq!(created.state.lifecycle, Lifecycle::Running);
    assert_eq!(created.state.released_stages(), 1);
    // stages wait for continue: time alone does nothing
    let later = step(
        &plan,
        &created.state,
        &Event::Tick(Health::default()),
        at(DurationMs::from_hours(48)),
    )
    .expect("tick");
    assert!(!later.changed());
    let continued =
        step(&plan, &created.state, &Event::Continue, at(minutes(1))).expect("continue");
    assert_eq!(continued.state.released_stages(), 2);
}

#[test]
fn bindplane_an_empty_stage_passes_through_on_continue_doing_nothing() {
    let plan = bindplane_stages();
    let mut state = RolloutState::created(&plan, now()).state;
    // stage "staging-eu" may have no members: continue still moves one step at a time
    for expected_released in 2..=3 {
        let outcome = step(
            &plan,
            &state,
            &Event::Continue,
            at(minutes(expected_released as i64)),
        )
        .expect("continue");
        assert_eq!(outcome.state.released_stages(), expected_released);
        assert_eq!(outcome.state.lifecycle, Lifecycle::Running);
        state = outcome.state;
    }
    // releasing unassigned completes the rollout
    let last = step(&plan, &state, &Event::Continue, at(minutes(10))).expect("continue");
    assert_eq!(last.state.lifecycle, Lifecycle::Completed);
    assert_eq!(last.state.released_stages(), 4);
}

#[test]
fn bindplane_automatic_gates_after_a_duration_or_on_completion() {
    let plan = plan(json!({"stages": [
        {"name": "canary", "labels": {"tier": "canary"}, "gate": {"after": "30m"}},
        {"name": "eu", "labels": {"region": "eu"}, "gate": {"min_completed_percentage": 90, "max_errors": 2}},
    ]}));
    assert_eq!(plan.steps[0].gate, Gate::Timer(minutes(30)));
    assert_eq!(
        plan.steps[1].gate,
        Gate::Completion {
            min_completed: Share::from_ppm(900_000),
            max_errors: 2
        }
    );
    let state = RolloutState::created(&plan, now()).state;
    let after_timer = step(
        &plan,
        &state,
        &Event::Tick(Health::default()),
        at(minutes(30)),
    )
    .expect("tick");
    assert_eq!(after_timer.state.released_stages(), 2);
    let counts = |completed, errors| Health {
        outcomes: Vec::new(),
        current_stage: Some(StageCounts {
            members: 10,
            completed,
            errors,
            pending: 10 - completed - errors,
            ..StageCounts::default()
        }),
        freezes: Default::default(),
    };
    let not_enough = step(
        &plan,
        &after_timer.state,
        &Event::Tick(counts(8, 0)),
        at(minutes(40)),
    )
    .expect("tick");
    assert!(!not_enough.changed());
    let too_many_errors = step(
        &plan,
        &after_timer.state,
        &Event::Tick(counts(7, 3)),
        at(minutes(40)),
    )
    .expect("tick");
    assert!(!too_many_errors.changed());
    let enough = step(
        &plan,
        &after_timer.state,
        &Event::Tick(counts(9, 1)),
        at(minutes(40)),
    )
    .expect("tick");
    assert_eq!(enough.state.released_stages(), 3);
    // members that stopped heartbeating count as not completed (SPEC §11.1: silence never
    // opens a gate): 8 of 10 is not 90 %, however many of the other two went silent
    let with_stale = |stale| Health {
        outcomes: Vec::new(),
        current_stage: Some(StageCounts {
            members: 10,
            completed: 8,
            pending: 2 - stale,
            stale,
            ..StageCounts::default()
        }),
        freezes: Default::default(),
    };
    for stale in [1, 2] {
        assert!(
            !step(
                &plan,
                &after_timer.state,
                &Event::Tick(with_stale(stale)),
                at(minutes(40))
            )
            .expect("tick")
            .changed(),
            "{stale} stale members"
        );
    }
}

// ----------------------------------------------------------- Bucketeer: template and manual

#[test]
fn bucketeer_a_10_percent_template_gives_ten_phases() {
    let plan = plan(json!({"template": {"increment": 10, "frequency": "daily"}}));
    assert_eq!(
        shares(&plan),
        vec![10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]
    );
    let mut expected_gates = vec![Gate::Timer(DurationMs::from_hours(24)); 9];
    expected_gates.push(Gate::Immediate);
    assert_eq!(gates(&plan), expected_gates);
}

#[test]
fn bucketeer_a_30_percent_template_gives_30_60_90_100() {
    let plan = plan(json!({"template": {"increment": 30, "frequency": "hourly"}}));
    assert_eq!(shares(&plan), vec![30.0, 60.0, 90.0, 100.0]);
}

#[test]
fn bucketeer_template_phase_k_executes_at_start_plus_k_times_frequency() {
    let start = time_text(DurationMs::from_hours(2));
    let plan =
        plan(json!({"template": {"increment": 25, "frequency": "weekly", "start_at": start}}));
    assert_eq!(plan.start, StartMode::At(at(DurationMs::from_hours(2))));
    let state = RolloutState::created(&plan, now()).state;
    let starts = state.projected_starts(&plan, now());
    let week = DurationMs::from_hours(24 * 7);
    for (phase, planned) in starts.iter().enumerate() {
        let expected = at(DurationMs::from_hours(2))
            .plus(DurationMs::from_millis(week.as_millis() * phase as i64));
        assert_eq!(*planned, Some(expected), "phase {phase}");
    }
}

#[test]
fn bucketeer_manual_weights_must_strictly_increase() {
    let errors = compile_kind(json!({"manual": [
        {"weight": 10, "execute_at": time_text(minutes(10))},
        {"weight": 10, "execute_at": time_text(minutes(20))},
    ]}))
    .expect_err("equal weights");
    assert!(errors.has_field("rollout.manual[1].weight"), "{errors}");
}

#[test]
fn bucketeer_manual_steps_must_be_at_least_5_minutes_apart() {
    let too_close = compile_kind(json!({"manual": [
        {"weight": 10, "execute_at": time_text(minutes(10))},
        {"weight": 20, "execute_at": time_text(minutes(14))},
    ]}))
    .expect_err("4 minutes apart");
    assert!(
        too_close.has_field("rollout.manual[1].execute_at"),
        "{too_close}"
    );
    // exactly five minutes is enough
    let plan = plan(json!({"manual": [
        {"weight": 10, "execute_at": time_text(minutes(10))},
        {"weight": 20, "execute_at": time_text(minutes(15))},
    ]}));
    assert_eq!(plan.steps[0].gate, Gate::Timer(minutes(5)));
}

#[test]
fn bucketeer_minimum_interval_is_configurable() {
    let spec = spec(json!({"manual": [
        {"weight": 10, "execute_at": time_text(minutes(10))},
        {"weight": 20, "execute_at": time_text(minutes(12))},
    ]}));
    let mut context = context();
    context.min_phase_interval = minutes(1);
    assert!(rollout_core::compile(&spec, &flag(), &context).is_ok());
    context.min_phase_interval = minutes(3);
    assert!(rollout_core::compile(&spec, &flag(), &context).is_err());
}

#[test]
fn bucketeer_a_manual_schedule_may_end_below_100_percent() {
    let plan = plan(json!({"manual": [
        {"weight": 30, "execute_at": time_text(minutes(10))},
        {"weight": 90, "execute_at": time_text(minutes(20))},
    ]}));
    assert_eq!(shares(&plan), vec![30.0, 90.0]);
    let queued = RolloutState::created(&plan, now()).state;
    assert_eq!(queued.lifecycle, Lifecycle::Queued);
    let first = step(
        &plan,
        &queued,
        &Event::Tick(Health::default()),
        at(minutes(10)),
    )
    .expect("tick");
    assert_eq!(first.state.served_share(&plan), Share::from_ppm(300_000));
    let last = step(
        &plan,
        &first.state,
        &Event::Tick(Health::default()),
        at(minutes(20)),
    )
    .expect("tick");
    assert_eq!(last.state.lifecycle, Lifecycle::Completed);
    // the remaining 10 % keep the baseline
    assert_eq!(last.state.served_share(&plan), Share::from_ppm(900_000));
    let serve = last.state.final_serve(&plan).expect("finished");
    let split = serve.split.expect("a 90 % split");
    assert_eq!((split[0].variation.as_str(), split[0].weight), ("on", 90.0));
    assert_eq!(
        (split[1].variation.as_str(), split[1].weight),
        ("off", 10.0)
    );
    assert_eq!(serve.salt.as_deref(), Some("fresh-salt"));
}

#[test]
fn bucketeer_the_candidate_must_not_be_the_off_variation() {
    let mut spec = spec(json!({"preset": "1hr"}));
    spec.baseline = "on".into();
    spec.candidate = "off".into();
    let errors = rollout_core::compile(&spec, &flag(), &context()).expect_err("candidate is off");
    assert!(errors.has_field("rollout.candidate"), "{errors}");
}

#[test]
fn bucketeer_disabling_the_flag_stops_the_rollout_keeping_the_last_share() {
    let plan = plan(json!({"phases": [{"percentage": 20, "duration": "1h"}, {"percentage": 100}]}));
    let running = RolloutState::created(&plan, now()).state;
    let stopped = step(&plan, &running, &Event::FlagDisabled, at(minutes(3))).expect("disable");
    assert_eq!(stopped.state.lifecycle, Lifecycle::Stopped);
    assert_eq!(stopped.state.served_share(&plan), Share::from_ppm(200_000));
}

// ----------------------------------------------------------------- IBM: phases and presets

#[test]
fn ibm_the_four_presets_exactly() {
    let expected: [(&str, &[(f64, i64)]); 4] = [
        ("1hr", &[(10.0, 15), (50.0, 15), (100.0, 30)]),
        (
            "12hr",
            &[(5.0, 180), (25.0, 180), (50.0, 180), (100.0, 180)],
        ),
        (
            "24hr",
            &[(5.0, 360), (25.0, 360), (50.0, 360), (100.0, 360)],
        ),
        (
            "48hr",
            &[(5.0, 720), (10.0, 720), (25.0, 720), (100.0, 720)],
        ),
    ];
    for (name, phases) in expected {
        let plan = plan(json!({ "preset": name }));
        let actual: Vec<(f64, Gate)> = plan
            .steps
            .iter()
            .map(|step| match &step.audience {
                Audience::Share(share) => (share.percentage(), step.gate.clone()),
                Audience::Stage { .. } => panic!("preset compiled to stages"),
            })
            .collect();
        let wanted: Vec<(f64, Gate)> = phases
            .iter()
            .map(|(share, mins)| (*share, Gate::Timer(minutes(*mins))))
            .collect();
        assert_eq!(actual, wanted, "preset {name}");
    }
    assert!(compile_kind(json!({"preset": "6hr"}))
        .expect_err("unknown")
        .has_field("rollout.preset"));
}

#[test]
fn ibm_a_final_phase_without_duration_completes_on_entry() {
    let plan = plan(json!({"phases": [{"percentage": 5, "duration": "6h"}, {"percentage": 100}]}));
    assert_eq!(plan.steps[1].gate, Gate::Immediate);
    let state = RolloutState::created(&plan, now()).state;
    let done = step(
        &plan,
        &state,
        &Event::Tick(Health::default()),
        at(DurationMs::from_hours(6)),
    )
    .expect("tick");
    assert_eq!(done.state.lifecycle, Lifecycle::Completed);
    assert_eq!(done.state.served_share(&plan), Share::ALL);
}

#[test]
fn ibm_a_final_phase_with_duration_is_a_bake_time() {
    let plan = plan(
        json!({"phases": [{"percentage": 50, "duration": "1h"}, {"percentage": 100, "duration": "2h"}]}),
    );
    let state = RolloutState::created(&plan, now()).state;
    let entered = step(
        &plan,
        &state,
        &Event::Tick(Health::default()),
        at(DurationMs::from_hours(1)),
    )
    .expect("tick");
    assert_eq!(entered.state.lifecycle, Lifecycle::Running);
    assert_eq!(entered.state.step, Some(1));
    let baking = step(
        &plan,
        &entered.state,
        &Event::Tick(Health::default()),
        at(minutes(179)),
    )
    .expect("tick");
    assert!(!baking.changed());
    let done = step(
        &plan,
        &entered.state,
        &Event::Tick(Health::default()),
        at(DurationMs::from_hours(3)),
    )
    .expect("tick");
    assert_eq!(done.state.lifecycle, Lifecycle::Completed);
}

#[test]
fn ibm_a_future_start_is_queued() {
    let plan = plan(json!({"preset": "1hr", "start_at": time_text(DurationMs::from_hours(3))}));
    let created = RolloutState::created(&plan, now());
    assert_eq!(created.state.lifecycle, Lifecycle::Queued);
    assert_eq!(
        created.state.due_at(&plan),
        Some(at(DurationMs::from_hours(3)))
    );
    let early = step(
        &plan,
        &created.state,
        &Event::Tick(Health::default()),
        at(minutes(179)),
    )
    .expect("tick");
    assert!(!early.changed());
    let started = step(
        &plan,
        &created.state,
        &Event::Tick(Health::default()),
        at(DurationMs::from_hours(3)),
    )
    .expect("tick");
    assert_eq!(started.state.lifecycle, Lifecycle::Running);
    assert_eq!(started.state.served_share(&plan), Share::from_ppm(100_000));
}

#[test]
fn ibm_a_start_in_the_past_is_refused() {
    let one_second_ago = rollout_core::Timestamp::from_millis(NOW_MS - 1000).to_rfc3339();
    let errors =
        compile_kind(json!({"preset": "1hr", "start_at": one_second_ago})).expect_err("past");
    assert!(errors.has_field("rollout.start_at"), "{errors}");
}

#[test]
fn ibm_stop_keeps_the_given_share() {
    let plan = plan(json!({"preset": "24hr"}));
    let running = RolloutState::created(&plan, now()).state;
    let stopped = step(
        &plan,
        &running,
        &Event::Stop {
            percentage: Some(25.0),
        },
        at(minutes(5)),
    )
    .expect("stop");
    assert_eq!(stopped.state.lifecycle, Lifecycle::Stopped);
    assert_eq!(stopped.state.served_share(&plan), Share::from_ppm(250_000));
    // without a percentage the current share stays
    let kept = step(
        &plan,
        &running,
        &Event::Stop { percentage: None },
        at(minutes(5)),
    )
    .expect("stop");
    assert_eq!(kept.state.served_share(&plan), Share::from_ppm(50_000));
}

#[test]
fn ibm_percentages_strictly_increase_in_0_to_100_with_four_decimals() {
    let errors = compile_kind(json!({"phases": [
        {"percentage": 0, "duration": "1h"},
        {"percentage": 50, "duration": "1h"},
        {"percentage": 40, "duration": "1h"},
        {"percentage": 100.5},
    ]}))
    .expect_err("invalid");
    assert!(
        !errors.has_field("rollout.phases[1].percentage"),
        "{errors}"
    );
    let decimals =
        compile_kind(json!({"phases": [{"percentage": 50.00001}]})).expect_err("five decimals");
    assert!(
        decimals.has_field("rollout.phases[0].percentage"),
        "{decimals}"
    );
    for field in [
        "rollout.phases[0].percentage",
        "rollout.phases[2].percentage",
        "rollout.phases[3].percentage",
    ] {
        assert!(errors.has_field(field), "missing {field}: {errors}");
    }
    let fine = plan(
        json!({"phases": [{"percentage": 0.0001, "duration": "30s"}, {"percentage": 12.3456, "duration": "1h30m"}, {"percentage": 100}]}),
    );
    assert_eq!(fine.share_at(0), Share::from_ppm(1));
    assert_eq!(fine.share_at(1), Share::from_ppm(123_456));
    assert_eq!(fine.steps[1].gate, Gate::Timer(minutes(90)));
}

#[test]
fn ibm_every_phase_but_the_last_needs_a_positive_duration() {
    let errors = compile_kind(json!({"phases": [
        {"percentage": 10},
        {"percentage": 20, "duration": "0s"},
        {"percentage": 30, "duration": "soon"},
        {"percentage": 100},
    ]}))
    .expect_err("invalid");
    for field in [
        "rollout.phases[0].duration",
        "rollout.phases[1].duration",
        "rollout.phases[2].duration",
    ] {
        assert!(errors.has_field(field), "missing {field}: {errors}");
    }
}

#[test]
fn exactly_one_rollout_kind_is_given() {
    let two =
        compile_kind(json!({"preset": "1hr", "template": {"increment": 10, "frequency": "daily"}}))
            .expect_err("two kinds");
    assert!(two.has_field("rollout"));
    let none = compile_kind(json!({})).expect_err("no kind");
    assert!(none.has_field("rollout"));
}

#[test]
fn a_rule_level_rollout_names_an_existing_rule() {
    let mut spec = spec(json!({"preset": "1hr"}));
    spec.rule = Some("nope".into());
    let errors = rollout_core::compile(&spec, &flag(), &context()).expect_err("unknown rule");
    assert!(errors.has_field("rollout.rule"));
    spec.rule = Some("beta".into());
    let plan = rollout_core::compile(&spec, &flag(), &context()).expect("known rule");
    assert_eq!(plan.target, rollout_core::Target::Rule("beta".into()));
}
