//! A planner killed between the Redis commit and the reply/publish loses nothing and doubles
//! nothing: the command stream redelivers, the stored outcome answers, the outbox sweep
//! publishes the event the dead process never sent.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

#[tokio::test]
async fn a_planner_killed_after_commit_loses_nothing_and_doubles_nothing() {
    let mut cluster = Cluster::start(0).await;
    let mut outcomes = cluster
        .client
        .subscribe("rollout.outcome.test.crash-1")
        .await
        .expect("subscribe");
    let mut events = cluster
        .client
        .subscribe("rollout.events.test.survivor")
        .await
        .expect("subscribe");
    cluster.client.flush().await.expect("flush");

    // a planner process that aborts right after its first commit
    let mut doomed = tokio::process::Command::new(env!("CARGO_BIN_EXE_planner"))
        .env("ROLLOUT_NATS__URL", cluster.nats.url())
        .env("ROLLOUT_REDIS__URL", cluster.redis.url())
        .env("ROLLOUT_PLANNER__STREAM_ACK_WAIT", "2s")
        .env("ROLLOUT_FAILPOINTS", "write.after_commit")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("planner binary starts");
    // wait until it consumes: the stream and consumer exist once it is up
    let jetstream = async_nats::jetstream::new(cluster.client.clone());
    tokio::time::timeout(Duration::from_secs(20), async {
        while jetstream.get_stream("ROLLOUT_CMDS").await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the planner creates the command stream");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    let body = serde_json::to_vec(&json!({"command_id": "crash-1", "flag": flag_body("survivor")}))
        .expect("json");
    jetstream
        .publish_with_headers("rollout.cmdq.test.flag.create", headers, body.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let status = tokio::time::timeout(Duration::from_secs(20), doomed.wait())
        .await
        .expect("the planner aborts")
        .expect("wait");
    assert!(!status.success(), "the failpoint aborted the planner");

    // committed, but never replied nor published
    let mut redis = cluster.redis().await;
    let version: Option<u64> = redis::cmd("HGET")
        .arg("ro:{test}:flag:survivor")
        .arg("rev")
        .query_async(&mut redis)
        .await
        .expect("hget");
    assert_eq!(version, Some(1), "the commit happened before the crash");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), outcomes.next())
            .await
            .is_err(),
        "no outcome yet"
    );

    // a healthy planner takes over: redelivery answers from the stored outcome, the sweep
    // publishes the orphaned event
    cluster.add_planner().await;
    let outcome = tokio::time::timeout(Duration::from_secs(30), outcomes.next())
        .await
        .expect("outcome after redelivery")
        .expect("open");
    let outcome: Value = serde_json::from_slice(&outcome.payload).expect("json outcome");
    assert_eq!(ok(&outcome)["version"], json!(1));
    let event = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("the orphaned event is relayed")
        .expect("open");
    let event: Value = rmp_serde::from_slice(&event.payload).expect("msgpack event");
    assert_eq!(
        (event["kind"].clone(), event["version"].clone()),
        (json!("flag_created"), json!(1))
    );

    let version: Option<u64> = redis::cmd("HGET")
        .arg("ro:{test}:flag:survivor")
        .arg("rev")
        .query_async(&mut redis)
        .await
        .expect("hget");
    assert_eq!(version, Some(1), "applied exactly once");
    let audit_len: u64 = redis::cmd("LLEN")
        .arg("ro:{test}:audit:flag:survivor")
        .query_async(&mut redis)
        .await
        .expect("llen");
    assert_eq!(audit_len, 1);
    let outbox_len: u64 = redis::cmd("XLEN")
        .arg("ro:{test}:outbox")
        .query_async(&mut redis)
        .await
        .expect("xlen");
    assert_eq!(outbox_len, 0, "the outbox drained");
    cluster.stop_planners().await;
}
