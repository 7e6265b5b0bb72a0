//! The ticker's `/healthz`, `/readyz` and `/metrics` (`http.listen`): whether this replica
//! leads and under which epoch, and the transitions it committed.

use std::net::SocketAddr;
use std::time::Duration;

use rollout_core::RolloutSpec;
use rollout_runtime::shutdown::Shutdown;
use rollout_sandbox::http::request;
use rollout_sandbox::{boolean_flag, wait_until, Sandbox};

async fn metrics(addr: SocketAddr) -> Option<String> {
    let response = request(addr, "GET", "/metrics", &[], b"", Duration::from_secs(5)).await?;
    (response.status == 200).then(|| response.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_says_so_and_counts_its_transitions() {
    let sandbox = Sandbox::builder().planners(1).start().await;
    let port = rollout_testkit::free_port().expect("port");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut config = sandbox.ticker_config("probed");
    config.http.listen = Some(addr);
    let shutdown = Shutdown::new();
    let ticker = tokio::spawn(ticker::run(config, shutdown.clone()));
    wait_until("the ticker to lead", || async {
        metrics(addr)
            .await
            .filter(|text| text.contains("ticker_leader{replica=\"probed\"} 1"))
    })
    .await;
    let ready = request(addr, "GET", "/readyz", &[], b"", Duration::from_secs(5))
        .await
        .expect("readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());

    // a rollout whose first step lasts a second: the leader moves it and counts it
    let operator = sandbox.operator();
    operator
        .create_flag(boolean_flag("checkout"))
        .await
        .expect("flag");
    let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
        "flag": "checkout", "baseline": "off", "candidate": "on",
        "phases": [{"percentage": 10, "duration": "1s"}, {"percentage": 100}],
    }))
    .expect("spec");
    let rollout = operator.create_rollout(spec).await.expect("rollout");
    wait_until("the rollout to complete", || async {
        let status = operator.rollout_status(&rollout.rollout_id).await.ok()?;
        status.state.is_finished().then_some(())
    })
    .await;
    // the leader counts a transition once it is committed and published: a status may
    // show the commit a moment before the counter moves
    let text = wait_until("the transition to be counted", || async {
        metrics(addr)
            .await
            .filter(|text| text.contains("ticker_transitions_total{replica=\"probed\"} 1"))
    })
    .await;
    assert!(
        text.contains("ticker_firing_lag_ms{replica=\"probed\",quantile=\"0.99\"}"),
        "{text}"
    );
    shutdown.trigger();
    ticker.await.expect("joins").expect("stops cleanly");
    sandbox.stop().await;
}
