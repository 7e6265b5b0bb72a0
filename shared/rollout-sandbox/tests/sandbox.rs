//! The sandbox is the system as users run it: a rollout created by the operator through
//! the real planner is advanced by the sandbox's own ticker replicas, and every evaluator
//! replica then serves what it says — observed through the application's client, not
//! through any internal state.

use rollout_sandbox::{boolean_flag, wait_until, Sandbox};
use rollout_sdk::{Entity, RolloutSpec};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_seeded_by_the_operator_completes_under_the_sandbox_tickers() {
    let sandbox = Sandbox::builder()
        .planners(1)
        .tickers(2)
        .evaluators(2)
        .start()
        .await;
    let operator = sandbox.operator();
    operator
        .create_flag(boolean_flag("checkout"))
        .await
        .expect("the flag is created");
    let spec: RolloutSpec = serde_json::from_value(json!({
        "flag": "checkout", "baseline": "off", "candidate": "on",
        "phases": [{"percentage": 10, "duration": "1s"}, {"percentage": 100}],
    }))
    .expect("a valid spec");
    let created = operator
        .create_rollout(spec)
        .await
        .expect("the rollout is created");

    // only a ticker moves it past its first phase: the sandbox's replicas elect a leader
    let application = sandbox.eval_client().await;
    let everyone = ["u-1", "u-2", "u-3", "u-4", "u-5", "u-6", "u-7", "u-8"];
    wait_until("every entity to be served the candidate", || async {
        for id in everyone {
            let served = application
                .evaluate("checkout", &Entity::with_id(id))
                .await
                .ok()?;
            (served.variation == "on").then_some(())?;
        }
        Some(())
    })
    .await;
    let status = operator
        .rollout_status(&created.rollout_id)
        .await
        .expect("the status reads");
    assert_eq!(status.state.as_str(), "completed", "{status:?}");
    // and every replica holds what the last event says
    let version = operator
        .get_flag("checkout")
        .await
        .expect("the flag reads")
        .version;
    sandbox.until_served("checkout", version).await;
    sandbox.stop().await;
}
