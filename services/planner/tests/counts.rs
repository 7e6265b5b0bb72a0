//! `rollout.counts`: the figures behind a rollout's health gates, read as the ticker would
//! read them — outcomes of each side over the guard window with the guard's verdict, and
//! each label stage's fleet counts.

mod common;

use common::*;
use rollout_store::fleet::{record_report, register_agent, Agent, Report};
use rollout_store::outcomes::{add_tallies, Side, Tallies, Tally};
use rollout_store::redis_time;
use rollout_store::Keys;
use rollout_wire::subjects::Namespace;
use serde_json::json;

fn keys() -> Keys {
    Keys::new(&Namespace::new("test").expect("namespace"))
}

/// Adds outcomes as an evaluator attributes them to rollout `rollout_id`, in the current
/// 10 s bucket: (side, successes, errors).
async fn report_outcomes(cluster: &Cluster, rollout_id: &str, sides: &[(Side, u64, u64)]) {
    let mut connection = cluster.redis().await;
    let now = redis_time(&mut connection).await.expect("time");
    let tallies = Tallies {
        rollouts: sides
            .iter()
            .map(|(side, success, error)| {
                (
                    (rollout_id.to_owned(), *side),
                    Tally {
                        success: *success,
                        error: *error,
                    },
                )
            })
            .collect(),
        ..Tallies::default()
    };
    add_tallies(&mut connection, &keys(), &tallies, now)
        .await
        .expect("tallies");
}

/// Creates flag `agent` and a label-stage rollout of it with `stages`; returns its id.
async fn create_staged(cluster: &Cluster, stages: serde_json::Value) -> String {
    create_flag(cluster, "agent").await;
    let created = cluster
        .command(
            "rollout.create",
            json!({"rollout": {"flag": "agent", "baseline": "off", "candidate": "on",
                               "stages": stages}}),
        )
        .await;
    ok(&created)["rollout_id"].as_str().expect("id").to_owned()
}

/// Registers fleet agent `id` with `labels`, last seen at `last_seen`, as an evaluator does.
async fn register(
    connection: &mut redis::aio::MultiplexedConnection,
    id: &str,
    labels: serde_json::Value,
    last_seen: rollout_core::Timestamp,
) {
    let agent = Agent {
        id: id.to_owned(),
        labels: serde_json::from_value(labels).expect("labels"),
        attributes: Default::default(),
        last_seen,
    };
    register_agent(
        connection,
        &keys(),
        &agent,
        rollout_store::fleet::DEFAULT_AGENT_EXPIRY,
    )
    .await
    .expect("register");
}

/// Agent `id` reports the candidate `on` applied for `rollout_id`.
async fn applied(connection: &mut redis::aio::MultiplexedConnection, rollout_id: &str, id: &str) {
    record_report(
        connection,
        &keys(),
        rollout_id,
        id,
        &Report::Applied("on".to_owned()),
    )
    .await
    .expect("report");
}

#[tokio::test]
async fn counts_show_outcomes_over_the_guard_window_with_its_verdict() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "checkout").await;
    let created = cluster
        .command("rollout.create", json!({"rollout": {"flag": "checkout", "baseline": "off", "candidate": "on",
            "phases": [{"percentage": 10, "duration": "1h"}, {"percentage": 100}],
            "guard": {"max_error_rate": 5, "min_samples": 50, "window": "1m", "action": "rollback"}}}))
        .await;
    let rollout_id = ok(&created)["rollout_id"].as_str().expect("id").to_owned();

    let quiet = cluster
        .query("rollout.counts", json!({"rollout_id": rollout_id}))
        .await;
    let quiet = ok(&quiet);
    assert_eq!(quiet["window_ms"], json!(60_000), "the guard's window");
    assert_eq!(
        quiet["outcomes"],
        json!({"candidate": {"success": 0, "error": 0}, "baseline": {"success": 0, "error": 0}})
    );
    assert_eq!(quiet["guard"], json!({"verdict": "insufficient_data"}));
    assert!(quiet.get("stages").is_none(), "no stages in a phased plan");

    report_outcomes(
        &cluster,
        &rollout_id,
        &[(Side::Candidate, 90, 10), (Side::Baseline, 199, 1)],
    )
    .await;
    let breached = cluster
        .query("rollout.counts", json!({"rollout_id": rollout_id}))
        .await;
    let breached = ok(&breached);
    assert_eq!(
        breached["outcomes"],
        json!({"candidate": {"success": 90, "error": 10}, "baseline": {"success": 199, "error": 1}})
    );
    assert_eq!(breached["guard"]["verdict"], json!("breached"));
    assert_eq!(breached["guard"]["candidate_samples"], json!(100));
    assert_eq!(breached["guard"]["candidate_error_rate"], json!(0.1));
    assert_eq!(breached["state"], json!("running"));
    assert_eq!(
        (
            breached["baseline"].as_str(),
            breached["candidate"].as_str()
        ),
        (Some("off"), Some("on"))
    );

    // a rollout without a guard: the default window, no verdict
    create_flag(&cluster, "search").await;
    let unguarded = create_rollout(&cluster, "search").await;
    let counts = cluster
        .query("rollout.counts", json!({"rollout_id": unguarded}))
        .await;
    let counts = ok(&counts);
    assert_eq!(counts["window_ms"], json!(300_000));
    assert!(counts.get("guard").is_none(), "{counts}");

    let missing = cluster
        .query("rollout.counts", json!({"rollout_id": "r-nope"}))
        .await;
    assert_eq!(
        error(&missing),
        ("not_found".to_owned(), Some("rollout_id".to_owned()))
    );
    let bad = cluster
        .query("rollout.counts", json!({"rollout_id": "a.b"}))
        .await;
    assert_eq!(error(&bad).0, "invalid_argument");
}

#[tokio::test]
async fn counts_name_every_label_stage_with_its_fleet_counts() {
    let cluster = Cluster::start(1).await;
    let rollout_id = create_staged(
        &cluster,
        json!([{"name": "canary", "labels": {"ring": "canary"}},
               {"name": "prod", "labels": {"env": "prod"}}]),
    )
    .await;
    let mut connection = cluster.redis().await;
    let now = redis_time(&mut connection).await.expect("time");
    for (id, labels) in [
        ("a-1", json!({"ring": "canary", "env": "prod"})),
        ("a-2", json!({"env": "prod"})),
        ("a-3", json!({"env": "dev"})),
    ] {
        register(&mut connection, id, labels, now).await;
    }
    applied(&mut connection, &rollout_id, "a-1").await;

    let counts = cluster
        .query("rollout.counts", json!({"rollout_id": rollout_id}))
        .await;
    let stages = ok(&counts)["stages"].clone();
    let summary: Vec<(String, u64, u64, u64)> = stages
        .as_array()
        .expect("stages")
        .iter()
        .map(|stage| {
            let counts = &stage["counts"];
            (
                stage["name"].as_str().expect("name").to_owned(),
                counts["members"].as_u64().expect("members"),
                counts["completed"].as_u64().expect("completed"),
                counts["waiting"].as_u64().expect("waiting"),
            )
        })
        .collect();
    // a-1 is in canary only (first match), a-2 waits in prod, a-3 is unassigned
    assert_eq!(
        summary,
        vec![
            ("canary".to_owned(), 1, 1, 0),
            ("prod".to_owned(), 1, 0, 1),
            ("unassigned".to_owned(), 1, 0, 1),
        ]
    );
}

#[tokio::test]
async fn status_says_which_health_gate_holds_and_why() {
    let cluster = Cluster::start(1).await;
    let rollout_id = create_staged(
        &cluster,
        json!([{"name": "canary", "labels": {"ring": "canary"},
                "gate": {"min_completed_percentage": 50}}]),
    )
    .await;
    let mut connection = cluster.redis().await;
    let now = redis_time(&mut connection).await.expect("time");
    // four canary agents: one applied the candidate, three went silent ten minutes ago
    let silent_since = rollout_core::Timestamp::from_millis(now.as_millis() - 600_000);
    for id in ["a-1", "a-2", "a-3", "a-4"] {
        let last_seen = if id == "a-1" { now } else { silent_since };
        register(&mut connection, id, json!({"ring": "canary"}), last_seen).await;
    }
    applied(&mut connection, &rollout_id, "a-1").await;

    let status = cluster
        .query("rollout.status", json!({"rollout_id": rollout_id}))
        .await;
    let status = ok(&status);
    assert_eq!(status["waiting_for"], json!("guard"));
    assert_eq!(status["current_step"], json!(0));
    assert_eq!(status["hold"]["held_by"], json!("completion"), "{status}");
    let reason = status["hold"]["reason"].as_str().expect("reason");
    assert!(
        reason.starts_with("1 of 4 members completed (25.0%), 50% needed")
            && reason.contains("3 stale"),
        "{reason}"
    );
    assert_eq!(status["steps"][0]["counts"]["stale"], json!(3));
}
