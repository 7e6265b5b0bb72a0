//! Outcome reports on `rollout.metrics.<ns>` (SPEC §6): SDKs and agents publish, one at a
//! time or in batches, whether an entity's use of a variation succeeded; kill switches
//! count them per flag, guards per rollout and side (SPEC §11.1), over windows. Published
//! without a reply.

use rollout_core::ValidationErrors;
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::codec::{self, CodecError, CodecErrorKind, Encoding};
use crate::envelope::WireError;

/// Most reports one batch may carry.
pub const MAX_OUTCOME_BATCH: usize = 1000;

/// Whether a use of a variation went well.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It worked.
    Success,
    /// It failed; counts towards the error rate.
    Error,
}

/// One outcome.
#[doc = shape_doc!("outcome_report")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeReport {
    /// Flag key.
    pub flag: String,
    /// Entity id.
    pub entity: String,
    /// Variation the entity was served.
    pub variation: String,
    /// Success or error.
    pub outcome: Outcome,
    /// A measurement (latency, amount), for future metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The rollout that decided the evaluation (its `rollout_id`), when the reporter knows
    /// it. Counted for that rollout only while it is the flag's active one; without it the
    /// outcome goes to whichever rollout is active when the report arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
}

impl OutcomeReport {
    /// Records problems under `path`: the flag, variation and rollout id are tokens, the
    /// entity id within the entity caps, the value finite.
    pub fn check(&self, path: &str, errors: &mut ValidationErrors) {
        checks::token(errors, &format!("{path}flag"), &self.flag);
        checks::token(errors, &format!("{path}variation"), &self.variation);
        if let Some(rollout_id) = &self.rollout_id {
            checks::token(errors, &format!("{path}rollout_id"), rollout_id);
        }
        checks::bounded_text(
            errors,
            format!("{path}entity"),
            &self.entity,
            checks::MAX_ID_BYTES,
        );
        if self.value.is_some_and(|value| !value.is_finite()) {
            errors.push(format!("{path}value"), "must be a finite number");
        }
    }

    /// [`OutcomeReport::check`] for a report sent on its own.
    pub fn validate(&self) -> Result<(), WireError> {
        let mut errors = ValidationErrors::default();
        self.check("", &mut errors);
        checks::finish(errors)
    }
}

/// Several outcomes in one message.
#[doc = shape_doc!("outcome_batch")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeBatch {
    /// The reports, at most [`MAX_OUTCOME_BATCH`].
    pub outcomes: Vec<OutcomeReport>,
}

impl OutcomeBatch {
    /// Checks the batch size and every report.
    pub fn validate(&self) -> Result<(), WireError> {
        let mut errors = ValidationErrors::default();
        if self.outcomes.len() > MAX_OUTCOME_BATCH {
            errors.push(
                "outcomes",
                format!("at most {MAX_OUTCOME_BATCH} reports per batch"),
            );
        } else {
            for (index, report) in self.outcomes.iter().enumerate() {
                report.check(&format!("outcomes[{index}]."), &mut errors);
            }
        }
        checks::finish(errors)
    }
}

/// Decodes a `rollout.metrics` message, single or batch, into its reports.
pub fn decode_outcomes(bytes: &[u8], encoding: Encoding) -> Result<Vec<OutcomeReport>, CodecError> {
    let batch_error = match codec::decode::<OutcomeBatch>(bytes, encoding) {
        Ok(batch) => return Ok(batch.outcomes),
        Err(error) => error,
    };
    if batch_error.kind() != CodecErrorKind::Invalid {
        // size, depth and syntax problems are the same whichever form was meant
        return Err(batch_error);
    }
    match codec::decode::<OutcomeReport>(bytes, encoding) {
        Ok(report) => Ok(vec![report]),
        Err(single_error) => {
            let meant_batch = batch_error
                .field()
                .is_some_and(|field| field.starts_with("outcomes["));
            Err(if meant_batch {
                batch_error
            } else {
                single_error
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_batch_forms_decode() {
        let single = br#"{"flag": "f", "entity": "u-1", "variation": "on", "outcome": "error"}"#;
        let reports = decode_outcomes(single, Encoding::Json).expect("single");
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].outcome, Outcome::Error);

        let batch = br#"{"outcomes": [{"flag": "f", "entity": "u-1", "variation": "on", "outcome": "success"},
                                      {"flag": "f", "entity": "u-2", "variation": "off", "outcome": "error", "value": 12.5}]}"#;
        assert_eq!(
            decode_outcomes(batch, Encoding::Json).expect("batch").len(),
            2
        );
    }

    #[test]
    fn errors_point_into_the_form_that_was_meant() {
        let bad_batch = br#"{"outcomes": [{"flag": "f", "entity": "u-1", "variation": "on", "outcome": "meh"}]}"#;
        let error = decode_outcomes(bad_batch, Encoding::Json).expect_err("bad batch");
        assert_eq!(error.field(), Some("outcomes[0].outcome"));

        let bad_single = br#"{"flag": "f", "entity": "u-1", "variation": "on"}"#;
        let error = decode_outcomes(bad_single, Encoding::Json).expect_err("bad single");
        assert_eq!(error.field(), Some("outcome"));

        let batch = OutcomeBatch {
            outcomes: vec![OutcomeReport {
                flag: "f".into(),
                entity: String::new(),
                variation: "on".into(),
                outcome: Outcome::Success,
                value: Some(f64::NAN),
                rollout_id: None,
            }],
        };
        let error = batch.validate().expect_err("invalid");
        assert_eq!(error.field.as_deref(), Some("outcomes[0].entity"));
        assert_eq!(error.details.len(), 2);
    }
}
