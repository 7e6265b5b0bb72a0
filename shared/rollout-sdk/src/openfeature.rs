//! An OpenFeature provider ([`RolloutProvider`]) resolving flags through an
//! [`EvalClient`], so applications use the standard `open_feature` API.
//!
//! How the evaluation context maps to an [`Entity`]:
//!
//! | OpenFeature | entity |
//! |---|---|
//! | targeting key | `id` (required: `TARGETING_KEY_MISSING` without it) |
//! | bool, string, int, float field | attribute of that type (numbers as numbers) |
//! | datetime field | number attribute: seconds since the Unix epoch |
//! | struct field holding `Vec<String>` | list attribute |
//! | struct field `labels` holding `BTreeMap<String, String>` or `HashMap<String, String>` | the entity's fleet labels |
//! | other struct fields | ignored |
//!
//! Reasons: `disabled` → DISABLED, `rule_match` and `stage` → TARGETING_MATCH, `default` →
//! DEFAULT, `split` → SPLIT, `rollout` → SPLIT when a bucket decided (TARGETING_MATCH for
//! label stages), `stickiness_missing` → `STICKINESS_MISSING`. The variant is the variation
//! id; flag metadata carries `version`, and when set `rule_id`, `rollout_id`, `step`,
//! `bucket`.
//!
//! Errors: `not_found` → FLAG_NOT_FOUND, a value of another type → TYPE_MISMATCH,
//! `invalid_argument` → INVALID_CONTEXT, an undecodable reply → PARSE_ERROR, anything else
//! (no evaluator, timeout) → GENERAL with the code and message.

use std::collections::{BTreeMap, HashMap};

use open_feature::provider::{FeatureProvider, ProviderMetadata, ResolutionDetails};
use open_feature::{
    async_trait, EvaluationContext, EvaluationContextFieldValue, EvaluationError,
    EvaluationErrorCode, EvaluationReason, EvaluationResult, FlagMetadata, StructValue, Value,
};
use rollout_core::{AttributeValue, Entity, Labels, Reason};
use rollout_wire::{ErrorCode, EvalResult};

use crate::error::{Error, ErrorKind};
use crate::eval::EvalClient;

/// The provider's name in OpenFeature metadata.
pub const PROVIDER_NAME: &str = "rollout";

/// An OpenFeature provider backed by an [`EvalClient`] (and its cache).
///
/// ```no_run
/// use open_feature::{EvaluationContext, OpenFeature};
/// use rollout_sdk::openfeature::RolloutProvider;
/// use rollout_sdk::{EvalClient, Namespace};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let eval = EvalClient::connect(nats, Namespace::new("prod")?).await?;
/// let mut api = OpenFeature::singleton_mut().await;
/// api.set_provider(RolloutProvider::new(eval)).await;
/// let client = api.create_client();
/// drop(api);
///
/// let context = EvaluationContext::default()
///     .with_targeting_key("user-42")
///     .with_custom_field("plan", "pro");
/// let enabled = client
///     .get_bool_value("new-checkout", Some(&context), None)
///     .await
///     .unwrap_or(false);
/// # let _ = enabled;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RolloutProvider {
    client: EvalClient,
    metadata: ProviderMetadata,
}

impl RolloutProvider {
    /// A provider evaluating through `client`.
    pub fn new(client: EvalClient) -> RolloutProvider {
        RolloutProvider {
            client,
            metadata: ProviderMetadata::new(PROVIDER_NAME),
        }
    }

    /// The evaluation client in use (for outcome reports).
    pub fn client(&self) -> &EvalClient {
        &self.client
    }

    async fn resolve<T>(
        &self,
        flag_key: &str,
        context: &EvaluationContext,
        convert: impl FnOnce(&serde_json::Value) -> Option<T>,
        expected: &str,
    ) -> EvaluationResult<ResolutionDetails<T>> {
        let entity = entity_from_context(context)?;
        let result = self
            .client
            .evaluate(flag_key, &entity)
            .await
            .map_err(evaluation_error)?;
        let value = convert(&result.value).ok_or_else(|| {
            EvaluationError::builder()
                .code(EvaluationErrorCode::TypeMismatch)
                .message(format!(
                    "flag {flag_key} serves {} for variation {}, not {expected}",
                    json_type(&result.value),
                    result.variation
                ))
                .build()
        })?;
        Ok(details(value, &result))
    }
}

#[async_trait]
impl FeatureProvider for RolloutProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        self.resolve(
            flag_key,
            evaluation_context,
            serde_json::Value::as_bool,
            "a bool",
        )
        .await
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        self.resolve(
            flag_key,
            evaluation_context,
            serde_json::Value::as_i64,
            "an integer",
        )
        .await
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        self.resolve(
            flag_key,
            evaluation_context,
            serde_json::Value::as_f64,
            "a number",
        )
        .await
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        self.resolve(
            flag_key,
            evaluation_context,
            |value| value.as_str().map(str::to_owned),
            "a string",
        )
        .await
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        self.resolve(flag_key, evaluation_context, struct_value, "an object")
            .await
    }
}

/// The entity an OpenFeature evaluation context describes (see the module table).
pub fn entity_from_context(context: &EvaluationContext) -> EvaluationResult<Entity> {
    let id = context
        .targeting_key
        .clone()
        .filter(|key| !key.is_empty())
        .ok_or_else(|| {
            EvaluationError::builder()
                .code(EvaluationErrorCode::TargetingKeyMissing)
                .message("the evaluation context needs a targeting key: it is the entity id")
                .build()
        })?;
    let mut entity = Entity::with_id(id);
    for (name, field) in &context.custom_fields {
        let value = match field {
            EvaluationContextFieldValue::Bool(flag) => AttributeValue::Bool(*flag),
            #[allow(clippy::cast_precision_loss)]
            EvaluationContextFieldValue::Int(number) => AttributeValue::Number(*number as f64),
            EvaluationContextFieldValue::Float(number) => AttributeValue::Number(*number),
            EvaluationContextFieldValue::String(text) => AttributeValue::String(text.clone()),
            #[allow(clippy::cast_precision_loss)]
            EvaluationContextFieldValue::DateTime(time) => {
                AttributeValue::Number(time.unix_timestamp() as f64)
            }
            EvaluationContextFieldValue::Struct(any) => {
                if let Some(items) = any.downcast_ref::<Vec<String>>() {
                    AttributeValue::List(items.clone())
                } else if name == "labels" {
                    if let Some(labels) = any.downcast_ref::<Labels>() {
                        entity.labels.clone_from(labels);
                    } else if let Some(labels) = any.downcast_ref::<HashMap<String, String>>() {
                        entity.labels = labels
                            .iter()
                            .map(|(key, value)| (key.clone(), value.clone()))
                            .collect::<BTreeMap<_, _>>();
                    }
                    continue;
                } else {
                    continue;
                }
            }
        };
        entity.attributes.insert(name.clone(), value);
    }
    Ok(entity)
}

fn details<T>(value: T, result: &EvalResult) -> ResolutionDetails<T> {
    let mut metadata = FlagMetadata::default();
    metadata.add_value("version", i64::try_from(result.version).unwrap_or(i64::MAX));
    if let Some(rule_id) = &result.rule_id {
        metadata.add_value("rule_id", rule_id.as_str());
    }
    if let Some(rollout_id) = &result.rollout_id {
        metadata.add_value("rollout_id", rollout_id.as_str());
    }
    if let Some(step) = result.step {
        metadata.add_value("step", i64::try_from(step).unwrap_or(i64::MAX));
    }
    if let Some(bucket) = result.bucket {
        metadata.add_value("bucket", i64::from(bucket));
    }
    ResolutionDetails {
        value,
        variant: Some(result.variation.clone()),
        reason: Some(reason(result)),
        flag_metadata: Some(metadata),
    }
}

/// The OpenFeature reason for an evaluator's reason.
pub fn reason(result: &EvalResult) -> EvaluationReason {
    match result.reason {
        Reason::Disabled => EvaluationReason::Disabled,
        Reason::RuleMatch | Reason::Stage => EvaluationReason::TargetingMatch,
        Reason::Default => EvaluationReason::Default,
        Reason::Split => EvaluationReason::Split,
        Reason::Rollout if result.bucket.is_some() => EvaluationReason::Split,
        Reason::Rollout => EvaluationReason::TargetingMatch,
        Reason::StickinessMissing => EvaluationReason::Other("STICKINESS_MISSING".to_owned()),
    }
}

/// The OpenFeature error for an SDK error.
pub fn evaluation_error(error: Error) -> EvaluationError {
    let code = match (error.kind(), error.code()) {
        (_, ErrorCode::NotFound) => EvaluationErrorCode::FlagNotFound,
        (ErrorKind::Decode, _) => EvaluationErrorCode::ParseError,
        (_, ErrorCode::InvalidArgument) => EvaluationErrorCode::InvalidContext,
        (_, code) => EvaluationErrorCode::General(code.as_str().to_owned()),
    };
    EvaluationError::builder()
        .code(code)
        .message(error.to_string())
        .build()
}

fn struct_value(value: &serde_json::Value) -> Option<StructValue> {
    match to_value(value)? {
        Value::Struct(fields) => Some(fields),
        _ => None,
    }
}

/// JSON to an OpenFeature value; `null` has no counterpart (inside objects and arrays it is
/// left out). Variation values are depth-capped, so the recursion is bounded.
fn to_value(value: &serde_json::Value) -> Option<Value> {
    Some(match value {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(flag) => Value::Bool(*flag),
        serde_json::Value::Number(number) => match number.as_i64() {
            Some(integer) => Value::Int(integer),
            None => Value::Float(number.as_f64()?),
        },
        serde_json::Value::String(text) => Value::String(text.clone()),
        serde_json::Value::Array(items) => {
            Value::Array(items.iter().filter_map(to_value).collect())
        }
        serde_json::Value::Object(fields) => Value::Struct(StructValue {
            fields: fields
                .iter()
                .filter_map(|(name, field)| Some((name.clone(), to_value(field)?)))
                .collect(),
        }),
    })
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_wire::WireError;
    use serde_json::json;

    #[test]
    fn the_context_becomes_an_entity() {
        let mut labels = Labels::new();
        labels.insert("env".into(), "prod".into());
        let context = EvaluationContext::default()
            .with_targeting_key("user-42")
            .with_custom_field("plan", "pro")
            .with_custom_field("age", 42)
            .with_custom_field("ratio", 0.5)
            .with_custom_field("beta", true)
            .with_custom_field(
                "groups",
                EvaluationContextFieldValue::new_struct(vec!["a".to_owned(), "b".to_owned()]),
            )
            .with_custom_field(
                "labels",
                EvaluationContextFieldValue::new_struct(labels.clone()),
            );
        let entity = entity_from_context(&context).expect("entity");
        assert_eq!(entity.id, "user-42");
        assert_eq!(
            entity.attributes["plan"],
            AttributeValue::String("pro".into())
        );
        assert_eq!(entity.attributes["age"], AttributeValue::Number(42.0));
        assert_eq!(entity.attributes["ratio"], AttributeValue::Number(0.5));
        assert_eq!(entity.attributes["beta"], AttributeValue::Bool(true));
        assert_eq!(
            entity.attributes["groups"],
            AttributeValue::List(vec!["a".into(), "b".into()])
        );
        assert_eq!(entity.labels, labels);
        assert!(!entity.attributes.contains_key("labels"));
    }

    #[test]
    fn a_missing_targeting_key_is_reported() {
        let error = entity_from_context(&EvaluationContext::default()).expect_err("no key");
        assert_eq!(error.code, EvaluationErrorCode::TargetingKeyMissing);
    }

    #[test]
    fn errors_map_to_openfeature_codes() {
        let not_found = evaluation_error(Error::refused(WireError::not_found("no flag f")));
        assert_eq!(not_found.code, EvaluationErrorCode::FlagNotFound);
        let invalid = evaluation_error(Error::refused(WireError::invalid_argument(
            "entity.id",
            "must not be empty",
        )));
        assert_eq!(invalid.code, EvaluationErrorCode::InvalidContext);
        let unavailable = evaluation_error(Error::no_responders("rollout.eval.prod"));
        assert_eq!(
            unavailable.code,
            EvaluationErrorCode::General("unavailable".into())
        );
    }

    #[test]
    fn json_values_convert_to_openfeature_values() {
        let value =
            json!({"limit": 10, "ratio": 0.25, "name": "x", "tags": ["a", null], "gone": null});
        let fields = struct_value(&value).expect("object").fields;
        assert_eq!(fields["limit"], Value::Int(10));
        assert_eq!(fields["ratio"], Value::Float(0.25));
        assert_eq!(
            fields["tags"],
            Value::Array(vec![Value::String("a".into())])
        );
        assert!(!fields.contains_key("gone"));
        assert_eq!(struct_value(&json!(true)), None);
    }
}
