//! The planner's probe endpoints (`http.listen`): ready while NATS is connected and Redis
//! answers; metrics of commands and queries by verb and outcome (`ok` or the error code,
//! `conflict` among them), webhook deliveries by result, outbox sweeps and depth, and how far the durable command stream's consumer
//! is behind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rollout_runtime::probes::{nats_readiness, Dependency, Probe, PromText};

/// Counters shared by every request of one planner.
#[derive(Debug, Default)]
pub struct PlannerMetrics {
    /// (`command` or `query`, verb, outcome) → count.
    requests: Mutex<BTreeMap<(&'static str, String, &'static str), u64>>,
    relayed: AtomicU64,
    outbox_depth: AtomicU64,
    stream_pending: AtomicU64,
    /// Webhook delivery attempts by result (`delivered`, `failed`, `given_up`).
    webhooks: Mutex<BTreeMap<&'static str, u64>>,
}

impl PlannerMetrics {
    /// One request of `family` (`command`, `queued_command`, `query`) for `verb`, answered
    /// with `outcome` (`ok` or an error code).
    pub fn request(&self, family: &'static str, verb: &str, outcome: &'static str) {
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        *requests
            .entry((family, verb.to_owned(), outcome))
            .or_default() += 1;
    }

    /// Events an outbox sweep published that their committer had not.
    pub fn relayed(&self, count: u64) {
        self.relayed.fetch_add(count, Ordering::Relaxed);
    }

    /// Events waiting unpublished in the outboxes after the last sweep.
    pub fn outbox_depth(&self, depth: u64) {
        self.outbox_depth.store(depth, Ordering::Relaxed);
    }

    /// Messages of the command stream not yet delivered to or acknowledged by the planners.
    pub fn stream_pending(&self, count: u64) {
        self.stream_pending.store(count, Ordering::Relaxed);
    }

    /// One webhook delivery attempt ended with `result`: `delivered`, `failed` (retried
    /// later) or `given_up` (the last attempt failed).
    pub fn webhook(&self, result: &'static str) {
        *self
            .webhooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(result)
            .or_default() += 1;
    }

    fn render(&self, text: &mut PromText) {
        text.describe(
            "planner_requests_total",
            "counter",
            "Commands and queries answered, by family, verb and outcome (ok or the error code).",
        );
        for ((family, verb, outcome), count) in self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            text.sample(
                "planner_requests_total",
                &[("family", family), ("verb", verb), ("outcome", outcome)],
                count,
            );
        }
        text.describe(
            "planner_webhook_deliveries_total",
            "counter",
            "Webhook delivery attempts by result: delivered, failed (retried later), given_up.",
        );
        for (result, count) in self
            .webhooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            text.sample(
                "planner_webhook_deliveries_total",
                &[("result", result)],
                count,
            );
        }
        text.single(
            "planner_outbox_relayed_total",
            "counter",
            "Events the outbox sweep published because their committer had not.",
            self.relayed.load(Ordering::Relaxed),
        );
        text.single(
            "planner_outbox_depth",
            "gauge",
            "Events waiting unpublished in the outboxes after the last sweep.",
            self.outbox_depth.load(Ordering::Relaxed),
        );
        text.single(
            "planner_command_stream_pending",
            "gauge",
            "Messages of the durable command stream not yet handled (the consumer's lag).",
            self.stream_pending.load(Ordering::Relaxed),
        );
    }
}

/// What the planner's probe endpoints answer.
#[derive(Debug)]
pub struct PlannerProbe {
    /// The planner's NATS connection.
    pub nats: async_nats::Client,
    /// Whether Redis answers.
    pub redis: Dependency,
    /// The counters.
    pub metrics: Arc<PlannerMetrics>,
}

impl Probe for PlannerProbe {
    fn readiness(&self) -> Result<(), String> {
        nats_readiness(&self.nats)?;
        self.redis.readiness()
    }

    fn metrics(&self) -> String {
        let mut text = PromText::new();
        text.single(
            "planner_ready",
            "gauge",
            "1 when NATS is connected and Redis answers.",
            u8::from(self.readiness().is_ok()),
        );
        self.metrics.render(&mut text);
        text.finish()
    }
}
