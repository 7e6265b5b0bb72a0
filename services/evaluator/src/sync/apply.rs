//! Applying change events as they arrive, in batches under one writer lock; what cannot
//! bring a flag up to date becomes a resync request.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use rollout_runtime::shutdown::Shutdown;
use rollout_wire::events::{ChangeEvent, EventKind};
use rollout_wire::subjects::{Route, Subjects};
use tokio::sync::mpsc;

use crate::metrics::{EventResult, Metrics};
use crate::snapshot::{
    decide, EventAction, FlagState, LiveFlag, ResyncReason, Snapshot, SnapshotWriter,
};
use crate::Shared;
use rollout_runtime::serve::request_encoding;

use super::ResyncRequest;

/// Most events applied under one writer lock.
const EVENT_BATCH: usize = 1024;

/// What one change event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    /// Installed (a new state, or a deletion).
    Applied,
    /// At or below the version held.
    Ignored,
    /// The flag must be read from Redis.
    Resync(ResyncRequest),
    /// Not an event of this prefix, or undecodable without a flag to resync.
    Invalid,
}

/// Applies one received event message through `writer`: the subject (under `subjects`)
/// names the flag, the body is a [`ChangeEvent`] in the encoding its `Content-Type` says.
pub fn apply_event(
    subjects: &Subjects,
    writer: &mut SnapshotWriter<'_>,
    message: &async_nats::Message,
) -> EventOutcome {
    let Ok(Route::Events { namespace, flag }) = subjects.parse(message.subject.as_str()) else {
        tracing::warn!(subject = %message.subject, "event on an unexpected subject");
        return EventOutcome::Invalid;
    };
    let resync = |reason| {
        EventOutcome::Resync(ResyncRequest {
            namespace: namespace.to_string(),
            flag: flag.clone(),
            reason,
        })
    };
    let encoding = request_encoding(message.headers.as_ref());
    let event = match ChangeEvent::decode(&message.payload, encoding) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(%error, namespace = %namespace, flag = %flag, "undecodable change event");
            return resync(ResyncReason::Invalid);
        }
    };
    let snapshot_matches = event
        .snapshot
        .as_ref()
        .is_none_or(|snapshot| snapshot.flag.key == flag);
    if event.namespace != namespace.as_str() || event.flag != flag || !snapshot_matches {
        tracing::warn!(namespace = %namespace, flag = %flag, "change event names another flag than its subject");
        return resync(ResyncReason::Invalid);
    }
    let held = writer.held(namespace.as_str(), &flag);
    let deleted = event.kind == EventKind::FlagDeleted;
    let snapshot_version = event.snapshot.as_ref().map(|snapshot| snapshot.version);
    match decide(held, event.version, event.time, deleted, snapshot_version) {
        EventAction::Ignore => EventOutcome::Ignored,
        EventAction::Delete => {
            writer.install(
                namespace.as_str(),
                &flag,
                FlagState::Deleted {
                    version: event.version,
                },
            );
            EventOutcome::Applied
        }
        EventAction::Apply => {
            let Some(snapshot) = event.snapshot else {
                return resync(ResyncReason::NoSnapshot);
            };
            match snapshot.compile() {
                Ok(compiled) => {
                    writer.install(
                        namespace.as_str(),
                        &flag,
                        // the snapshot is the final state of the commit the event is from
                        FlagState::Live(
                            LiveFlag::new(compiled, snapshot.rollout)
                                .with_last_rollout(snapshot.last_rollout)
                                .committed_at(event.time),
                        ),
                    );
                    EventOutcome::Applied
                }
                Err(errors) => {
                    tracing::error!(%errors, namespace = %namespace, flag = %flag, "event snapshot does not compile");
                    resync(ResyncReason::Invalid)
                }
            }
        }
        EventAction::Resync(reason) => resync(reason),
    }
}

/// Applies a batch of event messages to `snapshot` under one writer lock, counting them
/// in `metrics`; returns the resyncs needed.
pub fn apply_batch(
    snapshot: &Snapshot,
    subjects: &Subjects,
    metrics: &Metrics,
    messages: &[async_nats::Message],
) -> Vec<ResyncRequest> {
    let mut requests = Vec::new();
    let mut writer = snapshot.writer();
    for message in messages {
        match apply_event(subjects, &mut writer, message) {
            EventOutcome::Applied => metrics.add_event(EventResult::Applied),
            EventOutcome::Ignored => metrics.add_event(EventResult::Ignored),
            EventOutcome::Invalid => metrics.add_event(EventResult::Invalid),
            EventOutcome::Resync(request) => {
                metrics.add_event(EventResult::Resync);
                requests.push(request);
            }
        }
    }
    requests
}

/// Applies change events from `events` until shutdown, in batches of whatever has
/// arrived, handing flags that need Redis to the resync worker.
pub(crate) async fn apply_events(
    shared: Arc<Shared>,
    mut events: async_nats::Subscriber,
    resyncs: mpsc::Sender<ResyncRequest>,
    shutdown: Shutdown,
) {
    loop {
        let first = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            message = events.next() => message,
        };
        let Some(first) = first else {
            tracing::warn!("event subscription closed");
            break;
        };
        let mut batch = vec![first];
        while batch.len() < EVENT_BATCH {
            match events.next().now_or_never() {
                Some(Some(message)) => batch.push(message),
                _ => break,
            }
        }
        for request in apply_batch(
            &shared.served.snapshot,
            &shared.io.subjects,
            &shared.metrics,
            &batch,
        ) {
            if resyncs.try_send(request).is_err() {
                shared.served.resync_overflow.store(true, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::{Flag, Timestamp};
    use rollout_wire::codec::{self, Encoding, CONTENT_TYPE_HEADER};
    use rollout_wire::events::FlagSnapshot;

    fn flag(key: &str, enabled: bool) -> Flag {
        serde_json::from_value(serde_json::json!({
            "key": key,
            "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
            "off_variation": "off",
            "enabled": enabled,
            "default": {"variation": "on"},
        }))
        .expect("flag")
    }

    fn message(subject: &str, payload: Vec<u8>, json: bool) -> async_nats::Message {
        let headers = json.then(|| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(CONTENT_TYPE_HEADER, "application/json");
            headers
        });
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            length: payload.len(),
            payload: payload.into(),
            headers,
            status: None,
            description: None,
        }
    }

    fn event(key: &str, version: u64, kind: EventKind, enabled: bool) -> ChangeEvent {
        let mut event = ChangeEvent::new("prod", key, version, kind, Timestamp::from_millis(0));
        if kind != EventKind::FlagDeleted {
            event.snapshot = Some(FlagSnapshot {
                flag: flag(key, enabled),
                version,
                rollout: None,
                last_rollout: None,
            });
        }
        event
    }

    fn packed(event: &ChangeEvent) -> async_nats::Message {
        let payload = codec::encode(event, Encoding::MessagePack).expect("encodes");
        message(
            &format!("rollout.events.prod.{}", event.flag),
            payload,
            false,
        )
    }

    fn served(snapshot: &Snapshot, key: &str) -> Option<(u64, String)> {
        snapshot.namespace("prod")?.with_flag(key, |live| {
            let evaluation = live
                .compiled()
                .evaluate(&rollout_core::Entity::with_id("u"));
            (live.version(), evaluation.variation.to_owned())
        })
    }

    #[test]
    fn events_apply_in_order_and_never_go_back() {
        let snapshot = Snapshot::new();
        let subjects = Subjects::default();
        let metrics = Metrics::default();
        let apply = |messages: &[async_nats::Message]| {
            apply_batch(&snapshot, &subjects, &metrics, messages)
        };
        let created = event("a", 1, EventKind::FlagCreated, true);
        let disabled = event("a", 2, EventKind::FlagDisabled, false);
        assert!(apply(&[packed(&created), packed(&disabled)]).is_empty());
        assert_eq!(served(&snapshot, "a"), Some((2, "off".into())));
        // duplicates and older events change nothing
        assert!(apply(&[packed(&created), packed(&disabled)]).is_empty());
        assert_eq!(served(&snapshot, "a"), Some((2, "off".into())));
        // a gap asks for a resync and installs nothing
        let ahead = event("a", 5, EventKind::FlagEnabled, true);
        let resyncs = apply(&[packed(&ahead)]);
        assert_eq!(
            resyncs,
            vec![ResyncRequest {
                namespace: "prod".into(),
                flag: "a".into(),
                reason: ResyncReason::Gap
            }]
        );
        assert_eq!(served(&snapshot, "a"), Some((2, "off".into())));
        // JSON events are read by their content type; deletion keeps its version
        let deleted = event("a", 3, EventKind::FlagDeleted, true);
        let json = serde_json::to_vec(&deleted).expect("json");
        assert!(apply(&[message("rollout.events.prod.a", json, true)]).is_empty());
        assert_eq!(served(&snapshot, "a"), None);
        assert!(apply(&[packed(&disabled)]).is_empty(), "no resurrection");
        assert_eq!(snapshot.held_version("prod", "a"), Some(3));
        let recreated = event("a", 4, EventKind::FlagCreated, true);
        assert!(apply(&[packed(&recreated)]).is_empty());
        assert_eq!(served(&snapshot, "a"), Some((4, "on".into())));
    }

    #[test]
    fn bad_events_are_resynchronised_or_dropped() {
        let snapshot = Snapshot::new();
        let subjects = Subjects::default();
        let metrics = Metrics::default();
        let garbage = message("rollout.events.prod.a", b"\xc1".to_vec(), false);
        let wrong_flag = packed(&event("b", 1, EventKind::FlagCreated, true));
        let wrong_flag = message("rollout.events.prod.a", wrong_flag.payload.to_vec(), false);
        let mut bare = event("a", 1, EventKind::FlagUpdated, true);
        bare.snapshot = None;
        let off_prefix = message("elsewhere.events.prod.a", Vec::new(), false);
        let resyncs = apply_batch(
            &snapshot,
            &subjects,
            &metrics,
            &[garbage, wrong_flag, packed(&bare), off_prefix],
        );
        let reasons: Vec<ResyncReason> = resyncs.iter().map(|request| request.reason).collect();
        assert_eq!(
            reasons,
            [
                ResyncReason::Invalid,
                ResyncReason::Invalid,
                ResyncReason::NoSnapshot
            ]
        );
        assert_eq!(served(&snapshot, "a"), None);
    }
}
