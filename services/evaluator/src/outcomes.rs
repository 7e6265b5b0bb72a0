//! Outcome reports on `rollout.metrics.<ns>` (SPEC §6), queue group `evaluator` so each
//! report is counted once across replicas: tallied in memory per (flag, variation) and
//! added to the windowed counters the ticker's guards read (`rollout_store::outcomes`),
//! one pipelined round trip per namespace per flush — every `outcome_flush_interval`, or
//! sooner once `outcome_batch_max` reports wait — never one per report. A failed flush
//! keeps its tallies for the next; shutdown flushes what is left.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rollout_runtime::shutdown::Shutdown;
use rollout_store::outcomes::{add_tallies, Tally};
use rollout_wire::keys::Keys;
use rollout_wire::outcomes::{decode_outcomes, Outcome, OutcomeReport};
use rollout_wire::subjects::{Namespace, Route};

use crate::metrics::OutcomeResult;
use crate::transport::request_encoding;
use crate::Shared;

/// Tallies per namespace, keyed by (flag, variation).
pub type Tallies = BTreeMap<String, HashMap<(String, String), Tally>>;

/// Outcomes received and not yet written.
#[derive(Debug, Default)]
pub struct Aggregator {
    pending: Tallies,
    reports: usize,
}

impl Aggregator {
    /// Adds checked reports of `namespace`.
    pub fn add(&mut self, namespace: &str, reports: &[OutcomeReport]) {
        let tallies = self.pending.entry(namespace.to_owned()).or_default();
        for report in reports {
            let tally = tallies
                .entry((report.flag.clone(), report.variation.clone()))
                .or_default();
            match report.outcome {
                Outcome::Success => tally.success += 1,
                Outcome::Error => tally.error += 1,
            }
        }
        self.reports += reports.len();
    }

    /// Reports waiting.
    pub fn pending_reports(&self) -> usize {
        self.reports
    }

    /// Takes everything waiting.
    pub fn take(&mut self) -> Tallies {
        self.reports = 0;
        std::mem::take(&mut self.pending)
    }

    /// Puts back tallies a flush could not write.
    pub fn restore(&mut self, namespace: String, tallies: HashMap<(String, String), Tally>) {
        let pending = self.pending.entry(namespace).or_default();
        for (key, tally) in tallies {
            let entry = pending.entry(key).or_default();
            entry.success += tally.success;
            entry.error += tally.error;
            self.reports += 1;
        }
    }
}

/// Checks one `rollout.metrics.<ns>` message and adds its reports; reports that break a
/// cap, or name a flag the namespace does not have, are dropped and counted.
pub fn accept(shared: &Shared, aggregator: &mut Aggregator, message: &async_nats::Message) {
    let Ok(Route::Metrics { namespace }) = shared.subjects.parse(message.subject.as_str()) else {
        shared.metrics.add_outcomes(OutcomeResult::Invalid, 1);
        return;
    };
    let encoding = request_encoding(message.headers.as_ref());
    let reports = match decode_outcomes(&message.payload, encoding) {
        Ok(reports) => reports,
        Err(error) => {
            tracing::debug!(%error, namespace = %namespace, "undecodable outcome report");
            shared.metrics.add_outcomes(OutcomeResult::Invalid, 1);
            return;
        }
    };
    if reports.len() > rollout_wire::outcomes::MAX_OUTCOME_BATCH {
        shared.metrics.add_outcomes(
            OutcomeResult::Invalid,
            u64::try_from(reports.len()).unwrap_or(u64::MAX),
        );
        return;
    }
    let known = shared.snapshot.namespace(namespace.as_str());
    let mut accepted = Vec::with_capacity(reports.len());
    for report in reports {
        if report.validate().is_err() {
            shared.metrics.add_outcomes(OutcomeResult::Invalid, 1);
        } else if known
            .as_deref()
            .and_then(|snapshot| snapshot.with_flag(&report.flag, |_| ()))
            .is_none()
        {
            shared.metrics.add_outcomes(OutcomeResult::UnknownFlag, 1);
        } else {
            accepted.push(report);
        }
    }
    shared.metrics.add_outcomes(
        OutcomeResult::Accepted,
        u64::try_from(accepted.len()).unwrap_or(u64::MAX),
    );
    aggregator.add(namespace.as_str(), &accepted);
}

/// Writes everything waiting: one pipelined round trip per namespace. What fails is kept.
pub async fn flush(shared: &Shared, aggregator: &mut Aggregator) {
    if aggregator.pending_reports() == 0 {
        return;
    }
    let now = shared.clock.now();
    for (name, tallies) in aggregator.take() {
        let Ok(namespace) = Namespace::new(name.as_str()) else {
            continue;
        };
        let keys = Keys::new(&namespace);
        let mut connection = shared.redis.clone();
        match add_tallies(&mut connection, &keys, &tallies, now).await {
            Ok(()) => shared.metrics.add_outcome_flush(true),
            Err(error) => {
                tracing::warn!(%error, namespace = %name, "outcome flush failed; keeping the tallies for the next one");
                shared.metrics.add_outcome_flush(false);
                aggregator.restore(name, tallies);
            }
        }
    }
}

/// Receives outcome reports until shutdown, flushing on the interval and at the batch
/// size; on shutdown unsubscribes, counts what was already delivered, flushes.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut subscriber: async_nats::Subscriber,
    shutdown: Shutdown,
) {
    let settings = &shared.settings;
    let mut aggregator = Aggregator::default();
    let mut ticker = tokio::time::interval(settings.outcome_flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    let drain_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain_deadline);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                drain_deadline.as_mut().reset(tokio::time::Instant::now() + settings.shutdown_grace / 2);
                if subscriber.drain().await.is_err() {
                    break;
                }
            }
            () = &mut drain_deadline, if draining => break,
            message = subscriber.next() => match message {
                Some(message) => {
                    accept(&shared, &mut aggregator, &message);
                    if aggregator.pending_reports() >= settings.outcome_batch_max {
                        flush(&shared, &mut aggregator).await;
                    }
                }
                None => break,
            },
            _ = ticker.tick() => flush(&shared, &mut aggregator).await,
        }
    }
    flush(&shared, &mut aggregator).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(flag: &str, variation: &str, outcome: Outcome) -> OutcomeReport {
        OutcomeReport {
            flag: flag.into(),
            entity: "u".into(),
            variation: variation.into(),
            outcome,
            value: None,
        }
    }

    #[test]
    fn tallies_by_flag_and_variation_and_restores_failed_flushes() {
        let mut aggregator = Aggregator::default();
        aggregator.add(
            "prod",
            &[
                report("f", "on", Outcome::Success),
                report("f", "on", Outcome::Error),
                report("f", "off", Outcome::Success),
            ],
        );
        aggregator.add("dev", &[report("g", "on", Outcome::Error)]);
        assert_eq!(aggregator.pending_reports(), 4);
        let mut taken = aggregator.take();
        assert_eq!(aggregator.pending_reports(), 0);
        let prod = taken.remove("prod").expect("prod");
        assert_eq!(
            prod[&("f".to_owned(), "on".to_owned())],
            Tally {
                success: 1,
                error: 1
            }
        );
        aggregator.add("prod", &[report("f", "on", Outcome::Success)]);
        aggregator.restore("prod".into(), prod);
        let again = aggregator.take().remove("prod").expect("prod");
        assert_eq!(
            again[&("f".to_owned(), "on".to_owned())],
            Tally {
                success: 2,
                error: 1
            }
        );
    }
}
