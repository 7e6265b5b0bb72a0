//! Evaluation on `rollout.eval.<ns>` (SPEC §8.1, §8.6): one flag, several, or all flags for
//! an entity, with the input caps evaluators enforce before doing any work.

use rollout_core::{Entity, Evaluation, Reason, ValidationErrors};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::envelope::WireError;

/// Most flags one bulk request may name.
pub const MAX_BULK_FLAGS: usize = 200;
pub use crate::checks::{
    MAX_ATTRIBUTES, MAX_ATTRIBUTE_NAME_BYTES, MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ID_BYTES as MAX_ENTITY_ID_BYTES, MAX_LABELS,
};

/// `rollout.eval.<ns>`: which variation `entity` gets of `flag` (reply: [`EvalResult`]), of
/// each of `flags`, or, with neither, of every flag (reply: [`EvalMany`]).
#[doc = shape_doc!("eval_request")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalRequest {
    /// One flag key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    /// Several flag keys (at most [`MAX_BULK_FLAGS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
    /// Who the flags are evaluated for.
    pub entity: Entity,
    /// Add a sentence explaining each answer (`explanation`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub explain: bool,
}

/// What an [`EvalRequest`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalTarget<'a> {
    /// One flag; the reply is an [`EvalResult`] (or `not_found`).
    One(&'a str),
    /// These flags; the reply is an [`EvalMany`] listing unknown keys in `missing`.
    Many(&'a [String]),
    /// Every flag of the namespace; the reply is an [`EvalMany`].
    All,
}

impl EvalRequest {
    /// What the request asks for. Call [`EvalRequest::validate`] first: with both `flag` and
    /// `flags` this answers `One`.
    pub fn target(&self) -> EvalTarget<'_> {
        match (&self.flag, &self.flags) {
            (Some(flag), _) => EvalTarget::One(flag),
            (None, Some(flags)) => EvalTarget::Many(flags),
            (None, None) => EvalTarget::All,
        }
    }

    /// Checks the caps: not both `flag` and `flags`; keys are tokens; at most
    /// [`MAX_BULK_FLAGS`] keys; the entity's id, attributes and labels within their limits.
    /// The error is `invalid_argument` naming the first bad field, with every problem in
    /// `details`.
    pub fn validate(&self) -> Result<(), WireError> {
        let mut errors = ValidationErrors::default();
        if self.flag.is_some() && self.flags.is_some() {
            errors.push("flags", "give flag or flags, not both");
        }
        if let Some(flag) = &self.flag {
            checks::token(&mut errors, "flag", flag);
        }
        if let Some(flags) = &self.flags {
            if flags.len() > MAX_BULK_FLAGS {
                errors.push(
                    "flags",
                    format!("at most {MAX_BULK_FLAGS} flags per request"),
                );
            } else {
                for (index, flag) in flags.iter().enumerate() {
                    checks::token(&mut errors, &format!("flags[{index}]"), flag);
                }
            }
        }
        checks::validate_entity(&self.entity, "entity", &mut errors);
        checks::finish(errors)
    }
}

/// Reply to a one-flag evaluation, and each entry of [`EvalMany`]: the variation, its value,
/// why, and the rollout, step and bucket that decided.
#[doc = shape_doc!("eval_result")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Flag key.
    pub flag: String,
    /// Variation id.
    pub variation: String,
    /// Variation value.
    pub value: serde_json::Value,
    /// Why the entity got it.
    pub reason: Reason,
    /// Rule that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    /// Rollout that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// That rollout's current step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// The entity's bucket (0 ..< 1 000 000), when bucketing decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<u32>,
    /// Per-flag state version the answer was computed from.
    pub version: u64,
    /// A sentence explaining the answer, when the request asked to `explain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

impl EvalResult {
    /// The reply for `evaluation` of flag `flag` at `version`.
    pub fn from_evaluation(
        flag: &str,
        version: u64,
        evaluation: &Evaluation<'_>,
        explain: bool,
    ) -> EvalResult {
        EvalResultRef::from_evaluation(flag, version, evaluation, explain).to_result()
    }
}

/// An [`EvalResult`] borrowed from the evaluation it reports, encoded byte for byte as the
/// owned one: a reply is written from it without copying the flag key, the variation, its
/// value, the rule and the rollout id out of the snapshot first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalResultRef<'a> {
    /// Flag key.
    pub flag: &'a str,
    /// Variation id.
    pub variation: &'a str,
    /// Variation value.
    pub value: &'a serde_json::Value,
    /// Why the entity got it.
    pub reason: Reason,
    /// Rule that matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<&'a str>,
    /// Rollout that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<&'a str>,
    /// That rollout's current step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// The entity's bucket, when bucketing decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<u32>,
    /// Per-flag state version the answer was computed from.
    pub version: u64,
    /// A sentence explaining the answer, when the request asked to `explain`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

impl<'a> EvalResultRef<'a> {
    /// The reply for `evaluation` of flag `flag` at `version`.
    pub fn from_evaluation(
        flag: &'a str,
        version: u64,
        evaluation: &Evaluation<'a>,
        explain: bool,
    ) -> EvalResultRef<'a> {
        EvalResultRef {
            flag,
            variation: evaluation.variation,
            value: evaluation.value,
            reason: evaluation.reason,
            rule_id: evaluation.rule_id,
            rollout_id: evaluation.rollout_id,
            step: evaluation.step,
            bucket: evaluation.bucket,
            version,
            explanation: explain.then(|| explain_evaluation(evaluation)),
        }
    }

    /// The owned reply.
    pub fn to_result(&self) -> EvalResult {
        EvalResult {
            flag: self.flag.to_owned(),
            variation: self.variation.to_owned(),
            value: self.value.clone(),
            reason: self.reason,
            rule_id: self.rule_id.map(str::to_owned),
            rollout_id: self.rollout_id.map(str::to_owned),
            step: self.step,
            bucket: self.bucket,
            version: self.version,
            explanation: self.explanation.clone(),
        }
    }
}

/// A lowercase sentence saying why `evaluation` came out as it did.
pub fn explain_evaluation(evaluation: &Evaluation<'_>) -> String {
    let variation = evaluation.variation;
    let within = match evaluation.rule_id {
        Some(rule) => format!("rule {rule}"),
        None => "the default serve".to_owned(),
    };
    let bucket = evaluation
        .bucket
        .map_or_else(String::new, |bucket| format!(" (bucket {bucket})"));
    let rollout = evaluation.rollout_id.unwrap_or("?");
    // people count steps from 1; the index on the wire stays 0-based
    let step = evaluation.step.unwrap_or(0) + 1;
    match evaluation.reason {
        Reason::Disabled => format!("the flag is disabled: serving its off variation {variation}"),
        Reason::RuleMatch => format!("{within} matched: serving {variation}"),
        Reason::Default => format!("no rule matched: the default serve is {variation}"),
        Reason::Split => format!("the percentage split of {within} serves {variation}{bucket}"),
        Reason::Stage => format!("the label stages of {within} serve {variation}"),
        Reason::Rollout => format!("rollout {rollout} at step {step} of {within} serves {variation}{bucket}"),
        Reason::StickinessMissing => format!(
            "rollout {rollout} buckets on an attribute the entity lacks: serving the baseline {variation}"
        ),
    }
}

/// Reply to a several- or all-flag evaluation.
#[doc = shape_doc!("eval_many")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalMany {
    /// One answer per known flag, in the order asked (by key for all flags).
    #[serde(default)]
    pub results: Vec<EvalResult>,
    /// Requested keys that name no flag.
    #[serde(default)]
    pub missing: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ErrorCode;
    use rollout_core::AttributeValue;

    fn request(json: &str) -> EvalRequest {
        serde_json::from_str(json).expect("request")
    }

    #[test]
    fn targets_one_many_or_all() {
        let one = request(r#"{"flag": "a", "entity": {"id": "u"}}"#);
        assert_eq!(one.target(), EvalTarget::One("a"));
        let many = request(r#"{"flags": ["a", "b"], "entity": {"id": "u"}}"#);
        assert!(matches!(many.target(), EvalTarget::Many(flags) if flags.len() == 2));
        let all = request(r#"{"entity": {"id": "u"}}"#);
        assert_eq!(all.target(), EvalTarget::All);
        assert!(!all.explain);
        for valid in [one, many, all] {
            assert_eq!(valid.validate(), Ok(()));
        }
    }

    #[test]
    fn caps_are_enforced_with_the_field() {
        let mut too_many = request(r#"{"entity": {"id": "u"}}"#);
        too_many.flags = Some(
            (0..=MAX_BULK_FLAGS)
                .map(|index| format!("f{index}"))
                .collect(),
        );
        let error = too_many.validate().expect_err("too many flags");
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert_eq!(error.field.as_deref(), Some("flags"));

        let both = request(r#"{"flag": "a", "flags": ["b"], "entity": {"id": "u"}}"#);
        assert_eq!(
            both.validate().expect_err("both").field.as_deref(),
            Some("flags")
        );

        let bad_key = request(r#"{"flags": ["ok", "not.ok"], "entity": {"id": "u"}}"#);
        assert_eq!(
            bad_key.validate().expect_err("dot").field.as_deref(),
            Some("flags[1]")
        );

        let mut big_entity = request(r#"{"flag": "a", "entity": {"id": ""}}"#);
        assert_eq!(
            big_entity
                .validate()
                .expect_err("empty id")
                .field
                .as_deref(),
            Some("entity.id")
        );
        big_entity.entity.id = "u".into();
        for index in 0..=MAX_ATTRIBUTES {
            big_entity
                .entity
                .attributes
                .insert(format!("a{index}"), AttributeValue::Bool(true));
        }
        assert_eq!(
            big_entity
                .validate()
                .expect_err("attributes")
                .field
                .as_deref(),
            Some("entity.attributes")
        );
        big_entity.entity.attributes.clear();
        big_entity.entity.attributes.insert(
            "n".repeat(MAX_ATTRIBUTE_NAME_BYTES + 1),
            AttributeValue::Bool(true),
        );
        assert_eq!(
            big_entity
                .validate()
                .expect_err("attribute name")
                .field
                .as_deref(),
            Some("entity.attributes")
        );
    }

    #[test]
    fn results_carry_what_decided_and_explain_on_request() {
        let value = serde_json::Value::Bool(true);
        let evaluation = Evaluation {
            variation: "on",
            value: &value,
            reason: Reason::Rollout,
            rule_id: None,
            rollout_id: Some("r-1"),
            step: Some(2),
            bucket: Some(31_337),
            keyless: false,
        };
        let plain = EvalResult::from_evaluation("new-checkout", 17, &evaluation, false);
        assert_eq!(
            serde_json::to_value(&plain).expect("serialises"),
            serde_json::json!({"flag": "new-checkout", "variation": "on", "value": true, "reason": "rollout",
                               "rollout_id": "r-1", "step": 2, "bucket": 31337, "version": 17})
        );
        let explained = EvalResult::from_evaluation("new-checkout", 17, &evaluation, true);
        let sentence = explained.explanation.expect("explained");
        assert!(
            sentence.contains("rollout r-1 at step 3"),
            "step index 2 is the third step: {sentence}"
        );
        assert!(sentence.contains("31337"), "{sentence}");
    }

    #[test]
    fn a_borrowed_result_encodes_byte_for_byte_as_the_owned_one() {
        let value = serde_json::json!({"limit": 3, "tiers": ["a", "b"], "ratio": 0.5});
        let full = Evaluation {
            variation: "on",
            value: &value,
            reason: Reason::Rollout,
            rule_id: Some("rule-1"),
            rollout_id: Some("r-1"),
            step: Some(2),
            bucket: Some(31_337),
            keyless: false,
        };
        let bare = Evaluation {
            variation: "off",
            value: &serde_json::Value::Null,
            reason: Reason::Default,
            rule_id: None,
            rollout_id: None,
            step: None,
            bucket: None,
            keyless: true,
        };
        for evaluation in [full, bare] {
            for explain in [false, true] {
                let borrowed = EvalResultRef::from_evaluation("flag-a", 9, &evaluation, explain);
                let owned = EvalResult::from_evaluation("flag-a", 9, &evaluation, explain);
                assert_eq!(borrowed.to_result(), owned);
                for encoding in [
                    crate::codec::Encoding::MessagePack,
                    crate::codec::Encoding::Json,
                ] {
                    assert_eq!(
                        crate::codec::encode(&borrowed, encoding).expect("encodes"),
                        crate::codec::encode(&owned, encoding).expect("encodes"),
                        "{evaluation:?}, explain {explain}, {encoding:?}"
                    );
                }
            }
        }
    }
}
