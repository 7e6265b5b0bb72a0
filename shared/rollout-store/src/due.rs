//! The due index (`due`: rollout id → the Redis time it is next looked at), read by the
//! ticker leader each round and moved by it when a look changed nothing. Commits move it
//! too (as part of [`crate::Commit`]); only the leader removes or moves entries outside a
//! commit, fenced, through [`reschedule_many`].

use std::sync::LazyLock;

use crate::keys::Keys;
use rollout_core::Timestamp;

use crate::{Connection, StoreError};

static RESCHEDULE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/reschedule.lua")));

/// The ids due by `now` in each of `namespaces` (at most `batch` per namespace, earliest
/// first), in one round trip ([`Connection::query_each`]); one list per namespace, in order.
pub async fn due_by(
    connection: &mut Connection,
    namespaces: &[&Keys],
    now: Timestamp,
    batch: usize,
) -> Result<Vec<Vec<String>>, StoreError> {
    let commands = namespaces
        .iter()
        .map(|keys| {
            let mut command = redis::cmd("ZRANGEBYSCORE");
            command
                .arg(keys.due())
                .arg("-inf")
                .arg(now.as_millis())
                .arg("LIMIT")
                .arg(0)
                .arg(batch);
            command
        })
        .collect();
    connection.query_each(commands).await
}

/// The earliest due time over `namespaces`, if any rollout is due at all.
pub async fn earliest(
    connection: &mut Connection,
    namespaces: &[&Keys],
) -> Result<Option<Timestamp>, StoreError> {
    if namespaces.is_empty() {
        return Ok(None);
    }
    let commands = namespaces
        .iter()
        .map(|keys| {
            let mut command = redis::cmd("ZRANGE");
            command.arg(keys.due()).arg(0).arg(0).arg("WITHSCORES");
            command
        })
        .collect();
    let firsts: Vec<Vec<(String, f64)>> = connection.query_each(commands).await?;
    Ok(firsts
        .iter()
        .filter_map(|first| first.first())
        .map(|(_, score)| Timestamp::from_millis(score.floor() as i64))
        .min())
}

/// What one move of [`reschedule_many`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rescheduled {
    /// The entry now points at the new time (or is gone, when none was given).
    Done,
    /// The rollout's revision is no longer the one the decision was made on.
    Conflict,
    /// The namespace fence holds another epoch: the caller no longer leads.
    Fenced,
}

/// One due-index move of [`reschedule_many`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move<'a> {
    /// The rollout.
    pub rollout_id: &'a str,
    /// The revision the decision was made on.
    pub revision: u64,
    /// Its next look; `None` removes it from the index.
    pub look: Option<Timestamp>,
}

/// Moves (or removes, `look` = `None`) the due-index entry of every rollout of `moves`, in
/// one round trip, each only while the fence holds `epoch` and the rollout still has the
/// revision its decision was made on, so a slow writer never pushes back a newer due
/// time. One answer per move, in order.
pub async fn reschedule_many(
    connection: &mut Connection,
    keys: &Keys,
    epoch: u64,
    moves: &[Move<'_>],
) -> Result<Vec<Result<Rescheduled, StoreError>>, StoreError> {
    let calls: Vec<_> = moves
        .iter()
        .map(|step| {
            let score = step
                .look
                .map_or_else(String::new, |time| time.as_millis().to_string());
            let mut call = crate::pipelined::script_call(&RESCHEDULE, 3);
            call.arg(keys.rollout(step.rollout_id))
                .arg(keys.due())
                .arg(keys.fence())
                .arg(step.revision)
                .arg(epoch)
                .arg(step.rollout_id)
                .arg(score);
            call
        })
        .collect();
    let answers = crate::pipelined::invoke_all(connection, calls, &[&RESCHEDULE]).await?;
    Ok(answers
        .into_iter()
        .map(|answer| {
            let reply: String =
                redis::FromRedisValue::from_redis_value(answer?).map_err(|error| {
                    StoreError::Protocol(format!("reschedule script answered: {error}"))
                })?;
            match reply.as_str() {
                "ok" => Ok(Rescheduled::Done),
                "conflict" => Ok(Rescheduled::Conflict),
                "fenced" => Ok(Rescheduled::Fenced),
                other => Err(StoreError::Protocol(format!(
                    "reschedule script answered {other:?}"
                ))),
            }
        })
        .collect())
}

/// When the ticker next looks at rollout `rollout_id` (`None`: it is not in the due index).
pub async fn scheduled(
    connection: &mut Connection,
    keys: &Keys,
    rollout_id: &str,
) -> Result<Option<Timestamp>, StoreError> {
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(keys.due())
        .arg(rollout_id)
        .query_async(connection)
        .await?;
    // scores are whole milliseconds, far below 2^53
    #[allow(clippy::cast_possible_truncation)]
    Ok(score.map(|score| Timestamp::from_millis(score as i64)))
}

/// How many rollouts are next looked at after `boundary` (exclusive).
pub async fn count_after(
    connection: &mut Connection,
    keys: &Keys,
    boundary: Timestamp,
) -> Result<u64, StoreError> {
    Ok(redis::cmd("ZCOUNT")
        .arg(keys.due())
        .arg(format!("({}", boundary.as_millis()))
        .arg("+inf")
        .query_async(connection)
        .await?)
}

/// Empties the namespace's due index: no rollout of it fires again until a commit
/// schedules it (for benchmarks that leave their rollouts in a shared cluster).
pub async fn clear(connection: &mut Connection, keys: &Keys) -> Result<(), StoreError> {
    let _: i64 = redis::cmd("DEL")
        .arg(keys.due())
        .query_async(connection)
        .await?;
    Ok(())
}
