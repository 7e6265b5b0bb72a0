//! The Redis data model the services share: the one Redis boundary of the system.
//!
//! Every Redis command and Lua script of the services lives in this crate, in a module
//! named for the keys it owns; the scripts are files under `src/scripts/`. Services call
//! typed functions and hold a [`Connection`]; a tidy test (`tests/tidy.rs`) fails if any
//! other crate's code names the Redis client.
//!
//! Layout (every key of a namespace carries the hash tag `{<ns>}`, see [`keys`]):
//!
//! | key | type | written by | read by |
//! |---|---|---|---|
//! | `flag:<key>` | hash `{rev, data: FlagRecord, touched: updated_at ms}`; tombstone `{rev}` after delete (fields: `records.rs`) | [`Commit`] (via [`Writer`]) | [`reads`] |
//! | `flags` | set of flag keys | [`Commit`] | [`reads::flag_keys`] |
//! | `rollout:<id>` | hash `{rev, def: the record but its state, state: RolloutState}` (fields: `records.rs`) | [`Commit`] | [`reads`] |
//! | `rollouts:active`, `rollouts:finished` | zset id → created / finished ms | [`Commit`] | [`reads::rollout_ids`] |
//! | `due` | zset id → next due ms | [`Commit`], [`due::reschedule_many`] (fenced) | [`due`] |
//! | `audit:rollout:<id>`, `audit:flag:<key>` | list, newest first | [`Commit`] | [`reads::audit_page`] |
//! | `outbox` | stream of encoded change events not yet published | [`Commit`]; removed by [`Relay`] | [`Relay`] |
//! | `cmd:<command_id>` | first outcome of a command, with a TTL | [`Commit`], [`idempotency::store_unchanged_outcome`] | [`idempotency::stored_outcome`] |
//! | `agent:<id>`, `agents`, `rollout:<id>:reports` | fleet agents and reports | [`fleet`] | [`fleet`], [`health`] |
//! | `outcomes:<flag>:<bucket>` | windowed outcome counters per variation, for kill switches | [`outcomes::add_tallies`] | [`outcomes`] |
//! | `rollout:<id>:outcomes:<bucket>` | windowed outcome counters per side, for the rollout's guard | [`outcomes::add_tallies`] | [`outcomes`], [`health`] |
//! | `fence` | the epoch of the ticker replica leading the namespace's shard | [`lease::ShardLeases::raise_fence`] | [`Commit`] and [`due::reschedule_many`] scripts |
//! | `ro:namespaces` | set of namespace names | [`namespaces::redis_time_registering`] | [`namespaces::registered`] |
//! | `ro:generation` | id of Redis's data history | [`generation::current_or_set`] | [`generation::current_or_set`] |
//! | `ro:{ticker}:lease:<shard>`, `ro:{ticker}:epoch`, `ro:{ticker}:replicas`, `ro:{ticker}:shards` | shard leases, their epoch counter, live replicas, shard count | [`lease::ShardLeases::balance`] | [`lease`] |
//!
//! **Architecture Invariant:** every change of flag and rollout state goes through
//! [`Commit`], one Lua script that checks every precondition (revisions, command id, fence
//! epoch, earliest time) before its first write and appends audit and outbox entries in the
//! same step. The other keys belong to the module named for them.

mod commit;
pub mod due;
mod failpoint;
pub mod fleet;
pub mod freezes;
pub mod generation;
pub mod health;
pub mod idempotency;
pub mod keys;
pub mod lease;
pub mod mutation;
pub mod namespaces;
pub mod outbox;
pub mod outcomes;
mod pipelined;
pub mod reads;
mod records;
pub mod versions;
pub mod webhooks;
pub mod write;

use redis::aio::ConnectionLike;
use rollout_core::Timestamp;

pub use commit::{Commit, CommitOutcome, Refused, COMMITS_PER_CALL};
pub use idempotency::{store_unchanged_outcome, stored_outcome};
pub use keys::Keys;
pub use mutation::{Actor, Happened};
pub use namespaces::redis_time_registering;
pub use outbox::Relay;
pub use reads::{load_flag, load_rollout};
pub use records::{decode_record, encode_record, FlagRecord, RolloutRecord, StoredFlag};
pub use write::{confirm_before_repeating, Change, Conditions, Pending, Writer, Written};

/// The services' connection to Redis (opened by `rollout_runtime::connect::connect_redis`):
/// one multiplexed connection to a single server, re-established on failure, or a Redis
/// Cluster connection that routes each command and script by its key's slot and follows
/// the cluster's topology (SPEC §14). Cheap to clone; every function of the store takes one.
///
/// On a cluster a pipeline must stay in one slot: every key of a namespace shares its hash
/// tag, so a namespace's pipelines do; reads over several namespaces go through
/// [`Connection::query_each`], one pipeline on a single server and one request per
/// namespace, side by side, on a cluster.
///
/// A connection may also ask for replication ([`Connection::waiting_for_replicas`]): a
/// [`Writer`] then confirms every commit on that many replicas (`WAIT`) before it reports
/// it or publishes its events, so a fail-over that promotes a replica loses no change a
/// caller was told about and no evaluator served.
#[derive(Clone)]
pub struct Connection {
    link: Link,
    replication: Option<Replication>,
}

/// How a [`Connection`] reaches Redis.
#[derive(Clone)]
enum Link {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Replicas each commit must reach, and how long a writer waits for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replication {
    /// Replicas that must acknowledge a commit.
    pub replicas: u32,
    /// Longest wait for them.
    pub timeout: std::time::Duration,
}

impl Connection {
    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }

    /// This connection, with every commit confirmed on `replicas` replicas within `timeout`
    /// (none: `replicas` = 0).
    pub fn waiting_for_replicas(
        mut self,
        replicas: u32,
        timeout: std::time::Duration,
    ) -> Connection {
        self.replication = (replicas > 0).then_some(Replication { replicas, timeout });
        self
    }

    /// The replication a commit waits for, if any.
    pub fn replication(&self) -> Option<Replication> {
        self.replication
    }

    /// Runs `commands` (each may touch a different slot) and returns their replies in
    /// order: one pipeline on a single server, each command on its own, concurrently, on a
    /// cluster.
    pub async fn query_each<T: redis::FromRedisValue>(
        &self,
        commands: Vec<redis::Cmd>,
    ) -> Result<Vec<T>, StoreError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_cluster() {
            let replies = commands.into_iter().map(|command| {
                let mut connection = self.clone();
                async move { command.query_async::<T>(&mut connection).await }
            });
            return Ok(futures_util::future::try_join_all(replies).await?);
        }
        let mut pipe = redis::pipe();
        for command in commands {
            pipe.add_command(command);
        }
        let mut connection = self.clone();
        Ok(pipe.query_async(&mut connection).await?)
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Connection")
            .field("cluster", &self.is_cluster())
            .field("replication", &self.replication)
            .finish()
    }
}

impl From<redis::aio::ConnectionManager> for Connection {
    fn from(manager: redis::aio::ConnectionManager) -> Connection {
        Connection {
            link: Link::Single(manager),
            replication: None,
        }
    }
}

impl From<redis::cluster_async::ClusterConnection> for Connection {
    fn from(cluster: redis::cluster_async::ClusterConnection) -> Connection {
        Connection {
            link: Link::Cluster(cluster),
            replication: None,
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match &mut self.link {
            Link::Single(manager) => manager.req_packed_command(cmd),
            Link::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match &mut self.link {
            Link::Single(manager) => manager.req_packed_commands(pipeline, offset, count),
            Link::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Single(manager) => manager.get_db(),
            Link::Cluster(cluster) => cluster.get_db(),
        }
    }
}

/// Failures of the store.
#[derive(Clone, Debug, thiserror::Error)]
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
    /// A commit was applied on the master but not confirmed on the replicas asked for in
    /// time: a fail-over may still lose it. Its events were not published; retrying with the
    /// same command id is safe.
    #[error("not replicated: {0}")]
    Unreplicated(String),
    /// The replicas sharing Redis disagree on their configuration (the ticker shard
    /// count); nothing was written.
    #[error("misconfigured: {0}")]
    Misconfigured(String),
}

impl StoreError {
    /// The error a service replies with: Redis trouble is `unavailable` (worth a retry), a
    /// corrupt record or an unexpected reply is `internal`.
    pub fn to_wire(&self) -> rollout_wire::envelope::WireError {
        use rollout_wire::envelope::WireError;
        match self {
            StoreError::Redis(_) | StoreError::Unreplicated(_) => {
                WireError::unavailable(format!("state store unavailable: {self}"))
            }
            StoreError::Corrupt(_)
            | StoreError::Protocol(_)
            | StoreError::Inconsistent(_)
            | StoreError::Misconfigured(_) => WireError::internal(self.to_string()),
        }
    }
}

/// A check that Redis answers (one `TIME` round trip), for readiness probes: each call
/// makes a fresh future on a clone of `redis`.
pub fn answers(
    redis: Connection,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + 'static
{
    move || {
        let mut connection = redis.clone();
        Box::pin(async move { redis_time(&mut connection).await.is_ok() })
    }
}

/// Redis `TIME`: the one clock of the system.
pub async fn redis_time<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
) -> Result<Timestamp, StoreError> {
    let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(connection).await?;
    Ok(Timestamp::from_redis_time(seconds, micros))
}
