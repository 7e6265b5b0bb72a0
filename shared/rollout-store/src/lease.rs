//! Sharded ticker leadership (SPEC §14) and the namespace fences: keys `lease:<shard>`,
//! `epoch`, `replicas` and `shards` under the `{ticker}` tag, and each namespace's `fence`.
//!
//! - Namespaces hash to a fixed number of shards ([`shard_of`]). Every ticker replica
//!   agrees on that number: the first one stores it (`ro:{ticker}:shards`), and a replica
//!   configured differently is refused ([`StoreError::Misconfigured`]) instead of fencing
//!   namespaces out from under the others.
//! - Each shard has a lease holding `<replica id>:<epoch>` with a time to live. All shards
//!   draw their epochs from one counter, so an epoch is never reused whichever shard takes
//!   it, and the counter outlives the leases (and, with persistence, Redis restarts).
//! - [`ShardLeases::balance`] is one script: it heartbeats the replica in `replicas` (a
//!   sorted set of heartbeat expiries), renews the leases it holds (compare-and-`PEXPIRE`),
//!   gives up what it asks to or holds above its fair share (the shard count over the live
//!   replicas, rounded up; compare-and-`DEL`), and takes free shards up to that share. A
//!   joining replica thus gets shards as the others give their extras back; a dead one's
//!   heartbeat and leases expire together, and the survivors' share grows to cover them.
//! - Fences: each namespace's fence is raised ("set if greater") to the epoch of its
//!   shard's lease before the holder touches the namespace; every transition commit is
//!   `Commit::fenced(fence, epoch)` and every due-index move checks it too
//!   ([`crate::due::reschedule_many`]), so a paused or partitioned old holder's writes are
//!   refused. The lease saves work; the fence is what makes double advances impossible.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use rollout_wire::subjects::Namespace;

use crate::keys::{self, Keys};

use crate::{Connection, StoreError};

static BALANCE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/shards_balance.lua")));
static RAISE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/raise.lua")));

/// Most shards a deployment may have (every balancing step names each shard's lease).
pub const MAX_SHARDS: u32 = 1024;

/// The shard `namespace` belongs to among `shards` (FNV-1a of its name): the same on every
/// replica and every version, so all replicas agree on who may write a namespace.
pub fn shard_of(namespace: &str, shards: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in namespace.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % shards.max(1)
}

/// What raising a namespace's fence found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceRaise {
    /// The fence now holds our epoch.
    Ours,
    /// The fence holds a higher epoch: a newer holder exists, or the epoch counter was lost
    /// while fences survived. The counter has been raised past it, so a new acquisition
    /// wins a usable epoch.
    Ahead(u64),
}

/// Whether a balancing step keeps the replica in the game.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stance {
    /// Heartbeat, renew, and take up to a fair share.
    Share,
    /// Leave the replicas and give every lease named up (shutdown).
    Leave,
}

/// What one balancing step did. Shards map to the epoch of their lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// Held before and renewed.
    pub kept: BTreeMap<u32, u64>,
    /// Taken now, each at a new epoch.
    pub acquired: BTreeMap<u32, u64>,
    /// Held before but no longer ours (expired, or taken by another replica).
    pub lost: Vec<u32>,
    /// Given back: asked to, or above the fair share.
    pub released: Vec<u32>,
    /// Live replicas, this one included unless it left.
    pub replicas: u32,
    /// When another replica's heartbeat (and so its leases) may run out: worth balancing
    /// again then, to take over its shards at once.
    pub others_expire_in: Option<Duration>,
}

impl Balance {
    /// Every shard held after the step.
    pub fn held(&self) -> BTreeMap<u32, u64> {
        let mut held = self.kept.clone();
        held.extend(&self.acquired);
        held
    }
}

/// One replica's handle on the shard leases. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShardLeases {
    redis: Connection,
    replica_id: String,
    ttl: Duration,
    shards: u32,
    lease_keys: std::sync::Arc<Vec<String>>,
}

impl ShardLeases {
    /// The leases of `shards` shards as replica `replica_id`, held for `ttl` per renewal.
    pub fn new(
        redis: Connection,
        replica_id: impl Into<String>,
        ttl: Duration,
        shards: u32,
    ) -> ShardLeases {
        let shards = shards.clamp(1, MAX_SHARDS);
        ShardLeases {
            redis,
            replica_id: replica_id.into(),
            ttl,
            shards,
            lease_keys: std::sync::Arc::new((0..shards).map(keys::ticker_lease).collect()),
        }
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// The lease time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How many shards there are.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard of `namespace`.
    pub fn shard_of(&self, namespace: &Namespace) -> u32 {
        shard_of(namespace.as_str(), self.shards)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The lease value of a shard we hold at `epoch`.
    pub fn value(&self, epoch: u64) -> String {
        format!("{}:{epoch}", self.replica_id)
    }

    /// One balancing step: heartbeat, renew `held`, give `give_up` back, and (with
    /// [`Stance::Share`]) take free shards up to the fair share.
    pub async fn balance(
        &self,
        held: &BTreeMap<u32, u64>,
        give_up: &BTreeMap<u32, u64>,
        stance: Stance,
    ) -> Result<Balance, StoreError> {
        let mut invocation = BALANCE.prepare_invoke();
        invocation
            .key(keys::ticker_epoch())
            .key(keys::ticker_replicas())
            .key(keys::ticker_shards());
        for key in self.lease_keys.iter() {
            invocation.key(key);
        }
        // replicas start looking for free shards at different places, so that two taking
        // shards at once rarely reach for the same ones
        let start = shard_of(&self.replica_id, self.shards);
        invocation
            .arg(&self.replica_id)
            .arg(self.ttl_ms())
            .arg(self.shards)
            .arg(match stance {
                Stance::Share => "share",
                Stance::Leave => "leave",
            })
            .arg(start);
        for pairs in [held, give_up] {
            invocation.arg(pairs.len());
            for (shard, epoch) in pairs {
                invocation.arg(shard).arg(epoch);
            }
        }
        let mut connection = self.redis.clone();
        let reply: BalanceReply = invocation.invoke_async(&mut connection).await?;
        let (status, stored, replicas, wake_ms, kept, acquired, lost, released) = reply;
        if status != "ok" {
            return Err(StoreError::Misconfigured(format!(
                "ticker.shards is {} but the ticker replicas already running use {stored} \
                 (stored in Redis); every replica must be configured with the same shard count",
                self.shards
            )));
        }
        Ok(Balance {
            kept: pairs(&kept)?,
            acquired: pairs(&acquired)?,
            lost,
            released,
            replicas,
            others_expire_in: u64::try_from(wake_ms).ok().map(Duration::from_millis),
        })
    }

    /// Raises `keys`' fence to `epoch`.
    pub async fn raise_fence(&self, keys: &Keys, epoch: u64) -> Result<FenceRaise, StoreError> {
        let mut connection = self.redis.clone();
        let fence: u64 = RAISE
            .key(keys.fence())
            .arg(epoch)
            .invoke_async(&mut connection)
            .await?;
        if fence == epoch {
            return Ok(FenceRaise::Ours);
        }
        // make sure the next acquisition gets an epoch above this fence
        let _: u64 = RAISE
            .key(keys::ticker_epoch())
            .arg(fence)
            .invoke_async(&mut connection)
            .await?;
        Ok(FenceRaise::Ahead(fence))
    }
}

/// The balance script's reply: status, stored shard count, replicas, ms until another
/// replica's heartbeat expires, kept and acquired (flat shard, epoch pairs), lost, released.
type BalanceReply = (
    String,
    u32,
    u32,
    i64,
    Vec<u64>,
    Vec<u64>,
    Vec<u32>,
    Vec<u32>,
);

fn pairs(flat: &[u64]) -> Result<BTreeMap<u32, u64>, StoreError> {
    if !flat.len().is_multiple_of(2) {
        return Err(StoreError::Protocol(format!(
            "shard, epoch pairs of odd length {}",
            flat.len()
        )));
    }
    flat.chunks(2)
        .map(|pair| {
            let shard = u32::try_from(pair[0])
                .map_err(|_| StoreError::Protocol(format!("shard {} out of range", pair[0])))?;
            Ok((shard, pair[1]))
        })
        .collect()
}

/// Who holds one shard's lease now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHolder {
    /// The shard.
    pub shard: u32,
    /// The replica holding its lease.
    pub replica: String,
    /// The epoch its lease was taken at.
    pub epoch: u64,
}

/// The shard count the running replicas agreed on (`None` before any replica balanced).
pub async fn shard_count(connection: &mut Connection) -> Result<Option<u32>, StoreError> {
    Ok(redis::cmd("GET")
        .arg(keys::ticker_shards())
        .query_async(connection)
        .await?)
}

/// The holder of every held shard, by shard (empty before any replica balanced).
pub async fn holders(connection: &mut Connection) -> Result<Vec<ShardHolder>, StoreError> {
    let Some(count) = shard_count(connection).await? else {
        return Ok(Vec::new());
    };
    let lease_keys: Vec<String> = (0..count).map(keys::ticker_lease).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&lease_keys)
        .query_async(connection)
        .await?;
    Ok((0..count)
        .zip(values)
        .filter_map(|(shard, value)| {
            let (replica, epoch) = parse_lease_value(value.as_deref()?)?;
            Some(ShardHolder {
                shard,
                replica: replica.to_owned(),
                epoch,
            })
        })
        .collect())
}

/// Who holds the shard of `namespace` now, and at which epoch (`None` when nobody does).
pub async fn holder_of(
    connection: &mut Connection,
    namespace: &str,
) -> Result<Option<(String, u64)>, StoreError> {
    let Some(count) = shard_count(connection).await? else {
        return Ok(None);
    };
    let value: Option<String> = redis::cmd("GET")
        .arg(keys::ticker_lease(shard_of(namespace, count)))
        .query_async(connection)
        .await?;
    Ok(value
        .as_deref()
        .and_then(parse_lease_value)
        .map(|(replica, epoch)| (replica.to_owned(), epoch)))
}

/// The holder and epoch in a lease value `<replica id>:<epoch>`.
pub fn parse_lease_value(value: &str) -> Option<(&str, u64)> {
    let (replica, epoch) = value.rsplit_once(':')?;
    Some((replica, epoch.parse().ok()?))
}

/// How many shard leases were ever taken: the epoch counter (it only rises).
pub async fn epoch_counter(connection: &mut Connection) -> Result<u64, StoreError> {
    let value: Option<u64> = redis::cmd("GET")
        .arg(keys::ticker_epoch())
        .query_async(connection)
        .await?;
    Ok(value.unwrap_or(0))
}

/// Drops every shard lease and every replica's heartbeat, as if every replica had died and
/// its leases expired (for tests that stall a holder past its lease without waiting for
/// the time to live).
pub async fn expire(connection: &mut Connection) -> Result<(), StoreError> {
    let count = shard_count(connection).await?.unwrap_or(0);
    let mut doomed: Vec<String> = (0..count).map(keys::ticker_lease).collect();
    doomed.push(keys::ticker_replicas());
    let _: i64 = redis::cmd("DEL")
        .arg(&doomed)
        .query_async(connection)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_values_name_holder_and_epoch() {
        assert_eq!(parse_lease_value("host-1-ab:17"), Some(("host-1-ab", 17)));
        assert_eq!(parse_lease_value("a:b:3"), Some(("a:b", 3)));
        assert_eq!(parse_lease_value("nonsense"), None);
    }

    #[test]
    fn shards_are_stable_and_spread_namespaces() {
        // FNV-1a: pinned, since every replica and version must agree
        assert_eq!(shard_of("", 64), 0x811c_9dc5 % 64);
        assert_eq!(shard_of("prod", 1), 0);
        assert_eq!(shard_of("prod", 64), shard_of("prod", 64));
        let mut used = std::collections::BTreeSet::new();
        for index in 0..1000 {
            used.insert(shard_of(&format!("ns-{index}"), 64));
        }
        assert_eq!(used.len(), 64, "a thousand namespaces reach every shard");
    }

    #[test]
    fn odd_pairs_are_a_protocol_error() {
        assert!(pairs(&[1, 2, 3]).is_err());
        assert_eq!(
            pairs(&[3, 9, 5, 11]).expect("pairs"),
            BTreeMap::from([(3, 9), (5, 11)])
        );
    }
}
