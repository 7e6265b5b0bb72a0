//! Commands (SPEC §5, §8.6) on `rollout.cmd.<ns>.<verb>` and `rollout.cmdq.<ns>.<verb>`, their
//! results, and [`Command`], the closed set a planner dispatches on.
//!
//! Every command carries `command_id`, an idempotency key (a repeat returns the first
//! outcome and changes nothing; required on the durable `cmdq` subjects, where it also names
//! `rollout.outcome.<command_id>`), and `actor`, recorded in the audit.

use rollout_core::{
    freeze::{Freeze, MAX_REASON_LEN},
    guard::GradualSpec,
    spec::RescheduleStepSpec,
    Approval, DurationMs, Flag, Lifecycle, Plan, RolloutSpec, RolloutState, Share, Timestamp,
    ValidationErrors, WaitingFor,
};
use serde::{Deserialize, Serialize, Serializer};

use crate::checks;
use crate::codec::{self, CodecError, Encoding, Limits};
use crate::envelope::WireError;
use crate::subjects::CommandVerb;
use crate::views::StepStatus;
use crate::webhooks::{WebhookDelete, WebhookList, WebhookPut};

/// `rollout.cmd.<ns>.flag.create`: creates a flag. Reply: [`FlagResult`].
#[doc = shape_doc!("flag_create")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagCreate {
    /// Idempotency key; one subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Who asks, for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The definition.
    pub flag: Flag,
}

/// `rollout.cmd.<ns>.flag.update`: replaces a flag's definition (the key names it). While a
/// rollout is active its target serve and the set of variations must stay as they are.
/// Reply: [`FlagResult`].
#[doc = shape_doc!("flag_update")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagUpdate {
    /// Idempotency key; one subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Who asks, for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The new definition.
    pub flag: Flag,
    /// Refuse with `conflict` unless the flag is at this version (optimistic locking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

/// `rollout.cmd.<ns>.flag.enable` and `.flag.disable`. Disabling stops the flag's rollout at
/// its current share. Reply: [`FlagResult`].
#[doc = shape_doc!("flag_toggle")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagToggle {
    /// Idempotency key; one subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Who asks, for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Flag key.
    pub key: String,
}

/// `rollout.cmd.<ns>.flag.delete`. Refused with `failed_precondition` while a rollout is
/// active. Reply: [`Deleted`].
#[doc = shape_doc!("flag_delete")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagDelete {
    /// Idempotency key; one subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Who asks, for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Flag key.
    pub key: String,
}

/// `rollout.cmd.<ns>.rollout.create`: validates and compiles a spec (exactly one of
/// `phases`, `preset`, `manual`, `template`, `stages`) and stores it. Reply:
/// [`RolloutResult`], the plan with projected times.
#[doc = shape_doc!("rollout_create")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutCreate {
    /// Idempotency key; one subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Who asks, for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The spec.
    pub rollout: RolloutSpec,
}

/// `rollout.cmd.<ns>.rollout.<verb>` for `start`, `pause`, `resume`, `continue`, `approve`, `promote`,
/// `rollback` and `delete`: the verb is the subject's. Reply: [`RolloutResult`] (`delete`:
/// [`Deleted`]).
#[doc = shape_doc!("rollout_action")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutAction {
    /// Idempotency key; one subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Who asks, for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The rollout.
    pub rollout_id: String,
    /// The step (0-based index) the sender saw the rollout in: if it is elsewhere when the
    /// command applies, nothing happens and the reply is `conflict`. Without it, a command
    /// still never moves a rollout that a transition moved while the command was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_step: Option<usize>,
}

/// `rollout.cmd.<ns>.rollout.stop`: ends the rollout as `stopped`; the target keeps serving
/// `percentage`, or the current share when absent. Reply: [`RolloutResult`].
#[doc = shape_doc!("rollout_stop")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStop {
    /// Idempotency key; one subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Who asks, for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The rollout.
    pub rollout_id: String,
    /// Share to keep serving, in percent with up to four decimals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
    /// As [`RolloutAction::expected_step`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_step: Option<usize>,
}

impl FlagToggle {
    /// A toggle of flag `key`, without command id or actor.
    pub fn new(key: impl Into<String>) -> FlagToggle {
        FlagToggle {
            command_id: None,
            actor: None,
            key: key.into(),
        }
    }
}

/// `rollout.cmd.<ns>.rollout.reschedule`: replaces the steps after the running or paused
/// rollout's current one with `steps` (phases for a percentage rollout, stages for a
/// label-stage one), checked as a create's; `expected_step` is required, so an edit made
/// on a step the rollout has left is refused (`conflict`). Reply: [`RolloutResult`].
#[doc = shape_doc!("rollout_reschedule")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutReschedule {
    /// Idempotency key; one subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Who asks, for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The rollout.
    pub rollout_id: String,
    /// The step (0-based) the edit was made at: required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_step: Option<usize>,
    /// The steps that follow the current one.
    pub steps: Vec<RescheduleStepSpec>,
}

/// `rollout.cmd.<ns>.rollout.rollback`: ends the rollout with everyone on the baseline —
/// at once (`mode: "now"`, the default), or walking the share down `steps` (percentages,
/// strictly decreasing, the first below the share served, ending at 0), one every `every`
/// (`mode: "gradual"`); the rollout is `rolling_back` meanwhile. Reply: [`RolloutResult`].
#[doc = shape_doc!("rollout_rollback")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRollback {
    /// Idempotency key; one subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Who asks, for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The rollout.
    pub rollout_id: String,
    /// The step (0-based index) the sender saw the rollout in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_step: Option<usize>,
    /// `now` (default) or `gradual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The shares of a gradual rollback, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<f64>>,
    /// Time between two shares of a gradual rollback (`5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
}

impl RolloutRollback {
    /// An immediate rollback of `rollout_id`.
    pub fn now(rollout_id: impl Into<String>) -> RolloutRollback {
        RolloutRollback {
            command_id: None,
            actor: None,
            rollout_id: rollout_id.into(),
            expected_step: None,
            mode: None,
            steps: None,
            every: None,
        }
    }

    /// A gradual rollback of `rollout_id` through `steps` (percent), one every `every`.
    pub fn gradual(rollout_id: impl Into<String>, steps: Vec<f64>, every: &str) -> RolloutRollback {
        RolloutRollback {
            mode: Some("gradual".to_owned()),
            steps: Some(steps),
            every: Some(every.to_owned()),
            ..RolloutRollback::now(rollout_id)
        }
    }

    /// The walk of a gradual rollback (`None`: roll back now), as checked by
    /// [`Command::validate`].
    pub fn walk(&self) -> Result<Option<(Vec<Share>, DurationMs)>, WireError> {
        let mut errors = ValidationErrors::default();
        let walk = self.walk_into(&mut errors);
        checks::finish(errors).map(|()| walk)
    }

    /// The walk, its problems recorded in `errors`.
    fn walk_into(&self, errors: &mut ValidationErrors) -> Option<(Vec<Share>, DurationMs)> {
        match self.mode.as_deref() {
            None | Some("now") => {
                for (field, given) in [
                    ("steps", self.steps.is_some()),
                    ("every", self.every.is_some()),
                ] {
                    if given {
                        errors.push(field, "goes with mode gradual");
                    }
                }
                None
            }
            Some("gradual") => GradualSpec {
                steps: self.steps.clone().unwrap_or_default(),
                every: self.every.clone().unwrap_or_default(),
            }
            .compile("", errors),
            Some(other) => {
                errors.push(
                    "mode",
                    format!("unknown mode {other:?}; use now or gradual"),
                );
                None
            }
        }
    }
}

impl RolloutAction {
    /// An action on rollout `rollout_id`, without command id or actor.
    pub fn new(rollout_id: impl Into<String>) -> RolloutAction {
        RolloutAction {
            command_id: None,
            actor: None,
            rollout_id: rollout_id.into(),
            expected_step: None,
        }
    }
}

/// Reply to flag commands and to `flag.get`: the definition as stored, with its version.
#[doc = shape_doc!("flag_result")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlagResult {
    /// The definition.
    pub flag: Flag,
    /// Per-flag state version; rises with every change to the flag or its rollout.
    pub version: u64,
    /// Id of the flag's active rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_rollout: Option<String>,
    /// What the command did beside what it was asked (disabling the flag stopped its
    /// rollout).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub side_effects: Vec<SideEffect>,
}

/// What a command did beside what it was asked, so that a client can say so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SideEffect {
    /// Disabling the flag stopped its active rollout where it stood; the split it reached
    /// stays in the flag's serve, served again once the flag is enabled.
    RolloutStopped {
        /// The rollout stopped.
        rollout_id: String,
        /// The share of the candidate it reached (percentage plans).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        share: Option<Share>,
    },
    /// The rollout started on a disabled flag, so the flag was enabled.
    FlagEnabled {
        /// The flag enabled.
        flag: String,
    },
    /// Deleting the active rollout stopped it first; the split it reached stays served.
    SplitKept {
        /// The rollout deleted.
        rollout_id: String,
        /// The share of the candidate that stays served (percentage plans).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        share: Option<Share>,
    },
}

/// Reply to rollout commands: where the rollout stands, with every step; for `create`, the
/// plan with projected times.
#[doc = shape_doc!("rollout_result")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutResult {
    pub rollout_id: String,
    /// Flag key.
    pub flag: String,
    /// Lifecycle state.
    pub state: Lifecycle,
    /// What a running or queued rollout waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<WaitingFor>,
    /// Current step; absent while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<usize>,
    /// Share served now, for percentage plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<Share>,
    /// Approvals of the current step so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Approval>,
    /// Every step with its planned and actual times.
    #[serde(default)]
    pub steps: Vec<StepStatus>,
    /// What the command did beside what it was asked (starting the rollout enabled its
    /// flag).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub side_effects: Vec<SideEffect>,
}

impl RolloutResult {
    /// The result describing `state` of the rollout `rollout_id` at `now`.
    pub fn new(
        rollout_id: &str,
        plan: &Plan,
        state: &RolloutState,
        now: Timestamp,
    ) -> RolloutResult {
        RolloutResult {
            rollout_id: rollout_id.to_owned(),
            flag: plan.flag.clone(),
            state: state.lifecycle,
            waiting_for: state.waiting_for_at(plan, now),
            current_step: state.step,
            share: (!plan.is_staged()).then(|| state.served_share(plan)),
            approvals: state.approvals.clone(),
            steps: StepStatus::for_rollout(plan, state, now),
            side_effects: Vec::new(),
        }
    }
}

/// `rollout.cmd.<ns>.namespace.freeze`: holds every timer and automatic gate of the
/// namespace's rollouts (commands still act, guards still protect) until
/// `namespace.unfreeze` or `until` (RFC 3339); freezing a frozen namespace changes its
/// reason and end. Reply: [`NamespaceResult`].
#[doc = shape_doc!("namespace_freeze")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceFreeze {
    /// Idempotency key; one subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Who asks, for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Why, shown in statuses and the audit.
    pub reason: String,
    /// When the freeze ends by itself (RFC 3339); open-ended when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// `rollout.cmd.<ns>.namespace.unfreeze`: lifts the freeze in force; the timers that ran out
/// meanwhile open now, one step each. Reply: [`NamespaceResult`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceUnfreeze {
    /// Idempotency key; one subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Who asks, for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// Reply to `namespace.freeze` and `namespace.unfreeze`: the freeze in force, if any, and
/// the recent ones.
#[doc = shape_doc!("namespace_result")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceResult {
    pub namespace: String,
    /// The freeze in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<Freeze>,
    /// Earlier freezes, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past: Vec<Freeze>,
}

/// Reply to `flag.delete` and `rollout.delete`.
#[doc = shape_doc!("deleted")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// Key of the deleted flag, or of the deleted rollout's flag.
    pub flag: String,
    /// Id of the deleted rollout (absent for a flag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// What the command did beside what it was asked (the deleted rollout's split stays).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub side_effects: Vec<SideEffect>,
}

/// A command's successful reply, typed until it is encoded: the JSON (or MessagePack) of
/// the shape inside, nothing around it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandReply {
    /// Flag commands.
    Flag(Box<FlagResult>),
    /// `rollout.create` and the lifecycle verbs.
    Rollout(RolloutResult),
    /// `flag.delete`, `rollout.delete`.
    Deleted(Deleted),
    /// `namespace.webhook.put`, `namespace.webhook.delete` (before `Namespace`: an
    /// untagged webhook list would also read as a namespace result).
    Webhooks(WebhookList),
    /// `namespace.freeze`, `namespace.unfreeze`.
    Namespace(NamespaceResult),
}

/// Any command, as the planner dispatches it: the subject's verb picks the body type.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `flag.create`.
    FlagCreate(FlagCreate),
    /// `flag.update`.
    FlagUpdate(FlagUpdate),
    /// `flag.enable`.
    FlagEnable(FlagToggle),
    /// `flag.disable`.
    FlagDisable(FlagToggle),
    /// `flag.delete`.
    FlagDelete(FlagDelete),
    /// `rollout.create`.
    RolloutCreate(RolloutCreate),
    /// `rollout.start`.
    RolloutStart(RolloutAction),
    /// `rollout.pause`.
    RolloutPause(RolloutAction),
    /// `rollout.resume`.
    RolloutResume(RolloutAction),
    /// `rollout.continue`.
    RolloutContinue(RolloutAction),
    /// `rollout.approve`.
    RolloutApprove(RolloutAction),
    /// `rollout.promote`.
    RolloutPromote(RolloutAction),
    /// `rollout.reschedule`.
    RolloutReschedule(RolloutReschedule),
    /// `rollout.stop`.
    RolloutStop(RolloutStop),
    /// `rollout.rollback`.
    RolloutRollback(RolloutRollback),
    /// `rollout.delete`.
    RolloutDelete(RolloutAction),
    /// `namespace.freeze`.
    NamespaceFreeze(NamespaceFreeze),
    /// `namespace.unfreeze`.
    NamespaceUnfreeze(NamespaceUnfreeze),
    /// `namespace.webhook.put`.
    WebhookPut(WebhookPut),
    /// `namespace.webhook.delete`.
    WebhookDelete(WebhookDelete),
}

impl Command {
    /// Decodes the body of a command received on a subject with `verb`, under the request
    /// [`Limits`].
    pub fn decode(
        verb: CommandVerb,
        bytes: &[u8],
        encoding: Encoding,
    ) -> Result<Command, CodecError> {
        Command::decode_with(verb, bytes, encoding, Limits::REQUESTS)
    }

    /// The `command_id` of a body that does not decode as a command, when a string one can
    /// still be read from it (other fields are ignored), so that even a refused command from
    /// the durable stream is answered on its own outcome subject.
    pub fn salvage_command_id(bytes: &[u8], encoding: Encoding) -> Option<String> {
        #[derive(Deserialize)]
        struct IdOnly {
            #[serde(default)]
            command_id: Option<String>,
        }
        codec::decode_with::<IdOnly>(bytes, encoding, Limits::REQUESTS)
            .ok()?
            .command_id
    }

    /// [`Command::decode`] under explicit limits.
    pub fn decode_with(
        verb: CommandVerb,
        bytes: &[u8],
        encoding: Encoding,
        limits: Limits,
    ) -> Result<Command, CodecError> {
        let action = || codec::decode_with::<RolloutAction>(bytes, encoding, limits);
        let toggle = || codec::decode_with::<FlagToggle>(bytes, encoding, limits);
        Ok(match verb {
            CommandVerb::FlagCreate => {
                Command::FlagCreate(codec::decode_with(bytes, encoding, limits)?)
            }
            CommandVerb::FlagUpdate => {
                Command::FlagUpdate(codec::decode_with(bytes, encoding, limits)?)
            }
            CommandVerb::FlagEnable => Command::FlagEnable(toggle()?),
            CommandVerb::FlagDisable => Command::FlagDisable(toggle()?),
            CommandVerb::FlagDelete => {
                Command::FlagDelete(codec::decode_with(bytes, encoding, limits)?)
            }
            CommandVerb::RolloutCreate => {
                Command::RolloutCreate(codec::decode_with(bytes, encoding, limits)?)
            }
            CommandVerb::RolloutStart => Command::RolloutStart(action()?),
            CommandVerb::RolloutPause => Command::RolloutPause(action()?),
            CommandVerb::RolloutResume => Command::RolloutResume(action()?),
            CommandVerb::RolloutContinue => Command::RolloutContinue(action()?),
            CommandVerb::RolloutApprove => Command::RolloutApprove(action()?),
            CommandVerb::RolloutPromote => Command::RolloutPromote(action()?),
            CommandVerb::RolloutStop => {
                Command::RolloutStop(codec::decode_with(bytes, encoding, limits)?)
            }
            CommandVerb::RolloutReschedule => {
                Command::RolloutReschedule(codec::decode_with(bytes, encoding, limits)?)
            }
            CommandVerb::RolloutRollback => {
                Command::RolloutRollback(codec::decode_with(bytes, encoding, limits)?)
            }
            CommandVerb::RolloutDelete => Command::RolloutDelete(action()?),
            CommandVerb::NamespaceFreeze => {
                Command::NamespaceFreeze(codec::decode_with(bytes, encoding, limits)?)
            }
            CommandVerb::NamespaceUnfreeze => {
                Command::NamespaceUnfreeze(codec::decode_with(bytes, encoding, limits)?)
            }
            CommandVerb::WebhookPut => {
                Command::WebhookPut(codec::decode_with(bytes, encoding, limits)?)
            }
            CommandVerb::WebhookDelete => {
                Command::WebhookDelete(codec::decode_with(bytes, encoding, limits)?)
            }
        })
    }

    /// The verb, i.e. the subject this command travels on.
    pub fn verb(&self) -> CommandVerb {
        match self {
            Command::FlagCreate(_) => CommandVerb::FlagCreate,
            Command::FlagUpdate(_) => CommandVerb::FlagUpdate,
            Command::FlagEnable(_) => CommandVerb::FlagEnable,
            Command::FlagDisable(_) => CommandVerb::FlagDisable,
            Command::FlagDelete(_) => CommandVerb::FlagDelete,
            Command::RolloutCreate(_) => CommandVerb::RolloutCreate,
            Command::RolloutStart(_) => CommandVerb::RolloutStart,
            Command::RolloutPause(_) => CommandVerb::RolloutPause,
            Command::RolloutResume(_) => CommandVerb::RolloutResume,
            Command::RolloutContinue(_) => CommandVerb::RolloutContinue,
            Command::RolloutApprove(_) => CommandVerb::RolloutApprove,
            Command::RolloutPromote(_) => CommandVerb::RolloutPromote,
            Command::RolloutStop(_) => CommandVerb::RolloutStop,
            Command::RolloutReschedule(_) => CommandVerb::RolloutReschedule,
            Command::RolloutRollback(_) => CommandVerb::RolloutRollback,
            Command::RolloutDelete(_) => CommandVerb::RolloutDelete,
            Command::NamespaceFreeze(_) => CommandVerb::NamespaceFreeze,
            Command::NamespaceUnfreeze(_) => CommandVerb::NamespaceUnfreeze,
            Command::WebhookPut(_) => CommandVerb::WebhookPut,
            Command::WebhookDelete(_) => CommandVerb::WebhookDelete,
        }
    }

    fn meta(&self) -> (Option<&str>, Option<&str>) {
        fn pair<'a>(
            command_id: &'a Option<String>,
            actor: &'a Option<String>,
        ) -> (Option<&'a str>, Option<&'a str>) {
            (command_id.as_deref(), actor.as_deref())
        }
        match self {
            Command::FlagCreate(body) => pair(&body.command_id, &body.actor),
            Command::FlagUpdate(body) => pair(&body.command_id, &body.actor),
            Command::FlagEnable(body) | Command::FlagDisable(body) => {
                pair(&body.command_id, &body.actor)
            }
            Command::FlagDelete(body) => pair(&body.command_id, &body.actor),
            Command::RolloutCreate(body) => pair(&body.command_id, &body.actor),
            Command::RolloutStop(body) => pair(&body.command_id, &body.actor),
            Command::RolloutReschedule(body) => pair(&body.command_id, &body.actor),
            Command::RolloutRollback(body) => pair(&body.command_id, &body.actor),
            Command::NamespaceFreeze(body) => pair(&body.command_id, &body.actor),
            Command::NamespaceUnfreeze(body) => pair(&body.command_id, &body.actor),
            Command::WebhookPut(body) => pair(&body.command_id, &body.actor),
            Command::WebhookDelete(body) => pair(&body.command_id, &body.actor),
            Command::RolloutStart(body)
            | Command::RolloutPause(body)
            | Command::RolloutResume(body)
            | Command::RolloutContinue(body)
            | Command::RolloutApprove(body)
            | Command::RolloutPromote(body)
            | Command::RolloutDelete(body) => pair(&body.command_id, &body.actor),
        }
    }

    /// The idempotency key.
    pub fn command_id(&self) -> Option<&str> {
        self.meta().0
    }

    /// Who asks.
    pub fn actor(&self) -> Option<&str> {
        self.meta().1
    }

    /// The command's idempotency key and actor slots.
    fn meta_mut(&mut self) -> (&mut Option<String>, &mut Option<String>) {
        match self {
            Command::FlagCreate(body) => (&mut body.command_id, &mut body.actor),
            Command::FlagUpdate(body) => (&mut body.command_id, &mut body.actor),
            Command::FlagEnable(body) | Command::FlagDisable(body) => {
                (&mut body.command_id, &mut body.actor)
            }
            Command::FlagDelete(body) => (&mut body.command_id, &mut body.actor),
            Command::RolloutCreate(body) => (&mut body.command_id, &mut body.actor),
            Command::RolloutStop(body) => (&mut body.command_id, &mut body.actor),
            Command::RolloutReschedule(body) => (&mut body.command_id, &mut body.actor),
            Command::RolloutRollback(body) => (&mut body.command_id, &mut body.actor),
            Command::NamespaceFreeze(body) => (&mut body.command_id, &mut body.actor),
            Command::NamespaceUnfreeze(body) => (&mut body.command_id, &mut body.actor),
            Command::WebhookPut(body) => (&mut body.command_id, &mut body.actor),
            Command::WebhookDelete(body) => (&mut body.command_id, &mut body.actor),
            Command::RolloutStart(body)
            | Command::RolloutPause(body)
            | Command::RolloutResume(body)
            | Command::RolloutContinue(body)
            | Command::RolloutApprove(body)
            | Command::RolloutPromote(body)
            | Command::RolloutDelete(body) => (&mut body.command_id, &mut body.actor),
        }
    }

    /// Sets the idempotency key (a command taken from the durable stream without one gets
    /// its stream sequence, so a redelivery is recognised).
    pub fn set_command_id(&mut self, command_id: String) {
        *self.meta_mut().0 = Some(command_id);
    }

    /// Names who asks, unless the command already does.
    pub fn set_actor_if_missing(&mut self, actor: &str) {
        let slot = self.meta_mut().1;
        if slot.is_none() {
            *slot = Some(actor.to_owned());
        }
    }

    /// The flag key a flag command names (rollout commands name a rollout instead; the
    /// create spec names its flag in `rollout.flag`).
    pub fn flag_key(&self) -> Option<&str> {
        match self {
            Command::FlagCreate(body) => Some(&body.flag.key),
            Command::FlagUpdate(body) => Some(&body.flag.key),
            Command::FlagEnable(body) | Command::FlagDisable(body) => Some(&body.key),
            Command::FlagDelete(body) => Some(&body.key),
            Command::RolloutCreate(body) => Some(&body.rollout.flag),
            _ => None,
        }
    }

    /// The rollout id a rollout command names.
    pub fn rollout_id(&self) -> Option<&str> {
        self.rollout_target().map(|(rollout_id, _)| rollout_id)
    }

    /// The step a rollout command expects its rollout in, when it names one.
    pub fn expected_step(&self) -> Option<usize> {
        self.rollout_target()
            .and_then(|(_, expected_step)| expected_step)
    }

    /// A rollout command's rollout id and expected step.
    fn rollout_target(&self) -> Option<(&str, Option<usize>)> {
        match self {
            Command::RolloutStop(body) => Some((&body.rollout_id, body.expected_step)),
            Command::RolloutReschedule(body) => Some((&body.rollout_id, body.expected_step)),
            Command::RolloutRollback(body) => Some((&body.rollout_id, body.expected_step)),
            Command::RolloutStart(body)
            | Command::RolloutPause(body)
            | Command::RolloutResume(body)
            | Command::RolloutContinue(body)
            | Command::RolloutApprove(body)
            | Command::RolloutPromote(body)
            | Command::RolloutDelete(body) => Some((&body.rollout_id, body.expected_step)),
            _ => None,
        }
    }

    /// Whether the command moves its rollout to another step (`continue`, `promote`).
    pub fn moves_steps(&self) -> bool {
        matches!(
            self,
            Command::RolloutContinue(_) | Command::RolloutPromote(_)
        )
    }

    /// Checks what can be checked without state: metadata, keys and ids are tokens, a new
    /// flag's definition is valid, a stop share is a valid percentage. A rollout spec is
    /// checked when it is compiled against its flag. Every problem is reported.
    pub fn validate(&self) -> Result<(), WireError> {
        let mut errors = ValidationErrors::default();
        let (command_id, actor) = self.meta();
        checks::command_meta(&mut errors, command_id, actor);
        match self {
            Command::FlagCreate(FlagCreate { flag, .. })
            | Command::FlagUpdate(FlagUpdate { flag, .. }) => {
                if let Err(flag_errors) = flag.validate("flag") {
                    errors.errors.extend(flag_errors.errors);
                }
            }
            Command::FlagEnable(body) | Command::FlagDisable(body) => {
                checks::token(&mut errors, "key", &body.key)
            }
            Command::FlagDelete(body) => checks::token(&mut errors, "key", &body.key),
            Command::RolloutCreate(body) => {
                checks::token(&mut errors, "rollout.flag", &body.rollout.flag);
                if let Some(rule) = &body.rollout.rule {
                    checks::token(&mut errors, "rollout.rule", rule);
                }
            }
            Command::RolloutRollback(body) => {
                checks::token(&mut errors, "rollout_id", &body.rollout_id);
                body.walk_into(&mut errors);
            }
            Command::NamespaceFreeze(body) => {
                if body.reason.trim().is_empty() || body.reason.len() > MAX_REASON_LEN {
                    errors.push("reason", format!("say why, in 1..={MAX_REASON_LEN} bytes"));
                }
                if let Some(until) = &body.until {
                    if let Err(message) = Timestamp::parse_rfc3339(until) {
                        errors.push("until", message);
                    }
                }
            }
            Command::NamespaceUnfreeze(_) => {}
            Command::WebhookPut(body) => body.validate_into(&mut errors),
            Command::WebhookDelete(body) => checks::token(&mut errors, "id", &body.id),
            Command::RolloutReschedule(body) => {
                checks::token(&mut errors, "rollout_id", &body.rollout_id);
                if body.expected_step.is_none() {
                    errors.push(
                        "expected_step",
                        "a reschedule names the step it was made at (the status's current_step)",
                    );
                }
            }
            Command::RolloutStop(body) => {
                checks::token(&mut errors, "rollout_id", &body.rollout_id);
                if let Some(percentage) = body.percentage {
                    if let Err(problem) = Share::from_percentage(percentage) {
                        errors.push("percentage", problem);
                    }
                }
            }
            Command::RolloutStart(body)
            | Command::RolloutPause(body)
            | Command::RolloutResume(body)
            | Command::RolloutContinue(body)
            | Command::RolloutApprove(body)
            | Command::RolloutPromote(body)
            | Command::RolloutDelete(body) => {
                checks::token(&mut errors, "rollout_id", &body.rollout_id)
            }
        }
        checks::finish(errors)
    }
}

impl Serialize for Command {
    /// Serialises the body only: the verb travels in the subject.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Command::FlagCreate(body) => body.serialize(serializer),
            Command::FlagUpdate(body) => body.serialize(serializer),
            Command::FlagEnable(body) | Command::FlagDisable(body) => body.serialize(serializer),
            Command::FlagDelete(body) => body.serialize(serializer),
            Command::RolloutCreate(body) => body.serialize(serializer),
            Command::RolloutStop(body) => body.serialize(serializer),
            Command::RolloutReschedule(body) => body.serialize(serializer),
            Command::RolloutRollback(body) => body.serialize(serializer),
            Command::NamespaceFreeze(body) => body.serialize(serializer),
            Command::NamespaceUnfreeze(body) => body.serialize(serializer),
            Command::WebhookPut(body) => body.serialize(serializer),
            Command::WebhookDelete(body) => body.serialize(serializer),
            Command::RolloutStart(body)
            | Command::RolloutPause(body)
            | Command::RolloutResume(body)
            | Command::RolloutContinue(body)
            | Command::RolloutApprove(body)
            | Command::RolloutPromote(body)
            | Command::RolloutDelete(body) => body.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ErrorCode;

    #[test]
    fn the_subject_verb_picks_the_body_type() {
        let body = br#"{"command_id": "c-3", "rollout_id": "r-1"}"#;
        for verb in CommandVerb::ALL {
            let decoded = Command::decode(*verb, body, Encoding::Json);
            match verb {
                CommandVerb::RolloutStart
                | CommandVerb::RolloutPause
                | CommandVerb::RolloutResume
                | CommandVerb::RolloutContinue
                | CommandVerb::RolloutApprove
                | CommandVerb::RolloutPromote
                | CommandVerb::RolloutRollback
                | CommandVerb::RolloutDelete
                | CommandVerb::RolloutStop => {
                    let command = decoded.expect("rollout action");
                    assert_eq!(command.verb(), *verb);
                    assert_eq!(command.command_id(), Some("c-3"));
                    assert_eq!(command.rollout_id(), Some("r-1"));
                    assert_eq!(command.validate(), Ok(()));
                }
                _ => assert!(decoded.is_err(), "{verb} must not accept a rollout action"),
            }
        }
    }

    #[test]
    fn validation_names_every_bad_field() {
        let command = Command::RolloutStop(RolloutStop {
            command_id: Some("c.1".into()),
            actor: Some(String::new()),
            rollout_id: "r 1".into(),
            percentage: Some(12.34567),
            expected_step: None,
        });
        let error = command.validate().expect_err("invalid");
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert_eq!(error.field.as_deref(), Some("command_id"));
        let fields: Vec<&str> = error
            .details
            .iter()
            .map(|detail| detail.field.as_str())
            .collect();
        assert_eq!(fields, ["command_id", "actor", "rollout_id", "percentage"]);
    }

    #[test]
    fn an_invalid_flag_definition_is_reported_with_paths() {
        let body = br#"{"flag": {"key": "a.b", "variations": [{"id": "on", "value": true}],
                       "off_variation": "off", "default": {"variation": "on"}}}"#;
        let command =
            Command::decode(CommandVerb::FlagCreate, body, Encoding::Json).expect("decodes");
        let error = command.validate().expect_err("invalid flag");
        assert_eq!(error.field.as_deref(), Some("flag.key"));
        assert!(error
            .details
            .iter()
            .any(|detail| detail.field == "flag.off_variation"));
    }

    #[test]
    fn a_command_id_is_salvaged_from_bodies_that_do_not_decode() {
        let body = br#"{"command_id": "c-7", "flag": 5, "extra": [1, 2]}"#;
        assert!(Command::decode(CommandVerb::FlagCreate, body, Encoding::Json).is_err());
        assert_eq!(
            Command::salvage_command_id(body, Encoding::Json).as_deref(),
            Some("c-7")
        );
        let packed = rmp_serde::to_vec_named(&serde_json::json!({"command_id": "c-8", "x": true}))
            .expect("msgpack");
        assert_eq!(
            Command::salvage_command_id(&packed, Encoding::MessagePack).as_deref(),
            Some("c-8")
        );
        for hopeless in [&b"not json"[..], br#"{"command_id": 7}"#, br#"[1, 2]"#, b""] {
            assert_eq!(Command::salvage_command_id(hopeless, Encoding::Json), None);
        }
    }
}
