//! `CommandClient` against a planner running in process: every command and query family,
//! in both encodings, error codes, and idempotent command ids.

mod common;

use std::time::Duration;

use common::{flag, spec, Cluster};
use rollout_core::Lifecycle;
use rollout_sdk::{CommandOutcome, Encoding, ErrorCode, ErrorKind};
use rollout_wire::{
    AuditQuery, Command, FlagListQuery, ListState, RolloutCreate, RolloutListQuery,
};
use serde_json::json;

fn three_phases(flag: &str) -> rollout_sdk::RolloutSpec {
    spec(json!({"flag": flag, "baseline": "off", "candidate": "on",
        "phases": [{"percentage": 5, "duration": "1h"}, {"percentage": 50, "duration": "1h"},
                   {"percentage": 100}]}))
}

#[tokio::test]
async fn flag_commands_and_queries_round_trip_in_both_encodings() {
    let cluster = Cluster::start().await;
    for (encoding, key) in [
        (Encoding::Json, "json-flag"),
        (Encoding::MessagePack, "pack-flag"),
    ] {
        let client = cluster.commands().with_encoding(encoding);
        let created = client.create_flag(flag(key)).await.expect("create");
        assert_eq!(created.flag.key, key);
        let fetched = client.get_flag(key).await.expect("get");
        assert_eq!(fetched.version, created.version);
        assert_eq!(fetched.flag, created.flag);

        let duplicate = client.create_flag(flag(key)).await.expect_err("exists");
        assert_eq!(duplicate.kind(), ErrorKind::Refused);
        assert_eq!(duplicate.code(), ErrorCode::Conflict);

        let mut changed = flag(key);
        changed.description = Some("changed".into());
        let updated = client
            .update_flag(changed.clone(), Some(fetched.version))
            .await
            .expect("update at the expected version");
        assert!(updated.version > fetched.version);
        let stale = client
            .update_flag(changed, Some(fetched.version))
            .await
            .expect_err("stale expected version");
        assert_eq!(stale.code(), ErrorCode::Conflict);

        let disabled = client.disable_flag(key).await.expect("disable");
        assert!(!disabled.flag.enabled);
        let enabled = client.enable_flag(key).await.expect("enable");
        assert!(enabled.flag.enabled);
    }
    let client = cluster.commands();
    let listed = client
        .list_flags(FlagListQuery::default())
        .await
        .expect("list");
    let keys: Vec<&str> = listed.flags.iter().map(|flag| flag.key.as_str()).collect();
    assert_eq!(keys, ["json-flag", "pack-flag"]);

    let deleted = client.delete_flag("json-flag").await.expect("delete");
    assert_eq!(deleted.flag, "json-flag");
    let gone = client.get_flag("json-flag").await.expect_err("deleted");
    assert_eq!(gone.code(), ErrorCode::NotFound);
    let audit = client
        .audit(AuditQuery {
            flag: Some("json-flag".into()),
            ..AuditQuery::default()
        })
        .await
        .expect("audit of a deleted flag");
    assert!(audit.entries.len() >= 5, "{audit:?}");
    assert!(audit.entries.iter().all(|entry| entry.actor == "sdk-test"));
    cluster.stop().await;
}

#[tokio::test]
async fn rollout_commands_and_queries_round_trip() {
    let cluster = Cluster::start().await;
    let client = cluster.commands();
    client.create_flag(flag("checkout")).await.expect("flag");

    let preview = client.plan(three_phases("checkout")).await.expect("plan");
    assert_eq!(preview.steps.len(), 3);
    assert!(client
        .list_rollouts(RolloutListQuery::default())
        .await
        .expect("list")
        .rollouts
        .is_empty());

    let created = client
        .create_rollout(three_phases("checkout"))
        .await
        .expect("create");
    assert_eq!(created.state, Lifecycle::Running);
    assert_eq!(created.current_step, Some(0));
    let id = created.rollout_id.clone();

    let status = client.rollout_status(&id).await.expect("status");
    assert_eq!(status.steps.len(), 3);
    assert_eq!(status.flag, "checkout");

    let second = client
        .create_rollout(three_phases("checkout"))
        .await
        .expect_err("one active rollout per flag");
    assert_eq!(second.code(), ErrorCode::Conflict);

    let paused = client.pause_rollout(&id).await.expect("pause");
    assert_eq!(paused.state, Lifecycle::Paused);
    let again = client.pause_rollout(&id).await.expect_err("already paused");
    assert_eq!(again.code(), ErrorCode::FailedPrecondition);
    let resumed = client.resume_rollout(&id).await.expect("resume");
    assert_eq!(resumed.state, Lifecycle::Running);
    let continued = client.continue_rollout(&id).await.expect("continue");
    assert_eq!(continued.current_step, Some(1));
    let stopped = client.stop_rollout(&id, Some(20.0)).await.expect("stop");
    assert_eq!(stopped.state, Lifecycle::Stopped);

    let next = client
        .create_rollout(three_phases("checkout"))
        .await
        .expect("a new rollout once the first ended");
    let promoted = client
        .promote_rollout(&next.rollout_id)
        .await
        .expect("promote");
    assert_eq!(promoted.current_step, Some(2));
    assert_eq!(promoted.state, Lifecycle::Completed);

    let waiting = client
        .create_rollout(spec(
            json!({"flag": "checkout", "baseline": "on", "candidate": "off",
            "preset": "1hr", "wait_for_start": true}),
        ))
        .await
        .expect_err("the off variation cannot be a candidate");
    assert_eq!(waiting.code(), ErrorCode::InvalidArgument);
    assert_eq!(waiting.field(), Some("rollout.candidate"));

    let mut two_variations = flag("queued");
    two_variations.key = "queued".into();
    client.create_flag(two_variations).await.expect("flag");
    let queued = client
        .create_rollout(spec(
            json!({"flag": "queued", "baseline": "off", "candidate": "on",
            "preset": "1hr", "wait_for_start": true}),
        ))
        .await
        .expect("queued rollout");
    assert_eq!(queued.state, Lifecycle::Queued);
    let started = client
        .start_rollout(&queued.rollout_id)
        .await
        .expect("start");
    assert_eq!(started.state, Lifecycle::Running);
    let rolled_back = client
        .rollback_rollout(&queued.rollout_id)
        .await
        .expect("rollback");
    assert_eq!(rolled_back.state, Lifecycle::RolledBack);

    let finished = client
        .list_rollouts(RolloutListQuery {
            lifecycle: None,
            state: ListState::Finished,
            ..RolloutListQuery::default()
        })
        .await
        .expect("finished list");
    assert_eq!(finished.rollouts.len(), 3);

    let deleted = client.delete_rollout(&id).await.expect("delete");
    assert_eq!(deleted.rollout_id.as_deref(), Some(id.as_str()));
    let gone = client.rollout_status(&id).await.expect_err("deleted");
    assert_eq!(gone.code(), ErrorCode::NotFound);
    let audit = client
        .audit(AuditQuery {
            rollout_id: Some(id.clone()),
            ..AuditQuery::default()
        })
        .await
        .expect("audit stays");
    assert!(!audit.entries.is_empty());
    cluster.stop().await;
}

#[tokio::test]
async fn invalid_specs_name_the_field_and_store_nothing() {
    let cluster = Cluster::start().await;
    let client = cluster.commands();
    client.create_flag(flag("checkout")).await.expect("flag");
    let error = client
        .create_rollout(spec(
            json!({"flag": "checkout", "baseline": "off", "candidate": "on",
            "phases": [{"percentage": 50, "duration": "1h"}, {"percentage": 10}]}),
        ))
        .await
        .expect_err("falling percentages");
    assert_eq!(error.kind(), ErrorKind::Refused);
    assert_eq!(error.code(), ErrorCode::InvalidArgument);
    assert_eq!(error.field(), Some("rollout.phases[1].percentage"));
    let missing = client
        .continue_rollout("no-such-rollout")
        .await
        .expect_err("unknown rollout");
    assert_eq!(missing.code(), ErrorCode::NotFound);
    let bad_key = client.get_flag("not.a.token").await.expect_err("bad key");
    assert_eq!(bad_key.kind(), ErrorKind::InvalidInput);
    assert_eq!(bad_key.code(), ErrorCode::InvalidArgument);
    assert!(client
        .list_rollouts(RolloutListQuery::default())
        .await
        .expect("list")
        .rollouts
        .is_empty());
    cluster.stop().await;
}

#[tokio::test]
async fn a_repeated_command_id_is_applied_once() {
    let cluster = Cluster::start().await;
    let client = cluster.commands();
    client.create_flag(flag("checkout")).await.expect("flag");
    let command = Command::RolloutCreate(RolloutCreate {
        command_id: Some("create-once".into()),
        actor: None,
        rollout: three_phases("checkout"),
    });
    let first = client.send(command.clone()).await.expect("first");
    let second = client.send(command).await.expect("repeat");
    let (CommandOutcome::Rollout(first), CommandOutcome::Rollout(second)) = (first, second) else {
        panic!("expected rollout results");
    };
    assert_eq!(first.rollout_id, second.rollout_id);
    let active = client
        .list_rollouts(RolloutListQuery::default())
        .await
        .expect("list");
    assert_eq!(active.rollouts.len(), 1);
    cluster.stop().await;
}

#[tokio::test]
async fn nobody_answering_is_unavailable() {
    let cluster = Cluster::servers_only().await;
    let client = cluster
        .commands()
        .with_retries(1)
        .with_timeout(Duration::from_millis(500));
    let error = client.get_flag("checkout").await.expect_err("no planner");
    assert_eq!(error.kind(), ErrorKind::NoResponders);
    assert_eq!(error.code(), ErrorCode::Unavailable);
    assert!(error.is_retryable());
    cluster.stop().await;
}

/// A command starts its trace at the SDK: it carries a W3C `traceparent`, and the audit
/// records that trace, whether or not anything exports spans.
#[tokio::test]
async fn a_command_carries_a_trace_from_the_edge_into_the_audit() {
    use futures_util::StreamExt;
    let cluster = Cluster::start().await;
    let mut snoop = cluster
        .client
        .subscribe("rollout.cmd.>")
        .await
        .expect("subscribe");
    cluster.client.flush().await.expect("flush");
    let commands = cluster.commands();
    commands.create_flag(flag("traced")).await.expect("created");
    let sent = tokio::time::timeout(Duration::from_secs(10), snoop.next())
        .await
        .expect("the command is seen")
        .expect("a message");
    let traceparent = sent
        .headers
        .as_ref()
        .and_then(|headers| headers.get("traceparent"))
        .map(|value| value.as_str().to_owned())
        .expect("the command carries a traceparent");
    let trace_id = traceparent
        .split('-')
        .nth(1)
        .expect("a trace id")
        .to_owned();
    let audit = commands
        .audit(AuditQuery {
            flag: Some("traced".to_owned()),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(
        audit.entries[0].trace_id.as_deref(),
        Some(trace_id.as_str())
    );
    cluster.stop().await;
}
