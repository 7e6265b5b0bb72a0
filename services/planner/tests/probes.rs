//! The planner's `/healthz`, `/readyz` and `/metrics` (`http.listen`): ready while NATS and
//! Redis answer, not ready — saying which — when Redis is gone, commands counted by verb
//! and outcome, failed webhook deliveries counted.

use std::net::SocketAddr;
use std::time::Duration;

use rollout_runtime::shutdown::Shutdown;
use rollout_sandbox::http::request;
use rollout_sandbox::{boolean_flag, wait_until, Sandbox};

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = request(addr, "GET", path, &[], b"", Duration::from_secs(5))
        .await
        .expect("the probe listener answers");
    (response.status, response.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_say_ready_count_commands_and_name_what_is_missing() {
    // no planner of the sandbox's own: every command goes to the one probed here
    let sandbox = Sandbox::builder().planners(0).start().await;
    let mut config = sandbox.planner_config();
    config.http.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let shutdown = Shutdown::new();
    let planner = planner::Planner::start(config, shutdown.clone())
        .await
        .expect("starts");
    let addr = planner.probe_addr().expect("probe listener");
    assert_eq!(get(addr, "/healthz").await.0, 200);
    wait_until("the planner to be ready", || async {
        (get(addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;

    let operator = sandbox.operator();
    operator
        .create_flag(boolean_flag("checkout"))
        .await
        .expect("flag");
    operator
        .create_flag(boolean_flag("checkout"))
        .await
        .expect_err("a second create conflicts");
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "planner_requests_total{family=\"command\",verb=\"flag.create\",outcome=\"ok\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "planner_requests_total{family=\"command\",verb=\"flag.create\",outcome=\"conflict\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("planner_ready 1"), "{metrics}");
    assert!(metrics.contains("planner_outbox_depth "), "{metrics}");

    // a webhook nobody answers: its failed deliveries are counted
    operator
        .put_webhook(
            "ops",
            "http://127.0.0.1:1/hooks",
            "whsec-probe-0123456789",
            Vec::new(),
        )
        .await
        .expect("webhook");
    operator
        .disable_flag("checkout")
        .await
        .expect("a change to tell");
    let metrics = wait_until("a failed delivery to be counted", || async {
        let (_, metrics) = get(addr, "/metrics").await;
        metrics
            .contains("planner_webhook_deliveries_total{result=\"failed\"}")
            .then_some(metrics)
    })
    .await;
    assert!(
        !metrics.contains("planner_webhook_deliveries_total{result=\"delivered\"}"),
        "{metrics}"
    );

    // Redis gone: not ready, and the answer says why
    sandbox.redis.stop().expect("redis stops");
    let reason = wait_until("the planner to notice", || async {
        let (status, body) = get(addr, "/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(reason.contains("redis does not answer"), "{reason}");
    shutdown.trigger();
    planner.wait().await;
}
