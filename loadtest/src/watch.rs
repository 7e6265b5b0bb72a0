//! Watching committed transitions as a user sees them: every `rollout_step` change event
//! of a namespace, with the wall-clock time it arrived here. On this machine (loadtest is
//! loopback-only) the wall clock is the clock Redis `TIME` reads, so arrival minus a due
//! time computed from Redis time is the firing lag as observed — commit, publish and
//! delivery included.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_util::StreamExt;
use rollout_core::Timestamp;
use rollout_wire::codec::{self, Encoding};
use rollout_wire::events::EventKind;
use rollout_wire::subjects::{Namespace, Subjects};
use serde::Deserialize;

/// One step transition seen.
#[derive(Clone, Debug)]
pub struct StepSeen {
    /// The rollout.
    pub rollout_id: String,
    /// The transition's time (Redis time the leader decided at).
    pub time: Timestamp,
    /// Step entered.
    pub to_step: Option<usize>,
    /// When the event arrived here, in microseconds since the Unix epoch.
    pub arrived_micros: i64,
}

/// The fields of a change event the watcher reads (the rest, snapshot included, is
/// skipped while decoding).
#[derive(Deserialize)]
struct EventHead {
    kind: EventKind,
    #[serde(default)]
    rollout_id: Option<String>,
    time: Timestamp,
    #[serde(default)]
    to_step: Option<usize>,
}

/// Microseconds since the Unix epoch, now.
pub fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        })
}

/// Collects the step transitions of one namespace (or all) until dropped.
#[derive(Debug)]
pub struct StepWatcher {
    seen: Arc<Mutex<Vec<StepSeen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StepWatcher {
    /// Subscribes to `namespace`'s events (the subscription is live when this returns).
    pub async fn start(
        nats: &async_nats::Client,
        subjects: &Subjects,
        namespace: &Namespace,
    ) -> anyhow::Result<StepWatcher> {
        StepWatcher::start_on(nats, subjects.events_namespace(namespace)).await
    }

    /// Subscribes to every namespace's events.
    pub async fn start_all(
        nats: &async_nats::Client,
        subjects: &Subjects,
    ) -> anyhow::Result<StepWatcher> {
        StepWatcher::start_on(nats, subjects.events_all()).await
    }

    async fn start_on(nats: &async_nats::Client, subject: String) -> anyhow::Result<StepWatcher> {
        let mut subscriber = nats
            .subscribe(subject)
            .await
            .context("subscribing to change events")?;
        nats.flush().await.context("flushing the subscription")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let arrived_micros = unix_micros();
                let Ok(head) = codec::decode::<EventHead>(&message.payload, Encoding::MessagePack)
                else {
                    continue;
                };
                if head.kind != EventKind::RolloutStep {
                    continue;
                }
                let Some(rollout_id) = head.rollout_id else {
                    continue;
                };
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(StepSeen {
                        rollout_id,
                        time: head.time,
                        to_step: head.to_step,
                        arrived_micros,
                    });
            }
        });
        Ok(StepWatcher { seen, task })
    }

    /// Transitions seen so far.
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether none was seen yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every transition seen so far.
    pub fn take(&self) -> Vec<StepSeen> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A copy of the transitions seen from index `from` on.
    pub fn since(&self, from: usize) -> Vec<StepSeen> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(from..)
            .map(<[StepSeen]>::to_vec)
            .unwrap_or_default()
    }
}

impl Drop for StepWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
