//! The Alertmanager webhook receiver's mapping (SPEC §12 "Alerts in"): a webhook payload
//! (`version: "4"`, `alerts: [{status, labels, annotations, fingerprint, startsAt}]`) becomes
//! one [`Alert`] per *firing* alert, sent to the planner on `rollout.alert.<ns>`.
//!
//! How an alert selects rollouts, from its labels: `rollout_flag` names a flag,
//! `rollout_id` a rollout, and the labels listed in the receiver URL's `match` parameter
//! (`?match=team,service`) must equal the flag's own labels. The action is the URL's
//! `action` (`pause`, the default, or `rollback`), overridden by an alert's `rollout_action`
//! label. The alert id is Alertmanager's fingerprint with the time the alert started, so
//! a notification Alertmanager repeats acts once, and an alert that fires again later acts
//! again. Resolved alerts change nothing.

use std::collections::BTreeMap;

use rollout_core::Labels;
use rollout_wire::alerts::{derived_token, Alert, AlertAction, AlertSelector};
use serde::Deserialize;

/// The parts of an Alertmanager webhook payload the receiver reads.
#[derive(Clone, Debug, Deserialize)]
pub struct Webhook {
    /// The payload's version (`"4"`), read to refuse what is not Alertmanager's shape.
    #[serde(default)]
    pub version: Option<String>,
    /// The alerts of the notification.
    #[serde(default)]
    pub alerts: Vec<WebhookAlert>,
}

/// One alert of a notification.
#[derive(Clone, Debug, Deserialize)]
pub struct WebhookAlert {
    /// `firing` or `resolved`.
    pub status: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its annotations (`summary` becomes the reason).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Alertmanager's identity of the label set.
    #[serde(default)]
    pub fingerprint: String,
    /// When it started firing.
    #[serde(default, rename = "startsAt")]
    pub starts_at: String,
}

/// The receiver URL's parameters.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverParams {
    /// `pause` (default) or `rollback`.
    #[serde(default)]
    pub action: Option<String>,
    /// Alert labels that must equal the flag's labels, comma-separated.
    #[serde(default, rename = "match")]
    pub match_labels: Option<String>,
}

/// The alerts to send for `webhook`, or what is wrong with the request (field, message).
pub fn alerts(
    webhook: &Webhook,
    params: &ReceiverParams,
) -> Result<Vec<Alert>, (&'static str, String)> {
    let default_action = parse_action(params.action.as_deref().unwrap_or("pause"))
        .ok_or(("action", "use pause or rollback".to_owned()))?;
    let matched: Vec<&str> = params
        .match_labels
        .as_deref()
        .map(|names| {
            names
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let mut alerts = Vec::new();
    for alert in webhook
        .alerts
        .iter()
        .filter(|alert| alert.status == "firing")
    {
        let action = match alert.labels.get("rollout_action") {
            Some(text) => parse_action(text).ok_or((
                "alerts.labels.rollout_action",
                format!("{text:?}: use pause or rollback"),
            ))?,
            None => default_action,
        };
        let labels: Labels = matched
            .iter()
            .filter_map(|name| {
                alert
                    .labels
                    .get(*name)
                    .map(|value| ((*name).to_owned(), value.clone()))
            })
            .collect();
        let selector = AlertSelector {
            flag: alert.labels.get("rollout_flag").cloned(),
            labels: (!labels.is_empty()).then_some(labels),
            rollout_id: alert.labels.get("rollout_id").cloned(),
        };
        let name = alert
            .labels
            .get("alertname")
            .map_or("alert", String::as_str);
        let reason = alert.annotations.get("summary").map_or_else(
            || format!("{name} firing"),
            |summary| format!("{name}: {summary}"),
        );
        alerts.push(Alert {
            alert_id: alert_id(&alert.fingerprint, &alert.starts_at, &alert.labels),
            selector,
            action,
            reason,
        });
    }
    Ok(alerts)
}

fn parse_action(text: &str) -> Option<AlertAction> {
    match text {
        "pause" => Some(AlertAction::Pause),
        "rollback" => Some(AlertAction::Rollback),
        _ => None,
    }
}

/// `am-<hex>`: a stable token from the fingerprint (or, without one, the labels) and the
/// start time.
fn alert_id(fingerprint: &str, starts_at: &str, labels: &BTreeMap<String, String>) -> String {
    if fingerprint.is_empty() {
        let mut parts: Vec<&str> = labels
            .iter()
            .flat_map(|(name, value)| [name.as_str(), value.as_str()])
            .collect();
        parts.push(starts_at);
        derived_token("am", &parts)
    } else {
        derived_token("am", &[fingerprint, starts_at])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(json: serde_json::Value) -> Webhook {
        serde_json::from_value(json).expect("payload")
    }

    #[test]
    fn firing_alerts_become_alerts_and_resolved_ones_nothing() {
        let payload = webhook(serde_json::json!({"version": "4", "status": "firing",
        "alerts": [
            {"status": "firing", "labels": {"alertname": "HighErrorRate", "team": "payments",
             "severity": "page"}, "annotations": {"summary": "7% errors"},
             "fingerprint": "3f9a1c", "startsAt": "2026-12-06T01:00:00Z"},
            {"status": "resolved", "labels": {"alertname": "Old", "team": "payments"},
             "fingerprint": "beef", "startsAt": "2026-12-05T01:00:00Z"},
            {"status": "firing", "labels": {"alertname": "Broken", "rollout_id": "r-1",
             "rollout_action": "rollback"}, "fingerprint": "c0de",
             "startsAt": "2026-12-06T01:00:00Z"}
        ]}));
        let params = ReceiverParams {
            action: None,
            match_labels: Some("team, service".into()),
        };
        let alerts = alerts(&payload, &params).expect("valid");
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].action, AlertAction::Pause);
        assert_eq!(
            alerts[0]
                .selector
                .labels
                .as_ref()
                .and_then(|l| l.get("team")),
            Some(&"payments".to_owned())
        );
        assert_eq!(alerts[0].reason, "HighErrorRate: 7% errors");
        assert_eq!(alerts[1].action, AlertAction::Rollback);
        assert_eq!(alerts[1].selector.rollout_id.as_deref(), Some("r-1"));
        assert!(alerts[1].selector.labels.is_none());
        // the same notification again gives the same ids; a later firing another
        let again = super::alerts(&payload, &params).expect("valid");
        assert_eq!(again[0].alert_id, alerts[0].alert_id);
        assert_ne!(alerts[0].alert_id, alerts[1].alert_id);
        for alert in &alerts {
            assert_eq!(alert.validate(), Ok(()));
        }
    }

    #[test]
    fn a_bad_action_is_named() {
        let payload = webhook(serde_json::json!({"alerts": []}));
        let params = ReceiverParams {
            action: Some("explode".into()),
            match_labels: None,
        };
        assert_eq!(alerts(&payload, &params).expect_err("bad").0, "action");
    }
}
