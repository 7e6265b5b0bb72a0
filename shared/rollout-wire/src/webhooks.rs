//! Notifications (SPEC §12): per-namespace webhooks told of every transition and gate hold.
//!
//! - `rollout.cmd.<ns>.namespace.webhook.put {id, url, secret, events?}` adds a webhook or
//!   replaces its address, secret and event filter (keeping its place in the stream);
//!   `namespace.webhook.delete {id}` removes it. Both reply with the namespace's webhooks
//!   ([`WebhookList`]), as does the query `rollout.query.<ns>.namespace.webhooks`. Secrets
//!   are never shown again.
//! - Every commit appends its events to the namespace's notification stream while the
//!   namespace has a webhook; the planners deliver each entry to each webhook, in order, as
//!   a POST of a [`Notification`] signed with HMAC-SHA256 ([`signature`]), at least once,
//!   under an idempotency key that stays the same across retries; a failed delivery is
//!   retried with exponential backoff and, after the last attempt, given up and counted.
//!   Delivery state ([`Delivery`]) shows in the webhook list, in rollout status while a
//!   webhook fails, and in the planner's metrics.

use hmac::{Hmac, Mac};
use rollout_core::freeze::Freeze;
use rollout_core::{Timestamp, ValidationErrors, WaitingFor};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::checks;
use crate::events::{ChangeEvent, EventKind};

/// Longest webhook address, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Shortest and longest signing secret, in bytes.
pub const SECRET_LEN: std::ops::RangeInclusive<usize> = 16..=256;
/// Most webhooks one namespace may have.
pub const MAX_WEBHOOKS: usize = 16;
/// Header carrying the idempotency key: the same on every attempt of one delivery.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Header carrying the signing time, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Rollout-Timestamp";
/// Header carrying `sha256=<hex>`, the HMAC-SHA256 of `<timestamp>.<body>` under the secret.
pub const SIGNATURE_HEADER: &str = "X-Rollout-Signature";
/// Header naming the notification's kind (`rollout_step`, …).
pub const EVENT_HEADER: &str = "X-Rollout-Event";
/// Header counting attempts of this delivery, from 1.
pub const ATTEMPT_HEADER: &str = "X-Rollout-Attempt";

/// `namespace.webhook.put`: adds webhook `id` or replaces its address, secret and filter.
#[doc = shape_doc!("webhook_put")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookPut {
    /// Idempotency key; one subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Who asks, for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The webhook's name in the namespace; one token.
    pub id: String,
    /// Where notifications are POSTed: an `http://` or `https://` address.
    pub url: String,
    /// The HMAC-SHA256 key of the signature header (16..=256 bytes); never shown again.
    pub secret: String,
    /// The event kinds it is told of; every kind when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventKind>,
}

impl WebhookPut {
    /// Reports every bad field into `errors`.
    pub(crate) fn validate_into(&self, errors: &mut ValidationErrors) {
        checks::token(errors, "id", &self.id);
        if let Err(problem) = check_url(&self.url) {
            errors.push("url", problem);
        }
        if !SECRET_LEN.contains(&self.secret.len()) {
            errors.push(
                "secret",
                format!(
                    "a signing secret has {}..={} bytes; this one has {}",
                    SECRET_LEN.start(),
                    SECRET_LEN.end(),
                    self.secret.len()
                ),
            );
        }
        for (index, kind) in self.events.iter().enumerate() {
            if self.events[..index].contains(kind) {
                errors.push(format!("events[{index}]"), "named twice");
            }
        }
    }
}

/// `namespace.webhook.delete`: removes webhook `id` and what it had yet to be told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDelete {
    /// Idempotency key; one subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Who asks, for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The webhook.
    pub id: String,
}

/// `rollout.query.<ns>.namespace.webhooks`: the namespace's webhooks (no fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksQuery {}

/// A namespace's webhooks with their delivery state: the reply to the webhook commands and
/// to the `namespace.webhooks` query.
#[doc = shape_doc!("webhook_list")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookList {
    pub namespace: String,
    /// By id (always present: it tells this reply from a namespace result).
    pub webhooks: Vec<WebhookView>,
}

/// One webhook as shown: everything but its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    /// The kinds it is told of; every kind when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventKind>,
    /// Who last put it, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    pub updated_at: Timestamp,
    /// How its deliveries go.
    pub delivery: Delivery,
}

/// How a webhook's deliveries go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Notifications it acknowledged (a 2xx answer).
    #[serde(default)]
    pub delivered: u64,
    /// Notifications given up after the last attempt.
    #[serde(default)]
    pub given_up: u64,
    /// Notifications waiting for it (at most the count a status reads; 0 when not read).
    #[serde(default)]
    pub pending: u64,
    /// Failed attempts of the notification at the head of its queue.
    #[serde(default)]
    pub attempts: u32,
    /// Since when its deliveries fail (cleared by the next success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<Timestamp>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the head of its queue is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
    /// When it last acknowledged a notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivered_at: Option<Timestamp>,
    /// The idempotency key of the last notification given up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_given_up: Option<String>,
}

impl Delivery {
    /// Whether its deliveries currently fail.
    pub fn failing(&self) -> bool {
        self.failing_since.is_some()
    }
}

/// What a commit appends to the notification stream: a rollout or flag event (without its
/// flag snapshot), or a namespace change (a freeze or its end).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    /// A change event as published on `rollout.events.<ns>.<flag>`, snapshot removed.
    Event(Box<ChangeEvent>),
    /// A namespace freeze or its end.
    Namespace {
        kind: EventKind,
        time: Timestamp,
        actor: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        freeze: Option<Freeze>,
    },
}

impl Notice {
    /// A change event's notice: the event without its snapshot (receivers are told what
    /// happened, not the flag's whole definition).
    pub fn of_event(event: &ChangeEvent) -> Notice {
        let mut event = event.clone();
        event.snapshot = None;
        Notice::Event(Box::new(event))
    }

    /// The kind of event, for webhook filters.
    pub fn kind(&self) -> EventKind {
        match self {
            Notice::Event(event) => event.kind,
            Notice::Namespace { kind, .. } => *kind,
        }
    }

    /// The body a webhook receives for this notice, stored under idempotency key `id`.
    pub fn notification(&self, id: &str, namespace: &str) -> Notification {
        match self {
            Notice::Event(event) => Notification {
                id: id.to_owned(),
                namespace: namespace.to_owned(),
                kind: event.kind,
                time: event.time,
                actor: event.actor.clone(),
                flag: Some(event.flag.clone()),
                rollout_id: event.rollout_id.clone(),
                hold: Hold::of(event),
                event: Some(event.clone()),
                freeze: None,
            },
            Notice::Namespace {
                kind,
                time,
                actor,
                freeze,
            } => Notification {
                id: id.to_owned(),
                namespace: namespace.to_owned(),
                kind: *kind,
                time: *time,
                actor: Some(actor.clone()),
                flag: None,
                rollout_id: None,
                hold: None,
                event: None,
                freeze: freeze.clone(),
            },
        }
    }
}

/// The body of a webhook POST (JSON). The same notification keeps its `id` — also the
/// `Idempotency-Key` header — on every attempt.
#[doc = shape_doc!("notification")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The idempotency key: `<namespace>:<stream entry id>`, unique per notification.
    pub id: String,
    pub namespace: String,
    /// What happened.
    pub kind: EventKind,
    /// When (Redis time of the commit).
    pub time: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// The rollout now holds at a gate no clock opens (an approval, a `continue`, a health
    /// condition): what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// The change event (without the flag snapshot), for rollout and flag notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Box<ChangeEvent>>,
    /// The freeze, for `namespace_frozen` and `namespace_unfrozen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze: Option<Freeze>,
}

/// A gate the rollout holds at after the change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The step it holds at.
    pub step: usize,
    /// What opens the gate: `approval`, `continue` or `guard`.
    pub waiting_for: WaitingFor,
}

impl Hold {
    /// The gate `event`'s rollout holds at right after it, if one no clock opens.
    fn of(event: &ChangeEvent) -> Option<Hold> {
        let eta = event.eta?;
        let waiting_for = eta.blocked_by?;
        let holds_now = eta.blocked_from.is_some_and(|from| from <= event.time);
        let gate = matches!(
            waiting_for,
            WaitingFor::Approval | WaitingFor::Continue | WaitingFor::Guard
        );
        (holds_now && gate).then_some(Hold {
            step: eta.blocked_at_step?,
            waiting_for,
        })
    }
}

/// The signature header's value for `body` signed at `timestamp` (Unix seconds):
/// `sha256=` and the lowercase hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let digest = mac_of(secret, timestamp, body).finalize().into_bytes();
    let mut text = String::with_capacity(7 + digest.len() * 2);
    text.push_str("sha256=");
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Checks a received notification: `signature_header` must be the signature of `body` at
/// `timestamp` under `secret` (compared in constant time).
pub fn verify(secret: &[u8], timestamp: i64, body: &[u8], signature_header: &str) -> bool {
    let Some(hex) = signature_header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    mac_of(secret, timestamp, body)
        .verify_slice(&expected)
        .is_ok()
}

fn mac_of(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect()
}

/// Checks a webhook address: `http://` or `https://`, a host, no spaces, at most
/// [`MAX_URL_LEN`] bytes.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("at most {MAX_URL_LEN} bytes"));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// address"))?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("an address has no spaces or control characters".to_owned());
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("{url:?} names no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // computed independently with
        // `printf '1733450000.{"a":1}' | openssl dgst -sha256 -hmac 'whsec-0123456789abcdef'`
        let header = signature(b"whsec-0123456789abcdef", 1_733_450_000, br#"{"a":1}"#);
        assert_eq!(
            header,
            "sha256=07548c1fe3a958024604341fc61198cbbc1cef9fa95fe431eff00760507dd120"
        );
        assert!(verify(
            b"whsec-0123456789abcdef",
            1_733_450_000,
            br#"{"a":1}"#,
            &header
        ));
        assert!(!verify(
            b"whsec-0123456789abcdeX",
            1_733_450_000,
            br#"{"a":1}"#,
            &header
        ));
        assert!(!verify(
            b"whsec-0123456789abcdef",
            1_733_450_001,
            br#"{"a":1}"#,
            &header
        ));
        assert!(!verify(
            b"whsec-0123456789abcdef",
            1_733_450_000,
            br#"{"a":2}"#,
            &header
        ));
        assert!(!verify(
            b"whsec-0123456789abcdef",
            1_733_450_000,
            br#"{"a":1}"#,
            "sha256=zz"
        ));
    }

    #[test]
    fn a_stored_reply_reads_back_as_what_it_was() {
        use crate::commands::{CommandReply, NamespaceResult};
        let list = CommandReply::Webhooks(WebhookList {
            namespace: "prod".into(),
            webhooks: Vec::new(),
        });
        let namespace = CommandReply::Namespace(NamespaceResult {
            namespace: "prod".into(),
            frozen: None,
            past: Vec::new(),
        });
        for reply in [list, namespace] {
            let json = serde_json::to_vec(&reply).expect("json");
            let again: CommandReply = serde_json::from_slice(&json).expect("reads back");
            assert_eq!(again, reply);
        }
    }

    #[test]
    fn addresses_need_a_scheme_and_a_host() {
        assert_eq!(check_url("https://hooks.example.com/rollouts"), Ok(()));
        assert_eq!(check_url("http://127.0.0.1:8080/x?y=1"), Ok(()));
        for bad in [
            "ftp://example.com",
            "hooks.example.com",
            "https://",
            "https:///path",
            "http://:80/x",
            "https://exa mple.com",
        ] {
            assert!(check_url(bad).is_err(), "{bad} must be refused");
        }
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(MAX_URL_LEN))).is_err());
    }

    #[test]
    fn a_put_names_every_bad_field() {
        let put = WebhookPut {
            command_id: None,
            actor: None,
            id: "a b".into(),
            url: "mailto:x".into(),
            secret: "short".into(),
            events: vec![EventKind::RolloutStep, EventKind::RolloutStep],
        };
        let error = crate::Command::WebhookPut(put)
            .validate()
            .expect_err("invalid");
        let fields: Vec<&str> = error
            .details
            .iter()
            .map(|detail| detail.field.as_str())
            .collect();
        assert_eq!(fields, ["id", "url", "secret", "events[1]"]);
    }
}
