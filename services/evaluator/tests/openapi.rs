//! The evaluator against its own OpenAPI description (`services/evaluator/openapi.yaml`),
//! by schemathesis (installed by deploy/tools/install.sh into .tools/schemathesis): a live
//! evaluator requiring tokens, with flags of every value type, is fuzzed with every check
//! on — status codes, content types, response schemas and headers, authentication ignored
//! or not, negative data rejected and positive data accepted — once with a fixed seed and
//! once with a random one. A failure prints how to replay it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{checkout_flag, start, Servers, NS};

const PROD_TOKEN: &str = "prod-ofrep-token-0123456789";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// Runs schemathesis with `seed` against the evaluator at `url`; the report on failure.
fn schemathesis(url: &str, seed: u64) -> Result<(), String> {
    let root = root();
    let spec = root.join("services/evaluator/openapi.yaml");
    let args = [
        "-m".to_owned(),
        "schemathesis.cli".to_owned(),
        "run".to_owned(),
        spec.display().to_string(),
        "--url".to_owned(),
        url.to_owned(),
        "--checks".to_owned(),
        "all".to_owned(),
        "--seed".to_owned(),
        seed.to_string(),
        "--max-examples".to_owned(),
        "60".to_owned(),
        "--generation-codec".to_owned(),
        "ascii".to_owned(),
        "--header".to_owned(),
        format!("Authorization: Bearer {PROD_TOKEN}"),
        // a stream never ends by itself: its behaviour is tested by tests/sse.rs
        "--exclude-path".to_owned(),
        "/ofrep/v1/sse/{namespace}".to_owned(),
        "--request-timeout".to_owned(),
        "5".to_owned(),
    ];
    let output = Command::new("python3")
        .args(&args)
        .env("PYTHONPATH", root.join(".tools/schemathesis"))
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .map_err(|error| format!("python3: {error}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "schemathesis found differences (seed {seed}; rerun this test with ROLLOUT_SCHEMATHESIS_SEED={seed}); replay against a running evaluator with\n  PYTHONPATH=.tools/schemathesis python3 {}\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_evaluator_conforms_to_its_openapi_description() {
    let installed = Command::new("python3")
        .args(["-c", "import schemathesis"])
        .env("PYTHONPATH", root().join(".tools/schemathesis"))
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        installed,
        "schemathesis is missing: run deploy/tools/install.sh (it installs it into .tools/schemathesis)"
    );
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
    let url = format!("http://{}", replica.http_addr());
    // ROLLOUT_SCHEMATHESIS_SEED replays the seed a failed run printed
    let second: u64 = std::env::var("ROLLOUT_SCHEMATHESIS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| rand::random::<u32>().into());
    for seed in [20_261_205, second] {
        let run = tokio::task::spawn_blocking({
            let url = url.clone();
            move || schemathesis(&url, seed)
        })
        .await
        .expect("schemathesis ran");
        if let Err(report) = run {
            panic!("{report}");
        }
    }
    replica.stop().await;
}
