//! What a command does, decided without IO: from the records as loaded, the command and the
//! one clock's time, either a [`Change`] to commit (with the reply it earns) or a
//! [`WireError`] that changes nothing. The executor loads, calls [`decide`], commits the
//! change through the store's [`rollout_store::Writer`], and on a conflict loads again and
//! decides again.
//!
//! One file per kind of command: [`flag`] (create, update, enable, disable, delete),
//! [`rollout`] (create, the lifecycle verbs, delete) and [`namespace`] (freeze, unfreeze,
//! which change the namespace's freezes instead of records). The rules of a rollout's lifecycle
//! themselves are `rollout_core::transition`'s; these files say which rule a command
//! invokes, what it is refused for, and what it replies.

mod flag;
pub mod namespace;
mod rollout;

use rollout_core::machine::Event;
use rollout_core::{DurationMs, Timestamp};
use rollout_store::{Change, FlagRecord, RolloutRecord, StoredFlag};
use rollout_wire::commands::{Command, CommandReply, FlagResult, SideEffect};
use rollout_wire::envelope::WireError;

pub(crate) use rollout::compile_from_current_serve;

/// The records a command reads, loaded by the executor.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// The flag the command concerns (for rollout commands, the rollout's flag).
    pub flag: Option<StoredFlag>,
    /// The rollout a rollout command names.
    pub rollout: Option<RolloutRecord>,
    /// The flag's active rollout, when it has one (for a command on that very rollout, the
    /// same record as `rollout`).
    pub active_rollout: Option<RolloutRecord>,
}

/// Inputs a command may need that are not records.
#[derive(Clone, Debug)]
pub struct DecideContext {
    pub namespace: String,
    /// Redis `TIME`.
    pub now: Timestamp,
    /// Minimum gap between manual schedule steps.
    pub min_phase_interval: DurationMs,
    /// A fresh random salt, used when a new rollout's spec gives none.
    pub fresh_salt: String,
    /// The id a new rollout gets.
    pub new_rollout_id: String,
    /// Who sends the command.
    pub actor: Option<String>,
    /// W3C traceparent of the command.
    pub traceparent: Option<String>,
    /// The step a rollout command may apply in: the command's `expected_step`, or on a
    /// retry after a revision conflict the step its first decision was made on, so a
    /// transition racing the command is never followed by a second move.
    pub expected_step: Option<usize>,
}

impl DecideContext {
    /// The context of a namespace command (freezes, webhooks): no rollout is made, so no
    /// salt, id, trace or step.
    pub fn for_namespace(
        namespace: &str,
        now: Timestamp,
        min_phase_interval: DurationMs,
        actor: Option<&str>,
    ) -> DecideContext {
        DecideContext {
            namespace: namespace.to_owned(),
            now,
            min_phase_interval,
            fresh_salt: String::new(),
            new_rollout_id: String::new(),
            actor: actor.map(str::to_owned),
            traceparent: None,
            expected_step: None,
        }
    }
}

/// What a command comes to.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Commit `change`, then reply `reply`.
    Changed {
        /// The change, carrying the flag's active rollout when it leaves it as it is.
        change: Box<Change>,
        /// The reply the command earns once the change is committed.
        reply: CommandReply,
    },
    /// Nothing to write (e.g. enabling an enabled flag); reply this.
    Unchanged(CommandReply),
}

fn changed(change: Change, reply: CommandReply) -> Decision {
    Decision::Changed {
        change: Box::new(change),
        reply,
    }
}

/// Decides `command` against `loaded` at `context.now`.
pub fn decide(
    command: &Command,
    loaded: &Loaded,
    context: &DecideContext,
) -> Result<Decision, WireError> {
    let decision = match command {
        Command::FlagCreate(create) => flag::create(&create.flag, loaded, context),
        Command::FlagUpdate(update) => {
            flag::update(&update.flag, update.expected_version, loaded, context)
        }
        Command::FlagEnable(toggle) => flag::toggle(&toggle.key, true, loaded, context),
        Command::FlagDisable(toggle) => flag::toggle(&toggle.key, false, loaded, context),
        Command::FlagDelete(delete) => flag::delete(&delete.key, loaded),
        Command::RolloutCreate(create) => rollout::create(&create.rollout, loaded, context),
        Command::RolloutStart(action) => {
            rollout::apply(&action.rollout_id, Event::Start, loaded, context)
        }
        Command::RolloutPause(action) => {
            rollout::apply(&action.rollout_id, Event::Pause, loaded, context)
        }
        Command::RolloutResume(action) => {
            rollout::apply(&action.rollout_id, Event::Resume, loaded, context)
        }
        Command::RolloutContinue(action) => {
            rollout::apply(&action.rollout_id, Event::Continue, loaded, context)
        }
        Command::RolloutApprove(action) => rollout::apply(
            &action.rollout_id,
            Event::Approve {
                actor: context.actor.clone().unwrap_or_default(),
            },
            loaded,
            context,
        ),
        Command::RolloutPromote(action) => {
            rollout::apply(&action.rollout_id, Event::Promote, loaded, context)
        }
        Command::RolloutReschedule(edit) => {
            rollout::reschedule(&edit.rollout_id, &edit.steps, loaded, context)
        }
        Command::RolloutStop(stop) => rollout::apply(
            &stop.rollout_id,
            Event::Stop {
                percentage: stop.percentage,
            },
            loaded,
            context,
        ),
        Command::RolloutRollback(rollback) => {
            let event = match rollback.walk()? {
                Some((shares, every)) => Event::RollbackGradually { shares, every },
                None => Event::Rollback,
            };
            rollout::apply(&rollback.rollout_id, event, loaded, context)
        }
        Command::RolloutDelete(action) => rollout::delete(&action.rollout_id, loaded, context),
        Command::NamespaceFreeze(_)
        | Command::NamespaceUnfreeze(_)
        | Command::WebhookPut(_)
        | Command::WebhookDelete(_) => Err(WireError::internal(
            "namespace commands change no flag or rollout; they are decided by decide::namespace",
        )),
    }?;
    // the flag's active rollout stays in every snapshot, whatever else the change did
    Ok(match decision {
        Decision::Changed { change, reply } => Decision::Changed {
            change: Box::new(change.keeping_active(loaded.active_rollout.as_ref())),
            reply,
        },
        unchanged => unchanged,
    })
}

fn existing_flag<'a>(
    loaded: &'a Loaded,
    key: &str,
    field: &str,
) -> Result<(&'a StoredFlag, &'a FlagRecord), WireError> {
    match &loaded.flag {
        Some(stored) => match &stored.record {
            Some(record) => Ok((stored, record)),
            None => {
                Err(WireError::not_found(format!("flag {key} does not exist")).with_field(field))
            }
        },
        None => Err(WireError::not_found(format!("flag {key} does not exist")).with_field(field)),
    }
}

fn flag_result(record: &FlagRecord, version: u64, side_effects: Vec<SideEffect>) -> CommandReply {
    CommandReply::Flag(Box::new(FlagResult {
        flag: record.flag.clone(),
        version,
        active_rollout: record.active_rollout.clone(),
        side_effects,
    }))
}

/// The share of the candidate `rollout` serves (percentage plans).
fn served_share(rollout: &RolloutRecord) -> Option<rollout_core::Share> {
    (!rollout.plan.is_staged()).then(|| rollout.state.served_share(&rollout.plan))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::{Flag, Lifecycle};
    use rollout_store::Happened;
    use rollout_wire::commands::{FlagUpdate, RolloutAction, RolloutCreate};
    use rollout_wire::events::EventKind;
    use serde_json::json;

    fn context() -> DecideContext {
        DecideContext {
            namespace: "test".into(),
            now: Timestamp::from_millis(1_796_083_200_000),
            min_phase_interval: DurationMs::from_minutes(5),
            fresh_salt: "salt".into(),
            new_rollout_id: "r-new".into(),
            actor: Some("ana".into()),
            traceparent: None,
            expected_step: None,
        }
    }

    fn flag() -> Flag {
        serde_json::from_value(json!({"key": "checkout",
            "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
            "off_variation": "off", "enabled": false, "default": {"variation": "off"},
            "rules": [{"id": "beta", "conditions": [{"attribute": "plan", "op": "in", "values": ["beta"]}],
                       "serve": {"variation": "off"}}]}))
        .expect("flag")
    }

    fn loaded_flag(record: FlagRecord, version: u64) -> Loaded {
        Loaded {
            flag: Some(StoredFlag {
                version,
                record: Some(record),
            }),
            ..Loaded::default()
        }
    }

    fn record(flag: Flag) -> FlagRecord {
        FlagRecord {
            flag,
            active_rollout: None,
            last_rollout: None,
            created_at: context().now,
            updated_at: context().now,
        }
    }

    fn create_rule_rollout() -> (FlagRecord, RolloutRecord) {
        let spec: rollout_core::RolloutSpec = serde_json::from_value(json!({
            "flag": "checkout", "rule": "beta", "baseline": "off", "candidate": "on", "preset": "1hr"}))
        .expect("spec");
        let command = Command::RolloutCreate(RolloutCreate {
            command_id: None,
            actor: None,
            rollout: spec,
        });
        let Ok(Decision::Changed { change, .. }) =
            decide(&command, &loaded_flag(record(flag()), 3), &context())
        else {
            panic!("create refused");
        };
        let (_, rollout) = change.rollout.clone().expect("a new rollout");
        (change.flag.clone().expect("flag record"), rollout)
    }

    #[test]
    fn creating_a_rollout_takes_the_slot_and_enables_the_disabled_flag() {
        let (flag_record, rollout) = create_rule_rollout();
        assert_eq!(flag_record.active_rollout.as_deref(), Some("r-new"));
        assert!(
            flag_record.flag.enabled,
            "a disabled flag is enabled when its rollout starts"
        );
        assert_eq!(rollout.state.lifecycle, Lifecycle::Running);
        assert_eq!(rollout.created_by.as_deref(), Some("ana"));
    }

    #[test]
    fn a_rule_level_rollout_freezes_that_rule_only() {
        let (flag_record, rollout) = create_rule_rollout();
        let loaded = Loaded {
            active_rollout: Some(rollout),
            ..loaded_flag(flag_record.clone(), 6)
        };
        let update = |flag: Flag| {
            Command::FlagUpdate(FlagUpdate {
                command_id: None,
                actor: None,
                flag,
                expected_version: None,
            })
        };

        let mut changed_rule = flag_record.flag.clone();
        changed_rule.rules[0].conditions.clear();
        let Err(error) = decide(&update(changed_rule), &loaded, &context()) else {
            panic!("rule edit allowed")
        };
        assert_eq!(
            error.code,
            rollout_wire::envelope::ErrorCode::FailedPrecondition
        );
        assert_eq!(error.field.as_deref(), Some("flag.rules[0]"));

        // the default serve is not this rollout's target: editable
        let mut changed_default = flag_record.flag.clone();
        changed_default.default = rollout_core::Serve::variation("on");
        assert!(decide(&update(changed_default), &loaded, &context()).is_ok());
    }

    #[test]
    fn deleting_an_active_rollout_stops_it_before_deleting_it() {
        let (flag_record, rollout) = create_rule_rollout();
        let loaded = Loaded {
            rollout: Some(rollout),
            ..loaded_flag(flag_record, 6)
        };
        let command = Command::RolloutDelete(RolloutAction {
            command_id: None,
            actor: None,
            rollout_id: "r-new".into(),
            expected_step: None,
        });
        let Ok(Decision::Changed { change, .. }) = decide(&command, &loaded, &context()) else {
            panic!("delete refused")
        };
        let [Happened::Effects { effects, .. }, Happened::Event { kind, .. }] =
            change.happened.as_slice()
        else {
            panic!("a stop, then the deletion: {:?}", change.happened)
        };
        assert!(matches!(
            effects.as_slice(),
            [rollout_core::Effect::Stopped { .. }]
        ));
        assert_eq!(
            *kind,
            EventKind::RolloutDeleted,
            "deleted comes after stopped"
        );
        let flag_after = change.flag.clone().expect("flag record");
        assert_eq!(flag_after.active_rollout, None);
        // the rule keeps serving the stopped share (5 % of the 1hr preset's first step)
        assert!(flag_after.flag.rules[0].serve.split.is_some());
    }
}
