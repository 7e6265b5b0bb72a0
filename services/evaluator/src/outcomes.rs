//! Outcome reports on `rollout.metrics.<ns>` (SPEC §6), queue group `evaluator` so each
//! report is counted once across replicas: checked against the snapshot, tallied in memory
//! and added to the windowed counters (`rollout_store::outcomes`) one pipelined round trip
//! per namespace per flush — every `outcome_flush_interval`, or sooner once
//! `outcome_batch_max` reports wait — never one per report. A failed flush keeps its
//! tallies for the next; shutdown flushes what is left.
//!
//! Each report is counted per (flag, variation) for kill switches and, when it belongs to
//! the rollout the snapshot holds as the flag's active one at receipt, per (rollout, side)
//! for that rollout's guard (SPEC §11.1: a guard judges its own rollout). It belongs when
//! its variation is the rollout's candidate or baseline and it names no other rollout (a
//! report may carry the `rollout_id` of the evaluation it reports on). Reports naming a
//! flag the namespace does not have, or a variation the flag does not have, are dropped
//! and counted in `rollout_evaluator_outcomes_total`, so no client can grow the counters
//! beyond the flags and variations operators created.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rollout_runtime::shutdown::Shutdown;
use rollout_store::outcomes::{add_tallies, Side, Tallies, Tally};
use rollout_store::Keys;
use rollout_wire::outcomes::{decode_outcomes, Outcome, OutcomeReport};
use rollout_wire::subjects::{Namespace, Route};

use crate::metrics::OutcomeResult;
use crate::snapshot::LiveFlag;
use crate::Shared;
use rollout_runtime::serve::request_encoding;

/// One checked report and where it counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    /// Flag key.
    pub flag: String,
    /// A variation the flag has.
    pub variation: String,
    /// The active rollout and the side the variation is on, when the report belongs to it.
    pub rollout: Option<(String, Side)>,
    /// Success or error.
    pub outcome: Outcome,
}

/// Where `report` counts given the served `flag`, and what became of it: nothing for a
/// variation the flag does not have; the flag alone for a report naming a rollout other
/// than the active one, or on neither of its sides; else the flag and the active rollout.
pub fn attribute(flag: &LiveFlag, report: &OutcomeReport) -> (Option<Counted>, OutcomeResult) {
    if !flag.compiled().has_variation(&report.variation) {
        return (None, OutcomeResult::UnknownVariation);
    }
    let mut result = OutcomeResult::Accepted;
    let rollout = flag.rollout().and_then(|view| {
        if report
            .rollout_id
            .as_deref()
            .is_some_and(|named| named != view.rollout_id)
        {
            result = OutcomeResult::OtherRollout;
            return None;
        }
        let side = if report.variation == view.candidate {
            Side::Candidate
        } else if report.variation == view.baseline {
            Side::Baseline
        } else {
            return None;
        };
        Some((view.rollout_id.clone(), side))
    });
    let counted = Counted {
        flag: report.flag.clone(),
        variation: report.variation.clone(),
        rollout,
        outcome: report.outcome,
    };
    (Some(counted), result)
}

/// Outcomes received and not yet written, per namespace.
#[derive(Debug, Default)]
pub struct Aggregator {
    pending: BTreeMap<String, Tallies>,
    reports: usize,
}

impl Aggregator {
    /// Adds checked reports of `namespace`.
    pub fn add(&mut self, namespace: &str, reports: &[Counted]) {
        let tallies = self.pending.entry(namespace.to_owned()).or_default();
        for report in reports {
            let one = match report.outcome {
                Outcome::Success => Tally {
                    success: 1,
                    error: 0,
                },
                Outcome::Error => Tally {
                    success: 0,
                    error: 1,
                },
            };
            tallies
                .flags
                .entry((report.flag.clone(), report.variation.clone()))
                .or_default()
                .add(one);
            if let Some(rollout) = &report.rollout {
                tallies
                    .rollouts
                    .entry(rollout.clone())
                    .or_default()
                    .add(one);
            }
        }
        self.reports += reports.len();
    }

    /// Reports waiting.
    pub fn pending_reports(&self) -> usize {
        self.reports
    }

    /// Takes everything waiting.
    pub fn take(&mut self) -> BTreeMap<String, Tallies> {
        self.reports = 0;
        std::mem::take(&mut self.pending)
    }

    /// Puts back tallies a flush could not write.
    pub fn restore(&mut self, namespace: String, tallies: Tallies) {
        self.reports += tallies.flags.len() + tallies.rollouts.len();
        self.pending.entry(namespace).or_default().merge(tallies);
    }
}

/// Checks one `rollout.metrics.<ns>` message and adds its reports; reports that break a
/// cap, or name a flag or variation the namespace does not have, are dropped and counted.
pub fn accept(shared: &Shared, aggregator: &mut Aggregator, message: &async_nats::Message) {
    let Ok(Route::Metrics { namespace }) = shared.io.subjects.parse(message.subject.as_str())
    else {
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
    let known = shared.served.snapshot.namespace(namespace.as_str());
    let mut accepted = Vec::with_capacity(reports.len());
    for report in reports {
        if report.validate().is_err() {
            shared.metrics.add_outcomes(OutcomeResult::Invalid, 1);
            continue;
        }
        let attributed = known
            .as_deref()
            .and_then(|snapshot| snapshot.with_flag(&report.flag, |flag| attribute(flag, &report)));
        let Some((counted, result)) = attributed else {
            shared.metrics.add_outcomes(OutcomeResult::UnknownFlag, 1);
            continue;
        };
        shared.metrics.add_outcomes(result, 1);
        accepted.extend(counted);
    }
    aggregator.add(namespace.as_str(), &accepted);
}

/// Writes everything waiting: one pipelined round trip per namespace. What fails is kept.
pub async fn flush(shared: &Shared, aggregator: &mut Aggregator) {
    if aggregator.pending_reports() == 0 {
        return;
    }
    let now = shared.io.clock.now();
    for (name, tallies) in aggregator.take() {
        let Ok(namespace) = Namespace::new(name.as_str()) else {
            continue;
        };
        let keys = Keys::new(&namespace);
        let mut connection = shared.io.redis.clone();
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

    fn counted(flag: &str, variation: &str, rollout: Option<Side>, outcome: Outcome) -> Counted {
        Counted {
            flag: flag.into(),
            variation: variation.into(),
            rollout: rollout.map(|side| ("r-1".to_owned(), side)),
            outcome,
        }
    }

    #[test]
    fn tallies_by_flag_and_by_rollout_side_and_restores_failed_flushes() {
        let mut aggregator = Aggregator::default();
        aggregator.add(
            "prod",
            &[
                counted("f", "on", Some(Side::Candidate), Outcome::Success),
                counted("f", "on", Some(Side::Candidate), Outcome::Error),
                counted("f", "off", None, Outcome::Success),
            ],
        );
        aggregator.add("dev", &[counted("g", "on", None, Outcome::Error)]);
        assert_eq!(aggregator.pending_reports(), 4);
        let mut taken = aggregator.take();
        assert_eq!(aggregator.pending_reports(), 0);
        let prod = taken.remove("prod").expect("prod");
        let both = Tally {
            success: 1,
            error: 1,
        };
        assert_eq!(prod.flags[&("f".to_owned(), "on".to_owned())], both);
        assert_eq!(prod.rollouts[&("r-1".to_owned(), Side::Candidate)], both);
        assert_eq!(prod.rollouts.len(), 1, "off was not the rollout's");
        aggregator.add(
            "prod",
            &[counted("f", "on", Some(Side::Candidate), Outcome::Success)],
        );
        aggregator.restore("prod".into(), prod);
        let again = aggregator.take().remove("prod").expect("prod");
        let three = Tally {
            success: 2,
            error: 1,
        };
        assert_eq!(again.flags[&("f".to_owned(), "on".to_owned())], three);
        assert_eq!(again.rollouts[&("r-1".to_owned(), Side::Candidate)], three);
    }
}
