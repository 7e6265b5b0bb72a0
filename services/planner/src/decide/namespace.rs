//! The namespace commands (SPEC §12), decided without IO like every command:
//! `namespace.freeze` and `namespace.unfreeze` change the namespace's freezes (the executor
//! reads them, calls [`decide`], and saves the result with a compare-and-set beside its
//! audit entry); `namespace.webhook.put` and `namespace.webhook.delete` change its webhooks
//! ([`decide_webhook`]).

use rollout_core::freeze::Freezes;
use rollout_core::Timestamp;
use rollout_store::webhooks::{Webhook, WebhookRecord};
use rollout_wire::commands::{Command, NamespaceResult};
use rollout_wire::envelope::WireError;
use rollout_wire::events::EventKind;
use rollout_wire::webhooks::MAX_WEBHOOKS;

use super::DecideContext;

/// A namespace command's outcome: the freezes to save, what happened and the reply.
#[derive(Clone, Debug, PartialEq)]
pub struct NamespaceChange {
    /// The freezes after the command.
    pub freezes: Freezes,
    /// `namespace_frozen` or `namespace_unfrozen`, for the audit.
    pub kind: EventKind,
    /// The reply.
    pub reply: NamespaceResult,
}

/// Decides a namespace command on the freezes as read. `None` for other commands.
pub fn decide(
    command: &Command,
    freezes: &Freezes,
    context: &DecideContext,
) -> Option<Result<NamespaceChange, WireError>> {
    let mut freezes = freezes.clone();
    let actor = context.actor.as_deref();
    let kind = match command {
        Command::NamespaceFreeze(freeze) => {
            let until = match freeze.until.as_deref().map(Timestamp::parse_rfc3339) {
                None => None,
                Some(Ok(until)) => Some(until),
                Some(Err(message)) => {
                    return Some(Err(WireError::invalid_argument("until", message)))
                }
            };
            if let Err(rejection) = freezes.freeze(&freeze.reason, until, actor, context.now) {
                return Some(Err(rejection.into()));
            }
            EventKind::NamespaceFrozen
        }
        Command::NamespaceUnfreeze(_) => {
            if let Err(rejection) = freezes.unfreeze(actor, context.now) {
                return Some(Err(rejection.into()));
            }
            EventKind::NamespaceUnfrozen
        }
        _ => return None,
    };
    let reply = NamespaceResult {
        namespace: context.namespace.clone(),
        frozen: freezes.active_at(context.now).cloned(),
        past: freezes.past.clone(),
    };
    Some(Ok(NamespaceChange {
        freezes,
        kind,
        reply,
    }))
}

/// What a webhook command does.
#[derive(Clone, Debug, PartialEq)]
pub enum WebhookChange {
    /// Save this record (new or replacing the one with its id).
    Put(WebhookRecord),
    /// Remove the webhook with this id.
    Delete(String),
}

impl WebhookChange {
    /// The namespace audit entry's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            WebhookChange::Put(_) => EventKind::WebhookSaved,
            WebhookChange::Delete(_) => EventKind::WebhookDeleted,
        }
    }

    /// The audit entry's details: what changed, never the secret.
    pub fn details(&self, existing: &[Webhook]) -> serde_json::Value {
        match self {
            WebhookChange::Put(record) => serde_json::json!({
                "id": record.id,
                "url": record.url,
                "events": record.events,
                "replaced": existing.iter().any(|webhook| webhook.record.id == record.id),
            }),
            WebhookChange::Delete(id) => serde_json::json!({
                "id": id,
                "url": existing
                    .iter()
                    .find(|webhook| webhook.record.id == *id)
                    .map(|webhook| webhook.record.url.clone()),
            }),
        }
    }
}

/// Decides a webhook command on the namespace's webhooks as read. `None` for other
/// commands. A put beyond [`MAX_WEBHOOKS`] and the delete of an unknown id are refused.
pub fn decide_webhook(
    command: &Command,
    existing: &[Webhook],
    context: &DecideContext,
) -> Option<Result<WebhookChange, WireError>> {
    let known = |id: &str| existing.iter().any(|webhook| webhook.record.id == id);
    Some(match command {
        Command::WebhookPut(put) => {
            if !known(&put.id) && existing.len() >= MAX_WEBHOOKS {
                Err(WireError::failed_precondition(format!(
                    "namespace {} has {MAX_WEBHOOKS} webhooks, the most it may have; delete one first",
                    context.namespace
                ))
                .with_field("id"))
            } else {
                Ok(WebhookChange::Put(WebhookRecord {
                    id: put.id.clone(),
                    url: put.url.clone(),
                    secret: put.secret.clone(),
                    events: put.events.clone(),
                    updated_by: context.actor.clone(),
                    updated_at: context.now,
                }))
            }
        }
        Command::WebhookDelete(delete) => {
            if known(&delete.id) {
                Ok(WebhookChange::Delete(delete.id.clone()))
            } else {
                Err(WireError::not_found(format!(
                    "namespace {} has no webhook {}",
                    context.namespace, delete.id
                ))
                .with_field("id"))
            }
        }
        _ => return None,
    })
}
