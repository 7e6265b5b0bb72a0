//! `loadtest edge` through the built binary: without an `unleash-edge` binary it fails
//! naming the install script; with one (deploy/tools/install-unleash-edge.sh, never in CI:
//! a benchmark peer only) a very short run reports every row with positive figures. Where
//! Unleash Edge is not installed the run is skipped with a printed reason. No performance
//! thresholds: figures of a debug build on a busy machine say nothing.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Where deploy/tools/install-unleash-edge.sh puts the binary (as the scenario looks).
const EDGE_BIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/bin/unleash-edge");

fn loadtest_edge(extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("edge")
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("UNLEASH_EDGE_BIN")
        .output()
        .expect("loadtest runs")
}

#[test]
fn edge_without_the_binary_names_the_install_script() {
    let output = loadtest_edge(&["--edge-bin", "/nonexistent/unleash-edge"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unleash-edge is not installed at /nonexistent/unleash-edge")
            && stderr.contains("deploy/tools/install-unleash-edge.sh"),
        "{stderr}"
    );
}

#[test]
fn edge_measures_the_evaluator_beside_unleash_edge() {
    if !Path::new(EDGE_BIN).is_file() {
        println!(
            "skipped: no unleash-edge at {EDGE_BIN} (deploy/tools/install-unleash-edge.sh \
             installs it; a benchmark peer, not needed in CI)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("edge.json");
    let out_text = out.to_str().expect("utf-8 path");
    let mut args: Vec<&str> = "--connections 4 --duration 1s --warmup 0s --rounds 1"
        .split(' ')
        .collect();
    args.extend(["--json-out", out_text]);
    let output = loadtest_edge(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadtest edge failed:\n{stdout}\n{stderr}"
    );
    let text = std::fs::read_to_string(&out).expect("the report is written");
    let report: Value = serde_json::from_str(&text).expect("the report is JSON");
    assert_eq!(report["scenario"], "edge");
    let details = &report["details"];
    assert_eq!(details["verification"]["rule_match"], true, "{details}");
    assert_eq!(
        details["edge_verification"]["rule_match"], true,
        "{details}"
    );
    for run in [
        "edge_single",
        "evaluator_single",
        "edge_bulk",
        "evaluator_bulk",
    ] {
        assert!(
            details[run]["requests"].as_u64() > Some(0),
            "{run}: {details}"
        );
    }
    let rows = report["rows"].as_array().expect("rows");
    for name in [
        "OFREP single flag req/s vs Unleash Edge",
        "OFREP bulk of 5 flags req/s vs Unleash Edge",
        "OFREP single flag p99 at saturation vs Unleash Edge",
        "OFREP bulk of 5 flags p99 at saturation vs Unleash Edge",
    ] {
        let row = rows
            .iter()
            .find(|row| {
                row["name"]
                    .as_str()
                    .is_some_and(|text| text.starts_with(name))
            })
            .unwrap_or_else(|| panic!("no row {name:?} in {report}"));
        assert!(row["value"].as_f64() > Some(0.0), "{row}");
        assert!(row["baseline"]["value"].as_f64() > Some(0.0), "{row}");
        assert!(row["ratio"].is_number(), "{row}");
        assert!(row["pass"].is_boolean(), "{row}");
    }
}
