//! `namespace.freeze` and `namespace.unfreeze` (SPEC §12): what they do to a namespace's
//! freezes, decided without IO like every command; the executor reads the freezes, calls
//! [`decide`], and saves the result with a compare-and-set beside its audit entry.

use rollout_core::freeze::Freezes;
use rollout_core::Timestamp;
use rollout_wire::commands::{Command, NamespaceResult};
use rollout_wire::envelope::WireError;
use rollout_wire::events::EventKind;

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
