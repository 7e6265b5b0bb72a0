//! Two planner replicas taking interleaved commands on one rollout never corrupt it: every
//! accepted change is one revision, one audit entry and one event, versions never repeat.

mod common;

use std::collections::BTreeSet;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

#[tokio::test]
async fn interleaved_commands_on_one_rollout_from_two_replicas() {
    let cluster = Cluster::start(2).await;
    create_flag(&cluster, "contended").await;
    let rollout_id = create_rollout(&cluster, "contended").await;
    let mut events = cluster
        .client
        .subscribe("rollout.events.test.contended")
        .await
        .expect("subscribe");
    cluster.client.flush().await.expect("flush");

    let verbs = [
        "rollout.pause",
        "rollout.resume",
        "rollout.pause",
        "rollout.resume",
        "flag.update",
    ];
    let mut requests = Vec::new();
    for round in 0..40 {
        let verb = verbs[round % verbs.len()];
        let body = if verb == "flag.update" {
            let mut flag = flag_body("contended");
            flag["description"] = json!(format!("round {round}"));
            json!({"flag": flag})
        } else {
            json!({"rollout_id": rollout_id})
        };
        let subject = format!("rollout.cmd.test.{verb}");
        let cluster = &cluster;
        requests.push(async move { (verb, cluster.request(&subject, body).await) });
    }
    let replies: Vec<(&str, Value)> = futures_util::future::join_all(requests).await;
    let accepted_rollout_changes = replies
        .iter()
        .filter(|(verb, reply)| verb.starts_with("rollout.") && reply["ok"] == json!(true))
        .count();
    let accepted_flag_changes = replies
        .iter()
        .filter(|(verb, reply)| *verb == "flag.update" && reply["ok"] == json!(true))
        .count();
    for (verb, reply) in &replies {
        if reply["ok"] != json!(true) {
            assert_eq!(
                reply["error"]["code"],
                json!("failed_precondition"),
                "{verb}: only state refusals, got {reply}"
            );
        }
    }
    assert_eq!(
        accepted_flag_changes, 8,
        "flag updates never conflict with each other for good"
    );

    // the rollout's revision counts exactly the accepted changes (plus its creation)
    let mut redis = cluster.redis().await;
    let revision: u64 = redis::cmd("HGET")
        .arg(format!("ro:{{test}}:rollout:{rollout_id}"))
        .arg("rev")
        .query_async(&mut redis)
        .await
        .expect("rev");
    assert_eq!(revision, 1 + accepted_rollout_changes as u64);
    let audit_len: u64 = redis::cmd("LLEN")
        .arg(format!("ro:{{test}}:audit:rollout:{rollout_id}"))
        .query_async(&mut redis)
        .await
        .expect("llen");
    // created + started + step 0 entered, then one entry per accepted pause/resume
    assert_eq!(audit_len, 3 + accepted_rollout_changes as u64);

    // paused and resumed alternate in the audit: no change was applied twice or lost
    let kinds: Vec<String> = audit_kinds_oldest_first(
        &cluster,
        json!({"rollout_id": rollout_id, "page_size": 200}),
    )
    .await
    .split_off(3);
    for pair in kinds.windows(2) {
        assert_ne!(pair[0], pair[1], "two {} in a row: {kinds:?}", pair[0]);
    }

    // every committed change was published once per version, versions contiguous
    let flag = cluster.query("flag.get", json!({"key": "contended"})).await;
    let final_version = ok(&flag)["version"].as_u64().expect("version");
    let mut versions = BTreeSet::new();
    while versions.len() < usize::try_from(final_version - 4).expect("small") {
        let message = tokio::time::timeout(std::time::Duration::from_secs(20), events.next())
            .await
            .expect("event")
            .expect("open");
        let event: Value = rmp_serde::from_slice(&message.payload).expect("msgpack event");
        let version = event["version"].as_u64().expect("version");
        if version > 4 {
            versions.insert(version);
        }
    }
    assert_eq!(
        versions.into_iter().collect::<Vec<_>>(),
        (5..=final_version).collect::<Vec<_>>()
    );
}
