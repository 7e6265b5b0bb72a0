//! One smoke run per scenario with tiny sizes, through the built binary on private servers
//! (run `deploy/tools/install.sh` once): the JSON has the expected fields and the counts
//! are not zero. No performance thresholds: figures of a debug build on a busy machine say
//! nothing.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("loadtest runs")
}

/// Runs a scenario with `--json-out` and returns the parsed report.
fn scenario(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.json");
    let mut all: Vec<&str> = args.to_vec();
    let out_text = out.to_str().expect("utf-8 path").to_owned();
    all.extend(["--json-out", &out_text]);
    let output = loadtest(&all);
    assert!(
        output.status.success(),
        "loadtest {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = read(&out);
    assert_eq!(report["scenario"], args[0]);
    assert_eq!(report["mode"], "private");
    assert!(report["started_at"].is_string());
    assert!(report["elapsed_secs"].as_f64().expect("elapsed") > 0.0);
    let rows = report["rows"].as_array().expect("rows");
    assert!(!rows.is_empty(), "no rows: {report}");
    for row in rows {
        assert!(row["name"].is_string(), "{row}");
        assert!(row["value"].is_number(), "{row}");
        assert!(row["unit"].is_string(), "{row}");
    }
    report
}

fn read(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("json written");
    serde_json::from_str(&text).expect("json parses")
}

fn count(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a count: {value}"))
}

fn row<'a>(report: &'a Value, starts_with: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|row| {
            row["name"]
                .as_str()
                .is_some_and(|name| name.starts_with(starts_with))
        })
        .unwrap_or_else(|| panic!("no row {starts_with:?} in {report}"))
}

#[test]
fn eval_measures_echo_evaluators_and_memory() {
    let report = scenario(&[
        "eval",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--in-flight",
        "4",
        "--flags",
        "100",
    ]);
    let details = &report["details"];
    for run in [
        "echo_1_closed",
        "echo_2_closed",
        "evaluator_1_closed",
        "evaluator_2_closed",
        "evaluator_paced",
        "echo_paced",
    ] {
        assert!(count(&details[run]["requests"]) > 0, "{run}: {details}");
        assert!(details[run]["latency"]["p99_ms"].is_number(), "{run}");
    }
    assert!(count(&details["memory"]["full_kib"]) > 0);
    let rate = row(&report, "evaluations/s, closed loop 4 in flight, 1 replica");
    assert!(rate["baseline"]["value"].as_f64().expect("baseline") > 0.0);
    assert!(rate["ratio"].is_number());
    assert!(rate["pass"].is_boolean());
}

#[test]
fn commands_storm_and_both_baselines_count() {
    let report = scenario(&[
        "commands",
        "--count",
        "20",
        "--concurrency",
        "4",
        "--baseline-duration",
        "500ms",
    ]);
    let details = &report["details"];
    assert_eq!(count(&details["storm"]["commands"]), 60, "{details}");
    assert_eq!(count(&details["storm"]["errors"]), 0, "{details}");
    assert_eq!(
        count(&details["storm"]["by_verb"]["rollout.start"]["count"]),
        20
    );
    assert!(count(&details["echo"]["requests"]) > 0);
    assert!(count(&details["redis_script"]["requests"]) > 0);
    assert!(row(&report, "commands/s")["ratio"].is_number());
}

#[test]
fn ticker_fires_every_rollout_of_both_waves() {
    let report = scenario(&[
        "ticker",
        "--rollouts",
        "500",
        "--spread",
        "1s",
        "--burst",
        "100",
        "--script-duration",
        "500ms",
    ]);
    let details = &report["details"];
    assert_eq!(count(&details["spread"]["fired"]), 500, "{details}");
    assert_eq!(count(&details["spread"]["lag"]["count"]), 500);
    assert_eq!(count(&details["burst"]["fired"]), 100);
    assert!(count(&details["redis_script"]["requests"]) > 0);
    assert!(count(&details["ticker"]["transitions"]) >= 600);
    assert!(row(&report, "firing lag p99")["pass"].is_boolean());
}

#[test]
fn scale_drains_every_burst_with_one_and_two_replicas_sharing_the_shards() {
    check_scale(&scenario(&SCALE_ARGS));
}

#[test]
fn scale_on_hosts_runs_each_ticker_in_a_network_namespace_of_its_own() {
    let uid = std::process::Command::new("id").arg("-u").output();
    if !uid.is_ok_and(|output| output.stdout.starts_with(b"0\n")) {
        println!("skipped: network namespaces need root");
        return;
    }
    let mut args = SCALE_ARGS.to_vec();
    args.push("--hosts");
    let report = scenario(&args);
    assert_eq!(report["settings"]["hosts"], true, "{report}");
    check_scale(&report);
}

const SCALE_ARGS: [&str; 9] = [
    "scale",
    "--replicas",
    "2",
    "--rollouts",
    "300",
    "--namespaces",
    "12",
    "--script-duration",
    "500ms",
];

/// Both runs drained all 300 rollouts with every shard led once.
fn check_scale(report: &Value) {
    let runs = report["details"]["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{report}");
    for (index, run) in runs.iter().enumerate() {
        assert_eq!(count(&run["replicas"]), index as u64 + 1);
        assert_eq!(count(&run["fired"]), 300, "{run}");
        let shares: Vec<u64> = run["shards_per_replica"]
            .as_array()
            .expect("shares")
            .iter()
            .map(count)
            .collect();
        assert_eq!(
            shares.iter().sum::<u64>(),
            64,
            "every shard led once: {run}"
        );
        assert_eq!(shares.len(), index + 1, "{run}");
    }
    assert!(row(
        report,
        "transitions/s draining 300 due at once over 12 namespaces, 2"
    )["pass"]
        .is_boolean());
}

#[test]
fn failover_recovers_after_each_kill_without_double_advances() {
    let report = scenario(&[
        "failover",
        "--kills",
        "1",
        "--rollouts",
        "10",
        "--interval",
        "500ms",
    ]);
    let details = &report["details"];
    let kills = details["kills"].as_array().expect("kills");
    assert_eq!(kills.len(), 1, "{details}");
    assert_ne!(kills[0]["victim"], kills[0]["new_leader"]);
    assert!(count(&kills[0]["new_epoch"]) > count(&kills[0]["old_epoch"]));
    assert!(kills[0]["to_next_transition_ms"].is_number(), "{details}");
    assert!(count(&details["transitions"]["steps_entered"]) > 0);
    assert_eq!(count(&details["transitions"]["double_advances"]), 0);
}

#[test]
fn propagation_waits_for_every_replica() {
    let report = scenario(&["propagation", "--changes", "10", "--replicas", "2"]);
    let details = &report["details"];
    assert_eq!(count(&details["propagation"]["all_replicas"]["count"]), 10);
    assert_eq!(
        details["propagation"]["per_replica"]
            .as_array()
            .expect("replicas")
            .len(),
        2
    );
    assert_eq!(count(&details["nats_publish_subscribe"]["count"]), 10);
    assert!(row(&report, "commit reply → served by all 2 replicas, p99")["pass"].is_boolean());
    // the SSE-following client saw every change
    assert_eq!(count(&details["sse_refetch"]["count"]), 10);
    assert!(
        !report["notes"]
            .to_string()
            .contains("did not reach the SSE client"),
        "{report}"
    );
}

#[test]
fn sse_streams_cost_memory_and_every_stream_gets_every_change() {
    let report = scenario(&[
        "sse",
        "--clients",
        "50",
        "--changes",
        "5",
        "--duration",
        "1s",
    ]);
    let details = &report["details"];
    assert_eq!(count(&details["fan_out"]["count"]), 5);
    assert!(
        !report["notes"]
            .to_string()
            .contains("did not reach every stream"),
        "{report}"
    );
    assert!(count(&details["rss_kib"]["after"]) > 0);
    assert!(row(&report, "OFREP evaluations/s with 50 streams open")["value"].as_f64() > Some(0.0));
}

#[test]
fn ofrep_verifies_answers_then_measures_evaluator_and_bare_responder() {
    let report = scenario(&[
        "ofrep",
        "--connections",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--flags",
        "3",
    ]);
    let details = &report["details"];
    let verification = &details["verification"];
    assert_eq!(count(&verification["entities"]), 256, "{verification}");
    assert!(count(&verification["on"]) > 0, "{verification}");
    assert!(count(&verification["off"]) > 0, "{verification}");
    assert_eq!(count(&verification["bulk_flags"]), 3, "{verification}");
    assert_eq!(verification["rule_match"], true);
    for run in [
        "bare_single",
        "evaluator_single",
        "bare_bulk",
        "evaluator_bulk",
        "bare_single_sequential",
        "evaluator_single_sequential",
    ] {
        assert!(count(&details[run]["requests"]) > 0, "{run}: {details}");
        assert_eq!(count(&details[run]["errors"]), 0, "{run}: {details}");
        assert!(details[run]["latency"]["p99_ms"].is_number(), "{run}");
        assert!(
            details[run]["mean_body_bytes"].as_f64() > Some(0.0),
            "{run}"
        );
    }
    let bodies = &details["bodies"];
    assert!(
        count(&bodies["bulk_bytes"]) > count(&bodies["single_bytes"]),
        "{bodies}"
    );
    // the bare responder answers the captured bodies, byte for byte
    assert_eq!(
        details["bare_single"]["mean_body_bytes"].as_f64(),
        Some(count(&bodies["single_bytes"]) as f64)
    );
    assert_eq!(
        details["bare_bulk"]["mean_body_bytes"].as_f64(),
        Some(count(&bodies["bulk_bytes"]) as f64)
    );
    let single = row(&report, "OFREP single flag req/s, 4 connections");
    assert!(single["baseline"]["value"].as_f64() > Some(0.0), "{single}");
    assert!(single["ratio"].is_number());
    assert!(single["pass"].is_boolean());
    // the bulk target is stated for 5 flags: with 3 it is not judged
    assert!(row(&report, "OFREP bulk of 3 flags req/s")["target"].is_null());
    assert!(row(&report, "OFREP single flag req/s, 1 connection")["ratio"].is_number());
    assert!(row(&report, "OFREP single flag p99, 4 connections")["ratio"].is_number());
}

#[test]
fn agents_register_poll_and_report() {
    let report = scenario(&[
        "agents",
        "--count",
        "5",
        "--duration",
        "4s",
        "--poll",
        "200ms",
        "--apply-delay",
        "100ms",
    ]);
    let fleet = &report["details"]["fleet"];
    assert_eq!(count(&fleet["registered"]), 5, "{fleet}");
    assert!(count(&fleet["polls"]) > 0);
    assert!(count(&fleet["applied"]) > 0, "{fleet}");
}

#[test]
fn report_renders_a_table_and_lists_missing_scenarios() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("eval.json");
    std::fs::write(
        &input,
        serde_json::json!({
            "scenario": "eval", "mode": "private", "started_at": "2026-01-01T00:00:00Z",
            "elapsed_secs": 1.0, "settings": {}, "details": {},
            "rows": [{"name": "evaluations/s", "value": 70000.0, "unit": "req/s",
                      "baseline": {"name": "echo", "value": 100000.0}, "ratio": 0.7,
                      "target": {"text": "≥ 0.7× echo", "judged": "ratio", "at_least": true, "threshold": 0.7},
                      "pass": true}],
        })
        .to_string(),
    )
    .expect("write input");
    let out = dir.path().join("RESULTS.md");
    let output = loadtest(&[
        "report",
        input.to_str().expect("path"),
        "--out",
        out.to_str().expect("path"),
        "--expect",
        "eval,ticker",
    ]);
    assert!(output.status.success(), "{output:?}");
    let markdown = std::fs::read_to_string(&out).expect("markdown");
    assert!(
        markdown.contains("| eval | evaluations/s | 70 000 req/s |"),
        "{markdown}"
    );
    assert!(markdown.contains("| ticker | did not run"), "{markdown}");
}

#[test]
fn bad_targets_and_options_exit_64() {
    for args in [
        &["eval", "--nats-url", "nats://8.8.8.8:4222"][..],
        &["eval", "--nats-url", "nats://no-such-host.invalid:4222"],
        &["failover", "--nats-url", "nats://127.0.0.1:4222"],
        &["scale", "--redis-url", "redis://127.0.0.1:6379"],
        &["agents", "--redis-url", "redis://127.0.0.1:6379"],
        &["agents", "--labels", "env:x"],
        &["propagation", "--evaluator-http", "127.0.0.1:18081"],
        &["ofrep", "--nats-url", "nats://127.0.0.1:4222"],
    ] {
        let output = loadtest(args);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {output:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).starts_with("loadtest: "),
            "{args:?}"
        );
    }
}
