//! In-process evaluation cost (SPEC §10): a flag with 10 rules and an active rollout, and the
//! bucketing hash alone — each beside a baseline measured in the same run (XXH3-64 of the
//! same key), so the report is a ratio that survives a noisy machine.
//!
//! Run: `cargo bench -p rollout-core --bench evaluation`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use rollout_core::{
    AttributeValue, BucketSeed, CompiledFlag, Entity, Flag, RolloutView, Share, Target,
    ViewAudience,
};
use serde_json::json;

/// Ten rules of mixed operators, none of which the benchmark entity matches, so every rule
/// is checked before the default's active rollout decides: the worst case.
fn ten_rule_flag() -> Flag {
    let rules: Vec<serde_json::Value> = (0..10)
        .map(|index| {
            let condition = match index % 5 {
                0 => json!({"attribute": "country", "op": "in", "values": ["fr", "it", "es", format!("x{index}")]}),
                1 => json!({"attribute": "email", "op": "ends_with", "values": [format!("@corp{index}.example")]}),
                2 => json!({"attribute": "age", "op": "gt", "values": [100 + index]}),
                3 => json!({"attribute": "app_version", "op": "semver_lt", "values": ["1.0.0"]}),
                _ => json!({"attribute": "plan", "op": "equals", "values": [format!("plan-{index}")]}),
            };
            json!({"id": format!("rule-{index}"), "conditions": [condition], "serve": {"variation": "on"}})
        })
        .collect();
    serde_json::from_value(json!({
        "key": "bench-flag",
        "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
        "off_variation": "off", "default": {"variation": "off"}, "rules": rules
    }))
    .expect("bench flag parses")
}

fn bench(criterion: &mut Criterion) {
    let view = RolloutView {
        rollout_id: "r-bench".into(),
        target: Target::Default,
        baseline: "off".into(),
        candidate: "on".into(),
        salt: "bench-salt".into(),
        stickiness: None,
        step: 3,
        audience: ViewAudience::Share(Share::from_ppm(250_000)),
    };
    let compiled =
        CompiledFlag::compile(&ten_rule_flag(), 1, Some(&view)).expect("bench flag compiles");
    let entity = Entity::with_id("user-4242424")
        .attribute("country", AttributeValue::String("de".into()))
        .attribute("email", AttributeValue::String("ana@example.com".into()))
        .attribute("age", AttributeValue::Number(31.0))
        .attribute("app_version", AttributeValue::String("2.3.4".into()))
        .attribute("plan", AttributeValue::String("pro".into()));
    let key = entity.id.clone();
    let seed = BucketSeed::from_salt("bench-salt");

    let mut group = criterion.benchmark_group("evaluation");
    group.bench_function("baseline_xxh3_64_of_key", |bencher| {
        bencher.iter(|| xxhash_rust::xxh3::xxh3_64(black_box(key.as_bytes())));
    });
    group.bench_function("bucket_hash", |bencher| {
        bencher.iter(|| seed.bucket(black_box(&key)))
    });
    group.bench_function("evaluate_10_rules_active_rollout", |bencher| {
        bencher.iter(|| {
            let answer = compiled.evaluate(black_box(&entity));
            black_box(answer.bucket)
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
