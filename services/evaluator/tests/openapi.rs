//! The evaluator against its own OpenAPI description (`services/evaluator/openapi.yaml`),
//! by schemathesis (installed by deploy/tools/install.sh into .tools/schemathesis): a live
//! evaluator requiring tokens, with flags of every value type, is fuzzed with every check
//! on — status codes, content types, response schemas and headers, authentication ignored
//! or not, negative data rejected and positive data accepted — once with a fixed seed and
//! once with a random one. A failure prints how to replay it.

mod common;

use common::{checkout_flag, start, Servers, NS};

const PROD_TOKEN: &str = "prod-ofrep-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_evaluator_conforms_to_its_openapi_description() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    for (key, values) in [
        ("banner", serde_json::json!(["blue", "green"])),
        ("limits", serde_json::json!([{"max": 10}, {"max": 20}])),
        ("ratio", serde_json::json!([0.5, 1.5])),
    ] {
        let flag = serde_json::from_value(serde_json::json!({
            "key": key,
            "variations": [{"id": "a", "value": values[0]}, {"id": "b", "value": values[1]}],
            "off_variation": "a",
            "default": {"variation": "b"},
        }))
        .expect("flag");
        store.create_flag(NS, flag).await;
    }
    let mut config = servers.config();
    config.http.require_token = true;
    config.http.tokens = evaluator::config::BearerTokens::parse(&format!(
        "prod:{PROD_TOKEN},dev:dev-ofrep-token-0123456789"
    ))
    .expect("tokens");
    let replica = start(config).await;
    rollout_sandbox::schemathesis::Run {
        spec: "services/evaluator/openapi.yaml".to_owned(),
        url: format!("http://{}", replica.http_addr()),
        headers: vec![format!("Authorization: Bearer {PROD_TOKEN}")],
        // a stream never ends by itself: its behaviour is tested by tests/sse.rs
        exclude_paths: vec!["/ofrep/v1/sse/{namespace}".to_owned()],
        exclude_checks: Vec::new(),
    }
    .conforms()
    .await;
    replica.stop().await;
}
