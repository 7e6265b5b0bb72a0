//! Every command and every rejection of SPEC §5, through NATS against real Redis.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn flag_commands_and_their_rejections() {
    let cluster = Cluster::start(1).await;
    let created = cluster
        .command("flag.create", json!({"flag": flag_body("checkout")}))
        .await;
    assert_eq!(ok(&created)["version"], json!(1));
    let again = cluster
        .command("flag.create", json!({"flag": flag_body("checkout")}))
        .await;
    assert_eq!(error(&again), ("conflict".into(), Some("flag.key".into())));

    let fetched = cluster.query("flag.get", json!({"key": "checkout"})).await;
    assert_eq!(ok(&fetched)["flag"]["key"], json!("checkout"));
    let missing = cluster.query("flag.get", json!({"key": "nope"})).await;
    assert_eq!(error(&missing).0, "not_found");

    let mut updated_flag = flag_body("checkout");
    updated_flag["description"] = json!("new checkout flow");
    let updated = cluster
        .command(
            "flag.update",
            json!({"flag": updated_flag, "expected_version": 1}),
        )
        .await;
    assert_eq!(ok(&updated)["version"], json!(2));
    let stale = cluster
        .command(
            "flag.update",
            json!({"flag": flag_body("checkout"), "expected_version": 1}),
        )
        .await;
    assert_eq!(
        error(&stale),
        ("conflict".into(), Some("expected_version".into()))
    );

    let disabled = cluster
        .command("flag.disable", json!({"key": "checkout"}))
        .await;
    assert_eq!(ok(&disabled)["flag"]["enabled"], json!(false));
    let enabled = cluster
        .command("flag.enable", json!({"key": "checkout"}))
        .await;
    assert_eq!(ok(&enabled)["flag"]["enabled"], json!(true));
    // enabling an enabled flag changes nothing
    let version_before = ok(&enabled)["version"].clone();
    let unchanged = cluster
        .command("flag.enable", json!({"key": "checkout"}))
        .await;
    assert_eq!(ok(&unchanged)["version"], version_before);

    let invalid = cluster.command("flag.create", json!({"flag": {"key": "bad.key", "variations": [], "off_variation": "x", "default": {}}})).await;
    let (code, _) = error(&invalid);
    assert_eq!(code, "invalid_argument");
    assert!(
        invalid["error"]["details"]
            .as_array()
            .is_some_and(|details| details.len() >= 3),
        "{invalid}"
    );

    let listed = cluster.query("flag.list", json!({})).await;
    assert_eq!(ok(&listed)["flags"].as_array().map(Vec::len), Some(1));

    let deleted = cluster
        .command("flag.delete", json!({"key": "checkout"}))
        .await;
    ok(&deleted);
    assert_eq!(
        error(&cluster.query("flag.get", json!({"key": "checkout"})).await).0,
        "not_found"
    );
    // a re-created flag continues its versions upwards
    let recreated = cluster
        .command("flag.create", json!({"flag": flag_body("checkout")}))
        .await;
    assert!(
        ok(&recreated)["version"].as_u64().expect("version") > 5,
        "{recreated}"
    );
}

#[tokio::test]
async fn one_active_rollout_per_flag_and_frozen_targets() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "checkout").await;
    let rollout_id = create_rollout(&cluster, "checkout").await;

    let second = cluster
        .command("rollout.create", json!({"rollout": {"flag": "checkout", "baseline": "off", "candidate": "on", "preset": "1hr"}}))
        .await;
    assert_eq!(
        error(&second),
        ("conflict".into(), Some("rollout.flag".into()))
    );
    assert!(
        second["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains(&rollout_id)),
        "names the blocking rollout: {second}"
    );
    // flag-level and rule-level rollouts exclude each other
    let rule_level = cluster
        .command("rollout.create", json!({"rollout": {"flag": "checkout", "rule": "beta", "baseline": "on", "candidate": "off", "preset": "1hr"}}))
        .await;
    assert_eq!(error(&rule_level).0, "conflict");

    let mut changed_default = flag_body("checkout");
    changed_default["default"] = json!({"variation": "on"});
    let blocked = cluster
        .command("flag.update", json!({"flag": changed_default}))
        .await;
    assert_eq!(
        error(&blocked),
        ("failed_precondition".into(), Some("flag.default".into()))
    );

    let mut added_variation = flag_body("checkout");
    added_variation["variations"]
        .as_array_mut()
        .expect("array")
        .push(json!({"id": "extra", "value": 2}));
    let blocked = cluster
        .command("flag.update", json!({"flag": added_variation}))
        .await;
    assert_eq!(
        error(&blocked),
        ("failed_precondition".into(), Some("flag.variations".into()))
    );

    // values, names and descriptions stay editable
    let mut renamed = flag_body("checkout");
    renamed["variations"][1]["name"] = json!("On!");
    renamed["variations"][1]["value"] = json!("yes");
    ok(&cluster
        .command("flag.update", json!({"flag": renamed}))
        .await);

    let delete_flag = cluster
        .command("flag.delete", json!({"key": "checkout"}))
        .await;
    assert_eq!(
        error(&delete_flag),
        ("failed_precondition".into(), Some("key".into()))
    );
}

#[tokio::test]
async fn the_rollout_lifecycle_through_commands() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "checkout").await;
    let rollout_id = create_rollout(&cluster, "checkout").await;
    let id = json!({"rollout_id": rollout_id});

    let status = cluster.query("rollout.status", id.clone()).await;
    let status = ok(&status);
    assert_eq!(status["state"], json!("running"));
    assert_eq!(status["current_step"], json!(0));
    assert_eq!(status["steps"].as_array().map(Vec::len), Some(3));
    assert!(
        status["steps"][1]["planned_at"].is_string(),
        "future steps carry projected times: {status}"
    );
    assert!(status["steps"][0]["started_at"].is_string());

    let paused = cluster.command("rollout.pause", id.clone()).await;
    assert_eq!(ok(&paused)["state"], json!("paused"));
    let paused_again = cluster.command("rollout.pause", id.clone()).await;
    assert_eq!(error(&paused_again).0, "failed_precondition");
    let continue_paused = cluster.command("rollout.continue", id.clone()).await;
    assert_eq!(error(&continue_paused).0, "failed_precondition");
    let resumed = cluster.command("rollout.resume", id.clone()).await;
    assert_eq!(ok(&resumed)["state"], json!("running"));
    let continued = cluster.command("rollout.continue", id.clone()).await;
    assert_eq!(ok(&continued)["current_step"], json!(1));
    assert_eq!(ok(&continued)["share"], json!(50));

    let bad_stop = cluster
        .command(
            "rollout.stop",
            json!({"rollout_id": rollout_id, "percentage": 150}),
        )
        .await;
    assert_eq!(error(&bad_stop).0, "invalid_argument");
    let stopped = cluster
        .command(
            "rollout.stop",
            json!({"rollout_id": rollout_id, "percentage": 25}),
        )
        .await;
    assert_eq!(ok(&stopped)["state"], json!("stopped"));
    assert_eq!(ok(&stopped)["share"], json!(25));

    // the stopped share now lives in the flag's default serve, with the rollout's salt
    let flag = cluster.query("flag.get", json!({"key": "checkout"})).await;
    let flag = ok(&flag);
    assert_eq!(flag["active_rollout"], json!(null));
    assert_eq!(
        flag["flag"]["default"]["split"][0],
        json!({"variation": "on", "weight": 25.0})
    );
    assert!(flag["flag"]["default"]["salt"].is_string());

    let finished = cluster
        .query("rollout.list", json!({"state": "finished"}))
        .await;
    assert_eq!(
        ok(&finished)["rollouts"][0]["rollout_id"],
        json!(rollout_id)
    );
    let active = cluster
        .query("rollout.list", json!({"state": "active"}))
        .await;
    assert_eq!(ok(&active)["rollouts"].as_array().map(Vec::len), Some(0));

    let rollback_finished = cluster.command("rollout.rollback", id.clone()).await;
    assert_eq!(error(&rollback_finished).0, "failed_precondition");

    // audit: newest first, paged
    let audit = cluster
        .query(
            "rollout.audit",
            json!({"rollout_id": rollout_id, "page_size": 2}),
        )
        .await;
    let page = ok(&audit);
    assert_eq!(page["entries"][0]["kind"], json!("rollout_stopped"));
    assert_eq!(page["entries"][1]["kind"], json!("rollout_step"));
    assert_eq!(page["next_page"], json!(1));
    let second_page = cluster
        .query(
            "rollout.audit",
            json!({"rollout_id": rollout_id, "page": 1, "page_size": 2}),
        )
        .await;
    assert_eq!(
        ok(&second_page)["entries"][0]["kind"],
        json!("rollout_resumed")
    );

    let deleted = cluster.command("rollout.delete", id.clone()).await;
    ok(&deleted);
    assert_eq!(
        error(&cluster.query("rollout.status", id.clone()).await).0,
        "not_found"
    );
    // its audit history stays readable
    let audit_after = cluster
        .query("rollout.audit", json!({"rollout_id": rollout_id}))
        .await;
    assert_eq!(
        ok(&audit_after)["entries"][0]["kind"],
        json!("rollout_deleted")
    );
    assert_eq!(
        error(&cluster.command("rollout.pause", id).await),
        ("not_found".into(), Some("rollout_id".into()))
    );
}

#[tokio::test]
async fn promote_rollback_and_disable() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "promoted").await;
    let promoted_id = create_rollout(&cluster, "promoted").await;
    let promoted = cluster
        .command("rollout.promote", json!({"rollout_id": promoted_id}))
        .await;
    assert_eq!(ok(&promoted)["state"], json!("completed"));
    let flag = cluster.query("flag.get", json!({"key": "promoted"})).await;
    assert_eq!(ok(&flag)["flag"]["default"], json!({"variation": "on"}));

    create_flag(&cluster, "rolled").await;
    let rolled_id = create_rollout(&cluster, "rolled").await;
    let rolled = cluster
        .command("rollout.rollback", json!({"rollout_id": rolled_id}))
        .await;
    assert_eq!(ok(&rolled)["state"], json!("rolled_back"));
    let flag = cluster.query("flag.get", json!({"key": "rolled"})).await;
    assert_eq!(ok(&flag)["flag"]["default"], json!({"variation": "off"}));

    // disabling the flag stops its rollout at the current share (SPEC §5)
    create_flag(&cluster, "disabled").await;
    let disabled_id = create_rollout(&cluster, "disabled").await;
    ok(&cluster
        .command("flag.disable", json!({"key": "disabled"}))
        .await);
    let status = cluster
        .query("rollout.status", json!({"rollout_id": disabled_id}))
        .await;
    assert_eq!(ok(&status)["state"], json!("stopped"));
    assert_eq!(ok(&status)["share"], json!(5));
    let flag = cluster.query("flag.get", json!({"key": "disabled"})).await;
    assert_eq!(
        ok(&flag)["flag"]["default"]["split"][0],
        json!({"variation": "on", "weight": 5.0})
    );
    assert_eq!(ok(&flag)["flag"]["enabled"], json!(false));

    // a disabled flag is enabled when its rollout starts
    let restarted = create_rollout(&cluster, "disabled").await;
    let flag = cluster.query("flag.get", json!({"key": "disabled"})).await;
    assert_eq!(ok(&flag)["flag"]["enabled"], json!(true));
    assert_eq!(ok(&flag)["active_rollout"], json!(restarted));
}

#[tokio::test]
async fn queued_rollouts_wait_for_start_and_specs_are_validated() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "checkout").await;
    let invalid = cluster
        .command(
            "rollout.create",
            json!({"rollout": {"flag": "checkout", "baseline": "off", "candidate": "on",
            "phases": [{"percentage": 50, "duration": "1h"}, {"percentage": 40}]}}),
        )
        .await;
    assert_eq!(
        error(&invalid),
        (
            "invalid_argument".into(),
            Some("rollout.phases[1].percentage".into())
        )
    );
    let unknown_flag = cluster
        .command("rollout.create", json!({"rollout": {"flag": "nope", "baseline": "off", "candidate": "on", "preset": "1hr"}}))
        .await;
    assert_eq!(
        error(&unknown_flag),
        ("not_found".into(), Some("rollout.flag".into()))
    );

    let preview = cluster
        .query("rollout.plan", json!({"rollout": {"flag": "checkout", "baseline": "off", "candidate": "on", "template": {"increment": 10, "frequency": "daily"}}}))
        .await;
    assert_eq!(ok(&preview)["steps"].as_array().map(Vec::len), Some(10));

    let created = cluster
        .command("rollout.create", json!({"rollout": {"flag": "checkout", "baseline": "off", "candidate": "on", "preset": "24hr", "wait_for_start": true}}))
        .await;
    let result = ok(&created);
    assert_eq!(result["state"], json!("queued"));
    assert_eq!(result["waiting_for"], json!("start"));
    let rollout_id = result["rollout_id"].clone();
    let continue_queued = cluster
        .command("rollout.continue", json!({"rollout_id": rollout_id}))
        .await;
    assert_eq!(error(&continue_queued).0, "failed_precondition");
    let started = cluster
        .command("rollout.start", json!({"rollout_id": rollout_id}))
        .await;
    assert_eq!(ok(&started)["state"], json!("running"));
    assert_eq!(ok(&started)["share"], json!(5));
}

#[tokio::test]
async fn msgpack_requests_get_msgpack_replies() {
    let cluster = Cluster::start(1).await;
    let body = rmp_serde::to_vec_named(&json!({"flag": flag_body("packed")})).expect("msgpack");
    let reply = cluster
        .raw_request(
            "rollout.cmd.test.flag.create",
            async_nats::HeaderMap::new(),
            body,
        )
        .await;
    assert_eq!(ok(&reply)["flag"]["key"], json!("packed"));
}

#[tokio::test]
async fn the_command_trace_context_is_carried_into_the_rollout() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "traced").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    headers.insert("traceparent", traceparent);
    let body = serde_json::to_vec(&json!({"rollout": {"flag": "traced", "baseline": "off", "candidate": "on", "preset": "1hr"}})).expect("json");
    let reply = cluster
        .raw_request("rollout.cmd.test.rollout.create", headers, body)
        .await;
    let rollout_id = ok(&reply)["rollout_id"].as_str().expect("id").to_owned();
    let mut redis = cluster.redis().await;
    let keys = rollout_store::Keys::new(
        &rollout_wire::subjects::Namespace::new("test").expect("namespace"),
    );
    let record = rollout_store::load_rollout(&mut redis, &keys, &rollout_id)
        .await
        .expect("reads")
        .expect("the rollout is stored");
    assert_eq!(record.traceparent.as_deref(), Some(traceparent));
    let audit = cluster
        .query("rollout.audit", json!({"rollout_id": rollout_id}))
        .await;
    assert_eq!(
        ok(&audit)["entries"][0]["trace_id"],
        json!("4bf92f3577b34da6a3ce929d0e0e4736")
    );
}

#[tokio::test]
async fn a_kill_switch_takes_no_action_and_shows_none() {
    let cluster = Cluster::start(1).await;
    let mut flag = flag_body("guarded");
    flag["kill_switch"] =
        json!({"max_error_rate": 20, "min_samples": 500, "window": "5m", "action": "rollback"});
    let refused = cluster.command("flag.create", json!({"flag": flag})).await;
    assert_eq!(
        error(&refused),
        (
            "invalid_argument".to_owned(),
            Some("flag.kill_switch.action".to_owned())
        )
    );
    flag["kill_switch"] = json!({"max_error_rate": 20, "min_samples": 500, "window": "5m"});
    ok(&cluster.command("flag.create", json!({"flag": flag})).await);
    let got = cluster.query("flag.get", json!({"key": "guarded"})).await;
    let kill_switch = &ok(&got)["flag"]["kill_switch"];
    assert_eq!(kill_switch["max_error_rate"], json!(20.0));
    assert!(
        kill_switch.get("action").is_none(),
        "an ignored action is not shown: {kill_switch}"
    );
}

#[tokio::test]
async fn a_command_without_trace_context_gets_one_at_the_edge() {
    let cluster = Cluster::start(1).await;
    // no traceparent header: the planner starts the trace (SPEC §7: every audit entry has
    // a trace id, exported spans or not)
    create_flag(&cluster, "untraced").await;
    let rollout_id = create_rollout(&cluster, "untraced").await;
    let audit = cluster
        .query("rollout.audit", json!({"rollout_id": rollout_id}))
        .await;
    let entries = ok(&audit)["entries"].as_array().expect("entries").clone();
    assert!(!entries.is_empty());
    let trace_ids: Vec<&str> = entries
        .iter()
        .map(|entry| {
            entry["trace_id"]
                .as_str()
                .expect("a trace id on every entry")
        })
        .collect();
    assert!(trace_ids
        .iter()
        .all(|id| id.len() == 32 && id.bytes().all(|byte| byte.is_ascii_hexdigit())));
    // one command, one trace: its entries share it
    assert!(
        trace_ids.windows(2).all(|pair| pair[0] == pair[1]),
        "{trace_ids:?}"
    );
    let flag_audit = cluster
        .query("rollout.audit", json!({"flag": "untraced"}))
        .await;
    let created = ok(&flag_audit)["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|entry| entry["kind"] == "flag_created")
        .expect("the flag's creation")
        .clone();
    assert_ne!(
        created["trace_id"].as_str(),
        Some(trace_ids[0]),
        "another command, another trace"
    );
}

#[tokio::test]
async fn empty_lists_are_empty_not_errors() {
    let cluster = Cluster::start(1).await;
    let flags = cluster.query("flag.list", json!({})).await;
    assert_eq!(ok(&flags)["flags"], json!([]));
    create_flag(&cluster, "only").await;
    let past_the_end = cluster.query("flag.list", json!({"page": 3})).await;
    assert_eq!(ok(&past_the_end)["flags"], json!([]));
    let rollouts = cluster
        .query("rollout.list", json!({"state": "finished"}))
        .await;
    assert_eq!(ok(&rollouts)["rollouts"], json!([]));
}

#[tokio::test]
async fn rollout_events_carry_state_and_share() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "watched").await;
    let mut events = cluster
        .client
        .subscribe("rollout.events.test.watched")
        .await
        .expect("subscribe");
    cluster.client.flush().await.expect("flush");
    let rollout_id = create_rollout(&cluster, "watched").await;
    ok(&cluster
        .command("rollout.continue", json!({"rollout_id": rollout_id}))
        .await);
    let mut last = serde_json::Value::Null;
    while last["kind"] != json!("rollout_step") || last["to_step"] != json!(1) {
        let message = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            futures_util::StreamExt::next(&mut events),
        )
        .await
        .expect("event")
        .expect("open");
        last = rmp_serde::from_slice(&message.payload).expect("msgpack event");
    }
    assert_eq!(last["state"], json!("running"));
    assert_eq!(last["share"], json!(50));
}
