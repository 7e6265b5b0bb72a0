//! The OpenFeature provider behind the standard `open_feature` API, against the real
//! evaluator: a bool flag with its variant, reason and metadata, a struct flag, and the
//! FLAG_NOT_FOUND / TYPE_MISMATCH / TARGETING_KEY_MISSING errors.
//!
//! One test function: the OpenFeature API is a process-wide singleton.

#![cfg(feature = "openfeature")]

mod common;

use common::{flag, Cluster};
use open_feature::{
    EvaluationContext, EvaluationErrorCode, EvaluationReason, FlagMetadataValue, OpenFeature, Value,
};
use rollout_sdk::openfeature::RolloutProvider;
use serde_json::json;

#[tokio::test]
async fn the_standard_api_resolves_through_the_evaluator() {
    let cluster = Cluster::with_evaluator().await;
    let commands = cluster.commands();
    let checkout = commands.create_flag(flag("checkout")).await.expect("flag");
    let config: rollout_sdk::Flag = serde_json::from_value(json!({
        "key": "limits",
        "variations": [{"id": "small", "value": {"max_items": 10, "ratio": 0.5, "label": "s"}},
                       {"id": "large", "value": {"max_items": 100, "ratio": 1.5, "label": "l"}}],
        "off_variation": "small", "default": {"variation": "large"}}))
    .expect("struct flag");
    let limits = commands.create_flag(config).await.expect("struct flag");
    cluster.until_served("checkout", checkout.version).await;
    cluster.until_served("limits", limits.version).await;

    let eval = cluster.eval_client().await;
    let mut api = OpenFeature::singleton_mut().await;
    api.set_provider(RolloutProvider::new(eval)).await;
    assert_eq!(api.provider_metadata().await.name, "rollout");
    let client = api.create_client();
    drop(api);

    let beta = EvaluationContext::default()
        .with_targeting_key("user-1")
        .with_custom_field("plan", "beta");
    assert!(client
        .get_bool_value("checkout", Some(&beta), None)
        .await
        .expect("bool flag"));
    let details = client
        .get_bool_details("checkout", Some(&beta), None)
        .await
        .expect("details");
    assert_eq!(details.variant.as_deref(), Some("on"));
    assert_eq!(details.reason, Some(EvaluationReason::TargetingMatch));
    assert_eq!(
        details.flag_metadata.values.get("rule_id"),
        Some(&FlagMetadataValue::String("beta".into()))
    );
    let version = i64::try_from(checkout.version).expect("small version");
    assert_eq!(
        details.flag_metadata.values.get("version"),
        Some(&FlagMetadataValue::Int(version))
    );

    let plain = EvaluationContext::default().with_targeting_key("user-2");
    let details = client
        .get_bool_details("checkout", Some(&plain), None)
        .await
        .expect("default serve");
    assert!(!details.value);
    assert_eq!(details.reason, Some(EvaluationReason::Default));

    let limits_details = client
        .get_struct_details::<open_feature::StructValue>("limits", Some(&plain), None)
        .await
        .expect("struct flag");
    assert_eq!(limits_details.variant.as_deref(), Some("large"));
    assert_eq!(
        limits_details.value.fields.get("max_items"),
        Some(&Value::Int(100))
    );
    assert_eq!(
        limits_details.value.fields.get("ratio"),
        Some(&Value::Float(1.5))
    );

    let missing = client
        .get_bool_value("no-such-flag", Some(&plain), None)
        .await
        .expect_err("unknown flag");
    assert_eq!(missing.code, EvaluationErrorCode::FlagNotFound);
    let mismatch = client
        .get_string_value("checkout", Some(&plain), None)
        .await
        .expect_err("a bool is not a string");
    assert_eq!(mismatch.code, EvaluationErrorCode::TypeMismatch);
    let anonymous = client
        .get_bool_value("checkout", Some(&EvaluationContext::default()), None)
        .await
        .expect_err("no targeting key");
    assert_eq!(anonymous.code, EvaluationErrorCode::TargetingKeyMissing);
    cluster.stop().await;
}
