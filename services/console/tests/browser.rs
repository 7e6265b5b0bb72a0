//! The console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven over WebDriver), against a real planner, ticker and evaluator: what an operator
//! sees and what the system does when they click.
//!
//! Each test also reports what it measured (page load, event-to-screen latency) on stderr;
//! with `ROLLOUT_SCREENSHOTS` set to a folder, the README's screenshots are written there.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::{versioned_flag, RunningConsole, ALICE_PASSWORD, BOB_PASSWORD};
use rollout_core::Lifecycle;
use rollout_sandbox::browser::Browser;
use rollout_sandbox::{boolean_flag, wait_until, Sandbox};
use rollout_sdk::{FleetAgent, Labels};
use serde_json::json;

async fn sign_in(browser: &Browser, console: &RunningConsole, name: &str, password: &str) {
    browser.goto(&console.url()).await;
    browser.fill("#signin-name", name).await;
    browser.fill("#signin-password", password).await;
    browser.click("#signin-submit").await;
    browser
        .wait_for_text("#user", "the signed-in operator", |text| {
            text.starts_with(name)
        })
        .await;
}

/// Opens the page of rollout `rollout_id`.
async fn open_rollout(browser: &Browser, console: &RunningConsole, rollout_id: &str) {
    browser
        .goto(&format!("{}#/rollout/prod/{rollout_id}", console.url()))
        .await;
}

/// Where screenshots go: the README's folder when asked, else the test's scratch folder.
fn screenshot_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("ROLLOUT_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"));
    dir.join(name)
}

/// How many change events the page has received on its live stream.
async fn live_events(browser: &Browser) -> u64 {
    browser
        .execute("return window.consoleStats.events;", json!([]))
        .await
        .as_u64()
        .expect("event count")
}

/// How many times the page's live stream has (re)connected.
async fn live_hellos(browser: &Browser) -> u64 {
    browser
        .execute("return window.consoleStats.hellos;", json!([]))
        .await
        .as_u64()
        .expect("hello count")
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

#[tokio::test]
async fn an_operator_signs_in_watches_rollouts_arrive_and_pauses_one() {
    let sandbox = Sandbox::builder()
        .planners(1)
        .tickers(1)
        .evaluators(1)
        .start()
        .await;
    let console = RunningConsole::start(&sandbox).await;
    let operator = sandbox.operator();
    operator
        .create_flag(boolean_flag("checkout"))
        .await
        .expect("flag");
    operator
        .create_flag(boolean_flag("search"))
        .await
        .expect("flag");
    let browser = Browser::start(1280, 800).await;

    // a wrong password is said in words, and nothing else shows
    browser.goto(&console.url()).await;
    browser.fill("#signin-name", "alice").await;
    browser.fill("#signin-password", "not-her-password").await;
    browser.click("#signin-submit").await;
    browser
        .wait_for_text("#signin-error", "the refusal", |text| {
            text.contains("wrong name or password")
        })
        .await;
    assert!(browser.find("#rollouts").await.is_none());

    let started = Instant::now();
    sign_in(&browser, &console, "alice", ALICE_PASSWORD).await;
    browser
        .wait_for_text("#no-rollouts", "an empty list", |text| {
            text.contains("No active rollouts")
        })
        .await;
    let page_load = started.elapsed();
    browser
        .wait_for_text("#live", "the live stream", |text| text == "live")
        .await;

    // a rollout created through NATS by someone else appears without a reload
    let sent = Instant::now();
    let rollout = operator
        .create_rollout(common::spec(json!({
            "flag": "checkout", "baseline": "off", "candidate": "on",
            "phases": [{"percentage": 10, "duration": "1h"}, {"percentage": 50, "duration": "1h"}, {"percentage": 100}],
        })))
        .await
        .expect("rollout");
    let row = format!("tr[data-rollout-id='{}']", rollout.rollout_id);
    browser
        .wait_for_text(&format!("{row} td.share"), "its share", |text| {
            text == "10%"
        })
        .await;
    let create_to_screen = sent.elapsed();
    // the list re-renders as events arrive: read cells by waiting for them, never from an
    // element that a refresh may just have replaced
    browser
        .wait_for_text(&format!("{row} td.state"), "its state", |text| {
            text == "running"
        })
        .await;
    // two one-hour timers ahead: it completes about two hours from now
    browser
        .wait_for_text(&format!("{row} td.eta"), "its ETA", |eta| {
            eta.contains("(in 1h 5") || eta.contains("(in 2h)")
        })
        .await;
    let second = operator
        .create_rollout(common::spec(json!({
            "flag": "search", "baseline": "off", "candidate": "on", "preset": "24hr",
        })))
        .await
        .expect("rollout");
    browser
        .wait_for(&format!("tr[data-rollout-id='{}']", second.rollout_id))
        .await;
    browser
        .screenshot(&screenshot_path("console-rollouts.png"))
        .await;

    // open it, pause it: the page and the planner both say paused, the audit says alice
    browser.click(&format!("{row} a")).await;
    browser
        .wait_for_text("#rollout-state", "running", |text| text == "running")
        .await;
    // about two hours ahead: shown to the second, so just under or (rounded) exactly 2h
    browser
        .wait_for_text("#rollout-eta", "the rollout page's ETA", |completes| {
            completes.contains("(in 1h 5") || completes.contains("(in 2h)")
        })
        .await;
    browser.click("#action-pause").await;
    browser.wait_for("#confirm[open]").await;
    browser.click("#confirm-ok").await;
    browser
        .wait_for_text("#rollout-state", "paused", |text| text == "paused")
        .await;
    let status = operator
        .rollout_status(&rollout.rollout_id)
        .await
        .expect("status");
    assert_eq!(status.state, Lifecycle::Paused);
    browser
        .wait_for_text(
            "#audit-table tbody tr:first-child td.actor",
            "the actor",
            |text| text == "alice",
        )
        .await;
    browser
        .wait_for_text(
            "#audit-table tbody tr:first-child td.kind",
            "the kind",
            |kind| kind == "rollout paused",
        )
        .await;
    // the trace id links to the configured trace UI
    let link = browser
        .attribute("#audit-table tbody tr:first-child a", "href")
        .await
        .expect("trace link");
    assert!(link.starts_with("http://jaeger.example/trace/"), "{link}");

    // another operator resumes it over NATS: the open page follows within a second
    let sent = Instant::now();
    operator
        .resume_rollout(&rollout.rollout_id)
        .await
        .expect("resume");
    browser
        .wait_for_text("#rollout-state", "running again", |text| text == "running")
        .await;
    let command_to_screen = sent.elapsed();

    // a planner refusal is shown as text beside the action: stopping above 100%
    browser.click("#action-stop").await;
    browser.wait_for("#confirm[open]").await;
    browser.fill("#confirm-share", "150").await;
    browser.click("#confirm-ok").await;
    let refusal = browser
        .wait_for_text("#action-result", "the refusal", |text| {
            text.contains("refused")
        })
        .await;
    assert!(refusal.contains("invalid_argument"), "{refusal}");
    assert!(refusal.contains("percentage"), "{refusal}");
    assert_eq!(
        operator
            .rollout_status(&rollout.rollout_id)
            .await
            .expect("status")
            .state,
        Lifecycle::Running
    );

    // a narrow window still reaches every action
    browser.resize(420, 800).await;
    browser.click("#action-pause").await;
    browser.wait_for("#confirm[open]").await;
    browser.click("#confirm-cancel").await;
    assert_eq!(
        operator
            .rollout_status(&rollout.rollout_id)
            .await
            .expect("status")
            .state,
        Lifecycle::Running,
        "cancelling the confirmation changes nothing"
    );
    let errors: Vec<String> = browser
        .console_log()
        .await
        .into_iter()
        // refused requests are logged too; only script errors count here
        .filter(|line| line.contains("SEVERE") && !line.contains("Failed to load resource"))
        .collect();
    assert!(errors.is_empty(), "page errors: {errors:?}");
    eprintln!(
        "console measured: page load to first list {page_load:?}; create over NATS to screen {create_to_screen:?}; resume over NATS to screen {command_to_screen:?}"
    );
    drop(browser);
    sandbox.stop().await;
}

#[tokio::test]
async fn stage_counts_move_live_as_agents_report() {
    let sandbox = Sandbox::builder()
        .planners(1)
        .tickers(1)
        .evaluators(1)
        .start()
        .await;
    let console = RunningConsole::start(&sandbox).await;
    let operator = sandbox.operator();
    operator
        .create_flag(versioned_flag("agent-version"))
        .await
        .expect("flag");
    let rollout = operator
        .create_rollout(common::spec(json!({
            "flag": "agent-version", "baseline": "v1", "candidate": "v2",
            "stages": [
                {"name": "canary", "labels": {"ring": "canary"}, "gate": {"min_completed_percentage": 100, "max_errors": 0}},
                {"name": "prod-eu", "labels": {"region": "eu"}},
            ],
        })))
        .await
        .expect("rollout");
    let agents: Vec<FleetAgent> = (0..4)
        .map(|index| {
            let pairs: &[(&str, &str)] = if index < 2 {
                &[("ring", "canary")]
            } else {
                &[("region", "eu")]
            };
            FleetAgent::new(
                sandbox.client.clone(),
                sandbox.namespace().clone(),
                format!("host-{index}"),
                labels(pairs),
            )
        })
        .collect();
    for agent in &agents {
        agent.register().await.expect("register");
    }
    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &console, "alice", ALICE_PASSWORD).await;
    open_rollout(&browser, &console, &rollout.rollout_id).await;
    let canary = "#stages tr[data-stage='canary']";
    browser
        .wait_for_text(
            &format!("{canary} td.members"),
            "two canary members",
            |text| text == "2",
        )
        .await;
    browser
        .wait_for_text("#live", "live", |text| text == "live")
        .await;
    assert_eq!(
        browser
            .text(&format!("{canary} td.completed"))
            .await
            .as_deref(),
        Some("0")
    );

    // one canary agent applies the candidate: the count moves on the open page
    let sent = Instant::now();
    let desired = agents[0].desired("agent-version").await.expect("desired");
    assert_eq!(desired.variation, "v2");
    agents[0].report_applied(&desired).await.expect("report");
    browser
        .wait_for_text(&format!("{canary} td.completed"), "one completed", |text| {
            text == "1"
        })
        .await;
    let report_to_screen = sent.elapsed();
    // the stage bar says the same on hover
    let title = browser
        .attribute("#stagebar [data-stage='canary']", "title")
        .await
        .expect("title");
    // host-1 is released but has not applied yet: pending
    assert_eq!(
        title,
        "canary: 2 members, 1 completed, 0 errors, 1 pending, 0 stale"
    );
    browser
        .wait_for_text("#rollout-hold", "the gate's reason", |text| {
            text.contains("1 of 2")
        })
        .await;

    // the second completes the canary: the ticker opens the gate and the page follows
    let desired = agents[1].desired("agent-version").await.expect("desired");
    agents[1].report_applied(&desired).await.expect("report");
    browser
        .wait_for_text("#rollout-step", "the second stage", |text| {
            text.starts_with("2 of")
        })
        .await;
    browser
        .wait_for_text(
            "#stages tr[data-stage='prod-eu'] td.members",
            "two eu members",
            |text| text == "2",
        )
        .await;
    browser
        .screenshot(&screenshot_path("console-stages.png"))
        .await;
    eprintln!("console measured: agent report to screen {report_to_screen:?}");
    drop(browser);
    sandbox.stop().await;
}

#[tokio::test]
async fn a_viewer_sees_everything_and_the_server_refuses_its_actions() {
    let sandbox = Sandbox::builder().planners(1).start().await;
    let console = RunningConsole::start(&sandbox).await;
    let operator = sandbox.operator();
    let rollout = common::checkout_rollout(&sandbox, json!({"preset": "1hr"})).await;
    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &console, "bob", BOB_PASSWORD).await;
    open_rollout(&browser, &console, &rollout.rollout_id).await;
    browser
        .wait_for_text("#rollout-state", "running", |text| text == "running")
        .await;
    // the page offers nothing to click…
    assert_eq!(
        browser
            .attribute("#action-pause", "disabled")
            .await
            .as_deref(),
        Some("true")
    );
    // …and the server refuses even when the request is made by hand from the page
    let answer = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/session').then(r => r.json()).then(session =>
               fetch(arguments[0], {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': session.csrf}, body: '{}'}))
             .then(r => r.json().then(body => done({status: r.status, body})));",
            json!([format!("/api/rollouts/prod/{}/pause", rollout.rollout_id)]),
        )
        .await;
    assert_eq!(answer["status"], 403, "{answer}");
    assert_eq!(
        answer["body"]["error"]["code"], "permission_denied",
        "{answer}"
    );
    assert_eq!(
        operator
            .rollout_status(&rollout.rollout_id)
            .await
            .expect("status")
            .state,
        Lifecycle::Running
    );
    // the flags page shows the serve and the active rollout
    browser.click("nav a[data-page='flags']").await;
    let serve = browser
        .wait_for_text(
            "#flags tr[data-flag='checkout'] td.serve",
            "the serve",
            |text| !text.is_empty(),
        )
        .await;
    assert!(serve.contains("off to everyone"), "{serve}");
    assert!(serve.contains(&rollout.rollout_id), "{serve}");
    drop(browser);
    sandbox.stop().await;
}

#[tokio::test]
async fn the_page_reconnects_after_a_console_restart_and_a_nats_restart() {
    let sandbox = Sandbox::builder().planners(1).tickers(1).start().await;
    let mut console = RunningConsole::start(&sandbox).await;
    let operator = sandbox.operator();
    let rollout = common::checkout_rollout(
        &sandbox,
        json!({"phases": [{"percentage": 10, "duration": "1h"}, {"percentage": 100}]}),
    )
    .await;
    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &console, "alice", ALICE_PASSWORD).await;
    open_rollout(&browser, &console, &rollout.rollout_id).await;
    browser
        .wait_for_text("#live", "live", |text| text == "live")
        .await;

    let hellos = live_hellos(&browser).await;
    console.restart().await;
    wait_until("the page to reconnect its live stream", || async {
        (live_hellos(&browser).await > hellos).then_some(())
    })
    .await;
    operator
        .pause_rollout(&rollout.rollout_id)
        .await
        .expect("pause");
    browser
        .wait_for_text(
            "#rollout-state",
            "paused after the console restart",
            |text| text == "paused",
        )
        .await;

    sandbox.nats.restart().expect("nats restarts");
    // the console's subscriptions come back with its connection; a command over the new
    // connection shows on the page that never reloaded
    wait_until("the planner to answer again", || async {
        operator.resume_rollout(&rollout.rollout_id).await.ok()
    })
    .await;
    browser
        .wait_for_text("#rollout-state", "running after the NATS restart", |text| {
            text == "running"
        })
        .await;
    // and once more, counting what arrives on the live stream: the change comes through it
    let events_before = live_events(&browser).await;
    operator
        .pause_rollout(&rollout.rollout_id)
        .await
        .expect("pause");
    browser
        .wait_for_text("#rollout-state", "paused, live", |text| text == "paused")
        .await;
    assert!(
        live_events(&browser).await > events_before,
        "the pause reached the page through the live stream"
    );
    drop(browser);
    console.stop().await;
    sandbox.stop().await;
}

#[tokio::test]
async fn a_rollout_is_created_from_the_form_after_a_preview_and_an_entity_explained() {
    let sandbox = Sandbox::builder().planners(1).evaluators(1).start().await;
    let console = RunningConsole::start(&sandbox).await;
    let operator = sandbox.operator();
    let flag = operator
        .create_flag(boolean_flag("checkout"))
        .await
        .expect("flag");
    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &console, "alice", ALICE_PASSWORD).await;
    browser.click("nav a[data-page='new']").await;

    // a flag that does not exist: the planner's refusal, in words, and nothing to create
    browser.fill("#form-flag", "no-such-flag").await;
    browser.click("#form-fill").await;
    browser.click("#preview-button").await;
    let refusal = browser
        .wait_for_text("#preview-error", "the refusal", |text| !text.is_empty())
        .await;
    assert!(refusal.starts_with("not_found"), "{refusal}");
    assert_eq!(
        browser.attribute("#create", "disabled").await.as_deref(),
        Some("true")
    );

    // the form writes the spec; Enter on the preview button (the keyboard's way) previews
    browser.fill("#form-flag", "checkout").await;
    browser.fill("#form-phases", "10 30m, 50 30m, 100").await;
    browser.click("#form-fill").await;
    browser.press_enter("#preview-button").await;
    browser
        .wait_for_text(
            "#preview-steps tbody tr:last-child td:first-child",
            "three steps",
            |text| text == "3",
        )
        .await;
    browser.click("#create").await;
    browser
        .wait_for_text("#rollout-share", "the first share", |text| text == "10%")
        .await;
    let listed = operator
        .list_rollouts(rollout_wire::RolloutListQuery::default())
        .await
        .expect("list");
    assert_eq!(listed.rollouts.len(), 1);
    let audit = operator
        .audit(rollout_wire::AuditQuery {
            rollout_id: Some(listed.rollouts[0].rollout_id.clone()),
            ..rollout_wire::AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(
        audit.entries.last().map(|entry| entry.actor.as_str()),
        Some("alice")
    );

    // explain: what the page says is what an application is served
    let status = operator
        .rollout_status(&listed.rollouts[0].rollout_id)
        .await
        .expect("status");
    let version = operator.get_flag("checkout").await.expect("flag").version;
    assert!(version > flag.version);
    sandbox.until_served("checkout", version).await;
    browser.click("nav a[data-page='explain']").await;
    browser.fill("#explain-flag", "checkout").await;
    let applications = sandbox.eval_client().await;
    for user in ["user-1", "user-2", "user-3"] {
        browser.fill("#explain-entity", user).await;
        // the previous answer goes, so the one read below is this entity's
        browser
            .execute(
                "document.getElementById('explain-result').replaceChildren();",
                json!([]),
            )
            .await;
        browser.click("#explain-button").await;
        let served = applications
            .evaluate("checkout", &rollout_sdk::Entity::with_id(user))
            .await
            .expect("evaluation");
        let shown = browser
            .wait_for_text("#explain-variation", "the variation", |text| {
                text.starts_with(&served.variation)
            })
            .await;
        assert!(
            shown.starts_with(&served.variation),
            "{user}: page {shown}, served {}",
            served.variation
        );
        let why = browser.text("#explain-why").await.expect("why");
        assert!(!why.is_empty() && why != "—", "{user}: {why}");
    }
    assert_eq!(status.share.map(|share| share.percentage()), Some(10.0));
    drop(browser);
    sandbox.stop().await;
}

#[tokio::test]
async fn operators_approve_a_stage_and_the_page_shows_who_approved() {
    let sandbox = Sandbox::builder()
        .planners(1)
        .tickers(1)
        .evaluators(1)
        .start()
        .await;
    let console = RunningConsole::start(&sandbox).await;
    let operator = sandbox.operator();
    operator
        .create_flag(versioned_flag("agent-version"))
        .await
        .expect("flag");
    let rollout = operator
        .create_rollout(common::spec(json!({
            "flag": "agent-version", "baseline": "v1", "candidate": "v2",
            "stages": [
                {"name": "canary", "labels": {"ring": "canary"}, "gate": {"approval": {"approvers": 2}}},
                {"name": "prod-eu", "labels": {"region": "eu"}},
            ],
        })))
        .await
        .expect("rollout");
    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &console, "alice", ALICE_PASSWORD).await;
    open_rollout(&browser, &console, &rollout.rollout_id).await;
    browser
        .wait_for_text("#rollout-approvals", "no approvals yet", |text| {
            text == "0 of 2"
        })
        .await;
    browser
        .wait_for_text(
            "#steps tbody tr:first-child",
            "the first step's gate",
            |row| row.contains("approval by 2"),
        )
        .await;

    // alice approves from the page: the planner records her, the page says 1 of 2
    browser.click("#action-approve").await;
    browser.wait_for("#confirm[open]").await;
    browser.click("#confirm-ok").await;
    browser
        .wait_for_text("#rollout-approvals", "alice's approval", |text| {
            text.starts_with("1 of 2: alice")
        })
        .await;
    let status = operator
        .rollout_status(&rollout.rollout_id)
        .await
        .expect("status");
    assert_eq!((status.current_step, status.approvals.len()), (Some(0), 1));
    assert_eq!(status.approvals[0].actor, "alice");
    // a second approval by the same operator is refused in words and counts for nothing
    browser.click("#action-approve").await;
    browser.wait_for("#confirm[open]").await;
    browser.click("#confirm-ok").await;
    let refusal = browser
        .wait_for_text("#action-result", "the refusal", |text| {
            text.contains("refused")
        })
        .await;
    assert!(refusal.contains("already approved"), "{refusal}");

    // carol approves over NATS: the open page follows to the next stage
    operator
        .clone()
        .with_actor("carol")
        .approve_rollout(&rollout.rollout_id, Some(0))
        .await
        .expect("carol approves");
    browser
        .wait_for_text("#rollout-step", "the next stage", |text| {
            text.starts_with("2 of")
        })
        .await;
    assert!(
        browser.find("#action-approve").await.is_none(),
        "the next stage waits for continue, not for approvals"
    );
    drop(browser);
    sandbox.stop().await;
}
