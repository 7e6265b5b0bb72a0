//! Windowed outcome counters for kill switches and guards (SPEC §6, §11.1). Evaluators
//! aggregate reported outcomes in memory and add them in one pipelined round trip per
//! batch; the ticker sums the buckets covering a window.
//!
//! Each outcome is counted twice, in [`BUCKET_MS`] buckets expiring after
//! [`BUCKET_TTL_SECONDS`]:
//!
//! - per flag and variation, for kill switches (flag-level: they judge the flag whatever
//!   rollout runs): `ro:{ns}:outcomes:<flag>:<bucket start ms>`, hash `<variation>:ok` /
//!   `<variation>:err` → count;
//! - per rollout and side, for the rollout's guard, when the outcome belongs to the
//!   rollout's candidate or baseline: `ro:{ns}:rollout:<id>:outcomes:<bucket start ms>`,
//!   hash `candidate:ok` / `candidate:err` / `baseline:ok` / `baseline:err` → count. A new
//!   rollout of the same flag starts from empty counters.
//!
//! Only known flags, their variations and the active rollout are ever written (the
//! evaluator checks), so the fields and keys stay bounded by what operators created.

use std::collections::HashMap;

use crate::keys::Keys;
use redis::aio::ConnectionLike;
use rollout_core::{DurationMs, Lifecycle, OutcomeCounts, SideCounts, Timestamp};

use crate::{FlagRecord, RolloutRecord, StoreError};

/// Width of one counter bucket.
pub const BUCKET_MS: i64 = 10_000;
/// Buckets live a day: longer than any guard window (at most 24 h).
pub const BUCKET_TTL_SECONDS: i64 = 25 * 3600;

/// One bucket's candidate ok/err and baseline ok/err counters, as HMGET returns them.
type BucketRow = (Option<u64>, Option<u64>, Option<u64>, Option<u64>);

/// Counts of one (flag, variation) or one (rollout, side) in one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Successes.
    pub success: u64,
    pub error: u64,
}

impl Tally {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: Tally) {
        self.success = self.success.saturating_add(other.success);
        self.error = self.error.saturating_add(other.error);
    }
}

/// The side of a rollout an outcome was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The rollout's candidate variation.
    Candidate,
    /// The rollout's baseline variation.
    Baseline,
}

impl Side {
    fn field(self, suffix: &str) -> String {
        match self {
            Side::Candidate => format!("candidate:{suffix}"),
            Side::Baseline => format!("baseline:{suffix}"),
        }
    }
}

/// One batch of counts for one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tallies {
    /// By (flag, variation): what kill switches read.
    pub flags: HashMap<(String, String), Tally>,
    /// By (rollout id, side): what the rollout's guard reads.
    pub rollouts: HashMap<(String, Side), Tally>,
}

impl Tallies {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty() && self.rollouts.is_empty()
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: Tallies) {
        for (key, tally) in other.flags {
            self.flags.entry(key).or_default().add(tally);
        }
        for (key, tally) in other.rollouts {
            self.rollouts.entry(key).or_default().add(tally);
        }
    }
}

/// Start of the bucket holding `time`.
pub fn bucket_start(time: Timestamp) -> Timestamp {
    Timestamp::from_millis(time.as_millis().div_euclid(BUCKET_MS) * BUCKET_MS)
}

/// Adds a batch of tallies to the buckets of `now`, in one pipelined round trip.
pub async fn add_tallies<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    tallies: &Tallies,
    now: Timestamp,
) -> Result<(), StoreError> {
    if tallies.is_empty() {
        return Ok(());
    }
    let bucket = bucket_start(now);
    let mut pipe = redis::pipe();
    let flag_rows = tallies.flags.iter().map(|((flag, variation), tally)| {
        (
            keys.outcomes(flag, bucket),
            format!("{variation}:ok"),
            format!("{variation}:err"),
            tally,
        )
    });
    let rollout_rows = tallies.rollouts.iter().map(|((rollout_id, side), tally)| {
        (
            keys.rollout_outcomes(rollout_id, bucket),
            side.field("ok"),
            side.field("err"),
            tally,
        )
    });
    for (key, ok_field, err_field, tally) in flag_rows.chain(rollout_rows) {
        if tally.success > 0 {
            pipe.hincr(&key, ok_field, tally.success).ignore();
        }
        if tally.error > 0 {
            pipe.hincr(&key, err_field, tally.error).ignore();
        }
        pipe.expire(&key, BUCKET_TTL_SECONDS).ignore();
    }
    pipe.query_async::<()>(connection).await?;
    Ok(())
}

/// The counters of rollout `rollout_id` that its guard judges at `now`: the sides' sums
/// over the whole buckets that began at or after `from` (see
/// `RolloutState::guard_window_start`: never before the rollout's last resume).
pub async fn load_rollout_outcomes<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    rollout_id: &str,
    from: Timestamp,
    now: Timestamp,
) -> Result<OutcomeCounts, StoreError> {
    // the first whole bucket: a bucket that began before `from` may hold older outcomes
    let aligned = bucket_start(from);
    let first = if aligned < from {
        aligned.plus(DurationMs::from_millis(BUCKET_MS))
    } else {
        aligned
    };
    sum_buckets(
        connection,
        first,
        now,
        |bucket| keys.rollout_outcomes(rollout_id, bucket),
        [
            Side::Candidate.field("ok"),
            Side::Candidate.field("err"),
            Side::Baseline.field("ok"),
            Side::Baseline.field("err"),
        ],
    )
    .await
}

/// The sides a flag's kill switch compares, and their counts over a window.
#[derive(Clone, Debug, PartialEq)]
pub struct FlagSides {
    /// The baseline side's variation.
    pub baseline: String,
    /// The candidate side's variations, summed together.
    pub candidates: Vec<String>,
    /// The active rollout whose sides these are.
    pub rollout_id: Option<String>,
    /// Their successes and errors.
    pub counts: OutcomeCounts,
}

/// Which sides a kill switch compares (SPEC §6): with a running or paused rollout its
/// baseline against its candidate, exactly as the rollout's own guard would; otherwise the
/// flag's off variation against every other variation together (the change a kill switch
/// protects against is "the flag being on").
pub fn kill_switch_sides(
    record: &FlagRecord,
    rollout: Option<&RolloutRecord>,
) -> (String, Vec<String>, Option<String>) {
    if let Some(rollout) = rollout.filter(|rollout| {
        matches!(
            rollout.state.lifecycle,
            Lifecycle::Running | Lifecycle::Paused
        )
    }) {
        return (
            rollout.plan.baseline.clone(),
            vec![rollout.plan.candidate.clone()],
            Some(rollout.id.clone()),
        );
    }
    let off = record.flag.off_variation.clone();
    let others = record
        .flag
        .variations
        .iter()
        .map(|variation| variation.id.clone())
        .filter(|id| *id != off)
        .collect();
    (off, others, None)
}

/// The flag-level counters a kill switch judges, over `(now - window, now]`, side by side
/// as [`kill_switch_sides`] picks them.
pub async fn load_flag_sides<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    record: &FlagRecord,
    rollout: Option<&RolloutRecord>,
    window: DurationMs,
    now: Timestamp,
) -> Result<FlagSides, StoreError> {
    let (baseline, candidates, rollout_id) = kill_switch_sides(record, rollout);
    let mut counts = OutcomeCounts::default();
    for (position, candidate) in candidates.iter().enumerate() {
        let side = load_outcome_counts(
            connection,
            keys,
            &record.flag.key,
            &baseline,
            candidate,
            window,
            now,
        )
        .await?;
        if position == 0 {
            counts.baseline = side.baseline;
        }
        counts.candidate.success += side.candidate.success;
        counts.candidate.error += side.candidate.error;
    }
    Ok(FlagSides {
        baseline,
        candidates,
        rollout_id,
        counts,
    })
}

/// Sums a flag's counters of `candidate` and `baseline` over the buckets covering
/// `(now - window, now]` (what kill switches judge).
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
    sum_buckets(
        connection,
        first,
        now,
        |bucket| keys.outcomes(flag, bucket),
        [
            format!("{candidate}:ok"),
            format!("{candidate}:err"),
            format!("{baseline}:ok"),
            format!("{baseline}:err"),
        ],
    )
    .await
}

/// Sums the candidate ok/err and baseline ok/err `fields` of every bucket from `first` to
/// `now`, in one pipelined round trip.
async fn sum_buckets<C: ConnectionLike + Send>(
    connection: &mut C,
    first: Timestamp,
    now: Timestamp,
    key_of: impl Fn(Timestamp) -> String,
    fields: [String; 4],
) -> Result<OutcomeCounts, StoreError> {
    let mut pipe = redis::pipe();
    let mut bucket = first;
    let mut buckets = 0;
    while bucket <= now {
        pipe.cmd("HMGET").arg(key_of(bucket)).arg(&fields[..]);
        bucket = bucket.plus(DurationMs::from_millis(BUCKET_MS));
        buckets += 1;
    }
    let mut counts = OutcomeCounts {
        candidate: SideCounts::default(),
        baseline: SideCounts::default(),
    };
    if buckets == 0 {
        return Ok(counts);
    }
    let rows: Vec<BucketRow> = pipe.query_async(connection).await?;
    for (candidate_ok, candidate_err, baseline_ok, baseline_err) in rows {
        counts.candidate.success += candidate_ok.unwrap_or(0);
        counts.candidate.error += candidate_err.unwrap_or(0);
        counts.baseline.success += baseline_ok.unwrap_or(0);
        counts.baseline.error += baseline_err.unwrap_or(0);
    }
    Ok(counts)
}
