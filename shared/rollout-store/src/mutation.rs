//! Turning a decided [`Change`] into one [`Commit`] (for [`crate::write::Writer`]): the
//! records with their revision checks, the indexes (`flags`, `rollouts:active|finished`,
//! `due`) kept in step, one audit entry and one outbox event per thing that [`Happened`],
//! numbered with strictly rising per-flag versions. Every writer therefore writes
//! byte-for-byte the same shapes.

use crate::keys::Keys;
use rollout_core::transition::next_look;
use rollout_core::{Effect, GuardFigures, Lifecycle, RolloutState, Timestamp, Transition};
use rollout_wire::codec::{self, Encoding};
use rollout_wire::events::{ChangeEvent, EventKind, FlagSnapshot};
use rollout_wire::queries::AuditEntry;

use crate::records::RolloutDefinitionRef;
use crate::write::Change;
use crate::{encode_record, Commit, FlagRecord, RolloutRecord, StoreError};

/// Audit lists keep this many newest entries.
pub const AUDIT_MAX_ENTRIES: usize = 10_000;
/// How long a command's first outcome is remembered, in seconds.
pub const COMMAND_OUTCOME_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// Who makes a change, for audit entries and events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    /// `operator-name`, or `ticker`.
    pub name: String,
    /// The command's idempotency key, when a command made the change.
    pub command_id: Option<String>,
    /// OpenTelemetry trace id of the command or transition.
    pub trace_id: Option<String>,
    /// Why, when the change says so (an alert's reason), kept in the audit details.
    pub reason: Option<String>,
}

/// One thing that happened, to be audited and published.
#[derive(Clone, Debug, PartialEq)]
struct Happening {
    /// The event, without version and snapshot (the mutation fills them in).
    event: ChangeEvent,
    /// Audit `from` (state or step before).
    from: Option<String>,
    /// Audit `to`.
    to: Option<String>,
}

/// What a change did, in order: each becomes audit entries and events of its commit. The
/// one vocabulary from a decision (planner or ticker) to what [`Mutation`] writes.
#[derive(Clone, Debug, PartialEq)]
pub enum Happened {
    /// A plain happening: a flag created, updated, toggled or deleted; a rollout created
    /// or deleted.
    Event {
        /// Its kind.
        kind: EventKind,
        /// The rollout concerned.
        rollout_id: Option<String>,
    },
    /// A kill switch tripped on the flag (and stopped `rollout_id`), with the guard
    /// figures behind it.
    KillSwitchTripped {
        /// The rollout it stopped.
        rollout_id: Option<String>,
        /// The figures that breached the limit.
        figures: GuardFigures,
    },
    /// The step function's effects on a rollout (started, steps entered, paused, ended…),
    /// one event each.
    Effects {
        /// The rollout.
        rollout_id: String,
        /// Its state before (for the audit's `from`).
        before: Box<RolloutState>,
        /// The effects, in order.
        effects: Vec<Effect>,
    },
}

impl Happened {
    /// A plain happening of `kind`.
    pub fn event(kind: EventKind, rollout_id: Option<&str>) -> Happened {
        Happened::Event {
            kind,
            rollout_id: rollout_id.map(str::to_owned),
        }
    }

    /// How many events this appends (each raises the flag's version by one).
    pub fn event_count(&self) -> u64 {
        match self {
            Happened::Event { .. } | Happened::KillSwitchTripped { .. } => 1,
            Happened::Effects { effects, .. } => u64::try_from(effects.len()).unwrap_or(u64::MAX),
        }
    }

    /// What creating a rollout did ([`rollout_core::transition::create`]): it was created,
    /// then — if it started at once — the effects of starting, from a queued state.
    pub fn rollout_created(created: &Transition) -> Vec<Happened> {
        let id = &created.rollout.id;
        vec![
            Happened::event(EventKind::RolloutCreated, Some(id)),
            Happened::Effects {
                rollout_id: id.clone(),
                before: Box::new(RolloutState {
                    lifecycle: Lifecycle::Queued,
                    ..created.rollout.state.clone()
                }),
                effects: created.effects.clone(),
            },
        ]
    }
}

/// The events a list of happenings appends.
pub fn event_count(happened: &[Happened]) -> u64 {
    happened.iter().map(Happened::event_count).sum()
}

/// A [`Change`] on its way to one [`Commit`]: the records with their revision checks,
/// the happenings as audit entries and events.
#[derive(Debug)]
pub(crate) struct Mutation<'k> {
    keys: &'k Keys,
    namespace: String,
    flag_key: String,
    now: Timestamp,
    actor: Actor,
    flag_version: u64,
    flag_record: Option<FlagRecord>,
    flag_created: bool,
    flag_rewritten: bool,
    rollout: Option<(u64, RolloutRecord)>,
    rollout_definition_rewritten: bool,
    unchanged_rollout: Option<RolloutRecord>,
    deleted_rollout: Option<RolloutRecord>,
    happenings: Vec<Happening>,
}

/// What [`Mutation::into_commit`] produced.
#[derive(Debug)]
pub(crate) struct PreparedCommit {
    /// The commit to execute.
    pub(crate) commit: Commit,
    /// The events it appends to the outbox, versions and snapshots filled in.
    pub(crate) events: Vec<ChangeEvent>,
    /// Each event as the outbox holds it, published as is (not encoded a second time).
    pub(crate) encoded: Vec<bytes::Bytes>,
    /// The flag's version after the commit.
    pub(crate) flag_version: u64,
}

impl<'k> Mutation<'k> {
    /// `change` to `namespace`, made by `actor` at Redis time `now`.
    pub(crate) fn of(
        keys: &'k Keys,
        namespace: &str,
        now: Timestamp,
        actor: Actor,
        change: Change,
    ) -> Mutation<'k> {
        let mut mutation = Mutation {
            keys,
            namespace: namespace.to_owned(),
            flag_key: change.flag_key,
            now,
            actor,
            flag_version: change.flag_version,
            flag_record: change.flag,
            flag_created: change.flag_created,
            flag_rewritten: change.flag_rewritten,
            rollout: change.rollout,
            rollout_definition_rewritten: change.rollout_definition_rewritten,
            unchanged_rollout: change.unchanged_rollout,
            deleted_rollout: change.deleted_rollout,
            happenings: Vec::new(),
        };
        // a flag's `updated_at` is the Redis time of the commit that wrote its version, the
        // `time` of each of the commit's events: readers tell two commits of one version
        // apart by it (after Redis was restored from an older backup)
        if let Some(record) = &mut mutation.flag_record {
            record.updated_at = now;
        }
        for happened in change.happened {
            mutation.record(happened);
        }
        mutation
    }

    fn happened(
        &mut self,
        kind: EventKind,
        rollout_id: Option<String>,
        from: Option<String>,
        to: Option<String>,
    ) -> &mut Happening {
        let mut event = ChangeEvent::new(&self.namespace, &self.flag_key, 0, kind, self.now);
        event.rollout_id = rollout_id;
        self.happenings.push(Happening { event, from, to });
        let last = self.happenings.len() - 1;
        &mut self.happenings[last]
    }

    fn record(&mut self, happened: Happened) {
        match happened {
            Happened::Event { kind, rollout_id } => {
                let (from, to) = match kind {
                    EventKind::FlagEnabled => (Some("disabled"), Some("enabled")),
                    EventKind::FlagDisabled => (Some("enabled"), Some("disabled")),
                    _ => (None, None),
                };
                let details = (kind == EventKind::RolloutCreated)
                    .then(|| self.bucketing_of(rollout_id.as_deref()))
                    .flatten();
                let happening =
                    self.happened(kind, rollout_id, from.map(Into::into), to.map(Into::into));
                if let Some(details) = details {
                    happening.event.details = details;
                }
            }
            Happened::KillSwitchTripped {
                rollout_id,
                figures,
            } => {
                let to = format!("disabled: {}", figures.limit);
                let happening = self.happened(
                    EventKind::KillSwitchTripped,
                    rollout_id,
                    Some("enabled".to_owned()),
                    Some(to),
                );
                // the figures travel in the event's `figures` and in the audit's details
                happening.event.details =
                    serde_json::to_value(&figures).unwrap_or_else(|_| serde_json::json!({}));
                happening.event.figures = Some(figures);
            }
            Happened::Effects {
                rollout_id,
                before,
                effects,
            } => self.effects(&rollout_id, &before, &effects),
        }
    }

    /// How the rollout `rollout_id` this change creates buckets — its salt and stickiness,
    /// so that a later rollout can reuse the cohort — for a percentage plan.
    fn bucketing_of(&self, rollout_id: Option<&str>) -> Option<serde_json::Value> {
        let (_, record) = self.rollout.as_ref()?;
        if Some(record.id.as_str()) != rollout_id || record.plan.is_staged() {
            return None;
        }
        let mut details = serde_json::json!({"salt": record.plan.salt});
        if let Some(stickiness) = &record.plan.stickiness {
            details["stickiness"] = serde_json::Value::String(stickiness.clone());
        }
        Some(details)
    }

    /// Every effect of a step-function outcome on `rollout_id`, with `from`/`to` states.
    fn effects(&mut self, rollout_id: &str, before: &RolloutState, effects: &[Effect]) {
        for effect in effects {
            let event = ChangeEvent::for_effect(
                &self.namespace,
                &self.flag_key,
                0,
                self.now,
                rollout_id,
                effect,
            );
            let (from, to) = match effect {
                // people count steps from 1 (the details keep the 0-based indexes)
                Effect::StepEntered { from, to, .. } => (
                    from.map(|step| format!("step {}", step + 1)),
                    Some(format!("step {}", to + 1)),
                ),
                Effect::Started { .. } => (
                    Some(Lifecycle::Queued.as_str().to_owned()),
                    Some(Lifecycle::Running.as_str().to_owned()),
                ),
                Effect::Paused { .. } => (Some("running".to_owned()), Some("paused".to_owned())),
                Effect::Resumed { .. } => (Some("paused".to_owned()), Some("running".to_owned())),
                Effect::Completed => (
                    Some(before.lifecycle.as_str().to_owned()),
                    Some("completed".to_owned()),
                ),
                Effect::Stopped { .. } => (
                    Some(before.lifecycle.as_str().to_owned()),
                    Some("stopped".to_owned()),
                ),
                Effect::RolledBack { .. } => (
                    Some(before.lifecycle.as_str().to_owned()),
                    Some("rolled_back".to_owned()),
                ),
                Effect::Approved {
                    step,
                    approvals,
                    required,
                    ..
                } => (
                    Some(format!(
                        "step {}: {} of {required} approvals",
                        step + 1,
                        approvals - 1
                    )),
                    Some(format!(
                        "step {}: {approvals} of {required} approvals",
                        step + 1
                    )),
                ),
                Effect::Rescheduled {
                    at_step,
                    old_steps,
                    new_steps,
                } => (
                    Some(format!(
                        "{} steps after step {}",
                        old_steps.len(),
                        at_step + 1
                    )),
                    Some(format!(
                        "{} steps after step {}",
                        new_steps.len(),
                        at_step + 1
                    )),
                ),
                Effect::RollingBack { .. } => (
                    Some(before.lifecycle.as_str().to_owned()),
                    Some("rolling_back".to_owned()),
                ),
                Effect::ShareLowered { from, to, .. } => {
                    (Some(format!("share {from}")), Some(format!("share {to}")))
                }
                Effect::GuardBreached { .. } => (None, None),
            };
            self.happenings.push(Happening { event, from, to });
        }
    }

    /// Builds the commit: revision checks on the flag and the rollout, their new records,
    /// indexes, audit entries, versioned events with the final snapshot, and (when the
    /// actor has a command id) the stored outcome `outcome`.
    pub(crate) fn into_commit(
        mut self,
        outcome: Option<Vec<u8>>,
    ) -> Result<PreparedCommit, StoreError> {
        let keys = self.keys;
        let mut commit = Commit::new();
        let flag_key = keys.flag(&self.flag_key);
        commit.expect_revision(&flag_key, self.flag_version);
        let event_count = u64::try_from(self.happenings.len().max(1)).unwrap_or(u64::MAX);
        let new_version = self.flag_version + event_count;
        match &self.flag_record {
            Some(record) => {
                let touched = ("touched", record.updated_at.as_millis().to_string().into());
                let fields = if self.flag_rewritten || self.flag_created {
                    vec![("data", encode_record(record)?), touched]
                } else {
                    vec![touched]
                };
                commit.put_fields(&flag_key, new_version, fields);
                if self.flag_created {
                    commit.sadd(&keys.flags(), &self.flag_key);
                }
            }
            None => {
                commit.tombstone(&flag_key, new_version);
                commit.srem(&keys.flags(), &self.flag_key);
            }
        }
        // the namespace's flag-version counter moves by what this changes of the sum of
        // its listed flags' versions
        let listed_before = if self.flag_created {
            0
        } else {
            self.flag_version
        };
        let listed_after = if self.flag_record.is_some() {
            new_version
        } else {
            0
        };
        let moved = i64::try_from(listed_after).unwrap_or(i64::MAX)
            - i64::try_from(listed_before).unwrap_or(i64::MAX);
        if moved != 0 {
            commit.increment(&keys.versions(), moved);
        }
        if let Some((previous_revision, record)) = &self.rollout {
            let rollout_key = keys.rollout(&record.id);
            commit.expect_revision(&rollout_key, *previous_revision);
            let state = ("state", encode_record(&record.state)?);
            let fields = if self.rollout_definition_rewritten || *previous_revision == 0 {
                let definition = encode_record(&RolloutDefinitionRef::of(record))?;
                vec![("def", definition), state]
            } else {
                vec![state]
            };
            commit.put_fields(&rollout_key, record.state.revision, fields);
            if *previous_revision == 0 {
                commit.zadd(
                    &keys.rollouts_active(),
                    record.created_at.as_millis(),
                    &record.id,
                );
            }
            if record.state.lifecycle.is_finished() {
                commit.zrem(&keys.rollouts_active(), &record.id);
                let finished_at = record.state.finished_at.unwrap_or(self.now);
                commit.zadd(
                    &keys.rollouts_finished(),
                    finished_at.as_millis(),
                    &record.id,
                );
            }
            match next_look(record, self.now) {
                Some(due) => commit.zadd(&keys.due(), due.as_millis(), &record.id),
                None => commit.zrem(&keys.due(), &record.id),
            };
        }
        if let Some(record) = &self.unchanged_rollout {
            commit.expect_revision(&keys.rollout(&record.id), record.state.revision);
        }
        if let Some(record) = &self.deleted_rollout {
            let rollout_key = keys.rollout(&record.id);
            commit.expect_revision(&rollout_key, record.state.revision);
            commit.delete(&rollout_key);
            commit.zrem(&keys.rollouts_active(), &record.id);
            commit.zrem(&keys.rollouts_finished(), &record.id);
            commit.zrem(&keys.due(), &record.id);
        }
        // the record is encoded: the snapshot takes its flag rather than a copy
        let active = match &self.flag_record {
            Some(record) => self.active_view(record)?,
            None => None,
        };
        let snapshot = self.flag_record.take().map(|record| FlagSnapshot {
            flag: record.flag,
            version: new_version,
            rollout: active,
            last_rollout: record.last_rollout,
        });
        // every event of a rollout carries where the rollout stands after the commit, so a
        // watcher can follow it from events alone
        let rollout_position = self.rollout.as_ref().map(|(_, record)| {
            let share = (!record.plan.is_staged()).then(|| record.state.served_share(&record.plan));
            let eta = record.state.eta(&record.plan, self.now);
            (record.id.clone(), record.state.lifecycle, share, eta)
        });
        let mut events = Vec::with_capacity(self.happenings.len());
        let mut encoded = Vec::with_capacity(self.happenings.len());
        let last = self.happenings.len().saturating_sub(1);
        let mut snapshot = snapshot;
        for (position, happening) in self.happenings.into_iter().enumerate() {
            let mut event = happening.event;
            event.version = self.flag_version + u64::try_from(position).unwrap_or(0) + 1;
            event.actor = Some(self.actor.name.clone());
            event.trace_id.clone_from(&self.actor.trace_id);
            event.command_id.clone_from(&self.actor.command_id);
            // the last event takes the snapshot, the others a copy of it
            event.snapshot = if position == last {
                snapshot.take()
            } else {
                snapshot.clone()
            };
            if let Some((rollout_id, lifecycle, share, eta)) = &rollout_position {
                if event.rollout_id.as_deref() == Some(rollout_id.as_str()) {
                    event.state = Some(*lifecycle);
                    event.share = *share;
                    event.eta = *eta;
                }
            }
            let audit = AuditEntry {
                time: self.now,
                actor: self.actor.name.clone(),
                kind: event.kind,
                namespace: self.namespace.clone(),
                flag: self.flag_key.clone(),
                rollout_id: event.rollout_id.clone(),
                from: happening.from,
                to: happening.to,
                details: audit_details(
                    &event,
                    self.actor.command_id.as_deref(),
                    self.actor.reason.as_deref(),
                ),
                trace_id: self.actor.trace_id.clone(),
            };
            // one entry, passed once, for the flag's log and the rollout's
            let audit_bytes = encode_wire(&audit)?;
            let flag_log = keys.audit_flag(&self.flag_key);
            match &event.rollout_id {
                Some(rollout_id) => commit.push_each(
                    &[&flag_log, &keys.audit_rollout(rollout_id)],
                    audit_bytes,
                    AUDIT_MAX_ENTRIES,
                ),
                None => commit.push(&flag_log, audit_bytes, AUDIT_MAX_ENTRIES),
            };
            let bytes = bytes::Bytes::from(encode_wire(&event)?);
            commit.outbox(&keys.outbox(), bytes.clone());
            encoded.push(bytes);
            events.push(event);
        }
        commit.notify(
            &keys.notify(),
            &keys.webhooks(),
            crate::webhooks::NOTIFY_MAX_ENTRIES,
        );
        if let (Some(command_id), Some(outcome)) = (&self.actor.command_id, outcome) {
            commit.idempotent(
                &keys.command(command_id),
                outcome,
                COMMAND_OUTCOME_TTL_SECONDS,
            );
        }
        Ok(PreparedCommit {
            commit,
            events,
            encoded,
            flag_version: new_version,
        })
    }

    /// The view of the rollout the flag record names as active, from the changed or the
    /// unchanged rollout record; an error when the mutation holds neither, since the
    /// snapshot would then tell every evaluator to drop a running rollout.
    fn active_view(
        &self,
        flag_record: &FlagRecord,
    ) -> Result<Option<rollout_core::RolloutView>, StoreError> {
        let Some(active_id) = flag_record.active_rollout.as_deref() else {
            return Ok(None);
        };
        let changed = self.rollout.as_ref().map(|(_, record)| record);
        let active = changed
            .into_iter()
            .chain(self.unchanged_rollout.as_ref())
            .find(|record| record.id == active_id)
            .ok_or_else(|| {
                StoreError::Inconsistent(format!(
                    "a change to flag {} must carry its active rollout {active_id}",
                    self.flag_key
                ))
            })?;
        Ok(active.state.view(&active.id, &active.plan))
    }
}

fn audit_details(
    event: &ChangeEvent,
    command_id: Option<&str>,
    reason: Option<&str>,
) -> serde_json::Value {
    let mut details = match &event.details {
        serde_json::Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    for (name, value) in [("command_id", command_id), ("reason", reason)] {
        if let Some(value) = value {
            details.insert(name.to_owned(), serde_json::Value::String(value.to_owned()));
        }
    }
    serde_json::Value::Object(details)
}

/// MessagePack with named fields, as the wire contract encodes.
pub fn encode_wire<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    codec::encode_reserving(
        value,
        Encoding::MessagePack,
        crate::records::TYPICAL_ENCODED_SIZE,
    )
    .map_err(|error| StoreError::Corrupt(format!("cannot encode: {error}")))
}
