//! The OpenFeature Remote Evaluation Protocol (OFREP) mapping, without IO: request
//! contexts become entities under the same caps as `rollout.eval`, evaluations become
//! OFREP success bodies, refusals become OFREP error bodies with their HTTP status.
//!
//! Context: `targetingKey` is the entity id (required: every flag may bucket on it);
//! `labels`, when an object of strings, are the entity's fleet labels; every other key
//! is an attribute — a string, number, bool or list of strings (`null` counts as absent).
//! Anything else is `INVALID_CONTEXT`.
//!
//! Reasons: `rule_match` → `TARGETING_MATCH`; `split`, `rollout`, `stage` → `SPLIT`;
//! `default` and `stickiness_missing` (the rollout's baseline for an entity without the
//! bucketing attribute) → `DEFAULT`; `disabled` → `DISABLED`. The native reason, the
//! version and what decided (rule, rollout, step, bucket) travel in `metadata`.

use rollout_core::{AttributeValue, Entity, Evaluation, Labels, Reason, ValidationErrors};
use rollout_wire::checks::validate_entity;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::snapshot::LiveFlag;

/// An OFREP evaluation request body (single or bulk).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct OfrepRequest {
    /// The evaluation context.
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
}

/// A refusal: HTTP status, OFREP error code and details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfrepError {
    /// HTTP status.
    pub status: u16,
    /// OFREP / OpenFeature error code (`INVALID_CONTEXT`, `FLAG_NOT_FOUND`, ...).
    pub code: &'static str,
    /// Lowercase explanation.
    pub details: String,
}

impl OfrepError {
    /// 400 `PARSE_ERROR`.
    pub fn parse(details: impl Into<String>) -> OfrepError {
        OfrepError {
            status: 400,
            code: "PARSE_ERROR",
            details: details.into(),
        }
    }

    /// 400 `INVALID_CONTEXT`.
    pub fn invalid_context(details: impl Into<String>) -> OfrepError {
        OfrepError {
            status: 400,
            code: "INVALID_CONTEXT",
            details: details.into(),
        }
    }

    /// 400 `TARGETING_KEY_MISSING`.
    pub fn targeting_key_missing() -> OfrepError {
        OfrepError {
            status: 400,
            code: "TARGETING_KEY_MISSING",
            details: "the context needs a targetingKey: the id of the entity to evaluate for (percentage rollouts bucket on it)"
                .to_owned(),
        }
    }

    /// 404 `FLAG_NOT_FOUND`.
    pub fn flag_not_found(key: &str, namespace: &str) -> OfrepError {
        OfrepError {
            status: 404,
            code: "FLAG_NOT_FOUND",
            details: format!("flag {key} does not exist in namespace {namespace}"),
        }
    }

    /// 404 `GENERAL`: the request names a namespace no command ever used.
    pub fn namespace_not_found(namespace: &str) -> OfrepError {
        OfrepError {
            status: 404,
            code: "GENERAL",
            details: format!(
                "namespace {namespace} does not exist: no flag was ever created in it (check X-Rollout-Namespace)"
            ),
        }
    }

    /// 400 `GENERAL`, for a request that is wrong outside its context (the namespace).
    pub fn general(details: impl Into<String>) -> OfrepError {
        OfrepError {
            status: 400,
            code: "GENERAL",
            details: details.into(),
        }
    }

    /// 401 or 403 `GENERAL`: the request's credentials were refused.
    pub fn denied(denied: &crate::auth::Denied) -> OfrepError {
        OfrepError {
            status: denied.status(),
            code: "GENERAL",
            details: denied.to_string(),
        }
    }

    /// The body for a single-flag request for `key`.
    pub fn body_for(&self, key: &str) -> Value {
        serde_json::json!({"key": key, "errorCode": self.code, "errorDetails": self.details})
    }

    /// The body for a bulk request.
    pub fn bulk_body(&self) -> Value {
        serde_json::json!({"errorCode": self.code, "errorDetails": self.details})
    }
}

fn attribute_value(name: &str, value: &Value) -> Result<Option<AttributeValue>, OfrepError> {
    let unsupported = || {
        OfrepError::invalid_context(format!(
            "context.{name}: attributes are strings, numbers, bools or lists of strings"
        ))
    };
    Ok(Some(match value {
        Value::Null => return Ok(None),
        Value::String(text) => AttributeValue::String(text.clone()),
        Value::Bool(flag) => AttributeValue::Bool(*flag),
        Value::Number(number) => AttributeValue::Number(number.as_f64().ok_or_else(unsupported)?),
        Value::Array(items) => AttributeValue::List(
            items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(unsupported)?,
        ),
        Value::Object(_) => return Err(unsupported()),
    }))
}

fn labels(value: &Map<String, Value>) -> Option<Labels> {
    value
        .iter()
        .map(|(name, value)| value.as_str().map(|text| (name.clone(), text.to_owned())))
        .collect()
}

/// The entity an OFREP context describes, checked against the entity caps. A context
/// without a `targetingKey` (or none at all) is an entity without an id: flags that need
/// one to bucket answer `TARGETING_KEY_MISSING` one by one (see [`needs_key`]), the rest
/// are served.
pub fn entity_from_context(context: Option<&Map<String, Value>>) -> Result<Entity, OfrepError> {
    let empty = Map::new();
    let context = context.unwrap_or(&empty);
    let id = match context.get("targetingKey") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(id)) => id.clone(),
        Some(_) => {
            return Err(OfrepError::invalid_context(
                "context.targetingKey: must be a string",
            ))
        }
    };
    let mut entity = Entity::with_id(id);
    if context.len() > 2 + rollout_wire::eval::MAX_ATTRIBUTES {
        return Err(OfrepError::invalid_context(format!(
            "context: at most {} attributes",
            rollout_wire::eval::MAX_ATTRIBUTES
        )));
    }
    for (name, value) in context {
        if name == "targetingKey" {
            continue;
        }
        if name == "labels" {
            if let Value::Object(object) = value {
                entity.labels = labels(object).ok_or_else(|| {
                    OfrepError::invalid_context("context.labels: label values are strings")
                })?;
                continue;
            }
        }
        if let Some(attribute) = attribute_value(name, value)? {
            entity.attributes.insert(name.clone(), attribute);
        }
    }
    let mut errors = ValidationErrors::default();
    if entity.id.is_empty() {
        // checked as it stands but for the id it does not have
        let mut keyed = entity.clone();
        keyed.id = "-".to_owned();
        validate_entity(&keyed, "context", &mut errors);
    } else {
        validate_entity(&entity, "context", &mut errors);
    }
    if !errors.is_empty() {
        // the entity's id is the context's targetingKey
        let message = errors
            .to_string()
            .replace("context.id", "context.targetingKey");
        return Err(OfrepError::invalid_context(message));
    }
    Ok(entity)
}

/// Whether `evaluation` of `entity` needed the targeting key the context did not give (it
/// would have bucketed on it): such a flag answers `TARGETING_KEY_MISSING`.
pub fn needs_key(entity: &Entity, evaluation: &Evaluation<'_>) -> bool {
    entity.id.is_empty() && evaluation.keyless
}

/// The OFREP name of a reason.
pub fn reason_name(reason: Reason) -> &'static str {
    match reason {
        Reason::Disabled => "DISABLED",
        Reason::RuleMatch => "TARGETING_MATCH",
        Reason::Split | Reason::Rollout | Reason::Stage => "SPLIT",
        Reason::Default | Reason::StickinessMissing => "DEFAULT",
    }
}

fn native_reason(reason: Reason) -> &'static str {
    match reason {
        Reason::Disabled => "disabled",
        Reason::RuleMatch => "rule_match",
        Reason::Default => "default",
        Reason::Split => "split",
        Reason::Stage => "stage",
        Reason::Rollout => "rollout",
        Reason::StickinessMissing => "stickiness_missing",
    }
}

/// The OFREP success body for `evaluation` of `live`.
pub fn success_body(live: &LiveFlag, evaluation: &Evaluation<'_>) -> Value {
    let mut metadata = Map::new();
    metadata.insert("version".into(), Value::from(live.version()));
    metadata.insert(
        "evaluation_reason".into(),
        Value::from(native_reason(evaluation.reason)),
    );
    if let Some(rule_id) = evaluation.rule_id {
        metadata.insert("rule_id".into(), Value::from(rule_id));
    }
    if let Some(rollout_id) = evaluation.rollout_id {
        metadata.insert("rollout_id".into(), Value::from(rollout_id));
    }
    if let Some(step) = evaluation.step {
        metadata.insert("step".into(), Value::from(step));
    }
    if let Some(bucket) = evaluation.bucket {
        metadata.insert("bucket".into(), Value::from(bucket));
    }
    serde_json::json!({
        "key": live.compiled().key(),
        "value": evaluation.value,
        "reason": reason_name(evaluation.reason),
        "variant": evaluation.variation,
        "metadata": metadata,
    })
}

/// The body of `GET /ofrep/v1/configuration`: this evaluator's name and capabilities —
/// bulk answers are cached by `ETag` and may be polled (at most once a second is useful:
/// a change reaches every evaluator within milliseconds), changes are pushed over SSE when
/// `push` is on (the bulk answer's `refreshConnections` says where), and the value types
/// it serves.
pub fn configuration(push: &crate::push::Push) -> Value {
    serde_json::json!({
        "name": "rollout evaluator",
        "capabilities": {
            "cacheInvalidation": {
                "polling": {"enabled": true, "minPollingIntervalMs": MIN_POLLING_INTERVAL_MS},
                "sse": {"enabled": push.enabled()},
            },
            "flagEvaluation": {
                "supportedTypes": ["boolean", "string", "integer", "float", "object"],
            },
        },
    })
}

/// The shortest polling interval the configuration advertises.
pub const MIN_POLLING_INTERVAL_MS: u64 = 1000;

/// Whether an `If-None-Match` header value matches `etag` (weak comparison, lists, `*`).
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let bare = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let wanted = bare(etag);
    if_none_match
        .split(',')
        .any(|candidate| candidate.trim() == "*" || bare(candidate) == wanted)
}

/// The strong entity tag of a response body.
pub fn etag_of(body: &[u8]) -> String {
    format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn contexts_become_entities() {
        let entity = entity_from_context(Some(&context(serde_json::json!({
            "targetingKey": "user-1", "plan": "pro", "age": 31, "beta": true,
            "groups": ["a", "b"], "gone": null, "labels": {"env": "prod"}
        }))))
        .expect("entity");
        assert_eq!(entity.id, "user-1");
        assert_eq!(
            entity.attributes["plan"],
            AttributeValue::String("pro".into())
        );
        assert_eq!(entity.attributes["age"], AttributeValue::Number(31.0));
        assert_eq!(entity.attributes["beta"], AttributeValue::Bool(true));
        assert!(!entity.attributes.contains_key("gone"));
        assert_eq!(entity.labels["env"], "prod");
    }

    #[test]
    fn a_context_without_a_key_is_an_entity_without_an_id() {
        assert_eq!(entity_from_context(None).expect("no context").id, "");
        let entity = entity_from_context(Some(&context(serde_json::json!({"plan": "pro"}))))
            .expect("no key");
        assert_eq!(entity.id, "");
        assert_eq!(
            entity.attributes["plan"],
            AttributeValue::String("pro".into())
        );
    }

    #[test]
    fn bad_contexts_are_refused_with_their_code() {
        for (value, code) in [
            (serde_json::json!({"targetingKey": 7}), "INVALID_CONTEXT"),
            (
                serde_json::json!({"targetingKey": "u", "nested": {"a": 1}}),
                "INVALID_CONTEXT",
            ),
            (
                serde_json::json!({"targetingKey": "u", "list": [1, 2]}),
                "INVALID_CONTEXT",
            ),
            (
                serde_json::json!({"targetingKey": "x".repeat(300)}),
                "INVALID_CONTEXT",
            ),
            (
                serde_json::json!({"targetingKey": "u", "big": "v".repeat(5000)}),
                "INVALID_CONTEXT",
            ),
            (
                serde_json::json!({"targetingKey": "u", "labels": {"env": 1}}),
                "INVALID_CONTEXT",
            ),
        ] {
            let error = entity_from_context(Some(&context(value.clone()))).expect_err("refused");
            assert_eq!(error.code, code, "{value}");
            assert_eq!(error.status, 400);
        }
        let mut many = Map::new();
        many.insert("targetingKey".into(), Value::from("u"));
        for index in 0..100 {
            many.insert(format!("a{index}"), Value::from(true));
        }
        assert_eq!(
            entity_from_context(Some(&many)).expect_err("too many").code,
            "INVALID_CONTEXT"
        );
    }

    #[test]
    fn etags_compare_weakly_and_in_lists() {
        let tag = etag_of(b"body");
        assert!(etag_matches(&tag, &tag));
        assert!(etag_matches(&format!("W/{tag}"), &tag));
        assert!(etag_matches(&format!("\"other\", {tag}"), &tag));
        assert!(etag_matches("*", &tag));
        assert!(!etag_matches("\"other\"", &tag));
        assert_ne!(etag_of(b"body"), etag_of(b"other body"));
    }
}
