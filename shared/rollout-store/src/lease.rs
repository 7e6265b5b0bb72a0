//! The ticker's leader election and the namespace fences (keys `lease`, `epoch` under the
//! `{ticker}` tag, and each namespace's `fence`).
//!
//! - The lease holds `<replica id>:<epoch>` with a time to live. It is taken by one script
//!   that, only when the lease is free, `INCR`s the epoch counter and sets the lease
//!   `NX PX`: every acquisition gets a higher epoch, and the counter outlives the lease
//!   (and, with persistence, Redis restarts).
//! - The holder renews with a compare-and-`PEXPIRE` (the value must still be its own) and
//!   releases with a compare-and-`DEL`, so another replica takes over at once.
//! - Fences: each namespace's fence is raised ("set if greater") to the leader's epoch
//!   before the leader touches the namespace; every transition commit is
//!   `Commit::fenced(fence, epoch)` and every due-index move checks it too
//!   ([`crate::due::reschedule_many`]), so a paused or partitioned old leader's writes are
//!   refused. The lease saves work; the fence is what makes double advances impossible.

use std::sync::LazyLock;
use std::time::Duration;

use crate::keys::{self, Keys};

use crate::{Connection, StoreError};

static ACQUIRE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/lease_acquire.lua")));
static RENEW: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/lease_renew.lua")));
static RELEASE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/lease_release.lua")));
static RAISE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/raise.lua")));

/// What raising a namespace's fence found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceRaise {
    /// The fence now holds our epoch.
    Ours,
    /// The fence holds a higher epoch: a newer leader exists, or the epoch counter was lost
    /// while fences survived. The counter has been raised past it, so a new campaign wins a
    /// usable epoch.
    Ahead(u64),
}

/// One replica's handle on the lease. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Lease {
    redis: Connection,
    replica_id: String,
    ttl: Duration,
}

impl Lease {
    /// The lease as replica `replica_id`, held for `ttl` per renewal.
    pub fn new(redis: Connection, replica_id: impl Into<String>, ttl: Duration) -> Lease {
        Lease {
            redis,
            replica_id: replica_id.into(),
            ttl,
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

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The lease value while we hold it at `epoch`.
    pub fn value(&self, epoch: u64) -> String {
        format!("{}:{epoch}", self.replica_id)
    }

    /// Tries to take the lease; the new epoch when it was free.
    pub async fn acquire(&self) -> Result<Option<u64>, StoreError> {
        let mut connection = self.redis.clone();
        Ok(ACQUIRE
            .key(keys::ticker_lease())
            .key(keys::ticker_epoch())
            .arg(&self.replica_id)
            .arg(self.ttl_ms())
            .invoke_async(&mut connection)
            .await?)
    }

    /// Extends the lease held at `epoch`; `false` when it is no longer ours.
    pub async fn renew(&self, epoch: u64) -> Result<bool, StoreError> {
        let mut connection = self.redis.clone();
        let renewed: i64 = RENEW
            .key(keys::ticker_lease())
            .arg(self.value(epoch))
            .arg(self.ttl_ms())
            .invoke_async(&mut connection)
            .await?;
        Ok(renewed == 1)
    }

    /// Gives the lease up if we still hold it at `epoch`; `true` when it was ours.
    pub async fn release(&self, epoch: u64) -> Result<bool, StoreError> {
        let mut connection = self.redis.clone();
        let released: i64 = RELEASE
            .key(keys::ticker_lease())
            .arg(self.value(epoch))
            .invoke_async(&mut connection)
            .await?;
        Ok(released == 1)
    }

    /// How long until the lease expires (`None` when nobody holds it).
    pub async fn remaining(&self) -> Result<Option<Duration>, StoreError> {
        let mut connection = self.redis.clone();
        let millis: i64 = redis::cmd("PTTL")
            .arg(keys::ticker_lease())
            .query_async(&mut connection)
            .await?;
        Ok(match millis {
            // held without an expiry (set by hand): look again after a renewal interval
            -1 => Some(self.ttl),
            _ => u64::try_from(millis).ok().map(Duration::from_millis),
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

/// Who holds the lease now, and at which epoch (`None` when nobody does).
pub async fn holder(connection: &mut Connection) -> Result<Option<(String, u64)>, StoreError> {
    let value: Option<String> = redis::cmd("GET")
        .arg(keys::ticker_lease())
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

/// How many leadership terms were ever won: the epoch counter (it only rises).
pub async fn epoch_counter(connection: &mut Connection) -> Result<u64, StoreError> {
    let value: Option<u64> = redis::cmd("GET")
        .arg(keys::ticker_epoch())
        .query_async(connection)
        .await?;
    Ok(value.unwrap_or(0))
}

/// Drops the lease as its expiry would, whoever holds it (for tests that stall a leader
/// past its lease without waiting for the time to live).
pub async fn expire(connection: &mut Connection) -> Result<(), StoreError> {
    let _: i64 = redis::cmd("DEL")
        .arg(keys::ticker_lease())
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
}
