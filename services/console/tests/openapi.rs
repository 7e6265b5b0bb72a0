//! The console's JSON API against its OpenAPI description (`services/console/openapi.yaml`),
//! by schemathesis: a live console over a sandboxed planner, ticker and evaluator, with a
//! flag and a running rollout, called with an operator's bearer token, every check on —
//! status codes, content types, response schemas, authentication ignored or not, negative
//! data rejected — once with a fixed seed and once with a random one.
//!
//! Left out: the live stream (`/api/events` never ends by itself; tests/browser.rs follows
//! it), and the check that any schema-valid request is accepted: a spec is YAML text and an
//! entity names a flag, so schema-valid requests are refused for what they say (an unknown
//! flag is `404`, a spec with a typo `400` naming its line), which JSON Schema cannot state.

mod common;

use common::{RunningConsole, SCRIPT_TOKEN};
use rollout_sandbox::schemathesis::Run;
use rollout_sandbox::Sandbox;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_conforms_to_its_openapi_description() {
    let sandbox = Sandbox::builder()
        .planners(1)
        .tickers(1)
        .evaluators(1)
        .start()
        .await;
    let mut console = RunningConsole::start(&sandbox).await;
    common::checkout_rollout(
        &sandbox,
        json!({"phases": [{"percentage": 10, "duration": "1h"}, {"percentage": 100}]}),
    )
    .await;
    Run {
        spec: "services/console/openapi.yaml".to_owned(),
        url: format!("http://{}", console.addr),
        headers: vec![format!("Authorization: Bearer {SCRIPT_TOKEN}")],
        exclude_paths: vec!["/api/events".to_owned()],
        exclude_checks: vec!["positive_data_acceptance".to_owned()],
    }
    .conforms()
    .await;
    console.stop().await;
    sandbox.stop().await;
}
