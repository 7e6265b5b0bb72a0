//! Change events on `rollout.events.<ns>.<flag>` (SPEC §7, §9): one per accepted command and
//! per transition, relayed from the Redis outbox. Each carries the flag's new state version
//! and, normally, the whole evaluable state of the flag, so an evaluator applies it without
//! reading Redis.
//!
//! **Architecture Invariant:** `version` rises strictly per flag. An evaluator applies an
//! event only when its version is above the one it holds; a version more than one above is a
//! gap, and the evaluator resynchronises that flag from Redis.

use rollout_core::guard::GuardFigures;
use rollout_core::{
    CompiledFlag, Effect, Eta, Flag, Lifecycle, RolloutView, Share, Timestamp, ValidationErrors,
};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, Encoding, Limits};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// `flag.create` was accepted.
    FlagCreated,
    /// `flag.update` was accepted.
    FlagUpdated,
    /// The flag was enabled (by command, or by its rollout starting).
    FlagEnabled,
    /// The flag was disabled by command.
    FlagDisabled,
    /// The flag was deleted; the event carries no snapshot.
    FlagDeleted,
    /// A rollout was created (queued, or started at once: a `rollout_started` follows).
    RolloutCreated,
    /// A rollout left `queued`.
    RolloutStarted,
    /// A rollout entered another step (`from_step` → `to_step`, `skipped` by catch-up).
    RolloutStep,
    /// A rollout was paused by an operator or a guard.
    RolloutPaused,
    /// A rollout was resumed.
    RolloutResumed,
    /// An actor approved a rollout's current step (`details`: actor, approvals, required);
    /// the last approval it needs is followed by the step change it allows, if any.
    RolloutApproved,
    /// The steps after a rollout's current one were replaced (`details`: `old_steps`,
    /// `new_steps`).
    RolloutRescheduled,
    /// A rollout reached the end of its plan.
    RolloutCompleted,
    /// A rollout ended early keeping a share.
    RolloutStopped,
    /// A gradual rollback began (`details`: `shares`, `every`, `cause`); the rollout is
    /// `rolling_back`.
    RolloutRollingBack,
    /// A gradual rollback lowered the share (`details`: `from`, `to`): the entities that
    /// adopted last reverted first.
    RolloutShareLowered,
    /// A rollout ended with everyone on the baseline.
    RolloutRolledBack,
    /// A rollout was deleted (its audit stays).
    RolloutDeleted,
    /// A rollout's guard crossed its limit (`figures` says how); the action follows.
    GuardBreached,
    /// A flag's kill switch crossed its limit and disabled the flag.
    KillSwitchTripped,
    /// The namespace was frozen, or its freeze changed (namespace audit).
    NamespaceFrozen,
    /// The namespace's freeze was lifted (namespace audit).
    NamespaceUnfrozen,
    /// A webhook of the namespace was added or changed (namespace audit; `details`: id, url,
    /// events — never the secret).
    WebhookSaved,
    /// A webhook of the namespace was removed (namespace audit).
    WebhookDeleted,
}

impl EventKind {
    /// The kind of event a step-function effect is published as.
    pub fn for_effect(effect: &Effect) -> EventKind {
        match effect {
            Effect::Started { .. } => EventKind::RolloutStarted,
            Effect::StepEntered { .. } => EventKind::RolloutStep,
            Effect::Paused { .. } => EventKind::RolloutPaused,
            Effect::Resumed { .. } => EventKind::RolloutResumed,
            Effect::Approved { .. } => EventKind::RolloutApproved,
            Effect::Rescheduled { .. } => EventKind::RolloutRescheduled,
            Effect::RollingBack { .. } => EventKind::RolloutRollingBack,
            Effect::ShareLowered { .. } => EventKind::RolloutShareLowered,
            Effect::GuardBreached { .. } => EventKind::GuardBreached,
            Effect::Completed => EventKind::RolloutCompleted,
            Effect::Stopped { .. } => EventKind::RolloutStopped,
            Effect::RolledBack { .. } => EventKind::RolloutRolledBack,
        }
    }
}

/// The whole evaluable state of one flag after an event: its definition, version and the
/// view of its running or paused rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlagSnapshot {
    /// The definition (for a finished rollout, already serving what it left behind).
    pub flag: Flag,
    /// Per-flag state version of the state shown: the event's, or for an event among several
    /// of one commit, the commit's last (every event of a commit carries its final state).
    pub version: u64,
    /// The active rollout's view, while one runs or is paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
    /// The rollout that last finished on the flag (fleet reports without a rollout id
    /// count for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollout: Option<String>,
}

impl FlagSnapshot {
    /// Compiles the snapshot for evaluation.
    pub fn compile(&self) -> Result<CompiledFlag, ValidationErrors> {
        CompiledFlag::compile(&self.flag, self.version, self.rollout.as_ref())
    }
}

pub(crate) fn empty_details() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// A change to one flag or its rollout.
///
/// `snapshot` present: the complete state after the event. Absent on `flag_deleted`: the
/// flag is gone. Absent otherwise: the publisher left it out, and an evaluator reads the
/// flag from Redis.
#[doc = shape_doc!("change_event")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub namespace: String,
    /// Flag key.
    pub flag: String,
    /// Per-flag state version after the change; strictly rising.
    pub version: u64,
    /// What happened.
    pub kind: EventKind,
    /// The rollout concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// When (the one clock: Redis `TIME`).
    pub time: Timestamp,
    /// Who: the command's actor, or `ticker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// OpenTelemetry trace id of the command or transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The command that caused it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// The rollout's lifecycle state after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Lifecycle>,
    /// Step before a step change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_step: Option<usize>,
    /// Step after a step change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_step: Option<usize>,
    /// Share served after the change, for percentage rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<Share>,
    /// Steps passed over by catch-up in this one transition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<usize>,
    /// A guard's or kill switch's figures, on breaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figures: Option<GuardFigures>,
    /// A rollout's event: when it completes as it stands after the change, or the first wait
    /// no clock ends (absent once paused or finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<Eta>,
    /// Anything else (the step function's effect, causes, lag), as an object.
    #[serde(default = "empty_details")]
    pub details: serde_json::Value,
    /// The flag's whole evaluable state after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<FlagSnapshot>,
}

impl ChangeEvent {
    /// Decodes an event under [`Limits::SERVICE_OUTPUT`]: a snapshot wraps a flag's variation
    /// values two levels deeper than the request that created them.
    pub fn decode(bytes: &[u8], encoding: Encoding) -> Result<ChangeEvent, CodecError> {
        codec::decode_with(bytes, encoding, Limits::SERVICE_OUTPUT)
    }

    /// A bare event of `kind`: the caller fills what applies.
    pub fn new(
        namespace: &str,
        flag: &str,
        version: u64,
        kind: EventKind,
        time: Timestamp,
    ) -> ChangeEvent {
        ChangeEvent {
            namespace: namespace.to_owned(),
            flag: flag.to_owned(),
            version,
            kind,
            rollout_id: None,
            time,
            actor: None,
            trace_id: None,
            command_id: None,
            state: None,
            from_step: None,
            to_step: None,
            share: None,
            skipped: Vec::new(),
            figures: None,
            eta: None,
            details: empty_details(),
            snapshot: None,
        }
    }

    /// The event publishing one effect of the step function for rollout `rollout_id`: kind,
    /// steps, skipped steps and figures are taken from the effect, which is also kept whole
    /// in `details`.
    pub fn for_effect(
        namespace: &str,
        flag: &str,
        version: u64,
        time: Timestamp,
        rollout_id: &str,
        effect: &Effect,
    ) -> ChangeEvent {
        let mut event = ChangeEvent::new(
            namespace,
            flag,
            version,
            EventKind::for_effect(effect),
            time,
        );
        event.rollout_id = Some(rollout_id.to_owned());
        match effect {
            Effect::StepEntered {
                from, to, skipped, ..
            } => {
                event.from_step = *from;
                event.to_step = Some(*to);
                event.skipped.clone_from(skipped);
            }
            Effect::GuardBreached { figures, .. } => event.figures = Some(figures.clone()),
            _ => {}
        }
        event.details = serde_json::to_value(effect).unwrap_or_else(|_| empty_details());
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::EntryCause;

    #[test]
    fn effects_become_events_with_their_steps() {
        let effect = Effect::StepEntered {
            from: Some(0),
            to: 3,
            skipped: vec![1, 2],
            cause: EntryCause::Timer,
            planned_at: Timestamp::from_millis(1_000),
            lag_ms: 5,
        };
        let event = ChangeEvent::for_effect(
            "prod",
            "new-checkout",
            9,
            Timestamp::from_millis(2_000),
            "r-1",
            &effect,
        );
        assert_eq!(event.kind, EventKind::RolloutStep);
        assert_eq!(event.from_step, Some(0));
        assert_eq!(event.to_step, Some(3));
        assert_eq!(event.skipped, [1, 2]);
        assert_eq!(event.details["effect"], "step_entered");
        assert_eq!(event.details["cause"], "timer");
        assert_eq!(
            EventKind::for_effect(&Effect::Completed),
            EventKind::RolloutCompleted
        );
    }

    #[test]
    fn a_snapshot_compiles_for_evaluation() {
        let flag: Flag = serde_json::from_value(serde_json::json!({
            "key": "f", "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
            "off_variation": "off", "default": {"variation": "on"}}))
        .expect("flag");
        let snapshot = FlagSnapshot {
            flag,
            version: 4,
            rollout: None,
            last_rollout: None,
        };
        let compiled = snapshot.compile().expect("compiles");
        assert_eq!(compiled.version(), 4);
        let mut event = ChangeEvent::new(
            "prod",
            "f",
            4,
            EventKind::FlagUpdated,
            Timestamp::from_millis(0),
        );
        event.snapshot = Some(snapshot);
        for encoding in [Encoding::Json, Encoding::MessagePack] {
            let bytes = codec::encode(&event, encoding).expect("encodes");
            assert_eq!(ChangeEvent::decode(&bytes, encoding), Ok(event.clone()));
        }
        assert_eq!(
            compiled
                .evaluate(&rollout_core::Entity::with_id("u"))
                .variation,
            "on"
        );
    }
}
