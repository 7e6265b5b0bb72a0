//! Firing one due rollout: load it, gather what the step function needs to know about
//! health, run `step(plan, state, Tick(health), now)`, and either move its due-index entry
//! (nothing changed) or commit the transition — flag and rollout records, audit, outbox —
//! in one fenced compare-and-set script, then publish the events and emit the
//! `rollout.transition` span.
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
use rollout_store::due::{self, Rescheduled};
use rollout_store::health::load_health;
use rollout_store::reads::rollout_revision;
use rollout_store::Keys;
use rollout_store::{
    load_flag, load_rollout, Actor, Change, Conditions, Connection, Refused, RolloutRecord,
    StoreError, Writer, Written,
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

/// Fires rollout `rollout_id` of `namespace` at Redis time `now` as the leader of `epoch`;
/// `freezes` are the namespace's (a timer that ran out in one opens when it ends).
pub async fn fire(
    context: &FireContext,
    namespace: &Namespace,
    keys: &Keys,
    epoch: u64,
    rollout_id: &str,
    now: Timestamp,
    freezes: &Freezes,
) -> Result<Fired, StoreError> {
    let mut connection = context.redis.clone();
    let loaded = match load_rollout(&mut connection, keys, rollout_id).await {
        Ok(loaded) => loaded,
        Err(StoreError::Corrupt(reason)) => {
            // nobody can advance an unreadable record; look again later rather than every
            // round (a writer that repairs it sets its due time anyway)
            let later = now.plus(DurationMs::from_millis(CORRUPT_RETRY_AFTER_MS));
            let revision = rollout_revision(&mut connection, keys, rollout_id).await?;
            reschedule(
                &context.stats,
                &mut connection,
                keys,
                epoch,
                rollout_id,
                revision,
                Some(later),
            )
            .await?;
            return Ok(Fired::Failed(reason));
        }
        Err(error) => return Err(error),
    };
    let Some(record) = loaded else {
        return reschedule(
            &context.stats,
            &mut connection,
            keys,
            epoch,
            rollout_id,
            0,
            None,
        )
        .await;
    };
    let revision = record.state.revision;
    if record.state.lifecycle.is_finished() {
        return reschedule(
            &context.stats,
            &mut connection,
            keys,
            epoch,
            rollout_id,
            revision,
            None,
        )
        .await;
    }
    let mut health = load_health(
        &mut connection,
        keys,
        &record,
        now,
        context.stale_agent_after,
    )
    .await?;
    health.freezes = freezes.clone();
    let outcome = match step(&record.plan, &record.state, &Event::Tick(health), now) {
        Ok(outcome) => outcome,
        Err(rejection) => {
            // a tick is never refused; if it ever is, do not spin on it
            let retry = now.plus(DurationMs::from_millis(RETRY_AFTER_MS));
            let _ = reschedule(
                &context.stats,
                &mut connection,
                keys,
                epoch,
                rollout_id,
                revision,
                Some(retry),
            )
            .await?;
            return Ok(Fired::Failed(format!("tick refused: {rejection}")));
        }
    };
    if !outcome.changed() {
        // an unchanged rollout is never due now; if the hint says so, do not spin on it
        let retry = now.plus(DurationMs::from_millis(RETRY_AFTER_MS));
        let look = next_look(&record, now).map(|look| if look <= now { retry } else { look });
        return reschedule(
            &context.stats,
            &mut connection,
            keys,
            epoch,
            rollout_id,
            revision,
            look,
        )
        .await;
    }
    commit_transition(context, namespace, keys, epoch, record, outcome, now).await
}

/// Commits a changed step outcome of `record` and publishes it.
async fn commit_transition(
    context: &FireContext,
    namespace: &Namespace,
    keys: &Keys,
    epoch: u64,
    record: RolloutRecord,
    outcome: StepOutcome,
    now: Timestamp,
) -> Result<Fired, StoreError> {
    let mut connection = context.redis.clone();
    let stored_flag = load_flag(&mut connection, keys, &record.plan.flag).await?;
    let Some(flag_record) = stored_flag.record else {
        let retry = now.plus(DurationMs::from_millis(RETRY_AFTER_MS));
        reschedule(
            &context.stats,
            &mut connection,
            keys,
            epoch,
            &record.id,
            record.state.revision,
            Some(retry),
        )
        .await?;
        return Ok(Fired::Failed(format!(
            "rollout {} belongs to missing flag {}",
            record.id, record.plan.flag
        )));
    };
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

    let actor = Actor {
        name: TICKER_ACTOR.to_owned(),
        command_id: None,
        trace_id,
        reason: None,
    };
    let rollout_id = moved.rollout.id.clone();
    let flag_key = moved.rollout.plan.flag.clone();
    let change = Change::rollout_moved(stored_flag.version, &previous, moved);
    let conditions = Conditions {
        leader_epoch: Some(epoch),
        not_before: due,
        outcome: None,
    };
    let result = context
        .writer
        .commit(namespace, change, actor, now, conditions)
        .await?;
    match result {
        Written::Committed {
            now: committed_at, ..
        } => {
            let lag_ms = transition
                .planned_at
                .map(|planned| committed_at.millis_since(planned));
            span.record("outcome", "committed");
            if let Some(lag) = lag_ms {
                span.record("commit_lag_ms", lag);
                context.stats.transition(transition.skipped, lag);
            } else {
                context.stats.transition(transition.skipped, 0);
            }
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
            Ok(Fired::Committed)
        }
        Written::Refused(Refused::Fenced { fence }) => {
            span.record("outcome", "fenced");
            context.stats.fenced_write();
            tracing::warn!(
                rollout_id = %rollout_id,
                namespace = %namespace,
                epoch,
                fence,
                "transition refused by the fence: a newer leader holds this namespace"
            );
            Ok(Fired::Fenced)
        }
        Written::Refused(Refused::Conflict { key, actual }) => {
            span.record("outcome", "conflict");
            context.stats.conflict();
            tracing::debug!(rollout_id = %rollout_id, %key, actual, "revision conflict; looking again next round");
            Ok(Fired::Conflict)
        }
        Written::Refused(Refused::Early { now: redis_now }) => {
            span.record("outcome", "early");
            context.stats.early();
            tracing::warn!(
                rollout_id = %rollout_id,
                redis_now = %redis_now,
                due = due.map(|due| due.to_string()),
                "redis time is before the due time; trying again when due"
            );
            Ok(Fired::Early)
        }
        Written::Refused(Refused::Duplicate(_)) => Ok(Fired::Failed(
            "a transition commit carries no command id, yet was refused as a duplicate".into(),
        )),
    }
}

/// Moves (or removes, `look` = `None`) a rollout's due-index entry, fenced and only if its
/// revision is still `revision`.
async fn reschedule(
    stats: &TickerStats,
    connection: &mut Connection,
    keys: &Keys,
    epoch: u64,
    rollout_id: &str,
    revision: u64,
    look: Option<Timestamp>,
) -> Result<Fired, StoreError> {
    match due::reschedule(connection, keys, epoch, rollout_id, revision, look).await? {
        Rescheduled::Done if look.is_some() => Ok(Fired::Unchanged),
        Rescheduled::Done => Ok(Fired::Removed),
        Rescheduled::Conflict => Ok(Fired::Conflict),
        Rescheduled::Fenced => {
            stats.fenced_write();
            tracing::warn!(
                rollout_id,
                epoch,
                "due-index update refused by the fence: a newer leader holds this namespace"
            );
            Ok(Fired::Fenced)
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
