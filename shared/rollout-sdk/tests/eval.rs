//! `EvalClient` against the real evaluator (started in process beside a planner): one,
//! several and all flags, the cache and its invalidation by change events, versions that
//! never go backwards, and outcome reports.

mod common;

use common::{eventually, flag, namespace, spec, Cluster};
use futures_util::StreamExt;
use rollout_core::OutcomeCounts;
use rollout_core::{AttributeValue, Entity, Reason};
use rollout_sdk::{CommandClient, Encoding, ErrorCode, EvalClient, Outcome, OutcomeReport};
use rollout_wire::codec::CONTENT_TYPE_HEADER;
use rollout_wire::queries::RolloutCounts;
use serde_json::json;

fn beta_user() -> Entity {
    Entity::with_id("user-1").attribute("plan", AttributeValue::String("beta".into()))
}

#[tokio::test]
async fn answers_are_cached_until_an_event_changes_the_flag() {
    let cluster = Cluster::with_evaluator().await;
    let commands = cluster.commands();
    let created = commands.create_flag(flag("checkout")).await.expect("flag");
    cluster.until_served("checkout", created.version).await;
    let client = cluster.eval_client().await;

    let plain = Entity::with_id("user-1");
    let first = client.evaluate("checkout", &plain).await.expect("evaluate");
    assert_eq!(first.variation, "off");
    assert_eq!(first.reason, Reason::Default);
    assert_eq!(first.version, created.version);
    let beta = client
        .evaluate("checkout", &beta_user())
        .await
        .expect("beta");
    assert_eq!(
        (beta.variation.as_str(), beta.reason),
        ("on", Reason::RuleMatch)
    );
    assert_eq!(beta.value, json!(true));

    let again = client.evaluate("checkout", &plain).await.expect("cached");
    assert_eq!(again, first);
    let stats = client.cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 2, 2));

    // serve "on" by default: the change event drops both cached answers
    let mut changed = flag("checkout");
    changed.default = rollout_core::Serve::variation("on");
    let updated = commands
        .update_flag(changed, Some(created.version))
        .await
        .expect("update");
    let watched = &client;
    eventually("the change event reaches the cache", move || async move {
        watched.cache_stats().invalidated >= 2
    })
    .await;
    let mut highest_seen = first.version;
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let answer = client.evaluate("checkout", &plain).await.expect("evaluate");
        assert!(
            answer.version >= highest_seen,
            "version went back from {highest_seen} to {}",
            answer.version
        );
        highest_seen = answer.version;
        if answer.variation == "on" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new default is never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(highest_seen, updated.version);
    let cached = client.evaluate("checkout", &plain).await.expect("cached");
    assert_eq!(cached.version, updated.version);
    cluster.stop().await;
}

#[tokio::test]
async fn several_and_all_flags_with_missing_keys_and_rollouts() {
    let cluster = Cluster::with_evaluator().await;
    let commands = cluster.commands();
    commands.create_flag(flag("alpha")).await.expect("alpha");
    let beta = commands.create_flag(flag("beta")).await.expect("beta");
    let rollout = commands
        .create_rollout(spec(
            json!({"flag": "beta", "baseline": "off", "candidate": "on",
            "phases": [{"percentage": 50, "duration": "1h"}, {"percentage": 100}]}),
        ))
        .await
        .expect("rollout");
    let version = commands.get_flag("beta").await.expect("flag").version;
    assert!(version > beta.version);
    cluster.until_served("beta", version).await;
    cluster.until_served("alpha", 1).await;

    let client = EvalClient::builder(cluster.client.clone(), namespace())
        .encoding(Encoding::Json)
        .connect()
        .await
        .expect("client");
    let user = Entity::with_id("user-7");
    let many = client
        .evaluate_many(&["beta", "nope", "alpha"], &user)
        .await
        .expect("many");
    let keys: Vec<&str> = many
        .results
        .iter()
        .map(|result| result.flag.as_str())
        .collect();
    assert_eq!(keys, ["beta", "alpha"]);
    assert_eq!(many.missing, ["nope"]);
    let by_rollout = &many.results[0];
    assert_eq!(by_rollout.reason, Reason::Rollout);
    assert_eq!(
        by_rollout.rollout_id.as_deref(),
        Some(rollout.rollout_id.as_str())
    );
    assert!(by_rollout.bucket.is_some());

    let cached = client
        .evaluate_many(&["alpha", "beta"], &user)
        .await
        .expect("from the cache");
    assert_eq!(cached.results.len(), 2);
    assert_eq!(client.cache_stats().hits, 2);

    let all = client.evaluate_all(&user).await.expect("all");
    let keys: Vec<&str> = all
        .results
        .iter()
        .map(|result| result.flag.as_str())
        .collect();
    assert_eq!(keys, ["alpha", "beta"]);

    let explained = client.explain("beta", &user).await.expect("explain");
    let sentence = explained.explanation.expect("explanation");
    assert!(sentence.contains(&rollout.rollout_id), "{sentence}");

    let missing = client
        .evaluate("nope", &user)
        .await
        .expect_err("unknown flag");
    assert_eq!(missing.code(), ErrorCode::NotFound);
    let invalid = client
        .evaluate("beta", &Entity::with_id(""))
        .await
        .expect_err("empty entity id");
    assert_eq!(invalid.code(), ErrorCode::InvalidArgument);
    cluster.stop().await;
}

#[tokio::test]
async fn outcomes_are_published_for_guards() {
    let cluster = Cluster::with_evaluator().await;
    let mut metrics = cluster
        .client
        .subscribe("rollout.metrics.test")
        .await
        .expect("subscribe");
    cluster.client.flush().await.expect("flush");
    let client = cluster.eval_client().await;
    let user = beta_user();
    client
        .report_error("checkout", &user, "on")
        .await
        .expect("report");
    client
        .report_outcomes(vec![
            OutcomeReport {
                flag: "checkout".into(),
                entity: "user-2".into(),
                variation: "off".into(),
                outcome: rollout_sdk::Outcome::Success,
                value: Some(12.5),
                rollout_id: None,
            };
            2
        ])
        .await
        .expect("batch");
    client.flush().await.expect("flush");
    let mut received = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(common::PATIENCE, metrics.next())
            .await
            .expect("a report in time")
            .expect("subscription open");
        let encoding = rollout_wire::Encoding::from_content_type(
            message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(CONTENT_TYPE_HEADER))
                .map(|value| value.as_str()),
        );
        received
            .extend(rollout_wire::decode_outcomes(&message.payload, encoding).expect("decodes"));
    }
    assert_eq!(received.len(), 3);
    assert_eq!(received[0].entity, "user-1");
    assert_eq!(received[0].outcome, rollout_sdk::Outcome::Error);
    let refused = client
        .report_success("not.a.token", &user, "on")
        .await
        .expect_err("invalid flag key");
    assert_eq!(refused.code(), ErrorCode::InvalidArgument);
    cluster.stop().await;
}

/// Waits until the `rollout.counts` outcomes of `rollout_id` satisfy `done`; returns them.
async fn until_counted(
    commands: &CommandClient,
    rollout_id: &str,
    done: impl Fn(&OutcomeCounts) -> bool,
) -> RolloutCounts {
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        if let Ok(counts) = commands.rollout_counts(rollout_id).await {
            if done(&counts.outcomes) {
                return counts;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the counts of {rollout_id}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn outcomes_count_for_the_rollout_that_served_them() {
    let cluster = Cluster::with_evaluator().await;
    let commands = cluster.commands();
    commands.create_flag(flag("checkout")).await.expect("flag");
    let phased = || {
        spec(
            json!({"flag": "checkout", "baseline": "off", "candidate": "on",
            "phases": [{"percentage": 50, "duration": "1h"}, {"percentage": 100}]}),
        )
    };
    let first = commands.create_rollout(phased()).await.expect("first");
    let version = commands.get_flag("checkout").await.expect("flag").version;
    cluster.until_served("checkout", version).await;
    let client = cluster.eval_client().await;

    // the first rollout's users report errors, each naming the rollout that served it
    let mut served_on = 0_u64;
    for index in 0..20 {
        let entity = Entity::with_id(format!("user-{index}"));
        let answer = client
            .evaluate("checkout", &entity)
            .await
            .expect("evaluate");
        assert_eq!(
            answer.rollout_id.as_deref(),
            Some(first.rollout_id.as_str())
        );
        served_on += u64::from(answer.variation == "on");
        client
            .report_result(&entity, &answer, Outcome::Error)
            .await
            .expect("report");
    }
    client.flush().await.expect("flush");
    until_counted(&commands, &first.rollout_id, |outcomes| {
        outcomes.candidate.error == served_on && outcomes.baseline.error == 20 - served_on
    })
    .await;

    // rolled back, and run again: the new rollout starts from nothing
    commands
        .rollback_rollout(&first.rollout_id)
        .await
        .expect("rollback");
    let second = commands.create_rollout(phased()).await.expect("second");
    let version = commands.get_flag("checkout").await.expect("flag").version;
    cluster.until_served("checkout", version).await;
    let late = OutcomeReport {
        flag: "checkout".into(),
        entity: "user-0".into(),
        variation: "on".into(),
        outcome: Outcome::Error,
        value: None,
        rollout_id: Some(first.rollout_id.clone()),
    };
    let fresh = OutcomeReport {
        rollout_id: None,
        outcome: Outcome::Success,
        ..late.clone()
    };
    // a late report of the first rollout travels with five about the second
    client
        .report_outcomes(vec![
            late,
            fresh.clone(),
            fresh.clone(),
            fresh.clone(),
            fresh.clone(),
            fresh,
        ])
        .await
        .expect("reports");
    client.flush().await.expect("flush");
    // the late report was in the same message: once the five count, it was looked at too
    let counts = until_counted(&commands, &second.rollout_id, |outcomes| {
        outcomes.candidate.success == 5
    })
    .await;
    assert_eq!(counts.outcomes.candidate.error, 0, "{counts:?}");
    assert_eq!(counts.outcomes.baseline.samples(), 0, "{counts:?}");
    assert_eq!(counts.guard, None, "no guard on this rollout: counts only");
    let first_counts = commands
        .rollout_counts(&first.rollout_id)
        .await
        .expect("first counts");
    assert_eq!(first_counts.outcomes.candidate.error, served_on);
    cluster.stop().await;
}
