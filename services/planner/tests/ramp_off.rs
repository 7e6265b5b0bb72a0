//! Ramping a feature off gradually (issue 17, item 13): a rollout may not move anyone to the
//! flag's off variation (what a disabled flag serves; Bucketeer's rule), and the refusal
//! says how to do it instead — a variation of the same value — which then works: the
//! evaluators serve it to the rollout's share.

use rollout_sandbox::{boolean_flag, Sandbox};
use rollout_sdk::{Entity, ErrorCode, RolloutSpec};
use serde_json::json;

fn towards(candidate: &str) -> RolloutSpec {
    serde_json::from_value(json!({
        "flag": "checkout", "baseline": "on", "candidate": candidate,
        "phases": [{"percentage": 30, "duration": "1h"}, {"percentage": 100}],
    }))
    .expect("spec")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refusal_to_ramp_to_the_off_variation_shows_the_way_that_works() {
    let sandbox = Sandbox::builder().planners(1).evaluators(1).start().await;
    let operator = sandbox.operator();
    let mut flag = boolean_flag("checkout");
    flag.default.variation = Some("on".to_owned());
    operator
        .create_flag(flag.clone())
        .await
        .expect("flag serving on");

    let refused = operator
        .create_rollout(towards("off"))
        .await
        .expect_err("the off variation is no candidate");
    assert_eq!(refused.code(), ErrorCode::InvalidArgument);
    assert_eq!(refused.field(), Some("rollout.candidate"));
    assert!(refused.message().contains("off-ramp"), "{refused}");

    // the way it names: a variation of the same value, which a rollout may move towards
    let mut with_ramp = serde_json::to_value(&flag).expect("json");
    with_ramp["variations"]
        .as_array_mut()
        .expect("variations")
        .push(json!({"id": "off-ramp", "value": false}));
    let with_ramp = serde_json::from_value(with_ramp).expect("flag");
    operator
        .update_flag(with_ramp, None)
        .await
        .expect("ramp variation added");
    let rollout = operator
        .create_rollout(towards("off-ramp"))
        .await
        .expect("accepted");
    let version = operator.get_flag("checkout").await.expect("flag").version;
    sandbox.until_served("checkout", version).await;
    let application = sandbox.eval_client().await;
    let mut ramped = 0;
    for index in 0..1000 {
        let served = application
            .evaluate("checkout", &Entity::with_id(format!("user-{index}")))
            .await
            .expect("evaluates");
        if served.variation == "off-ramp" {
            assert_eq!(served.value, json!(false));
            assert_eq!(
                served.rollout_id.as_deref(),
                Some(rollout.rollout_id.as_str())
            );
            ramped += 1;
        }
    }
    // 30 % of 1000 entities, within what bucketing varies by
    assert!(
        (240..=360).contains(&ramped),
        "{ramped} of 1000 served off-ramp"
    );
    rollout_sandbox::oracle::assert_served_matches_committed(&sandbox).await;
    sandbox.stop().await;
}
