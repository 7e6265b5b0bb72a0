//! Flag commands: create, update, enable, disable, delete.

use rollout_core::machine::Event;
use rollout_core::transition;
use rollout_core::{Flag, Target};
use rollout_store::{Change, FlagRecord, Happened, RolloutRecord, StoredFlag};
use rollout_wire::commands::{CommandReply, Deleted, SideEffect};
use rollout_wire::envelope::WireError;
use rollout_wire::events::EventKind;

use super::{changed, existing_flag, flag_result, served_share, DecideContext, Decision, Loaded};

pub(super) fn create(
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
        last_rollout: None,
        created_at: context.now,
        updated_at: context.now,
    };
    let reply = flag_result(&record, stored.version + 1, Vec::new());
    let mut change = Change::of_flag(&flag.key, stored.version);
    change.flag = Some(record);
    change.flag_created = true;
    change.happened = vec![Happened::event(EventKind::FlagCreated, None)];
    Ok(changed(change, reply))
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

pub(super) fn update(
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
    let updated = FlagRecord {
        flag: flag.clone(),
        active_rollout: record.active_rollout.clone(),
        last_rollout: record.last_rollout.clone(),
        created_at: record.created_at,
        updated_at: context.now,
    };
    let active = active_rollout_of(record, loaded);
    if let Some(rollout) = active {
        check_update_allowed(&record.flag, flag, rollout)?;
    }
    let mut happened = vec![Happened::event(EventKind::FlagUpdated, None)];
    // disabling through an update stops the rollout just like flag.disable
    let stopping = active.filter(|_| record.flag.enabled && !flag.enabled);
    if stopping.is_some() {
        happened.push(Happened::event(EventKind::FlagDisabled, None));
    }
    flag_changed(stored.version, updated, stopping, happened, context)
}

/// A change writing `updated` (loaded at `version`) after `happened`; with `stopping`, the
/// flag is being disabled and its active rollout stops, with the effects of stopping.
fn flag_changed(
    version: u64,
    updated: FlagRecord,
    stopping: Option<&RolloutRecord>,
    mut happened: Vec<Happened>,
    context: &DecideContext,
) -> Result<Decision, WireError> {
    let mut side_effects = Vec::new();
    let mut change = match stopping {
        Some(rollout) => {
            let stopped = transition::apply(&updated, rollout, &Event::FlagDisabled, context.now)?;
            side_effects.push(SideEffect::RolloutStopped {
                rollout_id: rollout.id.clone(),
                share: served_share(&stopped.rollout),
            });
            Change::rollout_moved(version, &rollout.state, stopped)
        }
        None => {
            let mut change = Change::of_flag(&updated.flag.key, version);
            change.flag = Some(updated);
            change
        }
    };
    happened.append(&mut change.happened);
    change.happened = happened;
    let flag = change
        .flag
        .as_ref()
        .ok_or_else(|| WireError::internal("a flag change without the flag record"))?;
    let reply = flag_result(flag, version + change.event_count(), side_effects);
    Ok(changed(change, reply))
}

fn active_rollout_of<'a>(record: &FlagRecord, loaded: &'a Loaded) -> Option<&'a RolloutRecord> {
    let active_id = record.active_rollout.as_deref()?;
    loaded
        .active_rollout
        .as_ref()
        .filter(|rollout| rollout.id == active_id)
}

pub(super) fn toggle(
    key: &str,
    enable: bool,
    loaded: &Loaded,
    context: &DecideContext,
) -> Result<Decision, WireError> {
    let (stored, record) = existing_flag(loaded, key, "key")?;
    if record.flag.enabled == enable {
        return Ok(Decision::Unchanged(flag_result(
            record,
            stored.version,
            Vec::new(),
        )));
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
    let stopping = active_rollout_of(record, loaded).filter(|_| !enable);
    flag_changed(
        stored.version,
        updated,
        stopping,
        vec![Happened::event(kind, None)],
        context,
    )
}

pub(super) fn delete(key: &str, loaded: &Loaded) -> Result<Decision, WireError> {
    let (stored, record) = existing_flag(loaded, key, "key")?;
    if let Some(active) = &record.active_rollout {
        return Err(WireError::failed_precondition(format!(
            "flag {key} has active rollout {active}; stop or delete the rollout first"
        ))
        .with_field("key"));
    }
    let reply = CommandReply::Deleted(Deleted {
        flag: key.to_owned(),
        rollout_id: None,
        side_effects: Vec::new(),
    });
    let mut change = Change::of_flag(key, stored.version);
    change.happened = vec![Happened::event(EventKind::FlagDeleted, None)];
    Ok(changed(change, reply))
}
