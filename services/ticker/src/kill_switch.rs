//! Kill switches (SPEC §6): a flag whose record carries `kill_switch` (a guard condition)
//! is disabled when its outcome counters breach it. They read the flag-level counters
//! (per variation, whatever rollout produced them), unlike a rollout's guard, which reads
//! only its own rollout's counters (`rollout_store::outcomes`).
//!
//! A replica keeps an index of such flags in the namespaces of the shards it leads, built
//! by scanning each namespace's flags when it takes the namespace's shard (and every few
//! minutes), and kept current from the snapshots of change
//! events. Every `health_check_interval` it judges each enabled one over the guard's
//! window:
//!
//! - while the flag has a running or paused rollout, the rollout's baseline is compared
//!   with its candidate, exactly as the rollout's own guard would;
//! - otherwise the flag's **off variation is the baseline side and every other variation
//!   together is the candidate side** (the change a kill switch protects against is "the
//!   flag being on").
//!
//! A breach disables the flag and, if it has an active rollout, stops that rollout at its
//! current share (`Event::FlagDisabled`), in one fenced commit with the events
//! `kill_switch_tripped` (its audit `to` names the limit crossed), `flag_disabled` and the
//! rollout's own.

use std::collections::BTreeMap;

use rollout_core::guard::{Guard, GuardSpec, GuardVerdict};
use rollout_core::machine::Event;
use rollout_core::transition;
use rollout_core::Timestamp;
use rollout_store::Keys;
use rollout_store::{
    decode_record, load_flag, load_rollout, outcomes, reads, Actor, Change, Conditions, FlagRecord,
    Happened, Refused, StoreError, Written,
};
use rollout_wire::events::{ChangeEvent, EventKind};
use rollout_wire::subjects::Namespace;
use serde::Deserialize;

use crate::fire::{FireContext, TICKER_ACTOR};
use crate::leadership::LedNamespace;

/// Flags read per round trip while scanning.
const SCAN_CHUNK: usize = 256;

/// One flag with a kill switch.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    guard: Guard,
    enabled: bool,
}

/// The flags with a kill switch, by (namespace, flag key).
#[derive(Clone, Debug, Default)]
pub struct KillSwitches {
    entries: BTreeMap<(String, String), Entry>,
}

/// Just the parts of a stored flag record the index needs.
#[derive(Deserialize)]
struct FlagRecordPeek {
    flag: FlagPeek,
}

#[derive(Deserialize)]
struct FlagPeek {
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    #[serde(default)]
    kill_switch: Option<GuardSpec>,
}

fn enabled_by_default() -> bool {
    true
}

/// What one kill switch check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KillSwitchReport {
    /// Flags judged.
    pub checked: usize,
    /// Flags disabled.
    pub tripped: usize,
    /// The namespaces whose fence refused a write: another replica leads their shard now.
    pub fenced: Vec<String>,
}

impl KillSwitches {
    /// Number of indexed flags (enabled or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no flag has a kill switch.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `flag` of `namespace` has a kill switch.
    pub fn contains(&self, namespace: &str, flag: &str) -> bool {
        self.entries
            .contains_key(&(namespace.to_owned(), flag.to_owned()))
    }

    /// Whether any indexed flag is enabled (only those are judged).
    pub fn any_enabled(&self) -> bool {
        self.entries.values().any(|entry| entry.enabled)
    }

    /// Rebuilds the entries of `namespace` from its stored flags.
    pub async fn scan(
        &mut self,
        context: &FireContext,
        namespace: &Namespace,
        keys: &Keys,
    ) -> Result<(), StoreError> {
        let mut connection = context.redis.clone();
        let flag_keys = reads::flag_keys(&mut connection, keys).await?;
        self.entries
            .retain(|(entry_namespace, _), _| entry_namespace != namespace.as_str());
        for chunk in flag_keys.chunks(SCAN_CHUNK) {
            let records = reads::encoded_flags(&mut connection, keys, chunk).await?;
            for (flag_key, bytes) in chunk.iter().zip(records) {
                let Some(bytes) = bytes else { continue };
                match decode_record::<FlagRecordPeek>(&bytes, &format!("flag {flag_key}")) {
                    Ok(peek) => self.set(
                        namespace.as_str(),
                        flag_key,
                        peek.flag.kill_switch.as_ref(),
                        peek.flag.enabled,
                    ),
                    Err(error) => {
                        tracing::warn!(%error, namespace = %namespace, flag = %flag_key, "skipping an undecodable flag while indexing kill switches");
                    }
                }
            }
        }
        Ok(())
    }

    /// Keeps the index current from a change event's snapshot.
    pub fn absorb(&mut self, event: &ChangeEvent) {
        if event.kind == EventKind::FlagDeleted {
            self.entries
                .remove(&(event.namespace.clone(), event.flag.clone()));
            return;
        }
        if let Some(snapshot) = &event.snapshot {
            self.set(
                &event.namespace,
                &event.flag,
                snapshot.flag.kill_switch.as_ref(),
                snapshot.flag.enabled,
            );
        }
    }

    fn set(&mut self, namespace: &str, flag: &str, spec: Option<&GuardSpec>, enabled: bool) {
        let key = (namespace.to_owned(), flag.to_owned());
        let guard = spec.and_then(|spec| match spec.compile("flag.kill_switch") {
            Ok(guard) => Some(guard),
            Err(errors) => {
                tracing::warn!(namespace, flag, %errors, "ignoring an invalid kill switch");
                None
            }
        });
        match guard {
            Some(guard) => {
                self.entries.insert(key, Entry { guard, enabled });
            }
            None => {
                self.entries.remove(&key);
            }
        }
    }

    /// Judges every enabled kill switch at Redis time `now` and disables the flags whose
    /// switch is breached, each write fenced by the epoch of its namespace's shard.
    /// `namespaces` are the fenced ones; the others' switches are another replica's.
    pub async fn check(
        &mut self,
        context: &FireContext,
        namespaces: &BTreeMap<String, LedNamespace>,
        now: Timestamp,
    ) -> Result<KillSwitchReport, StoreError> {
        let mut report = KillSwitchReport::default();
        let candidates: Vec<(String, String)> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.enabled)
            .map(|(key, _)| key.clone())
            .collect();
        for (namespace_name, flag_key) in candidates {
            let Some(led) = namespaces.get(&namespace_name) else {
                continue;
            };
            if report.fenced.contains(&namespace_name) {
                continue;
            }
            report.checked += 1;
            match self
                .check_one(
                    context,
                    &led.namespace,
                    &led.keys,
                    &flag_key,
                    led.epoch,
                    now,
                )
                .await?
            {
                Checked::Healthy => {}
                Checked::Tripped => report.tripped += 1,
                Checked::Fenced => report.fenced.push(namespace_name),
            }
        }
        Ok(report)
    }

    /// Forgets the entries of `namespace` (its shard went to another replica).
    pub fn forget(&mut self, namespace: &str) {
        self.entries
            .retain(|(entry_namespace, _), _| entry_namespace != namespace);
    }

    async fn check_one(
        &mut self,
        context: &FireContext,
        namespace: &Namespace,
        keys: &Keys,
        flag_key: &str,
        epoch: u64,
        now: Timestamp,
    ) -> Result<Checked, StoreError> {
        let mut connection = context.redis.clone();
        let stored = load_flag(&mut connection, keys, flag_key).await?;
        let Some(record) = stored.record else {
            self.entries
                .remove(&(namespace.as_str().to_owned(), flag_key.to_owned()));
            return Ok(Checked::Healthy);
        };
        // the stored record is the truth; the index only says where to look
        self.set(
            namespace.as_str(),
            flag_key,
            record.flag.kill_switch.as_ref(),
            record.flag.enabled,
        );
        let Some(entry) = self
            .entries
            .get(&(namespace.as_str().to_owned(), flag_key.to_owned()))
            .filter(|entry| entry.enabled)
            .cloned()
        else {
            return Ok(Checked::Healthy);
        };
        let rollout = match &record.active_rollout {
            Some(rollout_id) => load_rollout(&mut connection, keys, rollout_id).await?,
            None => None,
        };
        let counts = outcomes::load_flag_sides(
            &mut connection,
            keys,
            &record,
            rollout.as_ref(),
            entry.guard.window,
            now,
        )
        .await?
        .counts;
        let GuardVerdict::Breached(figures) = entry.guard.verdict(&counts) else {
            return Ok(Checked::Healthy);
        };
        // disable the flag, stop its rollout, one fenced commit
        let mut disabled = FlagRecord {
            updated_at: now,
            ..record
        };
        disabled.flag.enabled = false;
        let mut change = Change::of_flag(flag_key, stored.version);
        if let Some(active) = rollout
            .as_ref()
            .filter(|rollout| rollout.state.lifecycle.is_active())
        {
            match transition::apply(&disabled, active, &Event::FlagDisabled, now) {
                Ok(stopped) if stopped.changed() => {
                    change = Change::rollout_moved(stored.version, &active.state, stopped);
                }
                Ok(_) => {}
                Err(rejection) => {
                    tracing::warn!(rollout_id = %active.id, %rejection, "the kill switch could not stop the rollout");
                }
            }
        }
        let rollout_id = change.rollout.as_ref().map(|(_, next)| next.id.clone());
        if change.flag.is_none() {
            change.flag = Some(disabled);
        }
        // tripped, then disabled, then (when it stopped a rollout) the rollout's effects
        change.happened.splice(
            0..0,
            [
                Happened::KillSwitchTripped {
                    rollout_id: rollout_id.clone(),
                    figures: figures.clone(),
                },
                Happened::event(EventKind::FlagDisabled, None),
            ],
        );
        let change = change.keeping_active(rollout.as_ref());
        let actor = Actor {
            name: TICKER_ACTOR.to_owned(),
            command_id: None,
            trace_id: Some(rollout_runtime::telemetry::new_trace_id()),
            reason: None,
        };
        let conditions = Conditions {
            leader_epoch: Some(epoch),
            ..Conditions::default()
        };
        match context
            .writer
            .commit(namespace, change, actor, now, conditions)
            .await?
        {
            Written::Committed { .. } => {
                context.stats.kill_switch_trip();
                tracing::warn!(
                    namespace = %namespace,
                    flag = %flag_key,
                    rollout_id = rollout_id.as_deref(),
                    limit = %figures.limit,
                    candidate_error_rate = figures.candidate_error_rate,
                    baseline_error_rate = figures.baseline_error_rate,
                    candidate_samples = figures.candidate_samples,
                    baseline_samples = figures.baseline_samples,
                    "kill switch tripped: flag disabled"
                );
                if let Some(entry) = self
                    .entries
                    .get_mut(&(namespace.as_str().to_owned(), flag_key.to_owned()))
                {
                    entry.enabled = false;
                }
                Ok(Checked::Tripped)
            }
            Written::Refused(Refused::Fenced { fence }) => {
                context.stats.fenced_write();
                tracing::warn!(namespace = %namespace, flag = %flag_key, epoch, fence, "kill switch write refused by the fence: another replica leads this namespace's shard");
                Ok(Checked::Fenced)
            }
            Written::Refused(Refused::Conflict { .. }) => {
                context.stats.conflict();
                Ok(Checked::Healthy)
            }
            Written::Refused(Refused::Early { .. } | Refused::Duplicate(_)) => Ok(Checked::Healthy),
        }
    }
}

enum Checked {
    Healthy,
    Tripped,
    Fenced,
}

/// The baseline variation and the candidate variations a kill switch compares: the
/// running (or paused) rollout's two, else the off variation against all the others.
#[cfg(test)]
mod tests {
    use super::*;

    fn flag_record() -> FlagRecord {
        let flag = serde_json::from_value(serde_json::json!({
            "key": "checkout", "variations": [
                {"id": "off", "value": false}, {"id": "blue", "value": "b"}, {"id": "green", "value": "g"}],
            "off_variation": "off", "default": {"variation": "blue"},
            "kill_switch": {"max_error_rate": 5.0, "min_samples": 10, "window": "1m"}}))
        .expect("flag");
        FlagRecord {
            flag,
            active_rollout: None,
            last_rollout: None,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        }
    }

    #[test]
    fn without_a_rollout_off_is_the_baseline_and_the_rest_the_candidate() {
        let (baseline, candidates, rollout) = outcomes::kill_switch_sides(&flag_record(), None);
        assert_eq!(rollout, None);
        assert_eq!(baseline, "off");
        assert_eq!(candidates, ["blue", "green"]);
    }

    #[test]
    fn the_index_follows_event_snapshots() {
        let record = flag_record();
        let mut index = KillSwitches::default();
        let mut event = ChangeEvent::new(
            "prod",
            "checkout",
            3,
            EventKind::FlagUpdated,
            Timestamp::from_millis(1),
        );
        event.snapshot = Some(rollout_wire::events::FlagSnapshot {
            flag: record.flag.clone(),
            version: 3,
            rollout: None,
            last_rollout: None,
        });
        index.absorb(&event);
        assert!(index.contains("prod", "checkout"));
        assert!(index.any_enabled());

        let mut without = record.flag.clone();
        without.kill_switch = None;
        event.snapshot = Some(rollout_wire::events::FlagSnapshot {
            flag: without,
            version: 4,
            rollout: None,
            last_rollout: None,
        });
        index.absorb(&event);
        assert!(index.is_empty());

        event.snapshot = Some(rollout_wire::events::FlagSnapshot {
            flag: record.flag,
            version: 5,
            rollout: None,
            last_rollout: None,
        });
        index.absorb(&event);
        let deleted = ChangeEvent::new(
            "prod",
            "checkout",
            6,
            EventKind::FlagDeleted,
            Timestamp::from_millis(2),
        );
        index.absorb(&deleted);
        assert!(!index.contains("prod", "checkout"));
    }
}
