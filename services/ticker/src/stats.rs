//! What a ticker has done, readable while it runs: the shards it leads, counters
//! (transitions, fence rejections, conflicts, shard leases won) and a histogram of firing
//! lag. Tests and the
//! benchmark hold a [`TickerStats`] handle; the service logs a summary when it stops.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hdrhistogram::Histogram;

/// Lag values above this (one day, in ms) are recorded as this.
const MAX_LAG_MS: u64 = 86_400_000;

#[derive(Debug)]
struct Counters {
    transitions: AtomicU64,
    skipped_steps: AtomicU64,
    fenced: AtomicU64,
    conflicts: AtomicU64,
    early: AtomicU64,
    errors: AtomicU64,
    terms: AtomicU64,
    kill_switch_trips: AtomicU64,
    /// The highest epoch of a shard lease ever held.
    epoch: AtomicU64,
    /// The shards led now, with the epoch of their lease.
    shards: Mutex<BTreeMap<u32, u64>>,
    /// `None` only if the histogram could not be built (its bounds are constants).
    lag_ms: Mutex<Option<Histogram<u64>>>,
}

/// A cheap-to-clone handle on one ticker's counters.
#[derive(Clone, Debug)]
pub struct TickerStats {
    counters: Arc<Counters>,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Committed rollout transitions (each may hold several effects).
    pub transitions: u64,
    /// Steps passed over by catch-up inside those transitions.
    pub skipped_steps: u64,
    /// Writes refused by a namespace fence: we were no longer the leader.
    pub fenced: u64,
    /// Commits refused because another writer changed the flag or rollout first.
    pub conflicts: u64,
    /// Commits refused because Redis time was still before the due time.
    pub early: u64,
    /// Rounds or rollouts that failed on an error (retried later).
    pub errors: u64,
    /// Shard leases won (each a term of its own).
    pub terms: u64,
    /// Flags disabled by their kill switch.
    pub kill_switch_trips: u64,
    /// The highest epoch of a shard lease held so far; 0 before the first.
    pub epoch: u64,
    /// Whether this ticker leads any shard right now.
    pub leader: bool,
    /// The shards it leads now, each with the epoch of its lease.
    pub shards: BTreeMap<u32, u64>,
    /// Firing lag percentiles in ms (commit time minus due time): p50, p99, max.
    pub lag_p50_ms: u64,
    /// See `lag_p50_ms`.
    pub lag_p99_ms: u64,
    /// See `lag_p50_ms`.
    pub lag_max_ms: u64,
    /// Number of lag samples.
    pub lag_samples: u64,
}

impl Default for TickerStats {
    fn default() -> TickerStats {
        TickerStats::new()
    }
}

impl TickerStats {
    /// Zeroed counters.
    pub fn new() -> TickerStats {
        let histogram = Histogram::new_with_bounds(1, MAX_LAG_MS, 3).ok();
        TickerStats {
            counters: Arc::new(Counters {
                transitions: AtomicU64::new(0),
                skipped_steps: AtomicU64::new(0),
                fenced: AtomicU64::new(0),
                conflicts: AtomicU64::new(0),
                early: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                terms: AtomicU64::new(0),
                kill_switch_trips: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
                shards: Mutex::new(BTreeMap::new()),
                lag_ms: Mutex::new(histogram),
            }),
        }
    }

    /// Copies every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let counters = &self.counters;
        let shards = counters
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let histogram = counters
            .lag_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let quantile = |quantile: f64| {
            histogram
                .as_ref()
                .map_or(0, |histogram| histogram.value_at_quantile(quantile))
        };
        StatsSnapshot {
            transitions: counters.transitions.load(Ordering::Relaxed),
            skipped_steps: counters.skipped_steps.load(Ordering::Relaxed),
            fenced: counters.fenced.load(Ordering::Relaxed),
            conflicts: counters.conflicts.load(Ordering::Relaxed),
            early: counters.early.load(Ordering::Relaxed),
            errors: counters.errors.load(Ordering::Relaxed),
            terms: counters.terms.load(Ordering::Relaxed),
            kill_switch_trips: counters.kill_switch_trips.load(Ordering::Relaxed),
            epoch: counters.epoch.load(Ordering::Relaxed),
            leader: !shards.is_empty(),
            shards,
            lag_p50_ms: quantile(0.5),
            lag_p99_ms: quantile(0.99),
            lag_max_ms: histogram.as_ref().map_or(0, Histogram::max),
            lag_samples: histogram.as_ref().map_or(0, Histogram::len),
        }
    }

    /// Whether this ticker leads any shard right now.
    pub fn is_leader(&self) -> bool {
        !self.led_shards().is_empty()
    }

    /// The shards this ticker leads now, with the epoch of their lease.
    pub fn led_shards(&self) -> BTreeMap<u32, u64> {
        self.counters
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Writes refused by a fence so far.
    pub fn fenced(&self) -> u64 {
        self.counters.fenced.load(Ordering::Relaxed)
    }

    /// Committed transitions so far.
    pub fn transitions(&self) -> u64 {
        self.counters.transitions.load(Ordering::Relaxed)
    }

    /// Forgets the lag samples (the benchmark resets between phases).
    pub fn reset_lag(&self) {
        if let Some(histogram) = self
            .counters
            .lag_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            histogram.reset();
        }
    }

    pub(crate) fn transition(&self, skipped: usize, lag_ms: i64) {
        self.counters.transitions.fetch_add(1, Ordering::Relaxed);
        self.counters
            .skipped_steps
            .fetch_add(u64::try_from(skipped).unwrap_or(0), Ordering::Relaxed);
        let lag = u64::try_from(lag_ms).unwrap_or(0).clamp(1, MAX_LAG_MS);
        if let Some(histogram) = self
            .counters
            .lag_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            // a value within the bounds is always recordable
            let _ = histogram.record(lag);
        }
    }

    pub(crate) fn fenced_write(&self) {
        self.counters.fenced.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn conflict(&self) {
        self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn early(&self) {
        self.counters.early.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn kill_switch_trip(&self) {
        self.counters
            .kill_switch_trips
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The shards led now are `shards`, `acquired` of them just won.
    pub(crate) fn leading(&self, shards: &BTreeMap<u32, u64>, acquired: usize) {
        self.counters
            .terms
            .fetch_add(acquired as u64, Ordering::Relaxed);
        if let Some(highest) = shards.values().max() {
            self.counters.epoch.fetch_max(*highest, Ordering::Relaxed);
        }
        *self
            .counters
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = shards.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_lag_percentiles_add_up() {
        let stats = TickerStats::new();
        for lag in 1..=100 {
            stats.transition(0, lag);
        }
        stats.transition(3, -5);
        stats.fenced_write();
        stats.leading(&BTreeMap::from([(3, 7), (9, 5)]), 2);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.transitions, 101);
        assert_eq!(snapshot.skipped_steps, 3);
        assert_eq!(snapshot.fenced, 1);
        assert_eq!(snapshot.epoch, 7);
        assert_eq!(snapshot.terms, 2);
        assert!(snapshot.leader);
        assert_eq!(snapshot.shards, BTreeMap::from([(3, 7), (9, 5)]));
        assert_eq!(snapshot.lag_samples, 101);
        assert_eq!(snapshot.lag_p50_ms, 50);
        assert_eq!(snapshot.lag_max_ms, 100);
        stats.leading(&BTreeMap::new(), 0);
        assert!(!stats.is_leader());
        assert_eq!(
            stats.snapshot().epoch,
            7,
            "the last epoch held stays readable"
        );
    }
}
