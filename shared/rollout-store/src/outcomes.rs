//! Windowed outcome counters for guards and kill switches (SPEC §6). Evaluators aggregate
//! reported outcomes in memory and add them in one pipelined round trip per batch; the
//! ticker sums the buckets covering a guard's window.
//!
//! `ro:{ns}:outcomes:<flag>:<bucket start ms>`: hash `<variation>:ok` / `<variation>:err` →
//! count, one per [`BUCKET_MS`] bucket, expiring after [`BUCKET_TTL_SECONDS`].

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use rollout_core::{DurationMs, OutcomeCounts, SideCounts, Timestamp};
use rollout_wire::keys::Keys;

use crate::StoreError;

/// Width of one counter bucket.
pub const BUCKET_MS: i64 = 10_000;
/// Buckets live a day: longer than any guard window (at most 24 h).
pub const BUCKET_TTL_SECONDS: i64 = 25 * 3600;

/// One bucket's candidate ok/err and baseline ok/err counters, as HMGET returns them.
type BucketRow = (Option<u64>, Option<u64>, Option<u64>, Option<u64>);

/// Counts of one (flag, variation) in one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Successes.
    pub success: u64,
    /// Errors.
    pub error: u64,
}

/// Start of the bucket holding `time`.
pub fn bucket_start(time: Timestamp) -> Timestamp {
    Timestamp::from_millis(time.as_millis().div_euclid(BUCKET_MS) * BUCKET_MS)
}

/// Adds a batch of tallies, keyed by (flag, variation), to the bucket of `now`, in one
/// pipelined round trip.
pub async fn add_tallies<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    tallies: &HashMap<(String, String), Tally>,
    now: Timestamp,
) -> Result<(), StoreError> {
    if tallies.is_empty() {
        return Ok(());
    }
    let bucket = bucket_start(now);
    let mut pipe = redis::pipe();
    for ((flag, variation), tally) in tallies {
        let key = keys.outcomes(flag, bucket);
        if tally.success > 0 {
            pipe.hincr(&key, format!("{variation}:ok"), tally.success)
                .ignore();
        }
        if tally.error > 0 {
            pipe.hincr(&key, format!("{variation}:err"), tally.error)
                .ignore();
        }
        pipe.expire(&key, BUCKET_TTL_SECONDS).ignore();
    }
    pipe.query_async::<()>(connection).await?;
    Ok(())
}

/// [`load_outcome_counts`] for `plan`'s flag, baseline and candidate.
pub async fn load_plan_outcomes<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    plan: &rollout_core::Plan,
    window: DurationMs,
    now: Timestamp,
) -> Result<OutcomeCounts, StoreError> {
    load_outcome_counts(
        connection,
        keys,
        &plan.flag,
        &plan.baseline,
        &plan.candidate,
        window,
        now,
    )
    .await
}

/// Sums the candidate's and baseline's counters over the buckets covering
/// `(now - window, now]`.
pub async fn load_outcome_counts<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    flag: &str,
    baseline: &str,
    candidate: &str,
    window: DurationMs,
    now: Timestamp,
) -> Result<OutcomeCounts, StoreError> {
    let first = bucket_start(Timestamp::from_millis(
        now.as_millis() - window.as_millis() + 1,
    ));
    let mut pipe = redis::pipe();
    let mut bucket = first;
    while bucket <= now {
        pipe.cmd("HMGET")
            .arg(keys.outcomes(flag, bucket))
            .arg(format!("{candidate}:ok"))
            .arg(format!("{candidate}:err"))
            .arg(format!("{baseline}:ok"))
            .arg(format!("{baseline}:err"));
        bucket = bucket.plus(DurationMs::from_millis(BUCKET_MS));
    }
    let rows: Vec<BucketRow> = pipe.query_async(connection).await?;
    let mut counts = OutcomeCounts {
        candidate: SideCounts::default(),
        baseline: SideCounts::default(),
    };
    for (candidate_ok, candidate_err, baseline_ok, baseline_err) in rows {
        counts.candidate.success += candidate_ok.unwrap_or(0);
        counts.candidate.error += candidate_err.unwrap_or(0);
        counts.baseline.success += baseline_ok.unwrap_or(0);
        counts.baseline.error += baseline_err.unwrap_or(0);
    }
    Ok(counts)
}
