//! Fleet agents on `rollout.fleet.<ns>.<verb>` (SPEC §3.4, §8.1): registration with labels,
//! heartbeats, "which variation should I run", and applied/failed reports that feed the
//! per-stage counts; with [`FleetRequest`], the closed set an evaluator dispatches on.

use rollout_core::{Attributes, Entity, Labels, ValidationErrors};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::codec::{self, CodecError, Encoding, Limits};
use crate::envelope::WireError;
use crate::subjects::FleetVerb;

/// `rollout.fleet.<ns>.register`: an agent announces itself; it joins label stages by its
/// labels at once, also mid-rollout. Registering again replaces its labels. Reply:
/// [`AgentAck`].
#[doc = shape_doc!("agent_register")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRegister {
    /// Stable agent id; the entity id it is evaluated as.
    pub agent_id: String,
    /// Labels matched by label stages (`env: prod`).
    #[serde(default)]
    pub labels: Labels,
    /// Targeting attributes.
    #[serde(default, skip_serializing_if = "Attributes::is_empty")]
    pub attributes: Attributes,
}

impl AgentRegister {
    /// The entity this agent is evaluated as.
    pub fn entity(&self) -> Entity {
        Entity {
            id: self.agent_id.clone(),
            attributes: self.attributes.clone(),
            labels: self.labels.clone(),
        }
    }
}

/// `rollout.fleet.<ns>.heartbeat`: the agent is alive. An unknown agent gets `not_found` and
/// registers again. Reply: [`AgentAck`].
#[doc = shape_doc!("agent_heartbeat")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentHeartbeat {
    pub agent_id: String,
}

/// `rollout.fleet.<ns>.desired`: which variation of `flag` the agent should run. Reply:
/// [`Desired`].
#[doc = shape_doc!("desired_query")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredQuery {
    /// Agent id (registered).
    pub agent_id: String,
    /// Flag key.
    pub flag: String,
}

/// Reply to `desired`.
#[doc = shape_doc!("desired")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    /// Flag key.
    pub flag: String,
    /// Variation id to run.
    pub variation: String,
    /// Its value (a version string, a configuration object, ...).
    pub value: serde_json::Value,
    /// The rollout that decided, if one is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// The label stage the agent belongs to in that rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Per-flag state version the answer was computed from.
    pub version: u64,
}

/// Whether an agent managed to apply a variation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    /// Running the variation; counts as `completed` in its stage.
    Applied,
    /// Could not apply it; counts as an error in its stage.
    Failed,
}

/// `rollout.fleet.<ns>.report`: the agent applied (or failed to apply) a variation. Reply:
/// [`AgentAck`]. Refused, changing nothing, when the agent is not registered (`not_found`),
/// the flag does not exist (`not_found`) or has no such variation (`invalid_argument`), the
/// named rollout does not exist (`not_found`) or rolls out another flag
/// (`invalid_argument`), or no rollout is named and the flag has none active
/// (`failed_precondition`).
#[doc = shape_doc!("agent_report")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentReport {
    pub agent_id: String,
    /// Flag key.
    pub flag: String,
    /// The rollout whose variation this was, when the agent knows it (from [`Desired`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// Variation id applied or attempted.
    pub variation: String,
    /// Applied or failed.
    pub status: ReportStatus,
    /// What went wrong, for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Reply to `register`, `heartbeat` and `report`.
#[doc = shape_doc!("agent_ack")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentAck {
    /// The agent acknowledged.
    pub agent_id: String,
}

/// Any fleet call, as the evaluator dispatches it: the subject's verb picks the body type.
#[derive(Clone, Debug, PartialEq)]
pub enum FleetRequest {
    /// `register`.
    Register(AgentRegister),
    /// `heartbeat`.
    Heartbeat(AgentHeartbeat),
    /// `desired`.
    Desired(DesiredQuery),
    /// `report`.
    Report(AgentReport),
}

impl FleetRequest {
    /// Decodes the body of a fleet call received on a subject with `verb`.
    pub fn decode(
        verb: FleetVerb,
        bytes: &[u8],
        encoding: Encoding,
    ) -> Result<FleetRequest, CodecError> {
        let limits = Limits::REQUESTS;
        Ok(match verb {
            FleetVerb::Register => {
                FleetRequest::Register(codec::decode_with(bytes, encoding, limits)?)
            }
            FleetVerb::Heartbeat => {
                FleetRequest::Heartbeat(codec::decode_with(bytes, encoding, limits)?)
            }
            FleetVerb::Desired => {
                FleetRequest::Desired(codec::decode_with(bytes, encoding, limits)?)
            }
            FleetVerb::Report => FleetRequest::Report(codec::decode_with(bytes, encoding, limits)?),
        })
    }

    /// The verb, i.e. the subject this call travels on.
    pub fn verb(&self) -> FleetVerb {
        match self {
            FleetRequest::Register(_) => FleetVerb::Register,
            FleetRequest::Heartbeat(_) => FleetVerb::Heartbeat,
            FleetRequest::Desired(_) => FleetVerb::Desired,
            FleetRequest::Report(_) => FleetVerb::Report,
        }
    }

    /// The calling agent.
    pub fn agent_id(&self) -> &str {
        match self {
            FleetRequest::Register(request) => &request.agent_id,
            FleetRequest::Heartbeat(request) => &request.agent_id,
            FleetRequest::Desired(request) => &request.agent_id,
            FleetRequest::Report(request) => &request.agent_id,
        }
    }

    /// Checks the caps: agent ids like entity ids, labels and attributes like an entity's,
    /// flag keys are tokens, messages at most 4 KiB. Every problem is reported.
    pub fn validate(&self) -> Result<(), WireError> {
        let mut errors = ValidationErrors::default();
        checks::bounded_text(
            &mut errors,
            "agent_id",
            self.agent_id(),
            checks::MAX_ID_BYTES,
        );
        match self {
            FleetRequest::Register(request) => {
                checks::validate_labels(&request.labels, "labels", &mut errors);
                checks::validate_attributes(&request.attributes, "attributes", &mut errors);
            }
            FleetRequest::Heartbeat(_) => {}
            FleetRequest::Desired(request) => checks::token(&mut errors, "flag", &request.flag),
            FleetRequest::Report(request) => {
                checks::token(&mut errors, "flag", &request.flag);
                checks::token(&mut errors, "variation", &request.variation);
                if let Some(rollout_id) = &request.rollout_id {
                    checks::token(&mut errors, "rollout_id", rollout_id);
                }
                if let Some(message) = &request.message {
                    if message.len() > checks::MAX_MESSAGE_BYTES {
                        errors.push(
                            "message",
                            format!("must be at most {} bytes", checks::MAX_MESSAGE_BYTES),
                        );
                    }
                }
            }
        }
        checks::finish(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verb_picks_the_body_and_validation_names_fields() {
        let body = br#"{"agent_id": "edge-7", "flag": "agent-version", "variation": "v2", "status": "failed",
                        "message": "disk full"}"#;
        let request =
            FleetRequest::decode(FleetVerb::Report, body, Encoding::Json).expect("report");
        assert_eq!(request.verb(), FleetVerb::Report);
        assert_eq!(request.agent_id(), "edge-7");
        assert_eq!(request.validate(), Ok(()));
        assert!(FleetRequest::decode(FleetVerb::Heartbeat, body, Encoding::Json).is_err());

        let bad = FleetRequest::Desired(DesiredQuery {
            agent_id: String::new(),
            flag: "a.b".into(),
        });
        let error = bad.validate().expect_err("invalid");
        assert_eq!(error.field.as_deref(), Some("agent_id"));
        assert_eq!(error.details.len(), 2);
    }

    #[test]
    fn a_registered_agent_is_an_entity_with_its_labels() {
        let register: AgentRegister =
            serde_json::from_str(r#"{"agent_id": "edge-7", "labels": {"env": "prod"}}"#)
                .expect("register");
        let entity = register.entity();
        assert_eq!(entity.id, "edge-7");
        assert_eq!(entity.labels.get("env").map(String::as_str), Some("prod"));
    }
}
