//! The one clock (Redis `TIME`) without a round trip per use: the offset between Redis
//! time and this machine's clock, measured at start and again at every full comparison
//! with Redis, applied to the local clock. Outcome buckets are 10 s wide, so the error of
//! a measurement (half a round trip) does not matter.

use std::sync::atomic::{AtomicI64, Ordering};

use rollout_core::Timestamp;
use rollout_store::{Connection, StoreError};

/// Redis time, estimated locally. Cheap to share by reference.
#[derive(Debug, Default)]
pub struct RedisClock {
    offset_ms: AtomicI64,
}

fn local_millis() -> i64 {
    Timestamp::local_now().as_millis()
}

impl RedisClock {
    /// Reads Redis `TIME` and remembers its offset from the local clock; returns it.
    pub async fn measure(&self, redis: &Connection) -> Result<Timestamp, StoreError> {
        let mut connection = redis.clone();
        let before = local_millis();
        let now = rollout_store::redis_time(&mut connection).await?;
        let after = local_millis();
        let local_midpoint = before + (after - before) / 2;
        self.offset_ms
            .store(now.as_millis() - local_midpoint, Ordering::Relaxed);
        Ok(now)
    }

    /// The estimated Redis time now.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_millis(local_millis() + self.offset_ms.load(Ordering::Relaxed))
    }
}
