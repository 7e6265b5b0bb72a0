//! What a command does, decided without IO: from the records as loaded, the command and the
//! one clock's time, either a [`Change`] to commit or a [`WireError`] that changes nothing.
//! The executor loads, calls [`decide`], commits with revision checks, and on a conflict
//! loads again and decides again.

use rollout_core::continuation::{continuation, Continuation};
use rollout_core::machine::Event;
use rollout_core::transition::{self, NewRollout};
use rollout_core::{compile, CompileContext, DurationMs, Flag, Target, Timestamp};
use rollout_store::mutation::{event_count, Happened};
use rollout_store::{FlagRecord, RolloutRecord, StoredFlag};
use rollout_wire::commands::{Command, Deleted, FlagResult, RolloutResult};
use rollout_wire::envelope::WireError;
use rollout_wire::events::EventKind;

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
    /// Namespace.
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

/// A decided change, ready to become a commit.
#[derive(Clone, Debug)]
pub struct Change {
    /// Flag key.
    pub flag_key: String,
    /// The flag's version as loaded (the commit checks it).
    pub flag_version: u64,
    /// The flag record after the change; `None` deletes the flag.
    pub flag: Option<FlagRecord>,
    /// Whether the flag is new.
    pub flag_created: bool,
    /// The rollout after the change, with its revision as loaded (0: new).
    pub rollout: Option<(u64, RolloutRecord)>,
    /// The rollout deleted by this change, as loaded.
    pub deleted_rollout: Option<RolloutRecord>,
    /// What happened, in order (one audit entry and event per happening or effect).
    pub happened: Vec<Happened>,
    /// The reply's result.
    pub result: serde_json::Value,
}

/// What a command comes to.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Write this.
    Change(Box<Change>),
    /// Nothing to write (e.g. enabling an enabled flag); reply with this result.
    Unchanged(serde_json::Value),
}

/// A reply result as JSON, the form replies and stored outcomes take.
pub(crate) fn to_result<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, WireError> {
    serde_json::to_value(value)
        .map_err(|error| WireError::internal(format!("cannot encode result: {error}")))
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

fn flag_result(record: &FlagRecord, version: u64) -> Result<serde_json::Value, WireError> {
    to_result(&FlagResult {
        flag: record.flag.clone(),
        version,
        active_rollout: record.active_rollout.clone(),
    })
}

/// Decides `command` against `loaded` at `context.now`.
pub fn decide(
    command: &Command,
    loaded: &Loaded,
    context: &DecideContext,
) -> Result<Decision, WireError> {
    match command {
        Command::FlagCreate(create) => flag_create(&create.flag, loaded, context),
        Command::FlagUpdate(update) => {
            flag_update(&update.flag, update.expected_version, loaded, context)
        }
        Command::FlagEnable(toggle) => flag_toggle(&toggle.key, true, loaded, context),
        Command::FlagDisable(toggle) => flag_toggle(&toggle.key, false, loaded, context),
        Command::FlagDelete(delete) => flag_delete(&delete.key, loaded),
        Command::RolloutCreate(create) => rollout_create(&create.rollout, loaded, context),
        Command::RolloutStart(action) => {
            rollout_event(&action.rollout_id, Event::Start, loaded, context)
        }
        Command::RolloutPause(action) => {
            rollout_event(&action.rollout_id, Event::Pause, loaded, context)
        }
        Command::RolloutResume(action) => {
            rollout_event(&action.rollout_id, Event::Resume, loaded, context)
        }
        Command::RolloutContinue(action) => {
            rollout_event(&action.rollout_id, Event::Continue, loaded, context)
        }
        Command::RolloutPromote(action) => {
            rollout_event(&action.rollout_id, Event::Promote, loaded, context)
        }
        Command::RolloutStop(stop) => rollout_event(
            &stop.rollout_id,
            Event::Stop {
                percentage: stop.percentage,
            },
            loaded,
            context,
        ),
        Command::RolloutRollback(action) => {
            rollout_event(&action.rollout_id, Event::Rollback, loaded, context)
        }
        Command::RolloutDelete(action) => rollout_delete(&action.rollout_id, loaded, context),
    }
}

fn flag_create(
    flag: &Flag,
    loaded: &Loaded,
    context: &DecideContext,
) -> Result<Decision, WireError> {
    flag.validate("flag")?;
    let stored = loaded.flag.clone().unwrap_or(StoredFlag {
        version: 0,
        record: None,
    });
    if stored.record.is_some() {
        return Err(WireError::conflict(format!(
            "flag {} already exists; use flag.update",
            flag.key
        ))
        .with_field("flag.key"));
    }
    let record = FlagRecord {
        flag: flag.clone(),
        active_rollout: None,
        created_at: context.now,
        updated_at: context.now,
    };
    let result = flag_result(&record, stored.version + 1)?;
    Ok(Decision::Change(Box::new(Change {
        flag_key: flag.key.clone(),
        flag_version: stored.version,
        flag: Some(record),
        flag_created: true,
        rollout: None,
        deleted_rollout: None,
        happened: vec![Happened::event(EventKind::FlagCreated, None)],
        result,
    })))
}

/// While a rollout is active its target and the set of variations are frozen (SPEC §5);
/// names, values and descriptions stay editable.
fn check_update_allowed(old: &Flag, new: &Flag, rollout: &RolloutRecord) -> Result<(), WireError> {
    let blocked = |what: &str, field: &str| {
        WireError::failed_precondition(format!(
            "flag {} has active rollout {}; {what} cannot change while it is active (stop, complete or delete it first)",
            old.key, rollout.id
        ))
        .with_field(field)
    };
    let mut old_ids: Vec<&str> = old
        .variations
        .iter()
        .map(|variation| variation.id.as_str())
        .collect();
    let mut new_ids: Vec<&str> = new
        .variations
        .iter()
        .map(|variation| variation.id.as_str())
        .collect();
    old_ids.sort_unstable();
    new_ids.sort_unstable();
    if old_ids != new_ids {
        return Err(blocked(
            "variations cannot be added or removed; their set",
            "flag.variations",
        ));
    }
    match &rollout.plan.target {
        Target::Default => {
            if old.default != new.default {
                return Err(blocked("the default serve", "flag.default"));
            }
        }
        Target::Rule(rule_id) => {
            let old_position = old.rules.iter().position(|rule| &rule.id == rule_id);
            let new_position = new.rules.iter().position(|rule| &rule.id == rule_id);
            // its place in the order is part of it: moved, it is reached by other entities
            let unchanged = match (old_position, new_position) {
                (Some(old_index), Some(new_index)) => {
                    old_index == new_index && old.rules[old_index] == new.rules[new_index]
                }
                _ => false,
            };
            if !unchanged {
                let field = new_position.map_or_else(
                    || "flag.rules".to_owned(),
                    |index| format!("flag.rules[{index}]"),
                );
                return Err(blocked(&format!("targeting rule {rule_id}"), &field));
            }
        }
    }
    if new.off_variation == rollout.plan.candidate {
        return Err(blocked(
            "the off variation (it would become the rollout's candidate)",
            "flag.off_variation",
        ));
    }
    Ok(())
}

fn flag_update(
    flag: &Flag,
    expected_version: Option<u64>,
    loaded: &Loaded,
    context: &DecideContext,
) -> Result<Decision, WireError> {
    flag.validate("flag")?;
    let (stored, record) = existing_flag(loaded, &flag.key, "flag.key")?;
    if let Some(expected) = expected_version {
        if expected != stored.version {
            return Err(WireError::conflict(format!(
                "flag {} is at version {}, not the expected {expected}; read it again",
                flag.key, stored.version
            ))
            .with_field("expected_version"));
        }
    }
    let mut updated = FlagRecord {
        flag: flag.clone(),
        active_rollout: record.active_rollout.clone(),
        created_at: record.created_at,
        updated_at: context.now,
    };
    let mut happened = vec![Happened::event(EventKind::FlagUpdated, None)];
    let mut rollout_change = None;
    if let Some(rollout) = active_rollout_of(record, loaded) {
        check_update_allowed(&record.flag, flag, rollout)?;
        if record.flag.enabled && !flag.enabled {
            // disabling through an update stops the rollout just like flag.disable
            let (next, outcome_effects) = stop_for_disable(&mut updated, rollout, context)?;
            happened.push(Happened::event(EventKind::FlagDisabled, None));
            happened.push(Happened::Effects {
                rollout_id: rollout.id.clone(),
                before: rollout.state.clone(),
                effects: outcome_effects,
            });
            rollout_change = Some((rollout.state.revision, next));
        }
    }
    let result = flag_result(&updated, stored.version + event_count(&happened))?;
    Ok(Decision::Change(Box::new(Change {
        flag_key: flag.key.clone(),
        flag_version: stored.version,
        flag: Some(updated),
        flag_created: false,
        rollout: rollout_change,
        deleted_rollout: None,
        happened,
        result,
    })))
}

fn active_rollout_of<'a>(record: &FlagRecord, loaded: &'a Loaded) -> Option<&'a RolloutRecord> {
    let active_id = record.active_rollout.as_deref()?;
    loaded
        .active_rollout
        .as_ref()
        .filter(|rollout| rollout.id == active_id)
}

/// Stops `rollout` because its flag is being disabled and settles the flag record.
fn stop_for_disable(
    flag: &mut FlagRecord,
    rollout: &RolloutRecord,
    context: &DecideContext,
) -> Result<(RolloutRecord, Vec<rollout_core::Effect>), WireError> {
    let stopped = transition::apply(flag, rollout, &Event::FlagDisabled, context.now)?;
    *flag = stopped.flag;
    Ok((stopped.rollout, stopped.effects))
}

fn flag_toggle(
    key: &str,
    enable: bool,
    loaded: &Loaded,
    context: &DecideContext,
) -> Result<Decision, WireError> {
    let (stored, record) = existing_flag(loaded, key, "key")?;
    if record.flag.enabled == enable {
        return Ok(Decision::Unchanged(flag_result(record, stored.version)?));
    }
    let mut updated = FlagRecord {
        updated_at: context.now,
        ..record.clone()
    };
    updated.flag.enabled = enable;
    let kind = if enable {
        EventKind::FlagEnabled
    } else {
        EventKind::FlagDisabled
    };
    let mut rollout_change = None;
    let mut happened = vec![Happened::event(kind, None)];
    if !enable {
        if let Some(rollout) = active_rollout_of(record, loaded) {
            let (next, outcome_effects) = stop_for_disable(&mut updated, rollout, context)?;
            happened.push(Happened::Effects {
                rollout_id: rollout.id.clone(),
                before: rollout.state.clone(),
                effects: outcome_effects,
            });
            rollout_change = Some((rollout.state.revision, next));
        }
    }
    let result = flag_result(&updated, stored.version + event_count(&happened))?;
    Ok(Decision::Change(Box::new(Change {
        flag_key: key.to_owned(),
        flag_version: stored.version,
        flag: Some(updated),
        flag_created: false,
        rollout: rollout_change,
        deleted_rollout: None,
        happened,
        result,
    })))
}

fn flag_delete(key: &str, loaded: &Loaded) -> Result<Decision, WireError> {
    let (stored, record) = existing_flag(loaded, key, "key")?;
    if let Some(active) = &record.active_rollout {
        return Err(WireError::failed_precondition(format!(
            "flag {key} has active rollout {active}; stop or delete the rollout first"
        ))
        .with_field("key"));
    }
    let result = to_result(&Deleted {
        flag: key.to_owned(),
        rollout_id: None,
    })?;
    Ok(Decision::Change(Box::new(Change {
        flag_key: key.to_owned(),
        flag_version: stored.version,
        flag: None,
        flag_created: false,
        rollout: None,
        deleted_rollout: None,
        happened: vec![Happened::event(EventKind::FlagDeleted, None)],
        result,
    })))
}

fn rollout_create(
    spec: &rollout_core::RolloutSpec,
    loaded: &Loaded,
    context: &DecideContext,
) -> Result<Decision, WireError> {
    let (stored, record) = existing_flag(loaded, &spec.flag, "rollout.flag")?;
    if let Some(active) = &record.active_rollout {
        return Err(WireError::conflict(format!(
            "flag {} already has active rollout {active}; one active rollout per flag (flag-level and rule-level exclude each other)",
            spec.flag
        ))
        .with_field("rollout.flag"));
    }
    let compile_context = CompileContext {
        now: context.now,
        min_phase_interval: context.min_phase_interval,
        fresh_salt: &context.fresh_salt,
    };
    let plan = compile_from_current_serve(spec, &record.flag, &compile_context)?;
    let created = transition::create(
        record,
        NewRollout {
            id: context.new_rollout_id.clone(),
            namespace: context.namespace.clone(),
            spec: spec.clone(),
            plan,
            created_by: context.actor.clone(),
            traceparent: context.traceparent.clone(),
        },
        context.now,
    );
    let result = to_result(&RolloutResult::new(
        &created.rollout.id,
        &created.rollout.plan,
        &created.rollout.state,
        context.now,
    ))?;
    let happened = Happened::rollout_created(&created);
    Ok(Decision::Change(Box::new(Change {
        flag_key: spec.flag.clone(),
        flag_version: stored.version,
        flag: Some(created.flag),
        flag_created: false,
        rollout: Some((0, created.rollout)),
        deleted_rollout: None,
        happened,
        result,
    })))
}

/// Compiles `spec` so that it starts from what its target serves now (SPEC §11.1): a
/// split left by an earlier rollout is continued with its salt and no step below its
/// share; any other serve but the baseline is refused unless the spec replaces it.
/// Invalid specs are refused as such before the current serve is looked at.
pub(crate) fn compile_from_current_serve(
    spec: &rollout_core::RolloutSpec,
    flag: &Flag,
    context: &CompileContext<'_>,
) -> Result<rollout_core::Plan, WireError> {
    let as_written = compile(spec, flag, context)?;
    match continuation(spec, flag).map_err(|mismatch| {
        WireError::failed_precondition(format!("flag {}: {mismatch}", flag.key))
            .with_field("rollout.replace_current_serve")
    })? {
        Continuation::Fresh => Ok(as_written),
        split => Ok(split.apply_to_plan(compile(&split.apply_to_spec(spec), flag, context)?)),
    }
}

fn existing_rollout<'a>(
    rollout_id: &str,
    loaded: &'a Loaded,
) -> Result<&'a RolloutRecord, WireError> {
    loaded
        .rollout
        .as_ref()
        .filter(|rollout| rollout.id == rollout_id)
        .ok_or_else(|| {
            WireError::not_found(format!("rollout {rollout_id} does not exist"))
                .with_field("rollout_id")
        })
}

/// Refuses a command expecting its rollout in another step than the one it is in.
fn check_expected_step(rollout: &RolloutRecord, context: &DecideContext) -> Result<(), WireError> {
    match context.expected_step {
        Some(expected) if rollout.state.step != Some(expected) => {
            let now = rollout.state.step.map_or_else(
                || rollout.state.lifecycle.as_str().to_owned(),
                |step| format!("step index {step}"),
            );
            Err(WireError::conflict(format!(
                "rollout {} is at {now}, not at the expected step index {expected}: it moved meanwhile; nothing was done, read its status again",
                rollout.id
            ))
            .with_field("expected_step"))
        }
        _ => Ok(()),
    }
}

fn rollout_event(
    rollout_id: &str,
    event: Event,
    loaded: &Loaded,
    context: &DecideContext,
) -> Result<Decision, WireError> {
    let rollout = existing_rollout(rollout_id, loaded)?;
    check_expected_step(rollout, context)?;
    let (stored, record) = existing_flag(loaded, &rollout.plan.flag, "rollout_id")?;
    let moved = transition::apply(record, rollout, &event, context.now)?;
    let (updated, next, effects) = (moved.flag, moved.rollout, moved.effects);
    let result = to_result(&RolloutResult::new(
        &next.id,
        &next.plan,
        &next.state,
        context.now,
    ))?;
    if effects.is_empty() {
        return Ok(Decision::Unchanged(result));
    }
    Ok(Decision::Change(Box::new(Change {
        flag_key: rollout.plan.flag.clone(),
        flag_version: stored.version,
        flag: Some(updated),
        flag_created: false,
        rollout: Some((rollout.state.revision, next)),
        deleted_rollout: None,
        happened: vec![Happened::Effects {
            rollout_id: rollout.id.clone(),
            before: rollout.state.clone(),
            effects,
        }],
        result,
    })))
}

/// Deleting an active rollout stops it first (keeping its current share, as Bucketeer
/// does), then removes the record; its audit history stays readable.
fn rollout_delete(
    rollout_id: &str,
    loaded: &Loaded,
    context: &DecideContext,
) -> Result<Decision, WireError> {
    let rollout = existing_rollout(rollout_id, loaded)?;
    check_expected_step(rollout, context)?;
    let flag_key = rollout.plan.flag.clone();
    let stored_flag = loaded
        .flag
        .as_ref()
        .and_then(|stored| stored.record.as_ref().map(|record| (stored, record)));
    let result = to_result(&Deleted {
        flag: flag_key.clone(),
        rollout_id: Some(rollout.id.clone()),
    })?;
    let mut happened = Vec::new();
    let mut flag_after = None;
    if let (true, Some((_, record))) = (rollout.state.lifecycle.is_active(), stored_flag) {
        let stopped = transition::apply(
            record,
            rollout,
            &Event::Stop { percentage: None },
            context.now,
        )?;
        flag_after = Some(stopped.flag);
        happened.push(Happened::Effects {
            rollout_id: rollout.id.clone(),
            before: rollout.state.clone(),
            effects: stopped.effects,
        });
    }
    // deleted comes after stopped
    happened.push(Happened::event(EventKind::RolloutDeleted, Some(rollout_id)));
    let Some((stored, record)) = stored_flag else {
        // a finished rollout of a deleted flag (a flag with an active rollout cannot be
        // deleted): the record goes, the flag's tombstone stays deleted at a new version
        if rollout.state.lifecycle.is_active() {
            return Err(WireError::internal(format!(
                "active rollout {rollout_id} belongs to missing flag {flag_key}"
            )));
        }
        return Ok(Decision::Change(Box::new(Change {
            flag_version: loaded.flag.as_ref().map_or(0, |stored| stored.version),
            flag_key,
            flag: None,
            flag_created: false,
            rollout: None,
            deleted_rollout: Some(rollout.clone()),
            happened,
            result,
        })));
    };
    Ok(Decision::Change(Box::new(Change {
        flag_key,
        flag_version: stored.version,
        flag: Some(flag_after.unwrap_or_else(|| FlagRecord {
            updated_at: context.now,
            ..record.clone()
        })),
        flag_created: false,
        rollout: None,
        deleted_rollout: Some(rollout.clone()),
        happened,
        result,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::Lifecycle;
    use rollout_wire::commands::{FlagUpdate, RolloutAction, RolloutCreate};
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
        let Ok(Decision::Change(change)) =
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
        let Ok(Decision::Change(change)) = decide(&command, &loaded, &context()) else {
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
