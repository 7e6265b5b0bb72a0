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
use serde::{Deserialize, Serialize};
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

    /// The error body: for a single-flag request or a bulk entry, naming the flag `key`;
    /// for a whole bulk request, `None`.
    pub fn body<'a>(&'a self, key: Option<&'a str>) -> ErrorBody<'a> {
        ErrorBody {
            code: self.code,
            details: &self.details,
            key,
        }
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

/// The OFREP success body for `evaluation` of `live`, serialized as it stands (no JSON
/// tree is built): the fields are declared in key order, so the bytes are those of the
/// equivalent JSON object.
#[derive(Debug, Serialize)]
pub struct SuccessBody<'a> {
    key: &'a str,
    metadata: Metadata<'a>,
    reason: &'static str,
    value: &'a Value,
    variant: &'a str,
}

/// What decided an answer, in the success body's `metadata` (fields in key order).
#[derive(Debug, Serialize)]
struct Metadata<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    bucket: Option<u32>,
    evaluation_reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<usize>,
    version: u64,
}

/// The OFREP success body for `evaluation` of `live`.
pub fn success_body<'a>(live: &'a LiveFlag, evaluation: &Evaluation<'a>) -> SuccessBody<'a> {
    SuccessBody {
        key: live.compiled().key(),
        metadata: Metadata {
            bucket: evaluation.bucket,
            evaluation_reason: native_reason(evaluation.reason),
            rollout_id: evaluation.rollout_id,
            rule_id: evaluation.rule_id,
            step: evaluation.step,
            version: live.version(),
        },
        reason: reason_name(evaluation.reason),
        value: evaluation.value,
        variant: evaluation.variation,
    }
}

/// An OFREP error body (fields in key order; `key` for a single flag or a bulk entry).
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    #[serde(rename = "errorCode")]
    code: &'static str,
    #[serde(rename = "errorDetails")]
    details: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

/// The answer to a bulk request, written as the JSON object
/// `{"flags": [...], "refreshConnections": ...}` one flag at a time: [`BulkWriter::flag`]
/// and [`BulkWriter::error`] append an entry, [`BulkWriter::finish`] closes it.
#[derive(Debug)]
pub struct BulkWriter {
    bytes: Vec<u8>,
    entries: usize,
}

impl BulkWriter {
    /// An answer without entries yet.
    pub fn new() -> BulkWriter {
        let mut bytes = Vec::with_capacity(1024);
        bytes.extend_from_slice(b"{\"flags\":[");
        BulkWriter { bytes, entries: 0 }
    }

    fn entry(&mut self, entry: &impl Serialize) {
        if self.entries > 0 {
            self.bytes.push(b',');
        }
        self.entries += 1;
        // writing plain structs of strings and numbers into a Vec cannot fail
        let _ = serde_json::to_writer(&mut self.bytes, entry);
    }

    /// Appends a flag's success body.
    pub fn flag(&mut self, body: &SuccessBody<'_>) {
        self.entry(body);
    }

    /// Appends a flag that failed alone (its error body, naming it).
    pub fn error(&mut self, key: &str, error: &OfrepError) {
        self.entry(&error.body(Some(key)));
    }

    /// The whole answer, with `refreshConnections` when change push offers a stream.
    pub fn finish(mut self, refresh: Option<&crate::push::RefreshConnection>) -> Vec<u8> {
        self.bytes.push(b']');
        if let Some(connection) = refresh {
            self.bytes.extend_from_slice(b",\"refreshConnections\":[");
            let _ = serde_json::to_writer(&mut self.bytes, connection);
            self.bytes.push(b']');
        }
        self.bytes.push(b'}');
        self.bytes
    }
}

impl Default for BulkWriter {
    fn default() -> BulkWriter {
        BulkWriter::new()
    }
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
