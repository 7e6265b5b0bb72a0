//! The one write path of the system. A decided [`Change`] — the flag after it, the rollout
//! after it, what happened — becomes one commit of the `commit.lua` script, with the
//! conditions the writer needs ([`Conditions`]: the leader's fence epoch, an earliest Redis
//! time, the command's stored outcome), and its events are published at once through the
//! [`Relay`]. Planner commands, ticker transitions, the kill switch, seeding and test
//! fixtures all write through [`Writer::commit`]; none assembles records, indexes, audit
//! entries or events itself.

use crate::keys::Keys;
use rollout_core::{RolloutState, Timestamp, Transition};
use rollout_wire::events::ChangeEvent;
use rollout_wire::queries::AuditEntry;
use rollout_wire::subjects::Namespace;

use crate::commit::Refused;
use crate::mutation::{Happened, Mutation, PreparedCommit};
use crate::{
    Actor, Commit, CommitOutcome, Connection, FlagRecord, Relay, RolloutRecord, StoreError,
};

/// A change to one flag and at most one of its rollouts, as a decision left it.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The flag's key.
    pub flag_key: String,
    /// The flag's version as loaded (0: it never existed); the commit checks it.
    pub flag_version: u64,
    /// The flag record after the change; `None` deletes the flag. Written even when only
    /// its rollout changed, since its version rises with every event.
    pub flag: Option<FlagRecord>,
    /// The flag is new (the commit adds it to the flag index).
    pub flag_created: bool,
    /// Whether the commit stores [`Change::flag`] whole. When the decision knows the
    /// record differs from the stored one in its timestamp only (a rollout's step:
    /// [`Change::rollout_moved_on_stored_flag`]), the commit stores its new version and
    /// timestamp alone; the revision check makes sure the stored record is the one the
    /// decision read.
    pub flag_rewritten: bool,
    /// The rollout after the change, with its revision as loaded (0: new).
    pub rollout: Option<(u64, RolloutRecord)>,
    /// Whether the commit stores the rollout's definition (all but its state: spec, plan,
    /// creation) besides its state; always for a new rollout.
    pub rollout_definition_rewritten: bool,
    /// The flag's active rollout, left as it is: its view goes into the event snapshot (an
    /// evaluator applying the event keeps serving it) and the commit checks its revision.
    /// A change whose flag names an active rollout it carries neither here nor in
    /// [`Change::rollout`] is refused before Redis ([`StoreError::Inconsistent`]).
    pub unchanged_rollout: Option<RolloutRecord>,
    /// The rollout this change deletes, as loaded (its audit stays).
    pub deleted_rollout: Option<RolloutRecord>,
    /// What happened, in order: one audit entry and one event each.
    pub happened: Vec<Happened>,
}

impl Change {
    /// A change of flag `flag_key` as loaded at `flag_version`, writing nothing yet.
    pub fn of_flag(flag_key: &str, flag_version: u64) -> Change {
        Change {
            flag_key: flag_key.to_owned(),
            flag_version,
            flag: None,
            flag_created: false,
            flag_rewritten: true,
            rollout: None,
            rollout_definition_rewritten: true,
            unchanged_rollout: None,
            deleted_rollout: None,
            happened: Vec::new(),
        }
    }

    /// A rollout created by [`rollout_core::transition::create`] on a flag loaded at
    /// `flag_version` (`flag_created`: the flag is new in this same change).
    pub fn rollout_created(flag_version: u64, flag_created: bool, created: Transition) -> Change {
        let mut change = Change::of_flag(&created.flag.flag.key, flag_version);
        change.happened = Happened::rollout_created(&created);
        change.flag = Some(created.flag);
        change.flag_created = flag_created;
        change.rollout = Some((0, created.rollout));
        change
    }

    /// A rollout moved by the step function ([`rollout_core::transition::apply`],
    /// [`rollout_core::transition::settle`] or [`rollout_core::transition::reschedule`])
    /// from state `before` as loaded, on a flag loaded at `flag_version`; the transition
    /// may have started from a flag record the decision changed first, so the commit
    /// stores the flag record whole.
    pub fn rollout_moved(flag_version: u64, before: &RolloutState, moved: Transition) -> Change {
        let mut change = Change::rollout_moved_on_stored_flag(flag_version, before, moved);
        change.flag_rewritten = true;
        change
    }

    /// [`Change::rollout_moved`] for a transition that started from the flag record as
    /// stored at `flag_version`: the commit stores the record whole only when the
    /// transition changed it beyond its timestamp (most steps change only the rollout).
    pub fn rollout_moved_on_stored_flag(
        flag_version: u64,
        before: &RolloutState,
        moved: Transition,
    ) -> Change {
        let mut change = Change::of_flag(&moved.flag.flag.key, flag_version);
        change.happened = vec![Happened::Effects {
            rollout_id: moved.rollout.id.clone(),
            before: Box::new(before.clone()),
            effects: moved.effects,
        }];
        change.flag = Some(moved.flag);
        change.flag_rewritten = moved.flag_changed;
        change.rollout = Some((before.revision, moved.rollout));
        change.rollout_definition_rewritten = moved.definition_changed;
        change
    }

    /// Keeps the flag's active rollout `active` in the snapshot when this change leaves it
    /// as it is (it is not the rollout the change writes).
    pub fn keeping_active(mut self, active: Option<&RolloutRecord>) -> Change {
        let changed = self.rollout.as_ref().map(|(_, record)| record.id.as_str());
        self.unchanged_rollout = active
            .filter(|active| Some(active.id.as_str()) != changed)
            .cloned();
        self
    }

    /// How many events the change appends (each raises the flag's version by one).
    pub fn event_count(&self) -> u64 {
        crate::mutation::event_count(&self.happened)
    }
}

/// What else a commit checks before its first write, and what it stores beside the change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Refuse ([`Refused::Fenced`]) unless the namespace's fence holds this ticker epoch.
    pub leader_epoch: Option<u64>,
    /// Refuse ([`Refused::Early`]) while Redis time is before this (a transition fires no
    /// earlier than due, whatever the writer's clock says).
    pub not_before: Option<Timestamp>,
    /// The command's encoded first outcome, stored under the actor's command id; a command
    /// id seen before is refused ([`Refused::Duplicate`]) with the outcome stored then.
    pub outcome: Option<Vec<u8>>,
}

/// One change of a [`Writer::commit_many`] batch: what changes, who changes it, and what
/// else its commit checks.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    /// The decided change.
    pub change: Change,
    /// Who made it.
    pub actor: Actor,
    /// What its commit checks besides the revisions.
    pub conditions: Conditions,
}

/// What [`Writer::commit`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Written {
    /// Everything was written at Redis time `now`, and `events` appended to the outbox
    /// (published at once unless the writer does not publish).
    Committed {
        /// Redis `TIME` at commit.
        now: Timestamp,
        /// The appended events, versions and snapshots filled in.
        events: Vec<ChangeEvent>,
        /// The flag's version after the commit.
        flag_version: u64,
        /// The events' outbox stream entries (removed once published).
        outbox_ids: Vec<String>,
    },
    /// A condition or a revision check did not hold; nothing was written.
    Refused(Refused),
}

/// Commits changes and publishes their events; cheap to clone.
#[derive(Clone, Debug)]
pub struct Writer {
    redis: Connection,
    relay: Option<Relay>,
}

impl Writer {
    /// Publishes a namespace notice through the relay, if this writer has one.
    pub async fn publish_notice(&self, namespace: &Namespace, entry: &AuditEntry) {
        if let Some(relay) = &self.relay {
            relay.publish_notice(namespace, entry).await;
        }
    }

    /// A writer committing through `redis` and publishing each commit's events at once
    /// through `relay` (what a service does).
    pub fn publishing(redis: Connection, relay: Relay) -> Writer {
        Writer {
            redis,
            relay: Some(relay),
        }
    }

    /// A writer that leaves the events in the outbox, for a sweep to publish or a bulk
    /// set-up to drop (seeding before the services start).
    pub fn unpublished(redis: Connection) -> Writer {
        Writer { redis, relay: None }
    }

    /// Commits `change` to `namespace` by `actor` at Redis time `now` under `conditions`,
    /// then publishes its events.
    pub async fn commit(
        &self,
        namespace: &Namespace,
        change: Change,
        actor: Actor,
        now: Timestamp,
        conditions: Conditions,
    ) -> Result<Written, StoreError> {
        let pending = Pending {
            change,
            actor,
            conditions,
        };
        self.commit_many(namespace, vec![pending], now)
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Protocol("a commit left no outcome".to_owned())))
    }

    /// Commits every change of `pending` to `namespace` at Redis time `now` in one round
    /// trip — each its own atomic, all-or-nothing commit under its own conditions, so one
    /// refused or failed change leaves the others as they are — then publishes the events
    /// of all that committed with one delivery proof. One outcome per change, in order;
    /// `Err` only when the round trip failed (each change may or may not have committed
    /// then; its events, if it did, are in the outbox for the sweep).
    pub async fn commit_many(
        &self,
        namespace: &Namespace,
        pending: Vec<Pending>,
        now: Timestamp,
    ) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        let keys = Keys::new(namespace);
        let prepared: Vec<Result<PreparedCommit, StoreError>> = pending
            .into_iter()
            .map(|pending| {
                let mut prepared = Mutation::of(
                    &keys,
                    namespace.as_str(),
                    now,
                    pending.actor,
                    pending.change,
                )
                .into_commit(pending.conditions.outcome)?;
                if let Some(epoch) = pending.conditions.leader_epoch {
                    prepared.commit.fenced(&keys.fence(), epoch);
                }
                if let Some(time) = pending.conditions.not_before {
                    prepared.commit.not_before(time);
                }
                Ok(prepared)
            })
            .collect();
        let commits: Vec<&Commit> = prepared
            .iter()
            .filter_map(|prepared| prepared.as_ref().ok())
            .map(|prepared| &prepared.commit)
            .collect();
        let mut connection = self.redis.clone();
        let mut outcomes = Commit::execute_many(&mut connection, &commits)
            .await?
            .into_iter();
        let decided: Vec<Result<(PreparedCommit, CommitOutcome), StoreError>> = prepared
            .into_iter()
            .map(|prepared| {
                let prepared = prepared?;
                let outcome = outcomes.next().unwrap_or_else(|| {
                    Err(StoreError::Protocol("a commit left no outcome".to_owned()))
                })?;
                Ok((prepared, outcome))
            })
            .collect();
        let committed = || {
            decided.iter().filter_map(|decided| match decided {
                Ok((prepared, CommitOutcome::Committed { outbox_ids, .. })) => {
                    Some((prepared, outbox_ids))
                }
                _ => None,
            })
        };
        let replicated = match committed().next() {
            Some(_) => confirm_replicated(&mut connection, &keys).await,
            None => Ok(()),
        };
        if committed().next().is_some() && replicated.is_ok() {
            crate::failpoint::hit("write.after_commit");
            if let Some(relay) = &self.relay {
                let events: Vec<(&ChangeEvent, &bytes::Bytes)> = committed()
                    .flat_map(|(prepared, _)| prepared.events.iter().zip(&prepared.encoded))
                    .collect();
                let outbox_ids: Vec<&String> =
                    committed().flat_map(|(_, ids)| ids.iter()).collect();
                relay.publish_encoded(&keys, &events, &outbox_ids).await;
            }
        }
        Ok(decided
            .into_iter()
            .map(|decided| {
                let (prepared, outcome) = decided?;
                Ok(match outcome {
                    CommitOutcome::Committed { .. } if replicated.is_err() => {
                        return Err(StoreError::Unreplicated(
                            replicated.clone().err().unwrap_or_default(),
                        ));
                    }
                    CommitOutcome::Committed { now, outbox_ids } => Written::Committed {
                        now,
                        events: prepared.events,
                        flag_version: prepared.flag_version,
                        outbox_ids,
                    },
                    CommitOutcome::Refused(refused) => Written::Refused(refused),
                })
            })
            .collect())
    }
}

/// When `connection` asks for replication, waits until everything the namespace's master
/// held when this was called — writes of any client, such as outbox entries a crashed
/// committer left — reached that many replicas: one write of its own
/// ([`Keys::outbox_sweep`], replicated after everything before it) and `WAIT` for it.
pub(crate) async fn confirm_all_replicated(
    connection: &mut Connection,
    keys: &Keys,
    now: Timestamp,
) -> Result<(), String> {
    let mut mark = redis::cmd("SET");
    mark.arg(keys.outbox_sweep())
        .arg(now.as_millis())
        .arg("PX")
        .arg(SWEEP_MARK_TTL_MS);
    wait_for_replicas(connection, mark).await
}

/// Before a command is answered again with its stored first outcome: waits until what the
/// namespace's master holds — the first attempt's commit among it, which may not have been
/// confirmed when it was made — reached the replicas `connection` asks for, so a repeat is
/// acknowledged no sooner than the first attempt could have been
/// ([`StoreError::Unreplicated`] otherwise; the client retries again).
pub async fn confirm_before_repeating(
    connection: &mut Connection,
    keys: &Keys,
) -> Result<(), StoreError> {
    if connection.replication().is_none() {
        return Ok(());
    }
    confirm_all_replicated(connection, keys, Timestamp::local_now())
        .await
        .map_err(|reason| {
            StoreError::Unreplicated(format!("a repeated command's first outcome: {reason}"))
        })
}

/// How long the sweep's mark outlives the sweep.
const SWEEP_MARK_TTL_MS: u64 = 60_000;

/// When `connection` asks for replication, sends `first` — a command on the namespace's
/// slot, so that a cluster routes the pipeline to its master — then `WAIT`s for the
/// replicas to acknowledge this client's writes; the reason when they did not in time.
async fn wait_for_replicas(connection: &mut Connection, first: redis::Cmd) -> Result<(), String> {
    let Some(replication) = connection.replication() else {
        return Ok(());
    };
    let timeout_ms = u64::try_from(replication.timeout.as_millis()).unwrap_or(u64::MAX);
    let waited: Result<(i64,), _> = redis::pipe()
        .add_command(first)
        .ignore()
        .cmd("WAIT")
        .arg(replication.replicas)
        .arg(timeout_ms)
        .query_async(connection)
        .await;
    match waited {
        Ok((acknowledged,)) if acknowledged >= i64::from(replication.replicas) => Ok(()),
        Ok((acknowledged,)) => Err(format!(
            "{acknowledged} of {} replicas confirmed the writes within {timeout_ms} ms",
            replication.replicas
        )),
        Err(error) => Err(format!("waiting for the replicas failed: {error}")),
    }
}

/// When `connection` asks for replication, waits until the commits just made on it reached
/// that many replicas of the namespace's master (`WAIT`, sent to the slot of `keys`); the
/// reason when they did not in time.
async fn confirm_replicated(connection: &mut Connection, keys: &Keys) -> Result<(), String> {
    let mut routing = redis::cmd("EXISTS");
    routing.arg(keys.flags());
    wait_for_replicas(connection, routing).await
}
