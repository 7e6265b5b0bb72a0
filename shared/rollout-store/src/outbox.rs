//! The outbox relay: events are appended to `ro:{ns}:outbox` by the same script that
//! commits the change, then published on `rollout.events.<ns>.<flag>` and deleted from the
//! stream. The committing process publishes at once ([`Relay::publish_committed`]); every
//! planner also sweeps entries older than a grace period ([`Relay::sweep_all`]), so a crash
//! between commit and publish loses no event. A duplicate publish is harmless: events carry
//! strictly rising per-flag versions and evaluators ignore any version they already hold.
//!
//! Nothing a client does can hold the outbox up (SPEC §11.1): the proof that NATS received
//! the events is a round trip through the relay's own echo subscription, which a
//! subscriber on `>` cannot stall; an event too large for the server's `max_payload` is
//! published without its snapshot (evaluators then read the flag from Redis); and one entry
//! that cannot be published does not keep the sweep from the entries after it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::keys::{self, Keys};
use futures_util::StreamExt;
use rollout_wire::codec::{self, Encoding, CONTENT_TYPE_HEADER, MSGPACK_CONTENT_TYPE};
use rollout_wire::events::ChangeEvent;
use rollout_wire::queries::AuditEntry;
use rollout_wire::subjects::{Namespace, Subjects};

use crate::{Connection, StoreError};

/// How long a committer waits for NATS to take its events before leaving them to the sweep.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_millis(200);
/// After NATS failed to take events in time, committers leave events to the sweep for this
/// long instead of each waiting [`PUBLISH_TIMEOUT`] again.
pub const PUBLISH_BACKOFF: Duration = Duration::from_secs(1);
/// Most outbox entries one sweep handles per namespace.
const SWEEP_BATCH: usize = 512;
/// Room left under the server's `max_payload` for the subject and headers of an event.
const EVENT_HEADROOM: usize = 1024;

/// Publishes committed events; cheap to clone.
#[derive(Clone, Debug)]
pub struct Relay {
    nats: async_nats::Client,
    redis: Connection,
    subjects: Subjects,
    /// Until when committers skip publishing because NATS recently did not answer.
    skip_until: Arc<Mutex<Option<Instant>>>,
    /// The subject of the relay's echo responder, once subscribed.
    echo: Arc<tokio::sync::OnceCell<String>>,
    /// Committers waiting for a delivery proof: one proof serves all who published before
    /// it was asked for.
    proofs: Arc<Mutex<Proofs>>,
}

/// The committers waiting for a delivery proof, and whether one is being made.
#[derive(Debug, Default)]
struct Proofs {
    /// A proof is under way; whoever comes now waits for the next one.
    running: bool,
    waiting: Vec<Waiter>,
}

/// A committer whose events are published and wait for their proof.
#[derive(Debug)]
struct Waiter {
    /// The client's connect count before the events were published.
    connects: u64,
    /// The outbox stream and the entries to trim once proven.
    outbox: String,
    ids: Vec<String>,
    proven: tokio::sync::oneshot::Sender<Result<(), String>>,
}

impl Relay {
    /// A relay publishing with `nats` under `subjects` and trimming the outbox in `redis`.
    /// Publishes a namespace notice (a freeze or its end, as its audit entry) on
    /// `rollout.notices.<ns>`, best effort: the change is saved already, and the ticker
    /// rereads freezes on its own within a lease renewal.
    pub async fn publish_notice(&self, namespace: &Namespace, entry: &AuditEntry) {
        let Ok(payload) = codec::encode(entry, Encoding::Json) else {
            return;
        };
        let subject = self.subjects.notices(namespace);
        if let Err(error) = self.nats.publish(subject, payload.into()).await {
            tracing::warn!(%error, "a namespace notice could not be published");
        }
    }

    pub fn new(nats: async_nats::Client, redis: Connection, subjects: Subjects) -> Relay {
        Relay {
            nats,
            redis,
            subjects,
            skip_until: Arc::default(),
            echo: Arc::default(),
            proofs: Arc::default(),
        }
    }

    /// Publishes the events a commit just appended and removes their outbox entries. A
    /// failure — or NATS not answering within [`PUBLISH_TIMEOUT`] — is logged, not returned:
    /// the entries stay in the outbox and the sweep publishes them. A committer cut off
    /// from NATS therefore keeps committing instead of waiting for NATS to come back.
    pub async fn publish_committed<E, I>(&self, keys: &Keys, events: &[E], outbox_ids: &[I])
    where
        E: std::borrow::Borrow<ChangeEvent>,
        I: AsRef<str>,
    {
        let events: Vec<(&ChangeEvent, Option<&bytes::Bytes>)> =
            events.iter().map(|event| (event.borrow(), None)).collect();
        self.publish_all(keys, &events, outbox_ids).await;
    }

    /// [`Relay::publish_committed`] of events already encoded as the outbox holds them
    /// (each beside its encoding, which is published as is).
    pub async fn publish_encoded<I: AsRef<str>>(
        &self,
        keys: &Keys,
        events: &[(&ChangeEvent, &bytes::Bytes)],
        outbox_ids: &[I],
    ) {
        let events: Vec<(&ChangeEvent, Option<&bytes::Bytes>)> = events
            .iter()
            .map(|(event, encoded)| (*event, Some(*encoded)))
            .collect();
        self.publish_all(keys, &events, outbox_ids).await;
    }

    /// Publishes `events` (each as its encoding when given), proves their delivery and
    /// trims `outbox_ids`; see [`Relay::publish_committed`].
    async fn publish_all<I: AsRef<str>>(
        &self,
        keys: &Keys,
        events: &[(&ChangeEvent, Option<&bytes::Bytes>)],
        outbox_ids: &[I],
    ) {
        if !self.nats_answering() {
            tracing::debug!(
                events = events.len(),
                "nats not answering; events left to the outbox sweep"
            );
            return;
        }
        let published = tokio::time::timeout(PUBLISH_TIMEOUT, async {
            let connects = self.connects();
            for (event, encoded) in events {
                self.publish(event, encoded.cloned()).await?;
            }
            self.prove_and_trim(connects, keys.outbox(), outbox_ids)
                .await
        })
        .await;
        match published {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "event publish failed; the outbox sweep will retry");
            }
            Err(_) => {
                self.back_off();
                tracing::warn!(
                    timeout_ms = PUBLISH_TIMEOUT.as_millis(),
                    "nats did not take the events in time; the outbox sweep will retry"
                );
            }
        }
    }

    /// Waits for a proof that NATS received everything published since the connect count
    /// was `connects`, then has `outbox_ids` trimmed from `outbox` (in the background: the
    /// committer need not wait for it). Committers publishing at the same time share one
    /// proof: whoever asks while one is under way joins the next, which covers every
    /// publish made before it was asked for.
    async fn prove_and_trim<I: AsRef<str>>(
        &self,
        connects: u64,
        outbox: String,
        outbox_ids: &[I],
    ) -> Result<(), StoreError> {
        let (proven, proof) = tokio::sync::oneshot::channel();
        let waiter = Waiter {
            connects,
            outbox,
            ids: outbox_ids.iter().map(|id| id.as_ref().to_owned()).collect(),
            proven,
        };
        let start = {
            let mut proofs = self
                .proofs
                .lock()
                .map_err(|_| StoreError::Protocol("the relay's proof queue is poisoned".into()))?;
            proofs.waiting.push(waiter);
            !std::mem::replace(&mut proofs.running, true)
        };
        if start {
            let relay = self.clone();
            tokio::spawn(async move { relay.make_proofs().await });
        }
        match proof.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StoreError::Protocol(reason)),
            Err(_) => Err(StoreError::Protocol(
                "the delivery proof was abandoned".to_owned(),
            )),
        }
    }

    /// Makes proofs until nobody waits: each takes every waiter so far, asks the echo
    /// responder once, answers them all and trims their proven outbox entries.
    async fn make_proofs(&self) {
        loop {
            let waiting = match self.proofs.lock() {
                Ok(mut proofs) if proofs.waiting.is_empty() => {
                    proofs.running = false;
                    return;
                }
                Ok(mut proofs) => std::mem::take(&mut proofs.waiting),
                Err(_) => return,
            };
            let proof = match tokio::time::timeout(PUBLISH_TIMEOUT, self.echo_round_trip()).await {
                Ok(Ok(())) => Ok(self.connects()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("nats did not confirm the events in time".to_owned()),
            };
            // the proven entries of each outbox, trimmed with one XDEL
            let mut trims: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for waiter in waiting {
                let outcome = match &proof {
                    // a reconnection in between voids the proof: what was on the old socket
                    // may be lost
                    Ok(connects) if *connects != waiter.connects => {
                        Err("nats reconnected while the events were in flight".to_owned())
                    }
                    Ok(_) => Ok(()),
                    Err(reason) => Err(reason.clone()),
                };
                if outcome.is_ok() && !waiter.ids.is_empty() {
                    trims.entry(waiter.outbox).or_default().extend(waiter.ids);
                }
                let _ = waiter.proven.send(outcome);
            }
            if !trims.is_empty() {
                let connection = self.redis.clone();
                tokio::spawn(async move {
                    // outboxes of several namespaces: one slot each on a cluster
                    let commands = trims
                        .iter()
                        .map(|(outbox, ids)| {
                            let mut command = redis::cmd("XDEL");
                            command.arg(outbox).arg(ids);
                            command
                        })
                        .collect();
                    let trimmed = connection.query_each::<redis::Value>(commands).await;
                    if let Err(error) = trimmed {
                        tracing::warn!(%error, "outbox trim failed; the sweep will publish these events again");
                    }
                });
            }
        }
    }

    /// How many times the client has connected so far.
    fn connects(&self) -> u64 {
        self.nats
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// One round trip through the relay's echo responder (a subscription on this same
    /// connection, under the client's inbox prefix). `flush` only proves the bytes reached
    /// the socket, and a connection reset loses what is still in flight; since the server
    /// handles one connection's messages in order, the answer proves every earlier publish
    /// on the connection arrived. Other subscribers of the subject (a debugging `>`) may
    /// see the request but cannot hold the answer back. A reconnection in between voids
    /// the proof (the caller compares connect counts), so the outbox entries stay for the
    /// sweep. Only after a proof may outbox entries go.
    async fn echo_round_trip(&self) -> Result<(), StoreError> {
        let subject = self.echo_subject().await?;
        self.nats
            .request(subject, bytes::Bytes::new())
            .await
            .map(|_| ())
            .map_err(|error| {
                StoreError::Protocol(format!("nats did not confirm the events: {error}"))
            })
    }

    /// [`Relay::echo_round_trip`], failing when the client reconnected since its connect
    /// count was `connects`.
    async fn confirm_received(&self, connects: u64) -> Result<(), StoreError> {
        self.echo_round_trip().await?;
        if self.connects() != connects {
            return Err(StoreError::Protocol(
                "nats reconnected while the events were in flight".to_owned(),
            ));
        }
        Ok(())
    }

    /// The echo responder's subject, subscribing it on first use.
    async fn echo_subject(&self) -> Result<String, StoreError> {
        self.echo
            .get_or_try_init(|| async {
                let subject = format!("{}.relay-echo", self.nats.new_inbox());
                let mut requests = self
                    .nats
                    .subscribe(subject.clone())
                    .await
                    .map_err(|error| StoreError::Protocol(format!("nats subscribe: {error}")))?;
                let nats = self.nats.clone();
                // lives as long as the connection: the subscription ends when it closes
                tokio::spawn(async move {
                    while let Some(request) = requests.next().await {
                        if let Some(reply) = request.reply {
                            if let Err(error) = nats.publish(reply, bytes::Bytes::new()).await {
                                tracing::debug!(%error, "relay echo reply failed");
                            }
                        }
                    }
                });
                Ok(subject)
            })
            .await
            .cloned()
    }

    /// Whether committers should publish now: the client is connected and NATS has not
    /// recently failed to take events in time.
    fn nats_answering(&self) -> bool {
        if !self.connected() {
            return false;
        }
        let skip_until = self.skip_until.lock().map(|guard| *guard).unwrap_or(None);
        skip_until.is_none_or(|until| Instant::now() >= until)
    }

    fn connected(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }

    fn back_off(&self) {
        if let Ok(mut guard) = self.skip_until.lock() {
            *guard = Some(Instant::now() + PUBLISH_BACKOFF);
        }
    }

    /// Publishes `event`, as `encoded` when given (its MessagePack encoding, as the outbox
    /// holds it), else encoded here.
    async fn publish(
        &self,
        event: &ChangeEvent,
        encoded: Option<bytes::Bytes>,
    ) -> Result<(), StoreError> {
        let namespace = Namespace::new(event.namespace.as_str())
            .map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let subject = self
            .subjects
            .events(&namespace, &event.flag)
            .map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let mut payload: bytes::Bytes = match encoded {
            Some(encoded) => encoded,
            None => codec::encode(event, Encoding::MessagePack)
                .map_err(|error| StoreError::Corrupt(error.to_string()))?
                .into(),
        };
        let max_payload = self.nats.server_info().max_payload;
        if payload.len() > max_payload.saturating_sub(EVENT_HEADROOM) && event.snapshot.is_some() {
            // too large for NATS with the flag's state inside: without it, evaluators read
            // the flag from Redis (a snapshot-less event is a resync request)
            tracing::warn!(
                flag = %event.flag,
                version = event.version,
                bytes = payload.len(),
                max_payload,
                "event too large for nats; published without its snapshot"
            );
            let bare = ChangeEvent {
                snapshot: None,
                ..event.clone()
            };
            payload = codec::encode(&bare, Encoding::MessagePack)
                .map_err(|error| StoreError::Corrupt(error.to_string()))?
                .into();
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(CONTENT_TYPE_HEADER, MSGPACK_CONTENT_TYPE);
        self.nats
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|error| StoreError::Protocol(format!("nats publish: {error}")))
    }

    /// Publishes and removes every outbox entry of `namespace` older than `grace` (by its
    /// stream id's Redis time). Returns how many were relayed. On a store that confirms
    /// commits on replicas, nothing is published before the replicas confirm they hold
    /// the entries ([`StoreError::Unreplicated`] otherwise; they stay for the next sweep).
    pub async fn sweep(&self, namespace: &Namespace, grace: Duration) -> Result<usize, StoreError> {
        let keys = Keys::new(namespace);
        let mut connection = self.redis.clone();
        let now = crate::redis_time(&mut connection).await?;
        let cutoff_ms = now.as_millis() - i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys.outbox())
            .arg("-")
            .arg(format!("{}", cutoff_ms.max(0)))
            .arg("COUNT")
            .arg(SWEEP_BATCH)
            .query_async(&mut connection)
            .await?;
        if entries.ids.is_empty() {
            return Ok(0);
        }
        // an entry is only published once the replicas hold it: a committer whose commit
        // was not replicated in time left its events here, and a fail-over promoting a
        // replica without them must not find evaluators serving what it lost
        crate::write::confirm_all_replicated(&mut connection, &keys, now)
            .await
            .map_err(|reason| {
                StoreError::Unreplicated(format!("outbox of `{namespace}` not swept: {reason}"))
            })?;
        let connects = self.connects();
        let mut relayed_ids = Vec::with_capacity(entries.ids.len());
        for entry in &entries.ids {
            let Some(redis::Value::BulkString(bytes)) = entry.map.get("event") else {
                tracing::error!(id = %entry.id, "outbox entry without an event field; dropping it");
                relayed_ids.push(entry.id.clone());
                continue;
            };
            match ChangeEvent::decode(bytes, Encoding::MessagePack) {
                // published as the outbox holds it, as its committer would have
                Ok(event) => match self
                    .publish(&event, Some(bytes::Bytes::copy_from_slice(bytes)))
                    .await
                {
                    Ok(()) => relayed_ids.push(entry.id.clone()),
                    // the connection is gone: the rest would fail too
                    Err(error) if !self.connected() => {
                        tracing::warn!(%error, "outbox sweep publish failed; will retry");
                        break;
                    }
                    // this entry alone: keep it for the next sweep, go on with the others
                    Err(error) => {
                        tracing::error!(%error, id = %entry.id, flag = %event.flag, "outbox entry could not be published; kept, the sweep goes on");
                    }
                },
                Err(error) => {
                    tracing::error!(%error, id = %entry.id, "undecodable outbox entry; dropping it");
                    relayed_ids.push(entry.id.clone());
                }
            }
        }
        if relayed_ids.is_empty() {
            return Ok(0);
        }
        match tokio::time::timeout(PUBLISH_TIMEOUT * 5, self.confirm_received(connects)).await {
            Ok(confirmed) => confirmed?,
            Err(_) => {
                return Err(StoreError::Protocol(
                    "nats did not confirm the events in time; will retry".to_owned(),
                ))
            }
        }
        let _: i64 = redis::cmd("XDEL")
            .arg(keys.outbox())
            .arg(&relayed_ids)
            .query_async(&mut connection)
            .await?;
        Ok(relayed_ids.len())
    }

    /// How many events wait unpublished in every registered namespace's outbox together.
    pub async fn depth_all(&self) -> Result<u64, StoreError> {
        let mut connection = self.redis.clone();
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::namespaces())
            .query_async(&mut connection)
            .await?;
        let mut depth = 0;
        for name in names {
            if let Ok(namespace) = Namespace::new(name.as_str()) {
                depth += pending(&mut connection, &Keys::new(&namespace)).await?;
            }
        }
        Ok(depth)
    }

    /// [`Relay::sweep`] over every registered namespace.
    pub async fn sweep_all(&self, grace: Duration) -> Result<usize, StoreError> {
        let mut connection = self.redis.clone();
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::namespaces())
            .query_async(&mut connection)
            .await?;
        let mut relayed = 0;
        for name in names {
            match Namespace::new(name.as_str()) {
                Ok(namespace) => match self.sweep(&namespace, grace).await {
                    Ok(swept) => relayed += swept,
                    // that namespace's replicas lag: the others' outboxes are swept still
                    Err(StoreError::Unreplicated(reason)) => {
                        tracing::warn!(%reason, "outbox sweep waits for the replicas")
                    }
                    Err(error) => return Err(error),
                },
                Err(error) => {
                    tracing::error!(%error, namespace = %name, "invalid namespace in the registry")
                }
            }
        }
        Ok(relayed)
    }
}

/// How many events wait in `keys`' outbox for publishing.
pub async fn pending<C: redis::aio::ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
) -> Result<u64, StoreError> {
    Ok(redis::cmd("XLEN")
        .arg(keys.outbox())
        .query_async(connection)
        .await?)
}

/// Drops every event waiting in `keys`' outbox unpublished: for bulk set-ups written
/// before any subscriber exists, whose events nobody should relay later.
pub async fn discard<C: redis::aio::ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
) -> Result<(), StoreError> {
    let _: i64 = redis::cmd("DEL")
        .arg(keys.outbox())
        .query_async(connection)
        .await?;
    Ok(())
}

/// The oldest event waiting in `keys`' outbox: its stream id and the Redis time it was
/// appended at (`None`: the outbox is empty).
pub async fn oldest<C: redis::aio::ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
) -> Result<Option<(String, rollout_core::Timestamp)>, StoreError> {
    let oldest: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys.outbox())
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(connection)
        .await?;
    let Some(entry) = oldest.ids.into_iter().next() else {
        return Ok(None);
    };
    let appended = entry
        .id
        .split('-')
        .next()
        .and_then(|millis| millis.parse::<i64>().ok())
        .map(rollout_core::Timestamp::from_millis)
        .ok_or_else(|| StoreError::Protocol(format!("outbox entry id {}", entry.id)))?;
    Ok(Some((entry.id, appended)))
}
