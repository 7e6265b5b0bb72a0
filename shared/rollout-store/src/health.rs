//! What a rollout's health gates see at a time: the `rollout_core::Health` the ticker passes
//! to the step function and the planner's status explains with
//! `RolloutState::gate_hold`, read one way for both — the rollout's own outcome counters
//! over each guard's window (never before its last resume) while a guarded rollout runs,
//! and the current stage's fleet counts while it waits on a completion gate.

use crate::keys::Keys;
use redis::aio::ConnectionLike;
use rollout_core::{DurationMs, Health, Lifecycle, Timestamp, WaitingFor};

use crate::{fleet, outcomes, RolloutRecord, StoreError};

/// Reads the health of `record` at `now`; agents silent for longer than `stale_after` are
/// stale. Empty for a rollout that is not running (its gates are not judged).
pub async fn load_health<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    record: &RolloutRecord,
    now: Timestamp,
    stale_after: DurationMs,
) -> Result<Health, StoreError> {
    let mut health = Health::default();
    if record.state.lifecycle != Lifecycle::Running {
        return Ok(health);
    }
    let plan = &record.plan;
    for guard in plan.guards() {
        let from = record.state.guard_window_start(guard.window, now);
        health
            .outcomes
            .push(outcomes::load_rollout_outcomes(connection, keys, &record.id, from, now).await?);
    }
    if record.state.waiting_for(plan) == Some(WaitingFor::Guard) {
        let counts = fleet::load_stage_counts(
            connection,
            keys,
            &record.id,
            plan,
            &record.state,
            now,
            stale_after,
        )
        .await?;
        health.current_stage = record.state.step.and_then(|step| counts.get(step).copied());
    }
    Ok(health)
}
