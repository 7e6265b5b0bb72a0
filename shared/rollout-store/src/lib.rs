//! The Redis data model the services share, and the only write path.
//!
//! Layout (every key of a namespace carries the hash tag `{<ns>}`, see `rollout_wire::keys`):
//!
//! | key | type | written by |
//! |---|---|---|
//! | `flag:<key>` | hash `{rev, data: FlagRecord}`; tombstone `{rev}` after delete | planner, ticker |
//! | `flags` | set of flag keys | planner |
//! | `rollout:<id>` | hash `{rev, data: RolloutRecord}` | planner, ticker |
//! | `rollouts:active`, `rollouts:finished` | zset id → created / finished ms | planner, ticker |
//! | `due` | zset id → next due ms | planner, ticker |
//! | `audit:rollout:<id>`, `audit:flag:<key>` | list, newest first | planner, ticker |
//! | `outbox` | stream of encoded change events not yet published | planner, ticker |
//! | `cmd:<command_id>` | first outcome of a command, with a TTL | planner |
//! | `agent:<id>`, `agents`, `rollout:<id>:reports` | fleet agents and reports ([`fleet`]) | evaluator |
//! | `outcomes:<flag>:<bucket>` | windowed outcome counters per variation, for kill switches ([`outcomes`]) | evaluator |
//! | `rollout:<id>:outcomes:<bucket>` | windowed outcome counters per side, for the rollout's guard ([`outcomes`]) | evaluator |
//! | `fence` | the ticker leader's epoch | ticker |
//!
//! **Architecture Invariant:** every write goes through [`Commit`], one Lua script that
//! checks every precondition (revisions, command id, fence epoch, earliest time) before its
//! first write and appends audit and outbox entries in the same step.

mod commit;
pub mod fleet;
pub mod health;
pub mod mutation;
pub mod outbox;
pub mod outcomes;
mod records;

use redis::aio::ConnectionLike;
use redis::AsyncCommands;
use rollout_core::Timestamp;
use rollout_wire::keys::Keys;

pub use commit::{Commit, CommitOutcome};
pub use mutation::{settle_flag, Actor, Mutation, PreparedCommit};
pub use outbox::Relay;
pub use records::{decode_record, encode_record, FlagRecord, RolloutRecord, StoredFlag};

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached or refused the command.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored record could not be decoded or encoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// Redis answered something the store did not expect.
    #[error("unexpected redis reply: {0}")]
    Protocol(String),
    /// A change was described inconsistently (a bug in the caller, refused before Redis).
    #[error("inconsistent change: {0}")]
    Inconsistent(String),
}

impl StoreError {
    /// The error a service replies with: Redis trouble is `unavailable` (worth a retry), a
    /// corrupt record or an unexpected reply is `internal`.
    pub fn to_wire(&self) -> rollout_wire::envelope::WireError {
        use rollout_wire::envelope::WireError;
        match self {
            StoreError::Redis(_) => {
                WireError::unavailable(format!("state store unavailable: {self}"))
            }
            StoreError::Corrupt(_) | StoreError::Protocol(_) | StoreError::Inconsistent(_) => {
                WireError::internal(self.to_string())
            }
        }
    }
}

/// Redis `TIME`: the one clock of the system.
pub async fn redis_time<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
) -> Result<Timestamp, StoreError> {
    let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(connection).await?;
    Ok(Timestamp::from_redis_time(seconds, micros))
}

/// Redis `TIME`, with `namespace` (re)written into the namespace registry in the same round
/// trip. Writers call it before deciding a change, so a registry lost with Redis's data is
/// written again by the next command in each namespace, and the ticker finds its rollouts.
pub async fn redis_time_registering<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    namespace: &str,
) -> Result<Timestamp, StoreError> {
    let ((seconds, micros),): ((i64, i64),) = redis::pipe()
        .cmd("SADD")
        .arg(rollout_wire::keys::namespaces())
        .arg(namespace)
        .ignore()
        .cmd("TIME")
        .query_async(connection)
        .await?;
    Ok(Timestamp::from_redis_time(seconds, micros))
}

/// Reads a flag hash.
pub async fn load_flag<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    flag_key: &str,
) -> Result<StoredFlag, StoreError> {
    let (revision, data): (Option<u64>, Option<Vec<u8>>) = redis::cmd("HMGET")
        .arg(keys.flag(flag_key))
        .arg("rev")
        .arg("data")
        .query_async(connection)
        .await?;
    let record = match data {
        Some(bytes) => Some(decode_record::<FlagRecord>(
            &bytes,
            &format!("flag {flag_key}"),
        )?),
        None => None,
    };
    Ok(StoredFlag {
        version: revision.unwrap_or(0),
        record,
    })
}

/// Reads a rollout hash; `None` when there is no such rollout.
pub async fn load_rollout<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    rollout_id: &str,
) -> Result<Option<RolloutRecord>, StoreError> {
    let data: Option<Vec<u8>> = connection.hget(keys.rollout(rollout_id), "data").await?;
    data.map(|bytes| decode_record::<RolloutRecord>(&bytes, &format!("rollout {rollout_id}")))
        .transpose()
}

/// The first outcome stored for a command id, if any.
pub async fn stored_outcome<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    command_id: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(connection.get(keys.command(command_id)).await?)
}

/// Records an outcome that changed nothing — a refusal or a no-op — as a command's first
/// outcome unless one is already stored (SET NX), returning the outcome that stands.
/// (Outcomes that change something are stored by their commit.)
pub async fn store_unchanged_outcome<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    command_id: &str,
    outcome: &[u8],
    ttl_seconds: u64,
) -> Result<Vec<u8>, StoreError> {
    let key = keys.command(command_id);
    let set: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(outcome)
        .arg("NX")
        .arg("EX")
        .arg(ttl_seconds.max(1))
        .query_async(connection)
        .await?;
    if set.is_some() {
        return Ok(outcome.to_vec());
    }
    let existing: Option<Vec<u8>> = connection.get(&key).await?;
    Ok(existing.unwrap_or_else(|| outcome.to_vec()))
}
