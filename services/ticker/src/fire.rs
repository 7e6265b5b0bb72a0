//! Firing a batch of due rollouts: load them, gather what the step function needs to know
//! about health, run `step(plan, state, Tick(health), now)` for each, and either move its
//! due-index entry (nothing changed) or commit its transition — flag and rollout records,
//! audit, outbox — as its own fenced, all-or-nothing compare-and-set commit, then publish
//! the events and emit each `rollout.transition` span. The batch pays its round trips once:
//! reads are pipelined, its commits go in one script call (each decided on its own) beside
//! the due-index moves, and its events share one delivery proof.
//!
//! **Architecture Invariant:** every write here carries the leader's epoch and is refused
//! by the namespace fence once a newer leader exists; a transition also carries the
//! revisions it read and, when a timer caused it, the due time as its earliest Redis time.

use rollout_core::freeze::Freezes;
use rollout_core::machine::{step, Event};
use rollout_core::transition::{self, next_look};
use rollout_core::{Audience, DurationMs, Effect, Lifecycle, StepOutcome, Timestamp};
use rollout_runtime::telemetry::{
    link_to_traceparent, new_trace_id, trace_id_of, traceparent_of_current_span,
};
use rollout_store::due::{self, Move, Rescheduled};
use rollout_store::health::load_health;
use rollout_store::reads::{load_flags_each, load_rollouts};
use rollout_store::Keys;
use rollout_store::{
    Actor, Change, Conditions, Connection, Pending, Refused, RolloutRecord, StoreError, Writer,
    Written,
};
use rollout_wire::subjects::Namespace;
use tracing::field::Empty;

use crate::stats::TickerStats;

/// The actor name on every audit entry and event the ticker writes.
pub const TICKER_ACTOR: &str = "ticker";

/// How far a rollout that failed to fire is pushed back before it is tried again.
const RETRY_AFTER_MS: i64 = 1_000;
/// How far a rollout whose record cannot be decoded is pushed back.
const CORRUPT_RETRY_AFTER_MS: i64 = 30_000;

/// What firing one rollout came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fired {
    /// A transition was committed and published.
    Committed,
    /// Nothing was due after all; its due-index entry moved to the next look.
    Unchanged,
    /// The rollout is gone or finished; it left the due index.
    Removed,
    /// Another writer changed the flag or rollout first; it is looked at again next round.
    Conflict,
    /// The fence refused the write: this ticker no longer leads.
    Fenced,
    /// Redis time was still before the due time (clock skew); tried again when due.
    Early,
    /// The rollout could not be fired (a corrupt or inconsistent record); pushed back.
    Failed(String),
}

/// What firing needs, shared by every rollout of a round.
#[derive(Clone, Debug)]
pub struct FireContext {
    /// Redis, for reads and commits.
    pub redis: Connection,
    /// Commits transitions (fenced) and publishes their events.
    pub writer: Writer,
    /// Where outcomes are counted.
    pub stats: TickerStats,
    /// Fleet agents silent this long do not hold completion gates.
    pub stale_agent_after: DurationMs,
}

/// Fires the due rollouts `rollout_ids` of `namespace` at Redis time `now` as the leader
/// of `epoch`; `freezes` are the namespace's (a timer that ran out in one opens when it
/// ends). One outcome per rollout, in order; `Err` when a round trip of the batch failed.
///
/// A batch costs a fixed number of round trips whatever its size: one pipelined read of
/// the rollouts, the health reads of the guarded ones (side by side), one pipelined read of
/// the flags of those that move, then one call of fenced commits (each all-or-nothing on
/// its own) beside one pipeline of fenced due-index moves, and one publish of every
/// committed event with one delivery proof.
pub async fn fire_batch(
    context: &FireContext,
    namespace: &Namespace,
    keys: &Keys,
    epoch: u64,
    rollout_ids: &[String],
    now: Timestamp,
    freezes: &Freezes,
) -> Result<Vec<Result<Fired, StoreError>>, StoreError> {
    let mut connection = context.redis.clone();
    let ids: Vec<&str> = rollout_ids.iter().map(String::as_str).collect();
    let loaded = load_rollouts(&mut connection, keys, &ids).await?;
    let mut batch = Batch::new(rollout_ids.len());
    let mut looked: Vec<(usize, RolloutRecord)> = Vec::new();
    for (index, (revision, record)) in loaded.into_iter().enumerate() {
        match record {
            Ok(Some(record)) if !record.state.lifecycle.is_finished() => {
                looked.push((index, record));
            }
            // gone or finished: it leaves the due index
            Ok(_) => batch.reschedule(index, revision, None, Fired::Removed),
            Err(StoreError::Corrupt(reason)) => {
                // nobody can advance an unreadable record; look again later rather than
                // every round (a writer that repairs it sets its due time anyway)
                let later = now.plus(DurationMs::from_millis(CORRUPT_RETRY_AFTER_MS));
                batch.reschedule(index, revision, Some(later), Fired::Failed(reason));
            }
            Err(error) => batch.outcomes[index] = Some(Err(error)),
        }
    }
    let healths = futures_util::future::join_all(looked.iter().map(|(_, record)| {
        let mut connection = context.redis.clone();
        async move {
            load_health(
                &mut connection,
                keys,
                record,
                now,
                context.stale_agent_after,
            )
            .await
        }
    }))
    .await;
    let mut moving: Vec<(usize, RolloutRecord, StepOutcome)> = Vec::new();
    for ((index, record), health) in looked.into_iter().zip(healths) {
        let revision = record.state.revision;
        let mut health = match health {
            Ok(health) => health,
            Err(error) => {
                batch.outcomes[index] = Some(Err(error));
                continue;
            }
        };
        health.freezes = freezes.clone();
        let retry = now.plus(DurationMs::from_millis(RETRY_AFTER_MS));
        match step(&record.plan, &record.state, &Event::Tick(health), now) {
            Ok(outcome) if outcome.changed() => moving.push((index, record, outcome)),
            Ok(_) => {
                // an unchanged rollout is never due now; if the hint says so, do not spin
                let look =
                    next_look(&record, now).map(|look| if look <= now { retry } else { look });
                let fired = if look.is_some() {
                    Fired::Unchanged
                } else {
                    Fired::Removed
                };
                batch.reschedule(index, revision, look, fired);
            }
            Err(rejection) => {
                // a tick is never refused; if it ever is, do not spin on it
                let reason = format!("tick refused: {rejection}");
                batch.reschedule(index, revision, Some(retry), Fired::Failed(reason));
            }
        }
    }
    let flag_keys: Vec<&str> = moving
        .iter()
        .map(|(_, record, _)| record.plan.flag.as_str())
        .collect();
    let flags = load_flags_each(&mut connection, keys, &flag_keys).await?;
    let mut commits = Vec::with_capacity(moving.len());
    for ((index, record, outcome), stored_flag) in moving.into_iter().zip(flags) {
        let stored_flag = match stored_flag {
            Ok(stored_flag) => stored_flag,
            Err(error) => {
                batch.outcomes[index] = Some(Err(error));
                continue;
            }
        };
        let Some(flag_record) = stored_flag.record else {
            let retry = now.plus(DurationMs::from_millis(RETRY_AFTER_MS));
            let reason = format!(
                "rollout {} belongs to missing flag {}",
                record.id, record.plan.flag
            );
            batch.reschedule(
                index,
                record.state.revision,
                Some(retry),
                Fired::Failed(reason),
            );
            continue;
        };
        commits.push((
            index,
            Moving::settle(
                namespace,
                epoch,
                stored_flag.version,
                flag_record,
                record,
                outcome,
                now,
            ),
        ));
    }
    let pending: Vec<Pending> = commits
        .iter_mut()
        .filter_map(|(_, moving)| moving.pending.take())
        .collect();
    let moves: Vec<Move<'_>> = batch
        .moves
        .iter()
        .map(|(index, revision, look, _)| Move {
            rollout_id: &rollout_ids[*index],
            revision: *revision,
            look: *look,
        })
        .collect();
    let mut moves_connection = context.redis.clone();
    let (written, moved) = tokio::join!(
        context.writer.commit_many(namespace, pending, now),
        due::reschedule_many(&mut moves_connection, keys, epoch, &moves),
    );
    for ((index, moving), written) in commits.into_iter().zip(written?) {
        batch.outcomes[index] =
            Some(written.map(|written| moving.conclude(&context.stats, namespace, epoch, written)));
    }
    for ((index, _, look, fired), moved) in batch.moves.into_iter().zip(moved?) {
        batch.outcomes[index] = Some(moved.map(|moved| match moved {
            Rescheduled::Done => fired,
            Rescheduled::Conflict => Fired::Conflict,
            Rescheduled::Fenced => {
                context.stats.fenced_write();
                tracing::warn!(
                    rollout_id = %rollout_ids[index],
                    epoch,
                    look = look.map(|look| look.to_string()),
                    "due-index update refused by the fence: a newer leader holds this namespace"
                );
                Fired::Fenced
            }
        }));
    }
    Ok(batch
        .outcomes
        .into_iter()
        .map(|outcome| {
            outcome.unwrap_or_else(|| {
                Err(StoreError::Protocol(
                    "a due rollout was left undecided".to_owned(),
                ))
            })
        })
        .collect())
}

/// What a batch decided so far: an outcome per rollout, and the due-index moves still to
/// make (with the outcome each stands for once made).
struct Batch {
    outcomes: Vec<Option<Result<Fired, StoreError>>>,
    moves: Vec<(usize, u64, Option<Timestamp>, Fired)>,
}

impl Batch {
    fn new(size: usize) -> Batch {
        Batch {
            outcomes: (0..size).map(|_| None).collect(),
            moves: Vec::new(),
        }
    }

    /// Moves rollout `index`'s due-index entry to `look` (removes it: `None`) if its
    /// revision is still `revision`; `fired` is what that comes to.
    fn reschedule(&mut self, index: usize, revision: u64, look: Option<Timestamp>, fired: Fired) {
        self.moves.push((index, revision, look, fired));
    }
}

/// One transition on its way to the commit: the change, its span and its figures.
struct Moving {
    pending: Option<Pending>,
    transition: Transition,
    span: tracing::Span,
    rollout_id: String,
    flag_key: String,
    due: Option<Timestamp>,
}

impl Moving {
    /// Settles the changed step outcome of `record` on its flag (loaded at
    /// `flag_version`) into the fenced change to commit.
    fn settle(
        namespace: &Namespace,
        epoch: u64,
        flag_version: u64,
        flag_record: rollout_store::FlagRecord,
        record: RolloutRecord,
        outcome: StepOutcome,
        now: Timestamp,
    ) -> Moving {
        let previous = record.state.clone();
        let due = previous.due_at(&record.plan).filter(|due| *due <= now);
        let moved = transition::settle(flag_record, record, outcome, now);
        let transition = Transition::describe(&moved.rollout, &previous, &moved.effects, due);
        let span = transition.span(namespace, &moved.rollout, epoch);
        // the transition's own trace when spans are exported, else a fresh id: every audit
        // entry and event carries one (SPEC §7)
        let trace_id = span
            .in_scope(traceparent_of_current_span)
            .as_deref()
            .and_then(trace_id_of)
            .or_else(|| Some(new_trace_id()));
        let rollout_id = moved.rollout.id.clone();
        let flag_key = moved.rollout.plan.flag.clone();
        let pending = Pending {
            change: Change::rollout_moved_on_stored_flag(flag_version, &previous, moved),
            actor: Actor {
                name: TICKER_ACTOR.to_owned(),
                command_id: None,
                trace_id,
                reason: None,
            },
            conditions: Conditions {
                leader_epoch: Some(epoch),
                not_before: due,
                outcome: None,
            },
        };
        Moving {
            pending: Some(pending),
            transition,
            span,
            rollout_id,
            flag_key,
            due,
        }
    }

    /// What the commit came to, counted and recorded on the span.
    fn conclude(
        self,
        stats: &TickerStats,
        namespace: &Namespace,
        epoch: u64,
        written: Written,
    ) -> Fired {
        let Moving {
            transition,
            span,
            rollout_id,
            flag_key,
            due,
            ..
        } = self;
        match written {
            Written::Committed {
                now: committed_at, ..
            } => {
                let lag_ms = transition
                    .planned_at
                    .map(|planned| committed_at.millis_since(planned));
                span.record("outcome", "committed");
                if let Some(lag) = lag_ms {
                    span.record("commit_lag_ms", lag);
                }
                stats.transition(transition.skipped, lag_ms.unwrap_or(0));
                span.in_scope(|| {
                    tracing::debug!(
                        rollout_id = %rollout_id,
                        flag = %flag_key,
                        from_step = transition.from_step.map(|step| step as u64),
                        to_step = transition.to_step.map(|step| step as u64),
                        lag_ms,
                        "transition committed"
                    );
                });
                Fired::Committed
            }
            Written::Refused(Refused::Fenced { fence }) => {
                span.record("outcome", "fenced");
                stats.fenced_write();
                tracing::warn!(
                    rollout_id = %rollout_id,
                    namespace = %namespace,
                    epoch,
                    fence,
                    "transition refused by the fence: a newer leader holds this namespace"
                );
                Fired::Fenced
            }
            Written::Refused(Refused::Conflict { key, actual }) => {
                span.record("outcome", "conflict");
                stats.conflict();
                tracing::debug!(rollout_id = %rollout_id, %key, actual, "revision conflict; looking again next round");
                Fired::Conflict
            }
            Written::Refused(Refused::Early { now: redis_now }) => {
                span.record("outcome", "early");
                stats.early();
                tracing::warn!(
                    rollout_id = %rollout_id,
                    redis_now = %redis_now,
                    due = due.map(|due| due.to_string()),
                    "redis time is before the due time; trying again when due"
                );
                Fired::Early
            }
            Written::Refused(Refused::Duplicate(_)) => Fired::Failed(
                "a transition commit carries no command id, yet was refused as a duplicate".into(),
            ),
        }
    }
}

/// The figures of one transition, for its span and the lag statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// Step before.
    pub from_step: Option<usize>,
    /// Step after.
    pub to_step: Option<usize>,
    /// Lifecycle state after.
    pub lifecycle: Lifecycle,
    /// Steps caught up (passed over) in this one transition.
    pub skipped: usize,
    /// How late the step function saw it, in ms (`lag_ms` of the step entered).
    pub lag_ms: Option<i64>,
    /// When the plan said it would happen.
    pub planned_at: Option<Timestamp>,
    /// Share served after, in percent (share plans).
    pub share_percent: Option<f64>,
    /// Stage released last (staged plans).
    pub stage: Option<String>,
    /// The effects, by name, in order.
    pub effects: Vec<&'static str>,
}

impl Transition {
    /// Summarises `next` reached from `previous` through `effects`; `due` is the timer that
    /// caused it, if one did.
    pub fn describe(
        next: &RolloutRecord,
        previous: &rollout_core::RolloutState,
        effects: &[Effect],
        due: Option<Timestamp>,
    ) -> Transition {
        let entered = effects.iter().rev().find_map(|effect| match effect {
            Effect::StepEntered {
                skipped,
                planned_at,
                lag_ms,
                ..
            } => Some((skipped.len(), *planned_at, *lag_ms)),
            _ => None,
        });
        let to_step = next.state.step;
        let (share_percent, stage) = match to_step.and_then(|step| next.plan.steps.get(step)) {
            Some(step) => match &step.audience {
                Audience::Share(_) => {
                    (Some(next.state.served_share(&next.plan).percentage()), None)
                }
                Audience::Stage { name, .. } => (None, Some(name.clone())),
            },
            None => (None, None),
        };
        Transition {
            from_step: previous.step,
            to_step,
            lifecycle: next.state.lifecycle,
            skipped: entered.map_or(0, |(skipped, _, _)| skipped),
            lag_ms: entered
                .map(|(_, _, lag)| lag)
                .or_else(|| due.map(|due| next.state.finished_at.unwrap_or(due).millis_since(due))),
            planned_at: entered.map(|(_, planned, _)| planned).or(due),
            share_percent,
            stage,
            effects: effects.iter().map(effect_name).collect(),
        }
    }

    /// The `rollout.transition` span, linked to the trace of the command that created the
    /// rollout. Closed (and exported) when dropped.
    pub fn span(&self, namespace: &Namespace, record: &RolloutRecord, epoch: u64) -> tracing::Span {
        let span = tracing::info_span!(
            "rollout.transition",
            otel.kind = "internal",
            rollout_id = %record.id,
            flag = %record.plan.flag,
            namespace = %namespace,
            from_step = Empty,
            to_step = Empty,
            state = self.lifecycle.as_str(),
            share_percent = Empty,
            stage = Empty,
            lag_ms = Empty,
            commit_lag_ms = Empty,
            leader_epoch = epoch,
            steps_caught_up = self.skipped,
            effects = %self.effects.join(","),
            outcome = Empty,
        );
        if let Some(from) = self.from_step {
            span.record("from_step", from);
        }
        if let Some(to) = self.to_step {
            span.record("to_step", to);
        }
        if let Some(share) = self.share_percent {
            span.record("share_percent", share);
        }
        if let Some(stage) = &self.stage {
            span.record("stage", stage.as_str());
        }
        if let Some(lag) = self.lag_ms {
            span.record("lag_ms", lag);
        }
        if let Some(traceparent) = &record.traceparent {
            link_to_traceparent(&span, traceparent);
        }
        span
    }
}

fn effect_name(effect: &Effect) -> &'static str {
    match effect {
        Effect::Started { .. } => "started",
        Effect::StepEntered { .. } => "step_entered",
        Effect::Paused { .. } => "paused",
        Effect::Resumed { .. } => "resumed",
        Effect::Approved { .. } => "approved",
        Effect::Rescheduled { .. } => "rescheduled",
        Effect::RollingBack { .. } => "rolling_back",
        Effect::ShareLowered { .. } => "share_lowered",
        Effect::GuardBreached { .. } => "guard_breached",
        Effect::Completed => "completed",
        Effect::Stopped { .. } => "stopped",
        Effect::RolledBack { .. } => "rolled_back",
    }
}
