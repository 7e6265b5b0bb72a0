//! Alerts in (SPEC §12): `rollout.alert.<ns>` takes `{alert_id, selector: {flag?, labels?,
//! rollout_id?}, action: pause|rollback, reason}` from an operator or an alerting system and
//! acts on every active rollout the selector matches, once per alert id: a repeated alert
//! gets the first one's result and acts on nothing new.

use rollout_core::{Labels, ValidationErrors};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::envelope::WireError;

/// Longest alert reason, in bytes.
pub const MAX_ALERT_REASON_LEN: usize = 1024;

/// An alert.
#[doc = shape_doc!("alert")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// The alert's identity (Alertmanager's fingerprint, an incident id): acted on once.
    pub alert_id: String,
    /// Which active rollouts it concerns: every given field must match.
    pub selector: AlertSelector,
    /// What it does to them.
    pub action: AlertAction,
    /// Why, kept in each rollout's audit.
    pub reason: String,
}

/// Which active rollouts an alert concerns. At least one field; all given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSelector {
    /// Rollouts of this flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    /// Rollouts of flags carrying all of these labels (`{team: payments}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// This rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
}

/// What an alert does to the rollouts it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertAction {
    /// Pause them (a paused one stays paused).
    Pause,
    /// Roll them back now.
    Rollback,
}

/// What an alert did, per matching rollout.
#[doc = shape_doc!("alert_result")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertResult {
    pub alert_id: String,
    /// The action taken.
    pub action: AlertAction,
    /// A repeat of an alert already acted on: this is the first one's result.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repeated: bool,
    /// Each active rollout the selector matched, in id order.
    #[serde(default)]
    pub rollouts: Vec<AlertedRollout>,
}

/// One rollout an alert matched and what became of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertedRollout {
    pub rollout_id: String,
    /// Its flag.
    pub flag: String,
    /// Its state after the alert (`paused`, `rolled_back`), when the action applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<rollout_core::Lifecycle>,
    /// Why the action did not apply (already paused, finished meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

impl Alert {
    /// Checks what can be checked without state; every problem is reported.
    pub fn validate(&self) -> Result<(), WireError> {
        let mut errors = ValidationErrors::default();
        checks::token(&mut errors, "alert_id", &self.alert_id);
        if self.reason.trim().is_empty() || self.reason.len() > MAX_ALERT_REASON_LEN {
            errors.push(
                "reason",
                format!("say why, in 1..={MAX_ALERT_REASON_LEN} bytes"),
            );
        }
        let selector = &self.selector;
        if selector.flag.is_none() && selector.labels.is_none() && selector.rollout_id.is_none() {
            errors.push(
                "selector",
                "give at least one of flag, labels or rollout_id (an alert never matches everything by accident)",
            );
        }
        if let Some(flag) = &selector.flag {
            checks::token(&mut errors, "selector.flag", flag);
        }
        if let Some(rollout_id) = &selector.rollout_id {
            checks::token(&mut errors, "selector.rollout_id", rollout_id);
        }
        if selector.labels.as_ref().is_some_and(Labels::is_empty) {
            errors.push(
                "selector.labels",
                "give at least one label, or leave labels out",
            );
        }
        checks::finish(errors)
    }
}

/// A stable token `<prefix>-<16 hex digits>` derived from `parts` (xxh3 over them, each
/// ended by a 0xff byte): an idempotency key built from names too long or too free to be
/// tokens themselves (an alert's fingerprint, an alert id with a rollout id).
pub fn derived_token(prefix: &str, parts: &[&str]) -> String {
    let mut bytes = Vec::with_capacity(parts.iter().map(|part| part.len() + 1).sum());
    for part in parts {
        bytes.extend_from_slice(part.as_bytes());
        bytes.push(0xff);
    }
    format!("{prefix}-{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes))
}

impl AlertSelector {
    /// Whether a rollout `rollout_id` of flag `flag` whose flag carries `labels` matches.
    pub fn matches(&self, rollout_id: &str, flag: &str, labels: &Labels) -> bool {
        self.rollout_id.as_deref().is_none_or(|id| id == rollout_id)
            && self.flag.as_deref().is_none_or(|key| key == flag)
            && self.labels.as_ref().is_none_or(|wanted| {
                wanted
                    .iter()
                    .all(|(name, value)| labels.get(name).is_some_and(|have| have == value))
            })
    }
}
