//! `rolloutctl` end to end: the built binary against a planner (and an evaluator) running
//! in process on the test kit's servers, fed the example files of `deploy/examples/`.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{example, Cluster, Ctl, PATIENCE};
use rollout_core::Share;
use rollout_wire::{RolloutResult, RolloutStatus};
use tokio::io::{AsyncBufReadExt, BufReader};

const ROLLOUT_EXAMPLES: [&str; 6] = [
    "rollout-phases.yaml",
    "rollout-approval.yaml",
    "rollout-preset.yaml",
    "rollout-manual.yaml",
    "rollout-template.yaml",
    "rollout-stages.yaml",
];

async fn create_example_flag(cluster: &Cluster) {
    let path = example("flag.yaml");
    let created = cluster
        .ctl(&["flag", "create", "-f", path.to_str().expect("utf-8 path")])
        .await;
    created.assert_ok();
    assert!(
        created.stdout.contains("created flag new-checkout"),
        "{}",
        created.stdout
    );
}

async fn create_from(cluster: &Cluster, file: &str) -> RolloutResult {
    create_with(cluster, file, &[]).await
}

async fn create_with(cluster: &Cluster, file: &str, flags: &[&str]) -> RolloutResult {
    let path = example(file);
    let mut args = vec![
        "rollout",
        "create",
        "-f",
        path.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(flags);
    let value = cluster.ctl_json(&args).await;
    serde_json::from_value(value).expect("a rollout result")
}

fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(text.as_bytes()).expect("write");
    let path = path.to_str().expect("utf-8 path").to_owned();
    (dir, path)
}

#[tokio::test]
async fn every_example_creates_a_rollout_whose_status_lists_every_step() {
    let cluster = Cluster::start().await;
    create_example_flag(&cluster).await;
    for file in ROLLOUT_EXAMPLES {
        let created = create_from(&cluster, file).await;
        assert!(!created.steps.is_empty(), "{file}");
        let status = cluster
            .ctl(&["rollout", "status", &created.rollout_id])
            .await;
        status.assert_ok();
        let text = &status.stdout;
        assert!(text.contains("state: "), "{file}: {text}");
        for step in &created.steps {
            match (&step.percentage, &step.name) {
                (Some(share), _) => assert!(
                    text.contains(&format!("{share}")),
                    "{file}: step {} share {share} missing from\n{text}",
                    step.index
                ),
                (None, Some(name)) => {
                    assert!(
                        text.contains(name.as_str()),
                        "{file}: stage {name} in\n{text}"
                    )
                }
                (None, None) => panic!("{file}: step {} has neither share nor stage", step.index),
            }
        }
        if file == "rollout-stages.yaml" {
            assert!(
                text.contains("members") && text.contains("waiting"),
                "{text}"
            );
            assert!(text.contains("env=prod,region=eu"), "{text}");
            assert!(!text.contains("salt"), "label stages do not bucket: {text}");
        } else {
            // the salt a percentage rollout buckets with, to reuse its cohort later
            let json: serde_json::Value = cluster
                .ctl_json(&["rollout", "status", &created.rollout_id])
                .await;
            let salt = json["salt"].as_str().expect("a salt in --json");
            assert!(text.contains(&format!("salt {salt}")), "{file}: {text}");
        }
        let rolled_back = cluster
            .ctl(&["rollout", "rollback", &created.rollout_id])
            .await;
        rolled_back.assert_ok();
        assert!(
            rolled_back.stdout.contains("state: rolled_back"),
            "{file}: {}",
            rolled_back.stdout
        );
    }
    let finished = cluster
        .ctl_json(&["rollout", "list", "--finished", "--flag", "new-checkout"])
        .await;
    assert_eq!(
        finished["rollouts"].as_array().map(Vec::len),
        Some(ROLLOUT_EXAMPLES.len())
    );
    cluster.stop().await;
}

#[tokio::test]
async fn two_actors_approve_a_phase_and_a_file_reschedules_the_rest() {
    let cluster = Cluster::start().await;
    create_example_flag(&cluster).await;
    let created = create_from(&cluster, "rollout-approval.yaml").await;
    let id = created.rollout_id.as_str();
    let status = cluster.ctl(&["rollout", "status", id]).await;
    status.assert_ok();
    assert!(
        status.stdout.contains("waiting for: approval"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("approval by 2, then timer 1h"),
        "{}",
        status.stdout
    );
    let first = cluster
        .ctl(&["--actor", "ana", "rollout", "approve", id])
        .await;
    first.assert_ok();
    assert!(
        first.stdout.contains("approved by: ana ("),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("waiting for: approval"),
        "{}",
        first.stdout
    );
    let again = cluster
        .ctl(&["--actor", "ana", "rollout", "approve", id])
        .await;
    assert_ne!(again.code, Some(0), "{}", again.stdout);
    assert!(
        again.stderr.contains("already approved"),
        "{}",
        again.stderr
    );
    let second = cluster
        .ctl(&["--actor", "bo", "rollout", "approve", id])
        .await;
    second.assert_ok();
    assert!(
        second.stdout.contains("waiting for: timer"),
        "{}",
        second.stdout
    );

    let steps = example("reschedule-steps.yaml");
    let edited = cluster
        .ctl(&[
            "rollout",
            "reschedule",
            id,
            "-f",
            steps.to_str().expect("utf-8 path"),
        ])
        .await;
    edited.assert_ok();
    let json = cluster.ctl_json(&["rollout", "status", id]).await;
    let shares: Vec<f64> = json["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|step| step["percentage"].as_f64())
        .collect();
    assert_eq!(shares, [5.0, 20.0, 60.0, 100.0]);
    assert_eq!(json["steps"][2]["gate"]["approvers"], 1);
    // a file whose first step would lower the share names the field and changes nothing
    let (_dir, backwards) = temp_file(
        "steps.yaml",
        "- percentage: 1\n  duration: 1h\n- percentage: 100\n",
    );
    let refused = cluster
        .ctl(&["rollout", "reschedule", id, "-f", &backwards])
        .await;
    assert_ne!(refused.code, Some(0), "{}", refused.stdout);
    assert!(
        refused.stderr.contains("steps[0].percentage"),
        "{}",
        refused.stderr
    );
    let unchanged = cluster.ctl_json(&["rollout", "status", id]).await;
    assert_eq!(unchanged["steps"], json["steps"]);
    cluster.stop().await;
}

#[tokio::test]
async fn continue_stop_and_rollback_drive_a_rollout() {
    let cluster = Cluster::start().await;
    create_example_flag(&cluster).await;
    let created = create_from(&cluster, "rollout-phases.yaml").await;
    let id = created.rollout_id.as_str();

    let continued = cluster.ctl(&["rollout", "continue", id]).await;
    continued.assert_ok();
    assert!(
        continued.stdout.contains("step 2 of 4"),
        "{}",
        continued.stdout
    );
    let status: RolloutStatus =
        serde_json::from_value(cluster.ctl_json(&["rollout", "status", id]).await)
            .expect("status json");
    assert_eq!(status.current_step, Some(1));
    assert_eq!(status.share, Some(Share::from_ppm(50_000)));
    assert!(status.steps[1].started_at.is_some());

    let stopped = cluster
        .ctl(&["rollout", "stop", id, "--percentage", "3"])
        .await;
    stopped.assert_ok();
    assert!(
        stopped.stdout.contains("state: stopped"),
        "{}",
        stopped.stdout
    );
    assert!(stopped.stdout.contains("share: 3%"), "{}", stopped.stdout);
    let again = cluster.ctl(&["rollout", "continue", id]).await;
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(
        again.stderr.contains("error: failed_precondition"),
        "{}",
        again.stderr
    );
    assert!(again.stderr.contains("hint:"), "{}", again.stderr);

    // the flag now serves the 3 % split the stop left: a label-stage rollout cannot
    // continue it, so it is refused unless the operator says to replace it
    let stages = example("rollout-stages.yaml");
    let refused = cluster
        .ctl(&[
            "rollout",
            "create",
            "-f",
            stages.to_str().expect("utf-8 path"),
        ])
        .await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("error: failed_precondition")
            && refused.stderr.contains("a split (on 3%, off 97%)")
            && refused.stderr.contains("replace_current_serve"),
        "{}",
        refused.stderr
    );
    let next = create_with(
        &cluster,
        "rollout-stages.yaml",
        &["--replace-current-serve"],
    )
    .await;
    let paused = cluster.ctl(&["rollout", "pause", &next.rollout_id]).await;
    paused.assert_ok();
    let resumed = cluster.ctl(&["rollout", "resume", &next.rollout_id]).await;
    resumed.assert_ok();
    let released = cluster
        .ctl(&["rollout", "continue", &next.rollout_id])
        .await;
    released.assert_ok();
    let rolled_back = cluster
        .ctl(&["rollout", "rollback", &next.rollout_id])
        .await;
    rolled_back.assert_ok();
    assert!(
        rolled_back.stdout.contains("rolled_back"),
        "{}",
        rolled_back.stdout
    );

    let audit = cluster
        .ctl(&["rollout", "audit", "--rollout", &next.rollout_id])
        .await;
    audit.assert_ok();
    for kind in [
        "rollout_created",
        "rollout_paused",
        "rollout_resumed",
        "rollout_rolled_back",
    ] {
        assert!(audit.stdout.contains(kind), "{kind} in\n{}", audit.stdout);
    }
    assert!(audit.stdout.contains("ctl-test"), "{}", audit.stdout);
    cluster.stop().await;
}

#[tokio::test]
async fn json_output_parses_for_every_query() {
    let cluster = Cluster::start().await;
    create_example_flag(&cluster).await;
    let flag = cluster.ctl_json(&["flag", "get", "new-checkout"]).await;
    assert_eq!(flag["flag"]["key"], "new-checkout");
    let flags = cluster.ctl_json(&["flag", "list"]).await;
    assert_eq!(flags["flags"][0]["key"], "new-checkout");
    let path = example("rollout-preset.yaml");
    let path = path.to_str().expect("utf-8 path");
    let preview = cluster.ctl_json(&["rollout", "plan", "-f", path]).await;
    assert_eq!(preview["preset"], "24hr");
    assert_eq!(preview["steps"].as_array().map(Vec::len), Some(4));
    let created = create_from(&cluster, "rollout-preset.yaml").await;
    let started = cluster
        .ctl_json(&["rollout", "start", &created.rollout_id])
        .await;
    assert_eq!(started["state"], "running");
    let listed = cluster.ctl_json(&["rollout", "list"]).await;
    assert_eq!(
        listed["rollouts"][0]["rollout_id"],
        created.rollout_id.as_str()
    );
    let audit = cluster
        .ctl_json(&["rollout", "audit", "--flag", "new-checkout"])
        .await;
    assert!(audit["entries"]
        .as_array()
        .is_some_and(|entries| !entries.is_empty()));
    let counts = cluster
        .ctl_json(&["rollout", "counts", &created.rollout_id])
        .await;
    assert_eq!(counts["rollout_id"], created.rollout_id.as_str());
    assert_eq!(counts["outcomes"]["candidate"]["success"], 0);

    // the human forms of the same queries
    let flag_yaml = cluster.ctl(&["flag", "get", "new-checkout"]).await;
    flag_yaml.assert_ok();
    assert!(
        flag_yaml.stdout.contains("key: new-checkout"),
        "{}",
        flag_yaml.stdout
    );
    let table = cluster.ctl(&["rollout", "list"]).await;
    table.assert_ok();
    assert!(
        table.stdout.contains(&created.rollout_id),
        "{}",
        table.stdout
    );
    let plan = cluster.ctl(&["rollout", "plan", "-f", path]).await;
    plan.assert_ok();
    assert!(plan.stdout.contains("nothing stored"), "{}", plan.stdout);
    let counts = cluster
        .ctl(&["rollout", "counts", &created.rollout_id])
        .await;
    counts.assert_ok();
    assert!(
        counts
            .stdout
            .contains("outcomes of this rollout over the last"),
        "{}",
        counts.stdout
    );
    cluster.stop().await;
}

#[tokio::test]
async fn a_spec_that_does_not_parse_exits_2_naming_file_and_line() {
    let cluster = Cluster::start().await;
    create_example_flag(&cluster).await;
    let (_dir, path) = temp_file(
        "broken.yaml",
        "flag: new-checkout\nbaseline: \"off\"\ncandidate: \"on\"\nphases:\n  - percentage: 5\n    duraton: 6h\n",
    );
    let output = cluster.ctl(&["rollout", "create", "-f", &path]).await;
    assert_eq!(output.code, Some(2), "{output:?}");
    assert!(output.stderr.contains("broken.yaml"), "{}", output.stderr);
    assert!(output.stderr.contains("line 6"), "{}", output.stderr);
    assert!(output.stderr.contains("duraton"), "{}", output.stderr);
    assert!(
        output.stderr.contains("nothing was sent"),
        "{}",
        output.stderr
    );

    let (_dir, path) = temp_file(
        "broken.json",
        "{\"flag\": \"new-checkout\",\n  \"phases\": [}\n",
    );
    let output = cluster.ctl(&["rollout", "create", "-f", &path]).await;
    assert_eq!(output.code, Some(2), "{output:?}");
    assert!(
        output.stderr.contains("broken.json at line 2"),
        "{}",
        output.stderr
    );

    let listed = cluster.ctl_json(&["rollout", "list"]).await;
    assert_eq!(listed["rollouts"].as_array().map(Vec::len), Some(0));
    cluster.stop().await;
}

#[tokio::test]
async fn a_spec_the_planner_refuses_exits_2_naming_the_field() {
    let cluster = Cluster::start().await;
    create_example_flag(&cluster).await;
    let (_dir, path) = temp_file(
        "falling.json",
        r#"{"rollout": {"flag": "new-checkout", "baseline": "off", "candidate": "on",
            "phases": [{"percentage": 50, "duration": "1h"}, {"percentage": 10}]}}"#,
    );
    let output = cluster.ctl(&["rollout", "create", "-f", &path]).await;
    assert_eq!(output.code, Some(2), "{output:?}");
    let first_line = output.stderr.lines().next().unwrap_or_default();
    assert!(
        first_line.starts_with("error: invalid_argument: ")
            && first_line.ends_with("(field: rollout.phases[1].percentage)"),
        "{}",
        output.stderr
    );
    assert!(
        output
            .stderr
            .contains("hint: fix rollout.phases[1].percentage in"),
        "{}",
        output.stderr
    );

    let missing = cluster.ctl(&["rollout", "status", "no-such-rollout"]).await;
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(
        missing.stderr.starts_with("error: not_found: "),
        "{}",
        missing.stderr
    );
    assert!(
        missing.stderr.contains("rolloutctl -n test rollout list"),
        "{}",
        missing.stderr
    );
    cluster.stop().await;
}

#[tokio::test]
async fn unreachable_nats_exits_69() {
    let port = rollout_testkit::free_port().expect("free port");
    let url = format!("nats://127.0.0.1:{port}");
    let output = common::run_ctl(&url, &["--timeout", "500ms", "flag", "list"]).await;
    assert_eq!(output.code, Some(69), "{output:?}");
    assert!(
        output.stderr.contains("error: unavailable"),
        "{}",
        output.stderr
    );
    assert!(output.stderr.contains("--nats-url"), "{}", output.stderr);
}

#[tokio::test]
async fn the_inbox_prefix_comes_from_the_environment() {
    rollout_runtime::telemetry::init_for_tests();
    // an operator allowed to receive replies only under its own inbox prefix, as
    // deploy/nats/accounts.conf has every user
    let nats =
        rollout_testkit::NatsServer::start_with(rollout_testkit::NatsOptions::default().config(
            "authorization { users = [\n\
         { user: planner, password: planner-pw }\n\
         { user: ops, password: ops-pw, permissions: {\n\
           publish: { allow: [\"rollout.cmd.>\", \"rollout.query.>\"] }\n\
           subscribe: { allow: [\"_INBOX_ops.>\"] } } }\n\
         ] }\n",
        ))
        .expect("nats starts with users");
    let redis = rollout_testkit::RedisServer::start().expect("redis starts");
    let mut config = common::planner_config(&nats, &redis);
    config.nats.user = Some("planner".to_owned());
    config.nats.password = Some(rollout_runtime::config::Secret::new("planner-pw"));
    let shutdown = rollout_runtime::shutdown::Shutdown::new();
    let planner = planner::Planner::start(config, shutdown.clone())
        .await
        .expect("planner starts");
    let run = |inbox_prefix: Option<&str>| {
        let mut command = common::ctl_command(&nats.url(), &["--timeout", "1s", "flag", "list"]);
        command
            .env("ROLLOUT_NATS__USER", "ops")
            .env("ROLLOUT_NATS__PASSWORD", "ops-pw");
        if let Some(prefix) = inbox_prefix {
            command.env("ROLLOUT_NATS__INBOX_PREFIX", prefix);
        }
        async move {
            tokio::time::timeout(PATIENCE, command.output())
                .await
                .expect("rolloutctl finishes in time")
                .expect("rolloutctl runs")
        }
    };
    let listed = run(Some("_INBOX_ops")).await;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    // with the client default (_INBOX) the reply never comes back
    let lost = run(None).await;
    assert_eq!(lost.status.code(), Some(69), "{lost:?}");
    assert!(
        String::from_utf8_lossy(&lost.stderr).contains("ROLLOUT_NATS__INBOX_PREFIX"),
        "the hint names the setting: {lost:?}"
    );
    shutdown.trigger();
    planner.wait().await;
}

#[tokio::test]
async fn watch_follows_events_until_the_rollout_ends() {
    let cluster = Cluster::start().await;
    create_example_flag(&cluster).await;
    let created = create_from(&cluster, "rollout-phases.yaml").await;
    let mut child = common::ctl_command(
        &cluster.nats.url(),
        &["rollout", "watch", &created.rollout_id],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("watch starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("watch prints in time")
        .expect("reads")
        .expect("a line");
    assert!(first.contains("watching rollout"), "{first}");

    let commands = cluster.commands();
    commands
        .continue_rollout(&created.rollout_id)
        .await
        .expect("continue");
    commands
        .rollback_rollout(&created.rollout_id)
        .await
        .expect("rollback");
    let mut printed = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("watch prints in time")
    {
        printed.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("watch exits once the rollout ended")
        .expect("exit status");
    assert!(status.success(), "{status:?}: {printed:?}");
    let text = printed.join("\n");
    assert!(text.contains("rollout_step step 1 → 2"), "{text}");
    assert!(text.contains("rollout_rolled_back"), "{text}");
    cluster.stop().await;
}

#[tokio::test]
async fn eval_asks_the_evaluator() {
    let cluster = Cluster::with_evaluator().await;
    create_example_flag(&cluster).await;
    let version = cluster
        .commands()
        .get_flag("new-checkout")
        .await
        .expect("flag")
        .version;
    cluster.until_served("new-checkout", version).await;
    let output = cluster
        .ctl(&[
            "eval",
            "new-checkout",
            "--entity",
            "user-1",
            "--attr",
            "plan=beta",
            "--explain",
        ])
        .await;
    output.assert_ok();
    assert!(
        output
            .stdout
            .starts_with("new-checkout = true (variation on, reason rule_match"),
        "{}",
        output.stdout
    );
    let answer = cluster
        .ctl_json(&["eval", "new-checkout", "--entity", "user-2"])
        .await;
    assert_eq!(answer["variation"], "off");
    let missing = cluster.ctl(&["eval", "nope", "--entity", "user-2"]).await;
    assert_eq!(missing.code, Some(1), "{missing:?}");
    cluster.stop().await;
}

#[tokio::test]
async fn what_a_command_did_beside_what_was_asked_is_said() {
    let cluster = Cluster::start().await;
    create_example_flag(&cluster).await;
    let phases = example("rollout-phases.yaml");
    let phases = phases.to_str().expect("utf-8 path");

    // a rollout created on a disabled flag enables it
    cluster
        .ctl(&["flag", "disable", "new-checkout"])
        .await
        .assert_ok();
    let created = cluster.ctl(&["rollout", "create", "-f", phases]).await;
    created.assert_ok();
    assert!(
        created
            .stdout
            .contains("enabled flag new-checkout, which was disabled"),
        "{}",
        created.stdout
    );
    let listed = cluster
        .ctl_json(&["rollout", "list", "--flag", "new-checkout"])
        .await;
    let rollout_id = listed["rollouts"][0]["rollout_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a listed rollout: {listed}"))
        .to_owned();

    // disabling the flag says which rollout it stopped, and where
    let disabled = cluster.ctl(&["flag", "disable", "new-checkout"]).await;
    disabled.assert_ok();
    assert!(
        disabled.stdout.contains(&format!(
            "stopped rollout {rollout_id} at 1%: its split stays"
        )),
        "{}",
        disabled.stdout
    );
    let json = cluster.ctl_json(&["flag", "enable", "new-checkout"]).await;
    assert!(json.get("side_effects").is_none(), "enabling alone: {json}");

    // deleting an active rollout says that its split stays served
    let (_dir, other) = temp_file(
        "other.yaml",
        "key: other\nvariations: [{id: \"off\", value: false}, {id: \"on\", value: true}]\noff_variation: \"off\"\ndefault: {variation: \"off\"}\n",
    );
    cluster
        .ctl(&["flag", "create", "-f", &other])
        .await
        .assert_ok();
    let (_spec_dir, spec) = temp_file(
        "spec.yaml",
        "flag: other\nbaseline: \"off\"\ncandidate: \"on\"\nphases: [{percentage: 10, duration: 1h}, {percentage: 100}]\n",
    );
    let created: RolloutResult =
        serde_json::from_value(cluster.ctl_json(&["rollout", "create", "-f", &spec]).await)
            .expect("a rollout result");
    let deleted = cluster
        .ctl(&["rollout", "delete", &created.rollout_id])
        .await;
    deleted.assert_ok();
    // and once deleted, the way to its history is named
    let gone = cluster
        .ctl(&["rollout", "status", &created.rollout_id])
        .await;
    assert_eq!(gone.code, Some(1), "{gone:?}");
    assert!(
        gone.stderr
            .contains(&format!("rollout audit --rollout {}", created.rollout_id)),
        "{}",
        gone.stderr
    );
    let history = cluster
        .ctl(&["rollout", "audit", "--rollout", &created.rollout_id])
        .await;
    history.assert_ok();
    assert!(
        history.stdout.contains("rollout_deleted"),
        "{}",
        history.stdout
    );
    assert!(
        deleted.stdout.contains(&format!(
            "stopped rollout {} at 10% before deleting it: its split stays served",
            created.rollout_id
        )),
        "{}",
        deleted.stdout
    );
    cluster.stop().await;
}

#[tokio::test]
async fn rollouts_are_listed_by_state() {
    let cluster = Cluster::start().await;
    let mut ids = Vec::new();
    for key in ["paused-one", "running-one"] {
        let (_dir, flag) = temp_file(
            "flag.yaml",
            &format!("key: {key}\nvariations: [{{id: \"off\", value: false}}, {{id: \"on\", value: true}}]\noff_variation: \"off\"\ndefault: {{variation: \"off\"}}\n"),
        );
        cluster
            .ctl(&["flag", "create", "-f", &flag])
            .await
            .assert_ok();
        let (_spec_dir, spec) = temp_file(
            "spec.yaml",
            &format!("flag: {key}\nbaseline: \"off\"\ncandidate: \"on\"\nphases: [{{percentage: 10, duration: 1h}}, {{percentage: 100}}]\n"),
        );
        let created: RolloutResult =
            serde_json::from_value(cluster.ctl_json(&["rollout", "create", "-f", &spec]).await)
                .expect("a rollout result");
        ids.push(created.rollout_id);
    }
    cluster
        .ctl(&["rollout", "pause", &ids[0]])
        .await
        .assert_ok();
    let listed = |state: &'static str| {
        let cluster = &cluster;
        async move {
            let list = cluster
                .ctl_json(&["rollout", "list", "--state", state])
                .await;
            list["rollouts"]
                .as_array()
                .expect("rollouts")
                .iter()
                .map(|rollout| rollout["rollout_id"].as_str().expect("id").to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("paused").await, [ids[0].clone()]);
    assert_eq!(listed("running").await, [ids[1].clone()]);
    assert!(listed("queued").await.is_empty());
    // a finished state lists finished rollouts, without --finished
    cluster
        .ctl(&["rollout", "rollback", &ids[1]])
        .await
        .assert_ok();
    assert_eq!(listed("rolled_back").await, [ids[1].clone()]);
    assert!(listed("running").await.is_empty());
    // an active state among the finished ones is refused, naming the field
    let refused = cluster
        .ctl(&["rollout", "list", "--finished", "--state", "paused"])
        .await;
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("lifecycle"), "{refused:?}");
    cluster.stop().await;
}

#[tokio::test]
async fn status_and_list_say_when_the_next_step_comes_and_a_pause_what_is_left() {
    let cluster = Cluster::start().await;
    create_example_flag(&cluster).await;
    // deploy/examples/rollout-phases.yaml: its first step runs for 1h
    let created = create_from(&cluster, "rollout-phases.yaml").await;
    let id = created.rollout_id.as_str();
    let status = cluster.ctl(&["rollout", "status", id]).await;
    status.assert_ok();
    assert!(status.stdout.contains("· next: "), "{}", status.stdout);
    assert!(status.stdout.contains("(in "), "{}", status.stdout);
    // 30m + 6h + 1d of timers: done 30.5 h after the first step began
    assert!(status.stdout.contains("· ETA "), "{}", status.stdout);
    let running: RolloutStatus =
        serde_json::from_value(cluster.ctl_json(&["rollout", "status", id]).await).expect("json");
    let eta = running.eta.expect("a running rollout's ETA");
    let began = running.steps[0].planned_at.expect("the first step's start");
    assert_eq!(
        eta.completes_at.expect("timers only").millis_since(began),
        30 * 3_600_000 + 1_800_000
    );
    let list = cluster.ctl(&["rollout", "list"]).await;
    list.assert_ok();
    assert!(list.stdout.contains("next"), "{}", list.stdout);
    assert!(list.stdout.contains("eta"), "{}", list.stdout);

    cluster.ctl(&["rollout", "pause", id]).await.assert_ok();
    let paused = cluster.ctl(&["rollout", "status", id]).await;
    paused.assert_ok();
    assert!(
        paused.stdout.contains("of this step left once resumed"),
        "{}",
        paused.stdout
    );
    let json: RolloutStatus =
        serde_json::from_value(cluster.ctl_json(&["rollout", "status", id]).await).expect("json");
    let left = json.remaining_ms.expect("remaining while paused");
    assert_eq!(json.eta, None, "a paused rollout's end is up to its resume");
    assert!(!paused.stdout.contains("ETA"), "{}", paused.stdout);
    let step = json.steps[0]
        .gate
        .duration
        .expect("a timer step")
        .as_millis();
    assert!(
        left > 0 && i64::try_from(left).expect("fits") <= step,
        "{left} of {step}"
    );
    assert_eq!(json.overdue_ms, None);

    // a finished rollout watched with --json prints where it ended, then exits
    cluster.ctl(&["rollout", "rollback", id]).await.assert_ok();
    let watched = cluster.ctl(&["--json", "rollout", "watch", id]).await;
    watched.assert_ok();
    let ended: RolloutStatus = serde_json::from_str(watched.stdout.trim()).expect("status json");
    assert_eq!(ended.state, rollout_core::Lifecycle::RolledBack);
    cluster.stop().await;
}

#[tokio::test]
async fn flag_counts_show_the_kill_switch_figures_without_a_rollout() {
    let cluster = Cluster::with_evaluator().await;
    let mut guarded = common::flag("guarded");
    guarded.kill_switch = Some(
        serde_json::from_value(serde_json::json!({
            "metric": "error_rate", "max_error_rate": 50, "min_samples": 10, "window": "5m",
        }))
        .expect("kill switch"),
    );
    cluster.commands().create_flag(guarded).await.expect("flag");
    cluster.until_served("guarded", 1).await;
    let application = cluster.eval_client().await;
    let user = rollout_sdk::Entity::with_id("user-1");
    for _ in 0..8 {
        application
            .report_success("guarded", &user, "on")
            .await
            .expect("report");
    }
    for _ in 0..4 {
        application
            .report_error("guarded", &user, "on")
            .await
            .expect("report");
    }
    for _ in 0..10 {
        application
            .report_success("guarded", &user, "off")
            .await
            .expect("report");
    }
    application.flush().await.expect("flush");
    // the evaluators add reports to the counters in batches
    let counts = rollout_sandbox::wait_until("the reports to be counted", || async {
        let counts: rollout_wire::FlagCounts =
            serde_json::from_value(cluster.ctl_json(&["flag", "counts", "guarded"]).await).ok()?;
        (counts.outcomes.candidate.samples() == 12 && counts.outcomes.baseline.samples() == 10)
            .then_some(counts)
    })
    .await;
    assert_eq!(counts.baseline, "off");
    assert_eq!(counts.candidates, ["on"]);
    assert_eq!(counts.rollout_id, None);
    assert_eq!(
        counts.kill_switch,
        Some(rollout_core::GuardVerdict::Healthy)
    );
    let human = cluster.ctl(&["flag", "counts", "guarded"]).await;
    human.assert_ok();
    assert!(
        human.stdout.contains("kill switch: healthy"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("off variation against every other"),
        "{}",
        human.stdout
    );

    // errors past the limit: the figures say so (no ticker runs here to act on them)
    for _ in 0..12 {
        application
            .report_error("guarded", &user, "on")
            .await
            .expect("report");
    }
    application.flush().await.expect("flush");
    rollout_sandbox::wait_until("the breach to show", || async {
        let human = cluster.ctl(&["flag", "counts", "guarded"]).await;
        human.stdout.contains("kill switch: BREACHED").then_some(())
    })
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_namespace_is_frozen_alerted_and_audited_from_the_command_line() {
    let cluster = Cluster::start().await;
    create_example_flag(&cluster).await;
    let created = create_from(&cluster, "rollout-phases.yaml").await;
    let id = created.rollout_id.as_str();
    let frozen = cluster
        .ctl(&[
            "namespace",
            "freeze",
            "--reason",
            "INC-4711",
            "--until",
            "+2h",
        ])
        .await;
    frozen.assert_ok();
    assert!(
        frozen.stdout.contains("is frozen since"),
        "{}",
        frozen.stdout
    );
    assert!(frozen.stdout.contains("INC-4711"), "{}", frozen.stdout);
    let status = cluster.ctl(&["rollout", "status", id]).await;
    status.assert_ok();
    assert!(
        status.stdout.contains("waiting for: freeze"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("namespace frozen since"),
        "{}",
        status.stdout
    );
    let alerted = cluster
        .ctl(&[
            "namespace",
            "alert",
            "--id",
            "inc-4711",
            "--flag",
            "new-checkout",
            "--action",
            "pause",
            "--reason",
            "error budget burning",
        ])
        .await;
    alerted.assert_ok();
    assert!(
        alerted
            .stdout
            .contains(&format!("{id} (flag new-checkout): paused")),
        "{}",
        alerted.stdout
    );
    let repeated = cluster
        .ctl(&[
            "namespace",
            "alert",
            "--id",
            "inc-4711",
            "--flag",
            "new-checkout",
            "--action",
            "pause",
            "--reason",
            "error budget burning",
        ])
        .await;
    repeated.assert_ok();
    assert!(repeated.stdout.contains("a repeat"), "{}", repeated.stdout);
    let lifted = cluster.ctl(&["namespace", "unfreeze"]).await;
    lifted.assert_ok();
    assert!(lifted.stdout.contains("is not frozen"), "{}", lifted.stdout);
    let again = cluster.ctl(&["namespace", "unfreeze"]).await;
    assert_ne!(again.code, Some(0));
    assert!(again.stderr.contains("not frozen"), "{}", again.stderr);
    let audit = cluster.ctl(&["namespace", "audit"]).await;
    audit.assert_ok();
    assert!(
        audit.stdout.contains("namespace_unfrozen") && audit.stdout.contains("namespace_frozen"),
        "{}",
        audit.stdout
    );
    cluster.stop().await;
}

#[tokio::test]
async fn webhooks_are_put_listed_shown_failing_and_deleted_from_the_command_line() {
    let cluster = Cluster::start().await;
    create_example_flag(&cluster).await;
    let run_with_secret = |args: &'static [&'static str], secret: Option<&'static str>| {
        let mut command = common::ctl_command(&cluster.nats.url(), args);
        command.env_remove("ROLLOUT_WEBHOOK_SECRET");
        if let Some(secret) = secret {
            command.env("ROLLOUT_WEBHOOK_SECRET", secret);
        }
        async move { command.output().await.expect("rolloutctl runs") }
    };
    // nothing listens on port 1 of loopback: every delivery fails
    let put_args: &[&str] = &[
        "namespace",
        "webhook",
        "put",
        "ops",
        "--url",
        "http://127.0.0.1:1/hooks",
    ];
    let no_secret = run_with_secret(put_args, None).await;
    assert_ne!(no_secret.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&no_secret.stderr);
    assert!(stderr.contains("ROLLOUT_WEBHOOK_SECRET"), "{stderr}");
    let short = run_with_secret(put_args, Some("short")).await;
    assert_ne!(short.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(stderr.contains("secret"), "{stderr}");
    let put = run_with_secret(put_args, Some("whsec-cli-0123456789")).await;
    let stdout = String::from_utf8_lossy(&put.stdout);
    assert_eq!(put.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("ops") && stdout.contains("127.0.0.1:1"),
        "{stdout}"
    );
    assert!(!stdout.contains("whsec-cli"), "the secret is never printed");

    let created = create_from(&cluster, "rollout-phases.yaml").await;
    let id = created.rollout_id.clone();
    let status = rollout_sandbox::wait_until_within(
        "the failing webhook in the status",
        rollout_sandbox::PATIENCE,
        || async {
            let status = cluster.ctl(&["rollout", "status", &id]).await;
            status
                .stdout
                .contains("webhook ops failing: since")
                .then_some(status)
        },
    )
    .await;
    assert!(status.stdout.contains("last error:"), "{}", status.stdout);
    let list = cluster.ctl(&["namespace", "webhook", "list"]).await;
    list.assert_ok();
    assert!(list.stdout.contains("failing:"), "{}", list.stdout);
    let listed = cluster.ctl_json(&["namespace", "webhook", "list"]).await;
    assert_eq!(listed["webhooks"][0]["id"], "ops");
    assert!(listed["webhooks"][0]["delivery"]["failing_since"].is_string());

    let deleted = cluster
        .ctl(&["namespace", "webhook", "delete", "ops"])
        .await;
    deleted.assert_ok();
    assert!(
        deleted.stdout.contains("has no webhooks"),
        "{}",
        deleted.stdout
    );
    let again = cluster
        .ctl(&["namespace", "webhook", "delete", "ops"])
        .await;
    assert_ne!(again.code, Some(0));
    assert!(again.stderr.contains("no webhook ops"), "{}", again.stderr);
    let audit = cluster.ctl(&["namespace", "audit"]).await;
    audit.assert_ok();
    assert!(
        audit.stdout.contains("webhook_saved") && audit.stdout.contains("webhook_deleted"),
        "{}",
        audit.stdout
    );
    cluster.stop().await;
}
