//! Load generators over NATS request-reply: a closed loop (a fixed number of requests in
//! flight, each sent as soon as the previous one is answered) for the maximum rate, and a
//! paced open loop (requests at a fixed rate, latency measured from when each was due, so
//! a stalled responder shows) for latency at a given load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::Subject;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::latency::{Latency, LatencySummary};
use crate::progress;

/// What one run measured.
#[derive(Debug)]
pub struct Measurement {
    /// Answered requests that passed the check, in the measured window.
    pub requests: u64,
    /// Failed requests, or replies that did not pass the check.
    pub errors: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Latencies.
    pub latency: Latency,
}

/// A [`Measurement`] as reported.
#[derive(Clone, Debug, Serialize)]
pub struct MeasurementSummary {
    /// Answered requests per second.
    pub rate: f64,
    /// Answered requests.
    pub requests: u64,
    /// Failures.
    pub errors: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Latency percentiles.
    pub latency: LatencySummary,
}

impl Measurement {
    pub(crate) fn empty(elapsed: Duration) -> anyhow::Result<Measurement> {
        Ok(Measurement {
            requests: 0,
            errors: 0,
            elapsed,
            latency: Latency::new()?,
        })
    }

    pub(crate) fn absorb(&mut self, other: &Measurement) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
    }

    /// Answered requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The reported form.
    pub fn summary(&self) -> MeasurementSummary {
        MeasurementSummary {
            rate: self.rate(),
            requests: self.requests,
            errors: self.errors,
            seconds: self.elapsed.as_secs_f64(),
            latency: self.latency.summary(),
        }
    }
}

/// Requests to send: the subject and a rotating set of bodies, with the check a reply
/// must pass.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Subject of every request.
    pub subject: Subject,
    /// Bodies, used in turn.
    pub payloads: Arc<Vec<bytes::Bytes>>,
    /// Whether a reply is a success.
    pub check: fn(&[u8]) -> bool,
}

/// Accepts any reply.
pub fn any_reply(_: &[u8]) -> bool {
    true
}

/// `in_flight` requests at all times over `clients` for `warmup + duration`; only the last
/// `duration` is measured.
pub async fn closed_loop(
    label: &str,
    clients: &[async_nats::Client],
    workload: &Workload,
    in_flight: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    anyhow::ensure!(!clients.is_empty(), "no client connections");
    anyhow::ensure!(!workload.payloads.is_empty(), "no request bodies");
    let _progress = progress::Timed::start(label, warmup + duration);
    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let mut workers = JoinSet::new();
    for worker in 0..in_flight {
        let client = clients[worker % clients.len()].clone();
        let workload = workload.clone();
        workers.spawn(async move {
            let mut part = Measurement::empty(duration)?;
            let mut turn = worker;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let payload = workload.payloads[turn % workload.payloads.len()].clone();
                turn += in_flight;
                let reply = client.request(workload.subject.clone(), payload).await;
                if sent < measure_from {
                    continue;
                }
                match reply {
                    Ok(reply) if (workload.check)(&reply.payload) => {
                        part.requests += 1;
                        part.latency.record(sent.elapsed());
                    }
                    _ => part.errors += 1,
                }
            }
            Ok::<_, anyhow::Error>(part)
        });
    }
    let mut total = Measurement::empty(duration)?;
    while let Some(part) = workers.join_next().await {
        total.absorb(&part.context("load worker")??);
    }
    Ok(total)
}

/// Requests at `rate` per second in all for `duration` (after `warmup` at the same rate),
/// spread evenly over `clients`, each timed from when it was due.
pub async fn paced(
    label: &str,
    clients: &[async_nats::Client],
    workload: &Workload,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    anyhow::ensure!(!clients.is_empty(), "no client connections");
    anyhow::ensure!(!workload.payloads.is_empty(), "no request bodies");
    anyhow::ensure!(rate > 0.0 && rate.is_finite(), "the rate must be positive");
    let _progress = progress::Timed::start(label, warmup + duration);
    let share = rate / clients.len() as f64;
    let mut drivers = JoinSet::new();
    for (index, client) in clients.iter().enumerate() {
        let client = client.clone();
        let workload = workload.clone();
        drivers.spawn(async move {
            paced_one(&client, &workload, share, index, warmup, duration).await
        });
    }
    let mut total = Measurement::empty(duration)?;
    while let Some(part) = drivers.join_next().await {
        total.absorb(&part.context("paced driver")??);
    }
    Ok(total)
}

/// Longest a paced run waits for its last replies after the sending ends.
const PACED_DRAIN: Duration = Duration::from_secs(10);

async fn paced_one(
    client: &async_nats::Client,
    workload: &Workload,
    rate: f64,
    offset: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + duration;
    let give_up = end + PACED_DRAIN;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let per_tick = rate / 1000.0;
    let step = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut owed = 0.0;
    let mut sent_total = offset;
    let mut pending = FuturesUnordered::new();
    let mut result = Measurement::empty(duration)?;
    let mut due = started;
    loop {
        if due >= end && pending.is_empty() {
            break;
        }
        tokio::select! {
            _ = ticker.tick(), if due < end => {
                owed += per_tick;
                while owed >= 1.0 {
                    owed -= 1.0;
                    let payload = workload.payloads[sent_total % workload.payloads.len()].clone();
                    sent_total += 1;
                    // due times are spread over the tick; a request is never timed from
                    // before it was sent
                    let scheduled = due.max(Instant::now());
                    due += step;
                    let client = client.clone();
                    let subject = workload.subject.clone();
                    pending.push(async move {
                        let reply = client.request(subject, payload).await;
                        (scheduled, reply)
                    });
                }
            }
            Some((scheduled, reply)) = pending.next(), if !pending.is_empty() => {
                if scheduled < measure_from {
                    continue;
                }
                match reply {
                    Ok(reply) if (workload.check)(&reply.payload) => {
                        result.requests += 1;
                        result.latency.record(scheduled.elapsed());
                    }
                    _ => result.errors += 1,
                }
            }
            () = tokio::time::sleep_until(give_up.into()) => {
                result.errors += pending.len() as u64;
                break;
            }
        }
    }
    Ok(result)
}
