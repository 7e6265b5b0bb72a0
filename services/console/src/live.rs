//! Live updates: one NATS subscription to `rollout.events.>` (every accepted command and
//! every ticker transition) and two to `rollout.fleet.*.register` and
//! `rollout.fleet.*.report` (agents joining and reporting, which move stage counts), turned into small [`LiveEvent`]s on a broadcast
//! channel that every open page's server-sent-event stream reads.
//!
//! Change events are passed on at once. Fleet traffic is coalesced: at most one `fleet`
//! event per namespace and flag every [`FLEET_COALESCE`], sent after the window so the
//! evaluator has recorded the reports the page will read back. A page refetches what it
//! shows when an event concerns it; nothing else travels, so a page never shows state it
//! did not read from the planner.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rollout_runtime::shutdown::Shutdown;
use rollout_wire::codec;
use rollout_wire::fleet::AgentReport;
use rollout_wire::subjects::{FleetVerb, Route, Subjects};
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use crate::metrics::Metrics;

/// How long fleet traffic is gathered before one `fleet` event per flag goes out.
pub const FLEET_COALESCE: Duration = Duration::from_millis(250);
/// Events a slow page may fall behind by before it is told to reload what it shows.
const CHANNEL_CAPACITY: usize = 1024;

/// One thing that happened, as a page learns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LiveEvent {
    /// `rollout_step`, `rollout_paused`, … (the change event's kind), or `fleet`.
    pub kind: String,
    pub namespace: String,
    /// Flag key; absent for fleet traffic that names none (a registration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// Who did it (an operator, `ticker`), for change events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// When it happened (RFC 3339), for change events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// The broadcast side of the feed: pages subscribe to it.
#[derive(Clone, Debug)]
pub struct Feed {
    sender: broadcast::Sender<LiveEvent>,
}

impl Default for Feed {
    fn default() -> Feed {
        Feed::new()
    }
}

impl Feed {
    /// A feed nobody listens to yet.
    pub fn new() -> Feed {
        let (sender, _) = broadcast::channel(CHANNEL_CAPACITY);
        Feed { sender }
    }

    /// A new listener, seeing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.sender.subscribe()
    }

    fn send(&self, event: LiveEvent) {
        // no page open: nothing to tell
        let _ = self.sender.send(event);
    }
}

/// Subscribes to the event and fleet subjects, says so on `subscribed` (or why not), and
/// feeds `feed` until `shutdown`.
pub async fn run(
    nats: async_nats::Client,
    subjects: Subjects,
    feed: Feed,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    subscribed: oneshot::Sender<Result<(), async_nats::SubscribeError>>,
) -> Result<(), async_nats::SubscribeError> {
    let subscriptions = async {
        let events = nats.subscribe(subjects.events_all()).await?;
        let registrations = nats
            .subscribe(subjects.fleet_verb_all(FleetVerb::Register))
            .await?;
        let reports = nats
            .subscribe(subjects.fleet_verb_all(FleetVerb::Report))
            .await?;
        Ok::<_, async_nats::SubscribeError>((
            events,
            futures_util::stream::select(registrations, reports),
        ))
    };
    let (mut events, mut fleet) = match subscriptions.await {
        Ok(subscriptions) => {
            let _ = subscribed.send(Ok(()));
            subscriptions
        }
        Err(error) => {
            let _ = subscribed.send(Err(error));
            return Ok(());
        }
    };
    let mut pending: BTreeSet<(String, Option<String>)> = BTreeSet::new();
    let mut flush = tokio::time::interval(FLEET_COALESCE);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            message = events.next() => {
                let Some(message) = message else { return Ok(()) };
                match rollout_sdk::decode_event(&message) {
                    Ok(event) => {
                        metrics.live_event();
                        feed.send(LiveEvent {
                            kind: serde_json::to_value(event.kind)
                                .ok()
                                .and_then(|kind| kind.as_str().map(str::to_owned))
                                .unwrap_or_default(),
                            namespace: event.namespace,
                            flag: Some(event.flag),
                            rollout_id: event.rollout_id,
                            actor: event.actor,
                            time: Some(event.time.to_rfc3339()),
                        });
                    }
                    Err(error) => tracing::debug!(%error, "ignoring an undecodable change event"),
                }
            }
            message = fleet.next() => {
                let Some(message) = message else { return Ok(()) };
                if let Some(key) = fleet_key(&subjects, &message) {
                    pending.insert(key);
                }
            }
            _ = flush.tick() => {
                for (namespace, flag) in std::mem::take(&mut pending) {
                    metrics.live_event();
                    feed.send(LiveEvent {
                        kind: "fleet".to_owned(),
                        namespace,
                        flag,
                        rollout_id: None,
                        actor: None,
                        time: None,
                    });
                }
            }
        }
    }
}

/// The namespace and flag a fleet message may have moved counts of: registrations (stage
/// membership) and reports (completed, errors); heartbeats and questions move nothing a
/// page shows at once.
fn fleet_key(
    subjects: &Subjects,
    message: &async_nats::Message,
) -> Option<(String, Option<String>)> {
    let Ok(Route::Fleet { namespace, verb }) = subjects.parse(&message.subject) else {
        return None;
    };
    match verb {
        FleetVerb::Register => Some((namespace.to_string(), None)),
        FleetVerb::Report => {
            let encoding = rollout_sdk::events::message_encoding(message);
            let report: AgentReport = codec::decode(&message.payload, encoding).ok()?;
            Some((namespace.to_string(), Some(report.flag)))
        }
        FleetVerb::Heartbeat | FleetVerb::Desired => None,
    }
}
