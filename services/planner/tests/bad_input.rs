//! Malformed payloads in both encodings get a structured error reply and leave Redis
//! unchanged (SPEC §11).

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn malformed_payloads_get_errors_and_change_nothing() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "checkout").await;
    let rollout_id = create_rollout(&cluster, "checkout").await;
    let before = cluster.dump().await;

    let deep_json = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let json_cases: Vec<(&str, Vec<u8>)> = vec![
        ("flag.create", b"{\"flag\": ".to_vec()),
        ("flag.create", b"not json".to_vec()),
        ("flag.create", deep_json.into_bytes()),
        (
            "flag.create",
            serde_json::to_vec(&json!({"flag": flag_body("x"), "surprise": 1})).expect("json"),
        ),
        (
            "flag.update",
            serde_json::to_vec(&json!({"flag": {"key": 5}})).expect("json"),
        ),
        (
            "rollout.pause",
            serde_json::to_vec(&json!({"rollout_id": 42})).expect("json"),
        ),
        (
            "rollout.stop",
            serde_json::to_vec(&json!({"rollout_id": rollout_id, "percentage": "half"}))
                .expect("json"),
        ),
        (
            "rollout.stop",
            serde_json::to_vec(&json!({"rollout_id": rollout_id, "percentage": -3})).expect("json"),
        ),
        (
            "rollout.create",
            serde_json::to_vec(&json!({"rollout": {"flag": "checkout"}})).expect("json"),
        ),
        ("flag.create", vec![b' '; 1_000_000]),
    ];
    for (verb, payload) in json_cases {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        let reply = cluster
            .raw_request(&format!("rollout.cmd.test.{verb}"), headers, payload)
            .await;
        let (code, _) = error(&reply);
        assert!(
            code == "invalid_argument" || code == "failed_precondition",
            "{verb}: {reply}"
        );
    }

    let valid = rmp_serde::to_vec_named(&json!({"flag": flag_body("packed")})).expect("msgpack");
    let mut msgpack_cases: Vec<Vec<u8>> = (1..valid.len())
        .step_by(7)
        .map(|cut| valid[..cut].to_vec())
        .collect();
    msgpack_cases.push(vec![0x91; 10_000]);
    msgpack_cases.push(vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]);
    msgpack_cases.push(rmp_serde::to_vec_named(&json!({"flag": "a string"})).expect("msgpack"));
    for payload in msgpack_cases {
        let reply = cluster
            .raw_request(
                "rollout.cmd.test.flag.create",
                async_nats::HeaderMap::new(),
                payload,
            )
            .await;
        assert_eq!(error(&reply).0, "invalid_argument", "{reply}");
    }
    let unknown_verb = cluster
        .request("rollout.cmd.test.flag.explode", json!({}))
        .await;
    assert_eq!(error(&unknown_verb).0, "invalid_argument");
    let bad_namespace = cluster
        .request(
            "rollout.cmd.te$t.flag.create",
            json!({"flag": flag_body("y")}),
        )
        .await;
    assert_eq!(error(&bad_namespace).0, "invalid_argument");

    assert_eq!(cluster.dump().await, before, "no bad input changed Redis");
}
