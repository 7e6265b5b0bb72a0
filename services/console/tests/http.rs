//! The console's HTTP contract without a browser: nothing but health, readiness, metrics
//! and the page shell without sign-in; sign-in by password or token; CSRF and the viewer
//! role enforced by the server; planner refusals passed on in the planner's words; and a
//! bad configuration refused at start-up with exit code 64.

mod common;

use std::time::Duration;

use common::{RunningConsole, ALICE_PASSWORD, BOB_PASSWORD, SCRIPT_TOKEN};
use rollout_sandbox::http::{request, Response};
use rollout_sandbox::{boolean_flag, Sandbox};
use serde_json::{json, Value};

async fn call(
    console: &RunningConsole,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Response {
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body).expect("json")
    };
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    request(
        console.addr,
        method,
        path,
        &all,
        &bytes,
        Duration::from_secs(10),
    )
    .await
    .expect("console answers")
}

/// The newest entry of `rollout_id`'s audit, as the planner keeps it.
async fn newest_audit_entry(
    operator: &rollout_sdk::CommandClient,
    rollout_id: &str,
) -> rollout_wire::AuditEntry {
    let audit = operator
        .audit(rollout_wire::AuditQuery {
            rollout_id: Some(rollout_id.to_owned()),
            ..rollout_wire::AuditQuery::default()
        })
        .await
        .expect("audit");
    audit.entries.into_iter().next().expect("an audit entry")
}

/// Signs `name` in; the cookie header value and the CSRF token.
async fn sign_in(console: &RunningConsole, name: &str, password: &str) -> (String, String) {
    let response = call(
        console,
        "POST",
        "/api/signin",
        &[],
        &json!({"name": name, "password": password}),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let cookie = response.headers["set-cookie"]
        .split(';')
        .next()
        .expect("cookie")
        .to_owned();
    let csrf = response.json()["csrf"].as_str().expect("csrf").to_owned();
    (cookie, csrf)
}

#[tokio::test]
async fn nothing_but_health_and_the_page_shell_without_sign_in() {
    let sandbox = Sandbox::builder().planners(1).start().await;
    let console = RunningConsole::start(&sandbox).await;
    for path in ["/healthz", "/readyz", "/", "/console.js", "/console.css"] {
        let response = call(&console, "GET", path, &[], &Value::Null).await;
        assert_eq!(response.status, 200, "{path}");
    }
    let metrics = call(&console, "GET", "/metrics", &[], &Value::Null).await;
    assert!(
        metrics.text().contains("console_requests_total"),
        "{}",
        metrics.text()
    );
    for (method, path) in [
        ("GET", "/api/session"),
        ("GET", "/api/rollouts"),
        ("GET", "/api/rollouts/prod/r-1"),
        ("GET", "/api/rollouts/prod/r-1/audit"),
        ("GET", "/api/flags"),
        ("GET", "/api/flags/prod/checkout"),
        ("GET", "/api/events"),
        ("POST", "/api/plan"),
        ("POST", "/api/explain"),
        ("POST", "/api/rollouts"),
        ("POST", "/api/rollouts/prod/r-1/pause"),
    ] {
        let response = call(&console, method, path, &[], &json!({})).await;
        assert_eq!(response.status, 401, "{method} {path}: {}", response.text());
        assert_eq!(
            response.json()["error"]["code"],
            "unauthenticated",
            "{method} {path}"
        );
    }
    // a wrong password, an unknown name, a forged cookie: all refused alike
    for (name, password) in [("alice", BOB_PASSWORD), ("mallory", ALICE_PASSWORD)] {
        let response = call(
            &console,
            "POST",
            "/api/signin",
            &[],
            &json!({"name": name, "password": password}),
        )
        .await;
        assert_eq!(response.status, 401);
        assert_eq!(
            response.json()["error"]["message"],
            "wrong name or password"
        );
    }
    let forged = call(
        &console,
        "GET",
        "/api/session",
        &[(
            "Cookie",
            "rollout_console=eyJuIjoiYWxpY2UiLCJlIjo5OTk5OTk5OTk5fQ.AAAA",
        )],
        &Value::Null,
    )
    .await;
    assert_eq!(forged.status, 401);
    sandbox.stop().await;
}

#[tokio::test]
async fn actions_need_the_operator_role_and_the_csrf_token_and_are_audited_as_the_operator() {
    let sandbox = Sandbox::builder().planners(1).start().await;
    let console = RunningConsole::start(&sandbox).await;
    let operator = sandbox.operator();
    let rollout = common::checkout_rollout(
        &sandbox,
        json!({"phases": [{"percentage": 10, "duration": "1h"}, {"percentage": 100}]}),
    )
    .await;
    let pause = format!("/api/rollouts/prod/{}/pause", rollout.rollout_id);

    // the viewer: refused by the server, and nothing changes
    let (bob, bob_csrf) = sign_in(&console, "bob", BOB_PASSWORD).await;
    let refused = call(
        &console,
        "POST",
        &pause,
        &[("Cookie", &bob), ("X-CSRF-Token", &bob_csrf)],
        &json!({}),
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "permission_denied");
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .expect("message")
            .contains("viewer"),
        "{}",
        refused.text()
    );
    // but the viewer reads everything
    let read = call(
        &console,
        "GET",
        &format!("/api/rollouts/prod/{}", rollout.rollout_id),
        &[("Cookie", &bob)],
        &Value::Null,
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["status"]["state"], "running");

    // the operator without the CSRF token (what a cross-site form would send): refused
    let (alice, alice_csrf) = sign_in(&console, "alice", ALICE_PASSWORD).await;
    let forged = call(&console, "POST", &pause, &[("Cookie", &alice)], &json!({})).await;
    assert_eq!(forged.status, 403, "{}", forged.text());
    // another session's token does not do either
    let crossed = call(
        &console,
        "POST",
        &pause,
        &[("Cookie", &alice), ("X-CSRF-Token", &bob_csrf)],
        &json!({}),
    )
    .await;
    assert_eq!(crossed.status, 403);
    assert_eq!(
        operator
            .rollout_status(&rollout.rollout_id)
            .await
            .expect("status")
            .state,
        rollout_core::Lifecycle::Running,
        "nothing refused may change the rollout"
    );

    // with it: paused, and the audit names alice
    let paused = call(
        &console,
        "POST",
        &pause,
        &[("Cookie", &alice), ("X-CSRF-Token", &alice_csrf)],
        &json!({}),
    )
    .await;
    assert_eq!(paused.status, 200, "{}", paused.text());
    assert_eq!(paused.json()["state"], "paused");
    let newest = newest_audit_entry(&operator, &rollout.rollout_id).await;
    assert_eq!(
        (newest.actor.as_str(), newest.kind),
        ("alice", rollout_wire::EventKind::RolloutPaused)
    );

    // the planner's refusal comes back in its words: pausing a paused rollout
    let again = call(
        &console,
        "POST",
        &pause,
        &[("Cookie", &alice), ("X-CSRF-Token", &alice_csrf)],
        &json!({}),
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.text());
    assert_eq!(again.json()["error"]["code"], "failed_precondition");

    // a script with a bearer token needs no CSRF token and is audited by its name
    let bearer = format!("Bearer {SCRIPT_TOKEN}");
    let resumed = call(
        &console,
        "POST",
        &format!("/api/rollouts/prod/{}/resume", rollout.rollout_id),
        &[("Authorization", &bearer)],
        &json!({}),
    )
    .await;
    assert_eq!(resumed.status, 200, "{}", resumed.text());
    assert_eq!(
        newest_audit_entry(&operator, &rollout.rollout_id)
            .await
            .actor,
        "deploy-bot"
    );
    sandbox.stop().await;
}

#[tokio::test]
async fn pasted_specs_are_previewed_and_their_mistakes_named() {
    let sandbox = Sandbox::builder().planners(1).start().await;
    let console = RunningConsole::start(&sandbox).await;
    sandbox
        .operator()
        .create_flag(boolean_flag("checkout"))
        .await
        .expect("flag");
    let (alice, csrf) = sign_in(&console, "alice", ALICE_PASSWORD).await;
    let headers = [("Cookie", alice.as_str()), ("X-CSRF-Token", csrf.as_str())];

    let yaml = "rollout:\n  flag: checkout\n  baseline: \"off\"\n  candidate: \"on\"\n  start_at: \"+1h\"\n  phases:\n    - {percentage: 10, duration: 30m}\n    - percentage: 100\n";
    let preview = call(
        &console,
        "POST",
        "/api/plan",
        &headers,
        &json!({"namespace": "prod", "spec": yaml}),
    )
    .await;
    assert_eq!(preview.status, 200, "{}", preview.text());
    let steps = preview.json()["steps"].as_array().expect("steps").clone();
    assert_eq!(steps.len(), 2);
    // projected from the relative start an hour ahead, 30 minutes apart
    let planned = |index: usize| {
        chrono::DateTime::parse_from_rfc3339(steps[index]["planned_at"].as_str().expect("planned"))
            .expect("time")
    };
    assert_eq!((planned(1) - planned(0)).num_minutes(), 30);
    assert!(planned(0) > chrono::Utc::now() + chrono::Duration::minutes(55));
    assert!(
        sandbox
            .operator()
            .list_rollouts(rollout_wire::RolloutListQuery::default())
            .await
            .expect("list")
            .rollouts
            .is_empty(),
        "a preview stores nothing"
    );

    // a typo: the field and line are named, nothing is stored
    let typo = "flag: checkout\nbaseline: \"off\"\ncandidate: \"on\"\nphases:\n  - percentage: 10\n    durtion: 30m\n";
    let refused = call(
        &console,
        "POST",
        "/api/rollouts",
        &headers,
        &json!({"namespace": "prod", "spec": typo}),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    let error = &refused.json()["error"];
    assert_eq!(error["field"], "spec.phases[0].durtion", "{error}");
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("line 6"),
        "{error}"
    );
    // the planner's refusal of a flag that does not exist, in its words
    let missing = call(
        &console,
        "POST",
        "/api/rollouts",
        &headers,
        &json!({"namespace": "prod", "spec": "{\"flag\": \"nope\", \"baseline\": \"off\", \"candidate\": \"on\", \"preset\": \"1hr\"}"}),
    )
    .await;
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert_eq!(missing.json()["error"]["code"], "not_found");

    // created from JSON
    let created = call(
        &console,
        "POST",
        "/api/rollouts",
        &headers,
        &json!({"namespace": "prod", "spec": "{\"flag\": \"checkout\", \"baseline\": \"off\", \"candidate\": \"on\", \"preset\": \"1hr\"}"}),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.text());
    let id = created.json()["rollout_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let status = sandbox
        .operator()
        .rollout_status(&id)
        .await
        .expect("status");
    assert_eq!(status.preset.as_deref(), Some("1hr"));
    // a namespace the console does not show is refused, not guessed
    let elsewhere = call(
        &console,
        "GET",
        "/api/rollouts?namespace=staging",
        &headers,
        &Value::Null,
    )
    .await;
    assert_eq!(elsewhere.status, 404, "{}", elsewhere.text());
    sandbox.stop().await;
}

#[test]
fn a_bad_configuration_exits_64_naming_the_setting() {
    let binary = env!("CARGO_BIN_EXE_console");
    let run = |env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(binary);
        command.env_clear();
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().expect("console runs")
    };
    // no account at all: nobody could sign in
    let output = run(&[]);
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("console.users"), "{stderr}");
    // a plain-text password instead of a hash
    let output = run(&[("ROLLOUT_CONSOLE__USERS", "alice:operator:hunter2")]);
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("password_hash"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "a secret must not be echoed: {stderr}"
    );
    // an unknown role
    let output = run(&[(
        "ROLLOUT_CONSOLE__USERS",
        "alice:admin:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
    )]);
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("admin"));
}

#[tokio::test]
async fn alertmanager_notifications_pause_the_rollouts_their_labels_select() {
    let sandbox = Sandbox::builder().planners(1).start().await;
    let mut console = RunningConsole::start(&sandbox).await;
    let operator = sandbox.operator();
    let mut flag = boolean_flag("payments-page");
    flag.labels.insert("team".into(), "payments".into());
    operator.create_flag(flag).await.expect("flag");
    operator
        .create_flag(boolean_flag("search"))
        .await
        .expect("flag");
    let spec = |flag: &str| {
        common::spec(json!({"flag": flag, "baseline": "off", "candidate": "on",
            "phases": [{"percentage": 10, "duration": "1h"}, {"percentage": 100}]}))
    };
    let payments = operator
        .create_rollout(spec("payments-page"))
        .await
        .expect("rollout");
    let search = operator
        .create_rollout(spec("search"))
        .await
        .expect("rollout");
    let notification = json!({"version": "4", "status": "firing", "receiver": "rollouts",
        "alerts": [{"status": "firing",
                    "labels": {"alertname": "HighErrorRate", "team": "payments"},
                    "annotations": {"summary": "7% errors on checkout"},
                    "fingerprint": "3f9a1c", "startsAt": "2026-12-06T01:00:00Z"},
                   {"status": "resolved", "labels": {"alertname": "Old", "team": "payments"},
                    "fingerprint": "beef", "startsAt": "2026-12-05T01:00:00Z"}]});
    let path = "/api/alerts/prod?match=team";
    // without a token: refused, nothing changes
    let anonymous = call(&console, "POST", path, &[], &notification).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    let bearer = format!("Bearer {SCRIPT_TOKEN}");
    let sent = call(
        &console,
        "POST",
        path,
        &[("Authorization", &bearer)],
        &notification,
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    let reply: Value = serde_json::from_str(&sent.text()).expect("json");
    let results = reply["alerts"]
        .as_array()
        .expect("one result per firing alert");
    assert_eq!(results.len(), 1);
    assert_eq!(
        results[0]["rollouts"][0]["rollout_id"],
        json!(payments.rollout_id)
    );
    assert_eq!(results[0]["rollouts"][0]["state"], json!("paused"));
    let paused = operator
        .rollout_status(&payments.rollout_id)
        .await
        .expect("status");
    assert_eq!(paused.state, rollout_core::Lifecycle::Paused);
    let running = operator
        .rollout_status(&search.rollout_id)
        .await
        .expect("status");
    assert_eq!(running.state, rollout_core::Lifecycle::Running);
    let entry = newest_audit_entry(&operator, &payments.rollout_id).await;
    assert_eq!(
        entry.details["reason"],
        json!("HighErrorRate: 7% errors on checkout")
    );
    // Alertmanager repeats the notification: acted on once
    let repeated = call(
        &console,
        "POST",
        path,
        &[("Authorization", &bearer)],
        &notification,
    )
    .await;
    let reply: Value = serde_json::from_str(&repeated.text()).expect("json");
    assert_eq!(reply["alerts"][0]["repeated"], json!(true));
    // a bad action is refused with its field
    let bad = call(
        &console,
        "POST",
        "/api/alerts/prod?action=explode",
        &[("Authorization", &bearer)],
        &notification,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("\"action\""), "{}", bad.text());
    // a body that is not an object (serde would read `[]` as a struct of defaults)
    let array = call(
        &console,
        "POST",
        path,
        &[("Authorization", &bearer)],
        &json!([]),
    )
    .await;
    assert_eq!(array.status, 400, "{}", array.text());
    assert!(array.text().contains("JSON object"), "{}", array.text());
    console.stop().await;
    sandbox.stop().await;
}
