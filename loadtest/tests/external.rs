//! The scenarios against a running cluster (`--nats-url`, `--redis-url`,
//! `--evaluator-http`): this test boots one — private servers, a planner, two evaluators
//! and a ticker in process — and runs the built binary against it with tiny sizes, as the
//! local cluster demo and `deploy/local/bench.sh --cluster` do. The JSON must say
//! `external` and count work done; no performance thresholds.

use std::time::Duration;

use loadtest::servers::{InProcess, Servers};
use rollout_sdk::CommandClient;
use rollout_wire::subjects::Namespace;
use serde_json::{json, Value};
use ticker::TickerSettings;

async fn loadtest(args: Vec<String>) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.json");
    let mut all = args.clone();
    all.extend(["--json-out".to_owned(), out.display().to_string()]);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(&all)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("loadtest runs");
    assert!(
        output.status.success(),
        "loadtest {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("json")).expect("parses");
    assert_eq!(report["mode"], "external", "{report}");
    report
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_run_against_a_running_cluster() {
    let servers = Servers::start_private().await.expect("servers start");
    let demo = Namespace::new("demo").expect("namespace");
    let mut cluster = InProcess::new(&servers).expect("services");
    cluster.start_planner().await.expect("planner");
    let first = cluster.start_evaluator(&demo).await.expect("evaluator");
    let second = cluster.start_evaluator(&demo).await.expect("evaluator");
    let ticker = cluster
        .ticker(TickerSettings {
            replica_id: Some("cluster".to_owned()),
            ..TickerSettings::default()
        })
        .await
        .expect("ticker");
    cluster.run_ticker(ticker);
    let nats_url = servers.nats_url();
    let redis_url = servers.redis_url().expect("redis");

    // the demo's fleet flag and a stage rollout, as deploy/local/demo.sh creates them
    let commands = CommandClient::new(servers.nats().await.expect("nats"), demo.clone());
    commands
        .create_flag(
            serde_json::from_value(json!({
                "key": "demo-collector-config",
                "variations": [{"id": "v1", "value": "collector-config-v1"},
                               {"id": "v2", "value": "collector-config-v2"}],
                "off_variation": "v1", "enabled": true, "default": {"variation": "v1"},
            }))
            .expect("flag"),
        )
        .await
        .expect("flag created");
    commands
        .create_rollout(
            serde_json::from_value(json!({
                "flag": "demo-collector-config", "baseline": "v1", "candidate": "v2",
                "stages": [{"name": "canary", "labels": {"ring": "canary"}},
                           {"name": "prod-eu", "labels": {"env": "prod", "region": "eu"}}],
            }))
            .expect("spec"),
        )
        .await
        .expect("rollout created");

    let agents = loadtest(strings(&[
        "agents",
        "--nats-url",
        &nats_url,
        "--namespace",
        "demo",
        "--flag",
        "demo-collector-config",
        "--count",
        "8",
        "--duration",
        "3s",
        "--poll",
        "200ms",
        "--apply-delay",
        "100ms",
    ]))
    .await;
    let fleet = &agents["details"]["fleet"];
    assert_eq!(fleet["registered"], 8, "{fleet}");
    assert!(fleet["applied"].as_u64().expect("applied") > 0, "{fleet}");
    assert_eq!(fleet["request_errors"], 0, "{fleet}");

    let eval = loadtest(strings(&[
        "eval",
        "--nats-url",
        &nats_url,
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--in-flight",
        "4",
    ]))
    .await;
    assert!(eval["details"]["evaluator_0_closed"]["requests"].as_u64() > Some(0));
    assert!(eval["notes"].to_string().contains("memory"));

    let commands_report = loadtest(strings(&[
        "commands",
        "--nats-url",
        &nats_url,
        "--redis-url",
        &redis_url,
        "--count",
        "10",
        "--concurrency",
        "2",
        "--baseline-duration",
        "300ms",
    ]))
    .await;
    assert_eq!(commands_report["details"]["storm"]["commands"], 30);

    let ticker_report = loadtest(strings(&[
        "ticker",
        "--nats-url",
        &nats_url,
        "--redis-url",
        &redis_url,
        "--rollouts",
        "300",
        "--spread",
        "1s",
        "--burst",
        "0",
        "--script-duration",
        "300ms",
    ]))
    .await;
    assert_eq!(ticker_report["details"]["spread"]["fired"], 300);

    let propagation = loadtest(strings(&[
        "propagation",
        "--nats-url",
        &nats_url,
        "--evaluator-http",
        &format!("{first},{second}"),
        "--namespace",
        "demo",
        "--changes",
        "5",
    ]))
    .await;
    assert_eq!(
        propagation["details"]["propagation"]["all_replicas"]["count"],
        5
    );

    tokio::time::timeout(Duration::from_secs(30), cluster.stop())
        .await
        .expect("the cluster stops");
}
