//! `FleetAgent` against the real evaluator (in process, beside a planner): agents register
//! with labels, get the candidate only once their stage is released, their reports show in
//! the planner's per-stage counts, and an agent the evaluators lost registers again by
//! itself.

mod common;

use common::{flag, namespace, spec, Cluster};
use rollout_sdk::{ErrorCode, ErrorKind, FleetAgent, Labels};
use rollout_testkit::RedisReply;
use serde_json::json;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

/// Waits until the evaluator serves `flag` at the version the planner has now.
async fn until_current(cluster: &Cluster, flag: &str) {
    let version = cluster
        .commands()
        .get_flag(flag)
        .await
        .expect("flag")
        .version;
    cluster.until_served(flag, version).await;
}

#[tokio::test]
async fn agents_follow_released_stages_and_their_reports_are_counted() {
    let cluster = Cluster::with_evaluator().await;
    let commands = cluster.commands();
    commands.create_flag(flag("edge")).await.expect("flag");
    let rollout = commands
        .create_rollout(spec(json!({
            "flag": "edge", "baseline": "off", "candidate": "on",
            "stages": [{"name": "canary", "labels": {"ring": "canary"}},
                       {"name": "prod", "labels": {"env": "prod"}}],
        })))
        .await
        .expect("rollout");
    until_current(&cluster, "edge").await;

    let agent = |id: &str, pairs: &[(&str, &str)]| {
        FleetAgent::new(cluster.client.clone(), namespace(), id, labels(pairs))
    };
    let canary = agent("edge-1", &[("ring", "canary"), ("env", "prod")]);
    let prod = agent("edge-2", &[("env", "prod")]);
    let elsewhere = agent("edge-3", &[("env", "dev")]);
    for fleet_agent in [&canary, &prod, &elsewhere] {
        fleet_agent.register().await.expect("registers");
    }

    // first match wins: edge-1 is in canary, not counted again in prod
    let wanted = canary.desired("edge").await.expect("desired");
    assert_eq!(
        (wanted.variation.as_str(), wanted.stage.as_deref()),
        ("on", Some("canary"))
    );
    assert_eq!(
        wanted.rollout_id.as_deref(),
        Some(rollout.rollout_id.as_str())
    );
    let held = prod.desired("edge").await.expect("desired");
    assert_eq!(
        (held.variation.as_str(), held.stage.as_deref()),
        ("off", Some("prod"))
    );
    assert_eq!(
        elsewhere
            .desired("edge")
            .await
            .expect("desired")
            .stage
            .as_deref(),
        Some("unassigned")
    );
    canary.report_applied(&wanted).await.expect("report");

    commands
        .continue_rollout(&rollout.rollout_id)
        .await
        .expect("continue");
    until_current(&cluster, "edge").await;
    let released = prod.desired("edge").await.expect("desired");
    assert_eq!(released.variation, "on");
    prod.report_failed(&released, "disk full")
        .await
        .expect("report");

    let status = commands
        .rollout_status(&rollout.rollout_id)
        .await
        .expect("status");
    let counts: Vec<(u64, u64, u64)> = status
        .steps
        .iter()
        .map(|step| {
            let counts = step.counts.as_ref().expect("stage counts");
            (counts.members, counts.completed, counts.errors)
        })
        .collect();
    assert_eq!(counts, vec![(1, 1, 0), (1, 0, 1), (1, 0, 0)]);

    // a flag the namespace does not have is refused with the field at fault
    let missing = canary.desired("nope").await.expect_err("unknown flag");
    assert_eq!(
        (missing.kind(), missing.code(), missing.field()),
        (ErrorKind::Refused, ErrorCode::NotFound, Some("flag"))
    );
    cluster.stop().await;
}

#[tokio::test]
async fn an_agent_the_evaluators_lost_registers_again_by_itself() {
    let cluster = Cluster::with_evaluator().await;
    let created = cluster
        .commands()
        .create_flag(flag("edge"))
        .await
        .expect("flag");
    cluster.until_served("edge", created.version).await;
    let agent = FleetAgent::new(
        cluster.client.clone(),
        namespace(),
        "edge-9",
        labels(&[("env", "prod")]),
    );
    agent.register().await.expect("registers");
    agent.heartbeat().await.expect("heartbeat");

    // Redis loses the agent (a flush, a failover without persistence)
    // the stored layout (README's key table)
    let key = format!("ro:{{{}}}:agent:{}", namespace(), agent.id());
    cluster.redis.command(&["DEL", &key]).expect("del");
    agent.heartbeat().await.expect("heartbeat registers again");
    let stored = cluster.redis.command(&["EXISTS", &key]).expect("exists");
    assert_eq!(stored, RedisReply::Integer(1), "registered again");
    cluster.stop().await;
}

/// After a label-stage rollout completes, its last stage's agents still apply the
/// candidate and report — without a rollout id, since none is active any more. Their
/// reports count for the rollout that finished, so its last stage does not stay pending
/// forever; once that rollout is deleted there is nothing left to count them for.
#[tokio::test]
async fn reports_after_completion_count_for_the_rollout_that_finished() {
    let cluster = Cluster::with_evaluator().await;
    let commands = cluster.commands();
    commands.create_flag(flag("edge")).await.expect("flag");
    let rollout = commands
        .create_rollout(spec(json!({
            "flag": "edge", "baseline": "off", "candidate": "on",
            "stages": [{"name": "canary", "labels": {"ring": "canary"}}],
        })))
        .await
        .expect("rollout");
    let straggler = FleetAgent::new(
        cluster.client.clone(),
        namespace(),
        "edge-9",
        labels(&[("env", "prod")]),
    );
    straggler.register().await.expect("registers");
    // released to everyone: the last (unassigned) stage completes on entry
    commands
        .continue_rollout(&rollout.rollout_id)
        .await
        .expect("continue");
    let status = commands
        .rollout_status(&rollout.rollout_id)
        .await
        .expect("status");
    assert_eq!(status.state, rollout_core::Lifecycle::Completed);
    until_current(&cluster, "edge").await;

    let wanted = straggler.desired("edge").await.expect("desired");
    assert_eq!(
        (wanted.variation.as_str(), wanted.rollout_id.as_deref()),
        ("on", None)
    );
    straggler
        .report_applied(&wanted)
        .await
        .expect("the report counts");
    let unassigned = |status: &rollout_wire::RolloutStatus| {
        status
            .steps
            .last()
            .and_then(|step| step.counts)
            .expect("the last stage's counts")
    };
    let counts = unassigned(
        &commands
            .rollout_status(&rollout.rollout_id)
            .await
            .expect("status"),
    );
    assert_eq!(
        (counts.members, counts.completed, counts.pending),
        (1, 1, 0),
        "{counts:?}"
    );

    // deleted, the rollout is nobody's to count for any more
    commands
        .delete_rollout(&rollout.rollout_id)
        .await
        .expect("delete");
    until_current(&cluster, "edge").await;
    let refused = straggler
        .report_applied(&wanted)
        .await
        .expect_err("nothing to count for");
    assert_eq!(refused.code(), ErrorCode::FailedPrecondition);
    cluster.stop().await;
}
