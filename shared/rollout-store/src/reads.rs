//! Reads of flags, rollouts, their indexes and audit logs, each in as few round trips as
//! the caller's question allows. Reads never write.

use crate::keys::Keys;
use redis::aio::ConnectionLike;
use redis::AsyncCommands;
use rollout_core::Timestamp;
use rollout_wire::codec::{self, Encoding, Limits};
use rollout_wire::queries::ListState;
use serde::de::DeserializeOwned;

use crate::records::{
    flag_from_hash, rollout_from_hash, RolloutHash, StoredFlag, FLAG_FIELDS, ROLLOUT_FIELDS,
};
use crate::RolloutRecord;
use crate::{Connection, StoreError};

/// Reads a flag hash.
pub async fn load_flag<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    flag_key: &str,
) -> Result<StoredFlag, StoreError> {
    let hash = redis::cmd("HMGET")
        .arg(keys.flag(flag_key))
        .arg(&FLAG_FIELDS[..])
        .query_async(connection)
        .await?;
    flag_from_hash(flag_key, hash)
}

/// Reads the flag hashes of `flag_keys` in one round trip, in order (a flag that never
/// existed has version 0 and no record).
pub async fn load_flags<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    flag_keys: &[&str],
) -> Result<Vec<StoredFlag>, StoreError> {
    load_flags_each(connection, keys, flag_keys)
        .await?
        .into_iter()
        .collect()
}

/// Reads the flag hashes of `flag_keys` in one round trip, in order, each on its own: a
/// record that cannot be decoded is an error for that flag only.
pub async fn load_flags_each<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    flag_keys: &[&str],
) -> Result<Vec<Result<StoredFlag, StoreError>>, StoreError> {
    if flag_keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for key in flag_keys {
        pipe.cmd("HMGET").arg(keys.flag(key)).arg(&FLAG_FIELDS[..]);
    }
    let rows: Vec<_> = pipe.query_async(connection).await?;
    Ok(flag_keys
        .iter()
        .zip(rows)
        .map(|(key, hash)| flag_from_hash(key, hash))
        .collect())
}

/// The encoded records of `flag_keys` in one round trip, in order, for callers that decode
/// only part of a record (see [`crate::decode_record`]): the `data` of each hash, which
/// holds the record but for its `touched` timestamp.
pub async fn encoded_flags<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    flag_keys: &[String],
) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
    let mut pipe = redis::pipe();
    for flag_key in flag_keys {
        pipe.hget(keys.flag(flag_key), "data");
    }
    Ok(pipe.query_async(connection).await?)
}

/// A flag's version (its hash's revision; 0 when it never existed).
pub async fn flag_version<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    flag_key: &str,
) -> Result<u64, StoreError> {
    let revision: Option<u64> = connection.hget(keys.flag(flag_key), "rev").await?;
    Ok(revision.unwrap_or(0))
}

/// The versions of `flag_keys` in one round trip, in order.
pub async fn flag_versions<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    flag_keys: &[String],
) -> Result<Vec<u64>, StoreError> {
    let mut pipe = redis::pipe();
    for flag_key in flag_keys {
        pipe.hget(keys.flag(flag_key), "rev");
    }
    let revisions: Vec<Option<u64>> = pipe.query_async(connection).await?;
    Ok(revisions
        .into_iter()
        .map(|revision| revision.unwrap_or(0))
        .collect())
}

/// Each flag's version and the Redis time of the commit that wrote it (its `touched`
/// field: `None` for a deleted flag, one never written, or a record from before the
/// field), in one pipeline: what tells two histories' commits of one version apart after
/// Redis was restored from an older backup.
pub async fn flag_commits<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    flag_keys: &[String],
) -> Result<Vec<(u64, Option<Timestamp>)>, StoreError> {
    let mut pipe = redis::pipe();
    for flag_key in flag_keys {
        pipe.cmd("HMGET")
            .arg(keys.flag(flag_key))
            .arg("rev")
            .arg("touched");
    }
    let commits: Vec<(Option<u64>, Option<i64>)> = pipe.query_async(connection).await?;
    Ok(commits
        .into_iter()
        .map(|(revision, touched)| (revision.unwrap_or(0), touched.map(Timestamp::from_millis)))
        .collect())
}

/// The keys of every flag of a namespace (the `flags` set, deleted flags not included), in
/// no order.
pub async fn flag_keys<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
) -> Result<Vec<String>, StoreError> {
    Ok(connection.smembers(keys.flags()).await?)
}

/// Reads a rollout hash; `None` when there is no such rollout.
pub async fn load_rollout<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    rollout_id: &str,
) -> Result<Option<RolloutRecord>, StoreError> {
    let hash: RolloutHash = redis::cmd("HMGET")
        .arg(keys.rollout(rollout_id))
        .arg(&ROLLOUT_FIELDS[..])
        .query_async(connection)
        .await?;
    rollout_from_hash(rollout_id, hash).1
}

/// Reads the rollout hashes of `rollout_ids` in one round trip, in order: each one's
/// revision (0 when there is none, readable even when its record is not) and record
/// (`None` when there is none, an error when it cannot be decoded).
pub async fn load_rollouts<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    rollout_ids: &[&str],
) -> Result<Vec<(u64, Result<Option<RolloutRecord>, StoreError>)>, StoreError> {
    if rollout_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in rollout_ids {
        pipe.cmd("HMGET")
            .arg(keys.rollout(id))
            .arg(&ROLLOUT_FIELDS[..]);
    }
    let rows: Vec<RolloutHash> = pipe.query_async(connection).await?;
    Ok(rollout_ids
        .iter()
        .zip(rows)
        .map(|(id, hash)| rollout_from_hash(id, hash))
        .collect())
}

/// A rollout hash's revision (0 when there is none), readable even when its record is not.
pub async fn rollout_revision<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    rollout_id: &str,
) -> Result<u64, StoreError> {
    let revision: Option<u64> = connection.hget(keys.rollout(rollout_id), "rev").await?;
    Ok(revision.unwrap_or(0))
}

/// The ids in a rollout index (active: running, paused or queued; finished), newest first.
pub async fn rollout_ids<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    index: ListState,
) -> Result<Vec<String>, StoreError> {
    let key = match index {
        ListState::Active => keys.rollouts_active(),
        ListState::Finished => keys.rollouts_finished(),
    };
    Ok(connection.zrevrange(key, 0, -1).await?)
}

/// Whose audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditLog<'a> {
    /// A rollout's.
    Rollout(&'a str),
    /// A flag's (every rollout of it included).
    Flag(&'a str),
    /// The namespace's own (freezes).
    Namespace,
}

/// `count` audit entries from position `start` (0 is the newest), and how many the log
/// holds in all.
pub async fn audit_page<C: ConnectionLike + Send + Sync, T: DeserializeOwned>(
    connection: &mut C,
    keys: &Keys,
    log: AuditLog<'_>,
    start: u64,
    count: u32,
) -> Result<(u64, Vec<T>), StoreError> {
    let key = match log {
        AuditLog::Rollout(rollout_id) => keys.audit_rollout(rollout_id),
        AuditLog::Flag(flag_key) => keys.audit_flag(flag_key),
        AuditLog::Namespace => keys.audit_namespace(),
    };
    let start = isize::try_from(start).unwrap_or(isize::MAX);
    let stop = start.saturating_add(isize::try_from(count).unwrap_or(isize::MAX)) - 1;
    let (total, raw): (u64, Vec<Vec<u8>>) = redis::pipe()
        .llen(&key)
        .lrange(&key, start, stop)
        .query_async(connection)
        .await?;
    let entries = raw
        .iter()
        .map(|bytes| codec::decode_with(bytes, Encoding::MessagePack, Limits::SERVICE_OUTPUT))
        .collect::<Result<Vec<T>, _>>()
        .map_err(|error| StoreError::Corrupt(format!("audit entry: {error}")))?;
    Ok((total, entries))
}

/// What a command names: a flag, a rollout (whose flag it also concerns), or neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandTarget<'a> {
    /// A flag, by key.
    Flag(&'a str),
    /// A rollout, by id.
    Rollout(&'a str),
    /// Nothing stored (the command reads no record).
    Nothing,
}

/// Everything a command is decided on, read in as few round trips as its target allows.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandRead {
    /// Redis `TIME` when read: the decision's clock.
    pub now: Timestamp,
    /// The first outcome stored for the command's id, when it ran before (nothing else is
    /// read then: the command is answered with it).
    pub stored_outcome: Option<Vec<u8>>,
    /// The flag the command concerns (for a rollout command, the rollout's flag); `None`
    /// when the command names no flag or its rollout does not exist.
    pub flag: Option<StoredFlag>,
    /// The rollout a rollout command names.
    pub rollout: Option<RolloutRecord>,
    /// The flag's active rollout (for a command on that very rollout, the same record).
    pub active_rollout: Option<RolloutRecord>,
}

/// Reads what a command of `namespace` with id `command_id` on `target` is decided on. The
/// first round trip (re)registers the namespace ([`crate::namespaces`]), reads the clock,
/// the command id's stored outcome and the named flag or rollout together; a rollout
/// command reads its flag in a second, and a flag whose active rollout is another one
/// costs one more.
pub async fn for_command(
    connection: &mut Connection,
    namespace: &str,
    keys: &Keys,
    command_id: Option<&str>,
    target: CommandTarget<'_>,
) -> Result<CommandRead, StoreError> {
    // the namespace's own keys: one slot
    let mut reads = redis::pipe();
    match command_id {
        Some(id) => reads.cmd("GET").arg(keys.command(id)),
        None => reads.cmd("ECHO").arg(""),
    };
    match target {
        CommandTarget::Flag(key) => reads.cmd("HMGET").arg(keys.flag(key)).arg(&FLAG_FIELDS[..]),
        CommandTarget::Rollout(id) => reads
            .cmd("HMGET")
            .arg(keys.rollout(id))
            .arg(&ROLLOUT_FIELDS[..]),
        CommandTarget::Nothing => reads.cmd("ECHO").arg(""),
    };
    let (now, stored, record): (Timestamp, Option<Vec<u8>>, redis::Value) =
        if connection.is_cluster() {
            // the registry lives in another slot: two requests, side by side
            let mut registry = connection.clone();
            let mut namespace_keys = connection.clone();
            let (now, (stored, record)) = futures_util::try_join!(
                crate::namespaces::redis_time_registering(&mut registry, namespace),
                async {
                    reads
                        .query_async::<(Option<Vec<u8>>, redis::Value)>(&mut namespace_keys)
                        .await
                        .map_err(StoreError::from)
                },
            )?;
            (now, stored, record)
        } else {
            let mut pipe = redis::pipe();
            pipe.cmd("SADD")
                .arg(crate::keys::namespaces())
                .arg(namespace)
                .ignore()
                .cmd("TIME");
            for command in reads.cmd_iter() {
                pipe.add_command(command.clone());
            }
            let ((seconds, micros), stored, record): ((i64, i64), Option<Vec<u8>>, redis::Value) =
                pipe.query_async(connection).await?;
            (Timestamp::from_redis_time(seconds, micros), stored, record)
        };
    let mut read = CommandRead {
        now,
        stored_outcome: command_id.and(stored),
        flag: None,
        rollout: None,
        active_rollout: None,
    };
    if read.stored_outcome.is_some() {
        return Ok(read);
    }
    fn hash<T: redis::FromRedisValue>(record: redis::Value) -> Result<T, StoreError> {
        T::from_redis_value(record)
            .map_err(|error| StoreError::Protocol(format!("unexpected record reply: {error}")))
    }
    let flag = match target {
        CommandTarget::Nothing => return Ok(read),
        CommandTarget::Flag(key) => flag_from_hash(key, hash(record)?)?,
        CommandTarget::Rollout(id) => {
            let Some(rollout) = rollout_from_hash(id, hash(record)?).1? else {
                return Ok(read);
            };
            let flag = load_flag(connection, keys, &rollout.plan.flag).await?;
            read.rollout = Some(rollout);
            flag
        }
    };
    let active_id = flag
        .record
        .as_ref()
        .and_then(|record| record.active_rollout.as_deref());
    read.active_rollout = match (active_id, &read.rollout) {
        (Some(active_id), Some(rollout)) if rollout.id == active_id => Some(rollout.clone()),
        (Some(active_id), _) => load_rollout(connection, keys, active_id).await?,
        (None, _) => None,
    };
    read.flag = Some(flag);
    Ok(read)
}
