//! What a ticker has done, readable while it runs: counters (transitions, fence
//! rejections, conflicts, leadership terms) and a histogram of firing lag. Tests and the
//! benchmark hold a [`TickerStats`] handle; the service logs a summary when it stops.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    epoch: AtomicU64,
    leader: AtomicBool,
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
    /// Leadership terms won.
    pub terms: u64,
    /// Flags disabled by their kill switch.
    pub kill_switch_trips: u64,
    /// Epoch of the current (or last) term; 0 before the first.
    pub epoch: u64,
    /// Whether this ticker leads right now.
    pub leader: bool,
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
                leader: AtomicBool::new(false),
                lag_ms: Mutex::new(histogram),
            }),
        }
    }

    /// Copies every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let counters = &self.counters;
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
            leader: counters.leader.load(Ordering::Relaxed),
            lag_p50_ms: quantile(0.5),
            lag_p99_ms: quantile(0.99),
            lag_max_ms: histogram.as_ref().map_or(0, Histogram::max),
            lag_samples: histogram.as_ref().map_or(0, Histogram::len),
        }
    }

    /// Whether this ticker leads right now.
    pub fn is_leader(&self) -> bool {
        self.counters.leader.load(Ordering::Relaxed)
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

    pub(crate) fn term_started(&self, epoch: u64) {
        self.counters.terms.fetch_add(1, Ordering::Relaxed);
        self.counters.epoch.store(epoch, Ordering::Relaxed);
        self.counters.leader.store(true, Ordering::Relaxed);
    }

    pub(crate) fn term_ended(&self) {
        self.counters.leader.store(false, Ordering::Relaxed);
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
        stats.term_started(7);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.transitions, 101);
        assert_eq!(snapshot.skipped_steps, 3);
        assert_eq!(snapshot.fenced, 1);
        assert_eq!(snapshot.epoch, 7);
        assert!(snapshot.leader);
        assert_eq!(snapshot.lag_samples, 101);
        assert_eq!(snapshot.lag_p50_ms, 50);
        assert_eq!(snapshot.lag_max_ms, 100);
        stats.term_ended();
        assert!(!stats.is_leader());
    }
}
