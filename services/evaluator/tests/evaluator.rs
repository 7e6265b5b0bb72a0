//! Evaluator replicas against real, private NATS and Redis servers: consistent answers
//! across replicas, monotonic rollouts, convergence after commits, restarts and missed
//! events, bad input, OFREP through the Python OpenFeature SDK, fleet agents and outcome
//! counters. Assertions are about order and convergence, never about elapsed time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use rollout_core::machine::Event;
use rollout_core::{DurationMs, Flag, RolloutSpec, Timestamp};
use rollout_store::fleet::{load_reports, load_stage_counts};
use rollout_store::outcomes::load_outcome_counts;
use rollout_store::Keys;
use rollout_wire::codec::Encoding;
use rollout_wire::envelope::ErrorCode;
use rollout_wire::events::{ChangeEvent, EventKind, FlagSnapshot};
use rollout_wire::subjects::{FleetVerb, Subjects};

const ENTITIES: usize = 10_000;

fn entity_request(flag: &str, index: usize) -> serde_json::Value {
    let mut entity = serde_json::json!({"id": format!("user-{index}")});
    if index.is_multiple_of(10) {
        entity["attributes"] = serde_json::json!({"plan": "beta"});
    }
    serde_json::json!({"flag": flag, "entity": entity})
}

/// Evaluates `flag` for the test population through `client`; variation and reason by
/// entity index.
async fn population(
    client: &async_nats::Client,
    flag: &str,
    encoding: Encoding,
) -> Vec<(String, String, u64)> {
    let answers: Vec<(usize, (String, String, u64))> = futures_util::stream::iter(0..ENTITIES)
        .map(|index| {
            let client = client.clone();
            async move {
                let reply = eval(&client, NS, &entity_request(flag, index), encoding)
                    .await
                    .expect("evaluates");
                let answer = (
                    reply["variation"].as_str().unwrap_or_default().to_owned(),
                    reply["reason"].as_str().unwrap_or_default().to_owned(),
                    reply["version"].as_u64().unwrap_or_default(),
                );
                (index, answer)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut ordered: Vec<_> = answers.into_iter().collect();
    ordered.sort_by_key(|(index, _)| *index);
    ordered.into_iter().map(|(_, answer)| answer).collect()
}

fn candidates(answers: &[(String, String, u64)]) -> BTreeSet<usize> {
    answers
        .iter()
        .enumerate()
        .filter(|(_, (variation, reason, _))| variation == "on" && reason == "rollout")
        .map(|(index, _)| index)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_give_identical_answers_for_ten_thousand_entities() {
    // one NATS server per replica, so each replica can be asked on its own; the store
    // publishes every event to all three
    let redis = rollout_testkit::RedisServer::start().expect("redis starts");
    let nats: Vec<_> = (0..3)
        .map(|_| rollout_testkit::NatsServer::start().expect("nats starts"))
        .collect();
    let urls: Vec<String> = nats.iter().map(|server| server.url()).collect();
    let store = Store::connect(&redis.url(), &urls).await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    store
        .create_rollout(NS, phases("checkout", &[30.0, 100.0]), "cohort-a")
        .await;
    let expected_version = store.flag_record(NS, "checkout").await.0;

    let mut replicas = Vec::new();
    let mut clients = Vec::new();
    for url in &urls {
        replicas.push(start(config(url, &redis.url())).await);
        clients.push(async_nats::connect(url.as_str()).await.expect("connects"));
    }
    let mut answers = Vec::new();
    for (client, encoding) in
        clients
            .iter()
            .zip([Encoding::MessagePack, Encoding::Json, Encoding::MessagePack])
    {
        answers.push(population(client, "checkout", encoding).await);
    }
    assert_eq!(answers[0], answers[1], "replica 1 differs from replica 0");
    assert_eq!(answers[0], answers[2], "replica 2 differs from replica 0");
    assert!(answers[0]
        .iter()
        .all(|(_, _, version)| *version == expected_version));
    for (index, (variation, reason, _)) in answers[0].iter().enumerate() {
        if index.is_multiple_of(10) {
            assert_eq!((variation.as_str(), reason.as_str()), ("on", "rule_match"));
        } else {
            assert_eq!(reason, "rollout");
        }
    }
    let share = candidates(&answers[0]).len() as f64 / (ENTITIES * 9 / 10) as f64;
    assert!((0.27..0.33).contains(&share), "candidate share {share}");
    for replica in replicas {
        assert!(replica.stop().await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_share_keeps_every_entity_that_had_the_candidate() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    let rollout_id = store
        .create_rollout(NS, phases("checkout", &[10.0, 20.0, 100.0]), "cohort-b")
        .await;
    let replica = start(servers.config()).await;
    let client = servers.client().await;

    let at_ten = population(&client, "checkout", Encoding::MessagePack).await;
    let version = store.rollout_event(NS, &rollout_id, Event::Continue).await;
    eventually("the replica serves the 20 % step", || async {
        replica.served_version(NS, "checkout") == Some(version)
    })
    .await;
    let at_twenty = population(&client, "checkout", Encoding::MessagePack).await;
    assert!(at_twenty.iter().all(|(_, _, served)| *served == version));

    let before = candidates(&at_ten);
    let after = candidates(&at_twenty);
    let lost: Vec<_> = before.difference(&after).collect();
    assert!(lost.is_empty(), "entities lost the candidate: {lost:?}");
    assert!(after.len() > before.len());
    let population_size = (ENTITIES * 9 / 10) as f64;
    assert!((0.08..0.12).contains(&(before.len() as f64 / population_size)));
    assert!((0.17..0.23).contains(&(after.len() as f64 / population_size)));
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_reach_every_replica_in_order() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(start(servers.config()).await);
    }
    let addrs: Vec<_> = replicas.iter().map(|replica| replica.http_addr()).collect();

    // pollers ask every replica over OFREP while commits land, recording every version
    let stop = rollout_runtime::shutdown::Shutdown::new();
    let mut pollers = Vec::new();
    for addr in addrs.clone() {
        let stop = stop.clone();
        pollers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.is_triggered() {
                let response = ofrep(
                    addr,
                    NS,
                    "checkout",
                    serde_json::json!({"targetingKey": "u-1"}),
                )
                .await;
                assert_eq!(response.status, 200, "{}", response.text());
                seen.push(
                    response.json()["metadata"]["version"]
                        .as_u64()
                        .expect("version"),
                );
            }
            seen
        }));
    }
    let mut last_version = 0;
    for round in 0..20 {
        let mut flag = checkout_flag("checkout");
        flag.description = Some(format!("round {round}"));
        flag.enabled = round % 2 == 0;
        last_version = store.update_flag(NS, flag).await;
        // let the pollers see each version on the way
        eventually("some replica serves the round's version", || async {
            replicas
                .iter()
                .any(|replica| replica.served_version(NS, "checkout") == Some(last_version))
        })
        .await;
    }
    for replica in &replicas {
        eventually("every replica serves the last version", || async {
            replica.served_version(NS, "checkout") == Some(last_version)
        })
        .await;
    }
    // a last round of polls must see the final version on every replica
    for addr in &addrs {
        let response = ofrep(
            *addr,
            NS,
            "checkout",
            serde_json::json!({"targetingKey": "u-1"}),
        )
        .await;
        assert_eq!(response.json()["metadata"]["version"], last_version);
        // round 19 disabled the flag
        assert_eq!(response.json()["reason"], "DISABLED");
    }
    stop.trigger();
    for poller in pollers {
        let seen = poller.await.expect("poller");
        let distinct: BTreeSet<u64> = seen.iter().copied().collect();
        assert!(
            distinct.len() > 1,
            "the poller saw the versions change: {distinct:?}"
        );
        assert!(
            seen.windows(2).all(|pair| pair[0] <= pair[1]),
            "a replica served a version lower than one it served before: {seen:?}"
        );
    }
    // and through NATS, whichever replica answers
    let client = servers.client().await;
    for _ in 0..30 {
        let reply = eval(&client, NS, &entity_request("checkout", 1), Encoding::Json)
            .await
            .expect("evaluates");
        assert_eq!(reply["version"], last_version);
    }
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_converges_to_the_current_state() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    store.create_flag(NS, checkout_flag("doomed")).await;
    let replica = start(servers.config()).await;
    assert!(replica.served_version(NS, "doomed").is_some());
    assert!(replica.stop().await.is_empty(), "clean shutdown");

    // changes while no replica runs: only Redis knows them
    let rollout_id = store
        .create_rollout(NS, phases("checkout", &[25.0, 100.0]), "cohort-c")
        .await;
    let version = store.rollout_event(NS, &rollout_id, Event::Pause).await;
    store.delete_flag(NS, "doomed").await;
    store.create_flag(NS, checkout_flag("fresh")).await;

    let restarted = start(servers.config()).await;
    assert_eq!(restarted.served_version(NS, "checkout"), Some(version));
    assert_eq!(restarted.served_version(NS, "doomed"), None);
    assert!(restarted.served_version(NS, "fresh").is_some());
    let client = servers.client().await;
    let reply = eval(
        &client,
        NS,
        &entity_request("checkout", 3),
        Encoding::MessagePack,
    )
    .await
    .expect("evaluates");
    assert_eq!(reply["rollout_id"], rollout_id.as_str());
    assert_eq!(reply["version"], version);
    let missing = eval(
        &client,
        NS,
        &entity_request("doomed", 3),
        Encoding::MessagePack,
    )
    .await
    .expect_err("deleted");
    assert_eq!(missing.code, ErrorCode::NotFound);
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_rebuilds_its_snapshot_when_redis_loses_its_data() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    store.update_flag(NS, checkout_flag("checkout")).await;
    let old_version = store.update_flag(NS, checkout_flag("checkout")).await;
    store.create_flag(NS, checkout_flag("lost")).await;
    let replica = start(servers.config()).await;
    assert_eq!(replica.served_version(NS, "checkout"), Some(old_version));
    assert!(old_version > 1);

    // no persistence: Redis comes back empty and versions start again at 1
    servers.redis.restart().expect("redis restarts");
    let store = servers.store().await;
    let mut recreated = checkout_flag("checkout");
    recreated.default = rollout_core::Serve::variation("on");
    let new_version = store.create_flag(NS, recreated).await;
    assert_eq!(new_version, 1, "a new history");
    eventually("the replica serves the new history", || async {
        replica.served_version(NS, "checkout") == Some(new_version)
            && replica.served_version(NS, "lost").is_none()
    })
    .await;
    let client = servers.client().await;
    let reply = eval(
        &client,
        NS,
        &serde_json::json!({"flag": "checkout", "entity": {"id": "u-1"}}),
        Encoding::Json,
    )
    .await
    .expect("evaluates");
    assert_eq!(
        (reply["variation"].as_str(), reply["version"].as_u64()),
        (Some("on"), Some(1))
    );
    // and the new history goes on as usual from there
    let next = store.update_flag(NS, checkout_flag("checkout")).await;
    eventually("the next version is applied", || async {
        replica.served_version(NS, "checkout") == Some(next)
    })
    .await;
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_misses_events_resyncs_and_never_goes_back() {
    let servers = Servers::start();
    let store = servers.store().await;
    let mut settings_config = servers.config();
    // long enough that only gaps and reconnections trigger the first two checks below
    settings_config.evaluator.resync_interval = Duration::from_secs(3600);
    let replica = start(settings_config).await;
    let first = store.create_flag(NS, checkout_flag("checkout")).await;
    eventually("the created flag is served", || async {
        replica.served_version(NS, "checkout") == Some(first)
    })
    .await;

    // 1. a dropped event: v+1 is never published, v+2 is; the gap makes it read Redis
    let resyncs_before = replica.resyncs();
    let dropped = store
        .commit_update_flag(NS, checkout_flag("checkout"))
        .await;
    let mut disabled = checkout_flag("checkout");
    disabled.enabled = false;
    let delivered = store.commit_update_flag(NS, disabled).await;
    store
        .publish_only(NS, &delivered, &[delivered.version])
        .await;
    assert_eq!(dropped.version + 1, delivered.version);
    eventually("the gap is resynchronised", || async {
        replica.served_version(NS, "checkout") == Some(delivered.version)
    })
    .await;
    assert!(
        replica.resyncs() > resyncs_before,
        "the gap counted as a resync"
    );
    // the late, older event changes nothing
    store.publish(NS, &dropped).await;

    // 2. a forged event far ahead of Redis: resync finds Redis older, keeps what it has
    let resyncs_before = replica.resyncs();
    let mut forged = ChangeEvent::new(
        NS,
        "checkout",
        delivered.version + 5,
        EventKind::FlagUpdated,
        Timestamp::from_millis(0),
    );
    forged.snapshot = Some(FlagSnapshot {
        flag: checkout_flag("checkout"),
        version: delivered.version + 5,
        rollout: None,
        last_rollout: None,
    });
    store.publish_raw(&forged).await;
    eventually("the forged gap is resynchronised", || async {
        replica.resyncs() > resyncs_before
    })
    .await;
    // a round trip through the replica's event order: a duplicate of a known event
    store.publish(NS, &delivered).await;
    let client = servers.client().await;
    let reply = eval(&client, NS, &entity_request("checkout", 1), Encoding::Json)
        .await
        .expect("evaluates");
    assert_eq!(reply["version"], delivered.version);
    assert_eq!(reply["reason"], "disabled");

    // 3. NATS goes away; a change committed meanwhile is never delivered, the
    //    reconnection makes the replica compare with Redis
    let resyncs_before = replica.resyncs();
    servers.nats.kill().expect("nats killed");
    let unseen = store
        .commit_update_flag(NS, checkout_flag("checkout"))
        .await;
    servers.nats.restart().expect("nats restarted");
    eventually("the change made while nats was down is served", || async {
        replica.served_version(NS, "checkout") == Some(unseen.version)
    })
    .await;
    assert!(replica.resyncs() > resyncs_before);
    replica.stop().await;

    // 4. a change never published at all is found by the periodic comparison
    let mut periodic = servers.config();
    periodic.evaluator.resync_interval = Duration::from_millis(200);
    let replica = start(periodic).await;
    let resyncs_before = replica.resyncs();
    let silent = store
        .commit_update_flag(NS, checkout_flag("checkout"))
        .await;
    eventually(
        "the periodic comparison finds the silent change",
        || async { replica.served_version(NS, "checkout") == Some(silent.version) },
    )
    .await;
    assert!(replica.resyncs() > resyncs_before);
    assert!(replica
        .metrics_text()
        .contains("rollout_evaluator_resyncs_total{reason=\"periodic\"} 1"));
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_openfeature_sdk_evaluates_through_ofrep() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    let theme: Flag = serde_json::from_value(serde_json::json!({
        "key": "theme", "variations": [{"id": "light", "value": "light"}, {"id": "dark", "value": "dark"}],
        "off_variation": "light", "default": {"variation": "dark"}}))
    .expect("flag");
    store.create_flag(NS, theme).await;
    // as deployed: tokens required, the prod token binds the namespace
    let replica = start(token_config(&servers)).await;

    let python_path = python_packages();
    let script = r#"
import json, sys
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext

url, token = sys.argv[1], sys.argv[2]
api.set_provider(OFREPProvider(url, headers_factory=lambda: {"Authorization": "Bearer " + token}))
api.set_provider(OFREPProvider(url), domain="anonymous")
api.set_provider(OFREPProvider(url, headers_factory=lambda: {
    "Authorization": "Bearer " + token, "X-Rollout-Namespace": "dev"}), domain="reaching")
client = api.get_client()
def show(details):
    return {"value": details.value, "variant": details.variant, "reason": str(details.reason),
            "error": None if details.error_code is None else str(details.error_code),
            "message": details.error_message,
            "version": (details.flag_metadata or {}).get("version")}
out = {
    "beta": show(client.get_boolean_details("checkout", False, EvaluationContext("user-1", {"plan": "beta"}))),
    "plain": show(client.get_boolean_details("checkout", True, EvaluationContext("user-2", {"plan": "pro"}))),
    "theme": show(client.get_string_details("theme", "none", EvaluationContext("user-3"))),
    "missing": show(client.get_boolean_details("nope", True, EvaluationContext("user-4"))),
    "wrong_type": show(client.get_string_details("checkout", "x", EvaluationContext("user-5"))),
    "anonymous": show(api.get_client("anonymous").get_boolean_details(
        "checkout", True, EvaluationContext("user-6"))),
    "reaching": show(api.get_client("reaching").get_boolean_details(
        "checkout", True, EvaluationContext("user-7"))),
}
print(json.dumps(out))
"#;
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(format!("http://{}", replica.http_addr()))
        .arg(PROD_TOKEN)
        .env("PYTHONPATH", &python_path)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("python prints json");
    assert_eq!(answers["beta"]["value"], true);
    assert_eq!(answers["beta"]["variant"], "on");
    assert_eq!(answers["beta"]["reason"], "TARGETING_MATCH");
    assert_eq!(answers["beta"]["error"], serde_json::Value::Null);
    assert_eq!(answers["beta"]["version"], 1);
    assert_eq!(answers["plain"]["value"], false);
    assert_eq!(answers["plain"]["reason"], "DEFAULT");
    assert_eq!(answers["theme"]["value"], "dark");
    assert_eq!(answers["missing"]["value"], true, "the default on errors");
    assert_eq!(answers["missing"]["error"], "FLAG_NOT_FOUND");
    assert_eq!(answers["wrong_type"]["error"], "TYPE_MISMATCH");
    // without a token, or with one asking for another namespace: the default, and why
    assert_eq!(answers["anonymous"]["value"], true);
    assert_eq!(answers["anonymous"]["error"], "GENERAL");
    assert_eq!(answers["anonymous"]["message"], "unauthorized");
    assert_eq!(answers["reaching"]["value"], true);
    assert_eq!(answers["reaching"]["error"], "GENERAL");
    assert_eq!(answers["reaching"]["message"], "forbidden");
    replica.stop().await;
}

/// `<workspace>/.tools/python`, with the OpenFeature SDK and its OFREP provider installed
/// from PyPI when they are not there yet.
fn python_packages() -> std::path::PathBuf {
    let root = rollout_testkit::workspace_root().expect("workspace root");
    let target = root.join(".tools").join("python");
    let importable = std::process::Command::new("python3")
        .args(["-c", "import openfeature.contrib.provider.ofrep"])
        .env("PYTHONPATH", &target)
        .status()
        .is_ok_and(|status| status.success());
    if importable {
        return target;
    }
    let installed = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--upgrade",
            "--target",
        ])
        .arg(&target)
        .args(["openfeature-sdk", "openfeature-provider-ofrep"])
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .status();
    assert!(
        installed.is_ok_and(|status| status.success()),
        "could not install the python openfeature sdk: run `python3 -m pip install --target {} openfeature-sdk openfeature-provider-ofrep`",
        target.display()
    );
    target
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_invalid_argument_in_both_encodings() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    let replica = start(servers.config()).await;
    let client = servers.client().await;
    let subject = Subjects::default().eval(&namespace(NS));

    let deep = (0..100).fold(serde_json::json!(1), |inner, _| serde_json::json!([inner]));
    let many_flags: Vec<String> = (0..300).map(|index| format!("f{index}")).collect();
    let many_attributes: serde_json::Map<String, serde_json::Value> = (0..100)
        .map(|index| (format!("a{index}"), serde_json::json!(true)))
        .collect();
    let bad_bodies = [
        serde_json::json!({"flag": "checkout"}),
        serde_json::json!({"flag": "checkout", "entity": {"id": "u"}, "surprise": 1}),
        serde_json::json!({"flag": "checkout", "entity": {"id": 42}}),
        serde_json::json!({"flag": "checkout", "entity": {"id": ""}}),
        serde_json::json!({"flag": "checkout", "entity": {"id": "x".repeat(1000)}}),
        serde_json::json!({"flag": "checkout", "entity": {"id": "u", "attributes": {"nested": {"a": 1}}}}),
        serde_json::json!({"flag": "checkout", "entity": {"id": "u", "attributes": many_attributes}}),
        serde_json::json!({"flag": "checkout", "entity": {"id": "u", "attributes": {"big": "v".repeat(5000)}}}),
        serde_json::json!({"flags": many_flags, "entity": {"id": "u"}}),
        serde_json::json!({"flag": "not.a.token", "entity": {"id": "u"}}),
        serde_json::json!({"flag": "checkout", "entity": {"id": "u", "attributes": {"deep": deep}}}),
    ];
    for encoding in [Encoding::Json, Encoding::MessagePack] {
        for body in &bad_bodies {
            let error = request(&client, subject.clone(), body, encoding)
                .await
                .expect_err("refused");
            assert_eq!(
                error.code,
                ErrorCode::InvalidArgument,
                "{encoding:?} {body}"
            );
        }
    }
    let garbage: [&[u8]; 5] = [
        b"",
        b"{",
        b"\xc1\xc1\xc1",
        b"[1,2",
        &[0xdd, 0xff, 0xff, 0xff, 0xff],
    ];
    for encoding in [Encoding::Json, Encoding::MessagePack] {
        for bytes in garbage {
            let error = request_bytes(&client, subject.clone(), bytes.to_vec(), encoding)
                .await
                .expect_err("refused");
            assert_eq!(error.code, ErrorCode::InvalidArgument);
        }
    }
    // a large message (just under NATS's max_payload) that is not a request
    let mut large = vec![b' '; 900 * 1024];
    large.push(b'{');
    let error = request_bytes(&client, subject.clone(), large, Encoding::Json)
        .await
        .expect_err("refused");
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    // still serving
    let reply = eval(
        &client,
        NS,
        &entity_request("checkout", 0),
        Encoding::MessagePack,
    )
    .await
    .expect("evaluates");
    assert_eq!(reply["variation"], "on");
    let missing = eval(&client, NS, &entity_request("nope", 0), Encoding::Json)
        .await
        .expect_err("unknown flag");
    assert_eq!(missing.code, ErrorCode::NotFound);

    // OFREP
    let addr = replica.http_addr();
    for context in [
        serde_json::json!({"targetingKey": "u", "nested": {"a": 1}}),
        serde_json::json!({"targetingKey": "u", "big": "v".repeat(5000)}),
        serde_json::json!({"targetingKey": 7}),
    ] {
        let response = ofrep(addr, NS, "checkout", context).await;
        assert_eq!(response.status, 400);
        assert_eq!(response.json()["errorCode"], "INVALID_CONTEXT");
        assert_eq!(response.json()["key"], "checkout");
    }
    // without a targeting key, what needs none is served (a rule on another attribute)…
    let response = ofrep(addr, NS, "checkout", serde_json::json!({"plan": "beta"})).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        (
            response.json()["variant"].clone(),
            response.json()["reason"].clone()
        ),
        (
            serde_json::json!("on"),
            serde_json::json!("TARGETING_MATCH")
        )
    );
    let response = http(
        addr,
        "POST",
        "/ofrep/v1/evaluate/flags/checkout",
        &[("Content-Type", "application/json")],
        b"{\"context\": ",
    )
    .await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["errorCode"], "PARSE_ERROR");
    // a JSON array is no request (serde alone would read a struct from it)
    for body in [
        &b"[]"[..],
        b" [{\"targetingKey\": \"u\"}]",
        b"\"text\"",
        b"7",
    ] {
        let response = http(
            addr,
            "POST",
            "/ofrep/v1/evaluate/flags/checkout",
            &[("Content-Type", "application/json")],
            body,
        )
        .await;
        assert_eq!(response.status, 400, "{}", String::from_utf8_lossy(body));
        assert_eq!(response.json()["errorCode"], "PARSE_ERROR");
    }
    let response = ofrep(addr, NS, "nope", serde_json::json!({"targetingKey": "u"})).await;
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["errorCode"], "FLAG_NOT_FOUND");
    let response = ofrep(
        addr,
        "bad.namespace",
        "checkout",
        serde_json::json!({"targetingKey": "u"}),
    )
    .await;
    assert_eq!(response.status, 400);
    let response = http(
        addr,
        "POST",
        "/ofrep/v1/evaluate/flags",
        &[],
        b"{\"context\": []}",
    )
    .await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["errorCode"], "INVALID_CONTEXT");
    let metrics = http(addr, "GET", "/metrics", &[], b"").await.text();
    assert!(metrics.contains(
        "rollout_evaluations_total{namespace=\"prod\",transport=\"nats\",result=\"invalid_argument\"}"
    ));
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ofrep_bulk_health_readiness_and_metrics() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    store.create_flag(NS, checkout_flag("alpha")).await;
    let replica = start(servers.config()).await;
    let addr = replica.http_addr();
    assert_eq!(http(addr, "GET", "/healthz", &[], b"").await.status, 200);
    assert_eq!(http(addr, "GET", "/readyz", &[], b"").await.status, 200);
    // the OFREP configuration extension: capabilities, cacheable by its ETag
    let configuration = http(addr, "GET", "/ofrep/v1/configuration", &[], b"").await;
    assert_eq!(configuration.status, 200);
    let capabilities = &configuration.json()["capabilities"];
    assert_eq!(
        capabilities["cacheInvalidation"]["polling"]["enabled"],
        true
    );
    assert!(capabilities["flagEvaluation"]["supportedTypes"]
        .as_array()
        .expect("types")
        .contains(&serde_json::json!("boolean")));
    let tag = configuration.headers.get("etag").expect("etag").clone();
    let again = http(
        addr,
        "GET",
        "/ofrep/v1/configuration",
        &[("If-None-Match", &tag)],
        b"",
    )
    .await;
    assert_eq!(again.status, 304);
    let body = serde_json::to_vec(
        &serde_json::json!({"context": {"targetingKey": "u-1", "plan": "beta"}}),
    )
    .expect("json");
    let response = http(
        addr,
        "POST",
        "/ofrep/v1/evaluate/flags",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(bulk_keys(&response.json()), ["alpha", "checkout"]);
    assert_eq!(response.json()["flags"][1]["variant"], "on");
    let etag = response.headers.get("etag").expect("etag").clone();
    let unchanged = http(
        addr,
        "POST",
        "/ofrep/v1/evaluate/flags",
        &[("If-None-Match", &etag)],
        &body,
    )
    .await;
    assert_eq!(unchanged.status, 304);
    store.delete_flag(NS, "alpha").await;
    eventually("the deletion is applied", || async {
        replica.served_version(NS, "alpha").is_none()
    })
    .await;
    let changed = http(
        addr,
        "POST",
        "/ofrep/v1/evaluate/flags",
        &[("If-None-Match", &etag)],
        &body,
    )
    .await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.json()["flags"].as_array().map(Vec::len), Some(1));
    let metrics = http(addr, "GET", "/metrics", &[], b"").await;
    assert!(metrics
        .headers
        .get("content-type")
        .is_some_and(|value| value.starts_with("text/plain")));
    let text = metrics.text();
    for expected in [
        "rollout_evaluator_ready 1",
        "rollout_evaluations_total{namespace=\"prod\",transport=\"http\",result=\"ok\"} 3",
        "rollout_evaluation_duration_seconds_count{transport=\"http\"} 3",
        "rollout_evaluator_flags{namespace=\"prod\"} 1",
        "rollout_evaluator_snapshot_version{namespace=\"prod\"} 3",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    // a namespace no command ever used is an error, not an empty answer: a typo must not
    // look like "no flags"
    let typo = http(
        addr,
        "POST",
        "/ofrep/v1/evaluate/flags",
        &[
            ("Content-Type", "application/json"),
            ("X-Rollout-Namespace", "prdo"),
        ],
        &body,
    )
    .await;
    assert_eq!(typo.status, 404, "{}", typo.text());
    assert_eq!(typo.json()["errorCode"], "GENERAL");
    assert!(
        typo.json()["errorDetails"]
            .as_str()
            .is_some_and(|details| details.contains("namespace prdo does not exist")),
        "{}",
        typo.text()
    );
    let single = ofrep(
        addr,
        "prdo",
        "checkout",
        serde_json::json!({"targetingKey": "u"}),
    )
    .await;
    assert_eq!(single.status, 404, "{}", single.text());
    // the namespace the evaluator serves by default answers, flags or not
    let default = http(addr, "POST", "/ofrep/v1/evaluate/flags", &[], &body).await;
    assert_eq!(default.status, 200);
    replica.stop().await;
}

const PROD_TOKEN: &str = "prod-ofrep-token-0123456789";
const DEV_TOKEN: &str = "dev-ofrep-token-0123456789";

/// A replica that requires OFREP bearer tokens: one for `prod`, one for `dev`.
fn token_config(servers: &Servers) -> evaluator::EvaluatorConfig {
    let mut config = servers.config();
    config.http.require_token = true;
    config.http.tokens =
        evaluator::config::BearerTokens::parse(&format!("prod:{PROD_TOKEN},dev:{DEV_TOKEN}"))
            .expect("tokens");
    config
}

/// An OFREP request for `path` with `headers` and the context of entity `u-1`.
async fn ofrep_with(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let body =
        serde_json::to_vec(&serde_json::json!({"context": {"targetingKey": "u-1"}})).expect("json");
    http(addr, "POST", path, headers, &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ofrep_tokens_bind_each_request_to_one_namespace() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("prod-only")).await;
    store.create_flag("dev", checkout_flag("dev-only")).await;
    let replica = start(token_config(&servers)).await;
    let addr = replica.http_addr();
    let prod = format!("Bearer {PROD_TOKEN}");
    let dev = format!("Bearer {DEV_TOKEN}");
    let single = "/ofrep/v1/evaluate/flags/prod-only";
    let bulk = "/ofrep/v1/evaluate/flags";

    // no token, a malformed header, an unknown or oversized token: 401, OFREP error shape
    let oversized = format!("Bearer {}", "t".repeat(10_000));
    for (authorization, challenge) in [
        (None, "Bearer realm=\"rollout\""),
        (Some("Basic dXNlcjpwYXNz"), "error=\"invalid_request\""),
        (Some("Bearer"), "error=\"invalid_request\""),
        (
            Some("Bearer caf\u{e9}-token-0123456789"),
            "error=\"invalid_request\"",
        ),
        (
            Some("Bearer not-a-known-token-0123456789"),
            "error=\"invalid_token\"",
        ),
        (Some(oversized.as_str()), "error=\"invalid_token\""),
    ] {
        let headers: Vec<(&str, &str)> = authorization
            .map(|value| ("Authorization", value))
            .into_iter()
            .collect();
        let refused = ofrep_with(addr, single, &headers).await;
        let shown = authorization.map(|text| &text[..text.len().min(40)]);
        assert_eq!(refused.status, 401, "{shown:?}: {}", refused.text());
        let body = refused.json();
        assert_eq!(body["key"], "prod-only", "{shown:?}");
        assert_eq!(body["errorCode"], "GENERAL", "{shown:?}");
        assert!(body["errorDetails"]
            .as_str()
            .is_some_and(|details| !details.is_empty()));
        assert!(
            refused
                .headers
                .get("www-authenticate")
                .is_some_and(|value| value.contains(challenge)),
            "{shown:?}: {:?}",
            refused.headers
        );
        let refused = ofrep_with(addr, bulk, &headers).await;
        assert_eq!(refused.status, 401, "{shown:?}");
        assert_eq!(refused.json()["errorCode"], "GENERAL");
        assert!(refused.json().get("flags").is_none(), "nothing evaluated");
    }
    let oversized_details = ofrep_with(addr, single, &[("Authorization", &oversized)])
        .await
        .json()["errorDetails"]
        .clone();
    assert!(
        oversized_details
            .as_str()
            .is_some_and(|details| details.contains("at most 256")),
        "{oversized_details}"
    );

    // a token without the namespace header: the token's namespace
    let dev_only = "/ofrep/v1/evaluate/flags/dev-only";
    for (authorization, path, status, field, expected) in [
        (&prod, single, 200, "variant", "off"),
        (&prod, dev_only, 404, "errorCode", "FLAG_NOT_FOUND"),
        (&dev, dev_only, 200, "variant", "off"),
    ] {
        let answer = ofrep_with(addr, path, &[("Authorization", authorization)]).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.text());
        assert_eq!(answer.json()[field], expected, "{path}");
    }
    let flags = ofrep_with(addr, bulk, &[("Authorization", &dev)]).await;
    assert_eq!(bulk_keys(&flags.json()), ["dev-only"]);

    // the token's own namespace named: served; another one: 403
    let named = [
        ("Authorization", prod.as_str()),
        ("X-Rollout-Namespace", "prod"),
    ];
    assert_eq!(ofrep_with(addr, single, &named).await.status, 200);
    let reach = [
        ("Authorization", prod.as_str()),
        ("X-Rollout-Namespace", "dev"),
    ];
    for path in [dev_only, bulk] {
        let forbidden = ofrep_with(addr, path, &reach).await;
        assert_eq!(forbidden.status, 403, "{path}: {}", forbidden.text());
        let body = forbidden.json();
        assert_eq!(body["errorCode"], "GENERAL");
        assert_eq!(
            body["errorDetails"],
            "the bearer token is for namespace prod, not dev"
        );
        assert!(body.get("flags").is_none() && body.get("value").is_none());
        assert!(!forbidden.headers.contains_key("www-authenticate"));
    }

    // health, readiness and metrics stay open; refusals are counted
    assert_eq!(http(addr, "GET", "/healthz", &[], b"").await.status, 200);
    assert_eq!(http(addr, "GET", "/readyz", &[], b"").await.status, 200);
    let metrics = http(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains(
            "rollout_evaluations_total{namespace=\"_unknown\",transport=\"http\",result=\"permission_denied\"} 15"
        ),
        "{}",
        metrics.text()
    );
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_first_load() {
    let servers = Servers::start();
    // the namespace registry of the wrong type: every load attempt fails until repaired
    servers
        .redis
        .command(&["SET", "ro:namespaces", "not-a-set"])
        .expect("set");
    let handle =
        evaluator::Evaluator::start(servers.config(), rollout_runtime::shutdown::Shutdown::new())
            .await
            .expect("starts while the first load fails");
    let addr = handle.http_addr();
    assert_eq!(http(addr, "GET", "/healthz", &[], b"").await.status, 200);
    assert_eq!(http(addr, "GET", "/readyz", &[], b"").await.status, 503);
    let response = ofrep(
        addr,
        NS,
        "checkout",
        serde_json::json!({"targetingKey": "u"}),
    )
    .await;
    assert_eq!(response.status, 503);
    assert!(!handle.is_ready());
    servers
        .redis
        .command(&["DEL", "ro:namespaces"])
        .expect("del");
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    tokio::time::timeout(PATIENCE, handle.ready())
        .await
        .expect("ready once the registry is readable");
    assert_eq!(http(addr, "GET", "/readyz", &[], b"").await.status, 200);
    let response = ofrep(
        addr,
        NS,
        "checkout",
        serde_json::json!({"targetingKey": "u"}),
    )
    .await;
    assert_eq!(response.status, 200);
    handle.stop().await;
}

fn fleet_flag() -> Flag {
    serde_json::from_value(serde_json::json!({
        "key": "agent-version",
        "variations": [{"id": "v1", "value": "1.0.0"}, {"id": "v2", "value": "2.0.0"}],
        "off_variation": "v1",
        "default": {"variation": "v1"},
    }))
    .expect("flag")
}

fn stages_spec() -> RolloutSpec {
    serde_json::from_value(serde_json::json!({
        "flag": "agent-version", "baseline": "v1", "candidate": "v2",
        "stages": [{"name": "canary", "labels": {"env": "staging"}},
                   {"name": "prod-eu", "labels": {"env": "prod", "region": "eu"}}],
    }))
    .expect("spec")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_agents_get_the_candidate_only_in_released_stages() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, fleet_flag()).await;
    let rollout_id = store.create_rollout(NS, stages_spec(), "fleet").await;
    let replica = start(servers.config()).await;
    let client = servers.client().await;
    let subjects = Subjects::default();
    let fleet = |verb| subjects.fleet(&namespace(NS), verb);

    let agents = [
        ("edge-1", serde_json::json!({"env": "staging"})),
        ("edge-2", serde_json::json!({"env": "prod", "region": "eu"})),
        ("edge-3", serde_json::json!({"env": "prod", "region": "us"})),
        (
            "edge-4",
            serde_json::json!({"env": "staging", "region": "eu"}),
        ),
    ];
    for (index, (agent, labels)) in agents.iter().enumerate() {
        let encoding = if index % 2 == 0 {
            Encoding::Json
        } else {
            Encoding::MessagePack
        };
        let ack = request(
            &client,
            fleet(FleetVerb::Register),
            &serde_json::json!({"agent_id": agent, "labels": labels}),
            encoding,
        )
        .await
        .expect("registers");
        assert_eq!(ack["agent_id"], *agent);
    }
    let desired = |agent: &'static str| {
        let client = client.clone();
        let subject = fleet(FleetVerb::Desired);
        async move {
            request(
                &client,
                subject,
                &serde_json::json!({"agent_id": agent, "flag": "agent-version"}),
                Encoding::Json,
            )
            .await
            .expect("desired")
        }
    };
    let canary = desired("edge-1").await;
    assert_eq!(canary["variation"], "v2");
    assert_eq!(canary["value"], "2.0.0");
    assert_eq!(canary["stage"], "canary");
    assert_eq!(canary["rollout_id"], rollout_id.as_str());
    let eu = desired("edge-2").await;
    assert_eq!(
        (eu["variation"].as_str(), eu["stage"].as_str()),
        (Some("v1"), Some("prod-eu"))
    );
    let us = desired("edge-3").await;
    assert_eq!(
        (us["variation"].as_str(), us["stage"].as_str()),
        (Some("v1"), Some("unassigned"))
    );

    let report = |agent: &'static str, variation: &'static str, status: &'static str| {
        let client = client.clone();
        let subject = fleet(FleetVerb::Report);
        async move {
            request(
                &client,
                subject,
                &serde_json::json!({"agent_id": agent, "flag": "agent-version", "variation": variation, "status": status}),
                Encoding::MessagePack,
            )
            .await
        }
    };
    report("edge-1", "v2", "applied").await.expect("report");
    report("edge-4", "v2", "failed").await.expect("report");

    // reports that cannot count are refused and store nothing
    let refused = |body: serde_json::Value| {
        let client = client.clone();
        let subject = fleet(FleetVerb::Report);
        async move {
            request(&client, subject, &body, Encoding::Json)
                .await
                .expect_err("refused report")
        }
    };
    let ghost = refused(
        serde_json::json!({"agent_id": "ghost", "flag": "agent-version",
        "variation": "v2", "status": "applied"}),
    )
    .await;
    assert_eq!(
        (ghost.code, ghost.field.as_deref()),
        (ErrorCode::NotFound, Some("agent_id"))
    );
    let no_variation = refused(
        serde_json::json!({"agent_id": "edge-3", "flag": "agent-version",
        "variation": "v9", "status": "applied"}),
    )
    .await;
    assert_eq!(
        (no_variation.code, no_variation.field.as_deref()),
        (ErrorCode::InvalidArgument, Some("variation"))
    );
    let no_flag = refused(serde_json::json!({"agent_id": "edge-3", "flag": "nope",
        "variation": "v2", "status": "applied"}))
    .await;
    assert_eq!(
        (no_flag.code, no_flag.field.as_deref()),
        (ErrorCode::NotFound, Some("flag"))
    );
    let no_rollout = refused(
        serde_json::json!({"agent_id": "edge-3", "flag": "agent-version",
        "rollout_id": "r-nope", "variation": "v2", "status": "applied"}),
    )
    .await;
    assert_eq!(
        (no_rollout.code, no_rollout.field.as_deref()),
        (ErrorCode::NotFound, Some("rollout_id"))
    );
    let mut other_flag = fleet_flag();
    other_flag.key = "other".to_owned();
    store.create_flag(NS, other_flag).await;
    eventually("the other flag is served", || async {
        replica.served_version(NS, "other").is_some()
    })
    .await;
    let foreign = refused(serde_json::json!({"agent_id": "edge-3", "flag": "other",
        "rollout_id": rollout_id, "variation": "v2", "status": "applied"}))
    .await;
    assert_eq!(
        (foreign.code, foreign.field.as_deref()),
        (ErrorCode::InvalidArgument, Some("rollout_id"))
    );
    let mut connection = store.redis.clone();
    let keys = Keys::new(&namespace(NS));
    let stored = load_reports(&mut connection, &keys, &rollout_id)
        .await
        .expect("reports");
    assert_eq!(
        stored.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["edge-1", "edge-4"]),
        "only the accepted reports are stored"
    );

    let version = store.rollout_event(NS, &rollout_id, Event::Continue).await;
    eventually("the second stage is released", || async {
        replica.served_version(NS, "agent-version") == Some(version)
    })
    .await;
    let eu = desired("edge-2").await;
    assert_eq!(
        (eu["variation"].as_str(), eu["version"].as_u64()),
        (Some("v2"), Some(version))
    );
    assert_eq!(desired("edge-3").await["variation"], "v1");
    report("edge-2", "v2", "applied").await.expect("report");

    let heartbeat = request(
        &client,
        fleet(FleetVerb::Heartbeat),
        &serde_json::json!({"agent_id": "edge-3"}),
        Encoding::Json,
    )
    .await
    .expect("heartbeat");
    assert_eq!(heartbeat["agent_id"], "edge-3");
    let unknown = request(
        &client,
        fleet(FleetVerb::Heartbeat),
        &serde_json::json!({"agent_id": "ghost"}),
        Encoding::Json,
    )
    .await
    .expect_err("unknown agent");
    assert_eq!(unknown.code, ErrorCode::NotFound);
    let bad = request(
        &client,
        fleet(FleetVerb::Register),
        &serde_json::json!({"agent_id": "x", "labels": {"env": "v".repeat(5000)}}),
        Encoding::Json,
    )
    .await
    .expect_err("oversized label");
    assert_eq!(bad.code, ErrorCode::InvalidArgument);

    // the counts the planner's status query shows, from what the evaluator stored
    let record = store.rollout_record(NS, &rollout_id).await;
    let now = store.now().await;
    let counts = load_stage_counts(
        &mut connection,
        &keys,
        &rollout_id,
        &record.plan,
        &record.state,
        now,
        DurationMs::from_minutes(5),
    )
    .await
    .expect("counts");
    let summary: Vec<(u64, u64, u64, u64, u64)> = counts
        .iter()
        .map(|count| {
            (
                count.members,
                count.completed,
                count.errors,
                count.pending,
                count.waiting,
            )
        })
        .collect();
    // canary: edge-1 applied, edge-4 failed; prod-eu: edge-2 applied; unassigned: edge-3
    assert_eq!(
        summary,
        vec![(2, 1, 1, 0, 0), (1, 1, 0, 0, 0), (1, 0, 0, 0, 1)]
    );
    // agents that stop heartbeating are counted apart
    let later = Timestamp::from_millis(now.as_millis() + 10 * 60 * 1000);
    let stale = load_stage_counts(
        &mut connection,
        &keys,
        &rollout_id,
        &record.plan,
        &record.state,
        later,
        DurationMs::from_minutes(5),
    )
    .await
    .expect("counts");
    assert_eq!(stale[2].stale, 1);
    assert_eq!(stale[2].waiting, 0);
    replica.stop().await;
}

/// The kill-switch counters of flag `checkout` over the last five minutes: `on` as the
/// candidate side, `off` as the baseline.
async fn checkout_counts(store: &Store) -> rollout_core::OutcomeCounts {
    let mut connection = store.redis.clone();
    load_outcome_counts(
        &mut connection,
        &Keys::new(&namespace(NS)),
        "checkout",
        "off",
        "on",
        DurationMs::from_minutes(5),
        store.now().await,
    )
    .await
    .expect("counts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_become_windowed_counters_in_batches() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    let mut config = servers.config();
    config.evaluator.outcome_flush_interval = Duration::from_millis(50);
    let replicas = [start(config.clone()).await, start(config).await];
    let client = servers.client().await;
    let subject = Subjects::default().metrics(&namespace(NS));
    let mut sent: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for index in 0..200_u64 {
        let (variation, outcome) = match index % 4 {
            0 => ("on", "error"),
            1 | 2 => ("on", "success"),
            _ => ("off", "success"),
        };
        *sent.entry((variation, outcome)).or_default() += 1;
        let report = serde_json::json!({"flag": "checkout", "entity": format!("u-{index}"),
                                        "variation": variation, "outcome": outcome});
        let body = if index % 2 == 0 {
            serde_json::json!({"outcomes": [report]})
        } else {
            report
        };
        let encoding = if index % 3 == 0 {
            Encoding::Json
        } else {
            Encoding::MessagePack
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", encoding.content_type());
        let payload = rollout_wire::codec::encode(&body, encoding).expect("encodes");
        client
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .expect("publish");
    }
    // a report for an unknown flag and garbage are dropped, not counted
    client
        .publish(subject.clone(), b"\xc1".to_vec().into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");

    eventually("every report is counted exactly once", || async {
        let counts = checkout_counts(&store).await;
        counts.candidate.error == sent[&("on", "error")]
            && counts.candidate.success == sent[&("on", "success")]
            && counts.baseline.success == sent[&("off", "success")]
    })
    .await;
    let flushes: u64 = replicas
        .iter()
        .map(|replica| {
            let text = replica.metrics_text();
            text.lines()
                .find(|line| {
                    line.starts_with("rollout_evaluator_outcome_flushes_total{result=\"ok\"}")
                })
                .and_then(|line| line.rsplit(' ').next())
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert!(flushes < 200, "batched: {flushes} flushes for 200 reports");
    for replica in replicas {
        replica.stop().await;
    }
}

/// The value of the `rollout_evaluator_outcomes_total` line with `result`.
fn outcomes_metric(text: &str, result: &str) -> u64 {
    let prefix = format!("rollout_evaluator_outcomes_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_flags_and_variations_grow_no_counters() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    let mut config = servers.config();
    config.evaluator.outcome_flush_interval = Duration::from_millis(50);
    let replica = start(config).await;
    let client = servers.client().await;
    let subject = Subjects::default().metrics(&namespace(NS));
    // a client inventing a new variation (and a new flag) in every report
    let mut reports: Vec<serde_json::Value> = (0..200)
        .map(|index| {
            let (flag, variation) = if index % 2 == 0 {
                ("checkout", format!("made-up-{index}"))
            } else {
                ("nope", format!("v-{index}"))
            };
            serde_json::json!({"flag": flag, "entity": format!("u-{index}"),
                               "variation": variation, "outcome": "error"})
        })
        .collect();
    // one real report last in the same message: once it is counted, all were looked at
    reports.push(serde_json::json!({"flag": "checkout", "entity": "u-real",
                                    "variation": "on", "outcome": "success"}));
    let payload = serde_json::to_vec(&serde_json::json!({"outcomes": reports})).expect("json");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", Encoding::Json.content_type());
    client
        .publish_with_headers(subject, headers, payload.into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");

    eventually("the real report is counted", || async {
        checkout_counts(&store).await.candidate.success == 1
    })
    .await;
    let mut connection = store.redis.clone();
    let mut counter_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("ro:{{{NS}}}:*outcomes*"))
        .query_async(&mut connection)
        .await
        .expect("keys");
    counter_keys.sort();
    assert_eq!(
        counter_keys.len(),
        1,
        "only the real flag's bucket: {counter_keys:?}"
    );
    assert!(
        counter_keys[0].contains(":outcomes:checkout:"),
        "{counter_keys:?}"
    );
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&counter_keys[0])
        .query_async(&mut connection)
        .await
        .expect("hkeys");
    assert_eq!(fields, vec!["on:ok".to_owned()]);
    let metrics = replica.metrics_text();
    assert_eq!(
        outcomes_metric(&metrics, "unknown_variation"),
        100,
        "{metrics}"
    );
    assert_eq!(outcomes_metric(&metrics, "unknown_flag"), 100, "{metrics}");
    assert_eq!(outcomes_metric(&metrics, "accepted"), 1, "{metrics}");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_bulk_evaluation_over_nats() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    store.create_flag(NS, checkout_flag("other")).await;
    let rollout_id = store
        .create_rollout(NS, phases("checkout", &[50.0, 100.0]), "explained")
        .await;
    let replica = start(servers.config()).await;
    let client = servers.client().await;
    let one = eval(
        &client,
        NS,
        &serde_json::json!({"flag": "checkout", "entity": {"id": "user-7"}, "explain": true}),
        Encoding::MessagePack,
    )
    .await
    .expect("evaluates");
    assert_eq!(one["reason"], "rollout");
    assert_eq!(one["rollout_id"], rollout_id.as_str());
    assert_eq!(one["step"], 0);
    assert!(one["bucket"]
        .as_u64()
        .is_some_and(|bucket| bucket < 1_000_000));
    assert!(one["explanation"]
        .as_str()
        .is_some_and(|text| text.contains(&rollout_id)));
    let many = eval(
        &client,
        NS,
        &serde_json::json!({"flags": ["other", "nope", "checkout"], "entity": {"id": "user-7"}}),
        Encoding::Json,
    )
    .await
    .expect("evaluates");
    let keys: Vec<&str> = many["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|result| result["flag"].as_str())
        .collect();
    assert_eq!(keys, ["other", "checkout"]);
    assert_eq!(many["missing"], serde_json::json!(["nope"]));
    let all = eval(
        &client,
        NS,
        &serde_json::json!({"entity": {"id": "user-7"}}),
        Encoding::Json,
    )
    .await
    .expect("evaluates");
    assert_eq!(all["results"].as_array().map(Vec::len), Some(2));
    let empty = eval(
        &client,
        "elsewhere",
        &serde_json::json!({"entity": {"id": "user-7"}}),
        Encoding::Json,
    )
    .await
    .expect("an unknown namespace has no flags");
    assert_eq!(empty["results"], serde_json::json!([]));
    replica.stop().await;
}

#[test]
fn a_bad_setting_stops_the_binary_with_exit_code_64() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_evaluator"))
        .env("ROLLOUT_HTTP__NAMESPACE", "not.a.namespace")
        .output()
        .expect("evaluator runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("http.namespace"), "{stderr}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_evaluator"))
        .env("ROLLOUT_EVALUATOR__RESYNC_INTERVAL", "often")
        .output()
        .expect("evaluator runs");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("evaluator.resync_interval"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_agents_are_evaluated_with_their_registered_attributes() {
    let servers = Servers::start();
    let store = servers.store().await;
    let mut flag = fleet_flag();
    flag.rules = serde_json::from_value(serde_json::json!([
        {"id": "arm", "conditions": [{"attribute": "arch", "op": "equals", "values": ["arm64"]}],
         "serve": {"variation": "v2"}}
    ]))
    .expect("rules");
    store.create_flag(NS, flag).await;
    let _replica = start(servers.config()).await;
    let client = servers.client().await;
    let subjects = Subjects::default();
    let fleet = |verb| subjects.fleet(&namespace(NS), verb);
    for (agent, arch) in [("arm-1", "arm64"), ("x86-1", "amd64")] {
        request(
            &client,
            fleet(FleetVerb::Register),
            &serde_json::json!({"agent_id": agent, "labels": {"env": "prod"}, "attributes": {"arch": arch}}),
            Encoding::Json,
        )
        .await
        .expect("registers");
    }
    for (agent, expected) in [("arm-1", "v2"), ("x86-1", "v1")] {
        let desired = request(
            &client,
            fleet(FleetVerb::Desired),
            &serde_json::json!({"agent_id": agent, "flag": "agent-version"}),
            Encoding::Json,
        )
        .await
        .expect("desired");
        assert_eq!(desired["variation"], expected, "{agent}: {desired}");
    }
    // the attributes are stored, so a replica that never saw the registration agrees
    let mut connection = store.redis.clone();
    let stored = rollout_store::fleet::load_agent(
        &mut connection,
        &rollout_store::Keys::new(&namespace(NS)),
        "arm-1",
    )
    .await
    .expect("load")
    .expect("registered");
    assert_eq!(
        stored.attributes.get("arch"),
        Some(&rollout_core::AttributeValue::String("arm64".into()))
    );
}

/// OFREP contexts without a targeting key: flags that can answer without one are served,
/// flags that bucket on it fail one by one with `TARGETING_KEY_MISSING`, in single and
/// bulk evaluations alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_flags_that_bucket_need_the_targeting_key() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    let mut halves = serde_json::to_value(checkout_flag("halves")).expect("json");
    halves["default"] = serde_json::json!({"split": [
        {"variation": "off", "weight": 50}, {"variation": "on", "weight": 50}]});
    store
        .create_flag(NS, serde_json::from_value(halves).expect("flag"))
        .await;
    let replica = start(servers.config()).await;
    let addr = replica.http_addr();
    let keyless = serde_json::json!({"plan": "pro"});
    let served = ofrep(addr, NS, "checkout", keyless.clone()).await;
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(served.json()["variant"], "off");
    let refused = ofrep(addr, NS, "halves", keyless.clone()).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(refused.json()["errorCode"], "TARGETING_KEY_MISSING");
    assert_eq!(refused.json()["key"], "halves");

    let body = serde_json::to_vec(&serde_json::json!({"context": keyless})).expect("json");
    let bulk = http(
        addr,
        "POST",
        "/ofrep/v1/evaluate/flags",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(bulk.status, 200, "{}", bulk.text());
    let flags = bulk.json()["flags"].as_array().expect("flags").clone();
    let by_key = |key: &str| {
        flags
            .iter()
            .find(|flag| flag["key"] == key)
            .cloned()
            .expect("listed")
    };
    assert_eq!(by_key("checkout")["variant"], "off");
    assert_eq!(by_key("halves")["errorCode"], "TARGETING_KEY_MISSING");
    // with a key, both are served
    let keyed = ofrep(
        addr,
        NS,
        "halves",
        serde_json::json!({"targetingKey": "user-1"}),
    )
    .await;
    assert_eq!(keyed.status, 200, "{}", keyed.text());
    replica.stop().await;
}
