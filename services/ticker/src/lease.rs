//! Leader election and fencing in Redis.
//!
//! - The lease `ro:{ticker}:lease` holds `<replica id>:<epoch>` with a time to live. It is
//!   taken by one script that, only when the lease is free, `INCR`s `ro:{ticker}:epoch` and
//!   sets the lease `NX PX`: every acquisition gets a higher epoch, and the counter outlives
//!   the lease (and, with persistence, Redis restarts).
//! - The holder renews with a compare-and-`PEXPIRE` (the value must still be its own) and
//!   releases with a compare-and-`DEL`, so another replica takes over at once.
//! - Fences: each namespace's `ro:{ns}:fence` is raised ("set if greater") to the leader's
//!   epoch before the leader touches the namespace; every transition commit is
//!   `Commit::fenced(fence, epoch)`, so a paused or partitioned old leader's writes are
//!   refused. The lease saves work; the fence is what makes double advances impossible.

use std::time::Duration;

use redis::aio::ConnectionManager;
use rollout_wire::keys::{self, Keys};

/// Takes the lease when it is free: `KEYS[1]` lease, `KEYS[2]` epoch counter, `ARGV[1]`
/// replica id, `ARGV[2]` time to live in ms. Returns the new epoch, or nil when held.
const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. epoch, 'PX', ARGV[2])
return epoch
";

/// Extends the lease if it still holds `ARGV[1]`: returns 1, else 0.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes the lease if it still holds `ARGV[1]`: returns 1, else 0.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Raises the number at `KEYS[1]` to `ARGV[1]` unless it is already higher; returns the
/// value it holds afterwards.
const RAISE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if current < wanted then
  redis.call('SET', KEYS[1], ARGV[1])
  return wanted
end
return current
";

static ACQUIRE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(ACQUIRE));
static RENEW_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RENEW));
static RELEASE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RELEASE));
static RAISE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RAISE));

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
    redis: ConnectionManager,
    replica_id: String,
    ttl: Duration,
}

impl Lease {
    /// The lease as replica `replica_id`, held for `ttl` per renewal.
    pub fn new(redis: ConnectionManager, replica_id: impl Into<String>, ttl: Duration) -> Lease {
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
    pub async fn acquire(&self) -> Result<Option<u64>, redis::RedisError> {
        let mut connection = self.redis.clone();
        ACQUIRE_SCRIPT
            .key(keys::ticker_lease())
            .key(keys::ticker_epoch())
            .arg(&self.replica_id)
            .arg(self.ttl_ms())
            .invoke_async(&mut connection)
            .await
    }

    /// Extends the lease held at `epoch`; `false` when it is no longer ours.
    pub async fn renew(&self, epoch: u64) -> Result<bool, redis::RedisError> {
        let mut connection = self.redis.clone();
        let renewed: i64 = RENEW_SCRIPT
            .key(keys::ticker_lease())
            .arg(self.value(epoch))
            .arg(self.ttl_ms())
            .invoke_async(&mut connection)
            .await?;
        Ok(renewed == 1)
    }

    /// Gives the lease up if we still hold it at `epoch`; `true` when it was ours.
    pub async fn release(&self, epoch: u64) -> Result<bool, redis::RedisError> {
        let mut connection = self.redis.clone();
        let released: i64 = RELEASE_SCRIPT
            .key(keys::ticker_lease())
            .arg(self.value(epoch))
            .invoke_async(&mut connection)
            .await?;
        Ok(released == 1)
    }

    /// How long until the lease expires (`None` when nobody holds it).
    pub async fn remaining(&self) -> Result<Option<Duration>, redis::RedisError> {
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
    pub async fn raise_fence(
        &self,
        keys: &Keys,
        epoch: u64,
    ) -> Result<FenceRaise, redis::RedisError> {
        let mut connection = self.redis.clone();
        let fence: u64 = RAISE_SCRIPT
            .key(keys.fence())
            .arg(epoch)
            .invoke_async(&mut connection)
            .await?;
        if fence == epoch {
            return Ok(FenceRaise::Ours);
        }
        // make sure the next acquisition gets an epoch above this fence
        let _: u64 = RAISE_SCRIPT
            .key(keys::ticker_epoch())
            .arg(fence)
            .invoke_async(&mut connection)
            .await?;
        Ok(FenceRaise::Ahead(fence))
    }
}

/// The holder and epoch in a lease value `<replica id>:<epoch>`.
pub fn parse_lease_value(value: &str) -> Option<(&str, u64)> {
    let (replica, epoch) = value.rsplit_once(':')?;
    Some((replica, epoch.parse().ok()?))
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
