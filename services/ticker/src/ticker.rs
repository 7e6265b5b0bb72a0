//! The ticker: share the shards with the other replicas, and in the shards it leads fire
//! every due rollout at its due time and judge kill switches; drop a shard at once when its
//! lease or a fence says another replica leads it, and give every lease back on shutdown.
//!
//! Two loops run side by side in [`Ticker::run`]:
//! - the balancer ([`Ticker::rebalance`] on a timer): one store script per renewal
//!   interval heartbeats the replica, renews its shard leases, gives back what is above its
//!   fair share (or what a fence refused), and takes free shards up to it. It wakes early
//!   when another replica's heartbeat is about to run out, to take over its shards at once.
//! - the worker: fences the namespaces of newly led shards, then fires what is due in
//!   every led namespace. There is no polling interval: it sleeps until the earliest score
//!   of a led namespace's `due` index (Redis time; a frozen namespace's index waits, and
//!   the end of its freeze wakes it), a change event from another writer on
//!   `rollout.events.>` (a command may have made something due earlier), a change of the
//!   shards led, or its next kill switch check or namespace refresh. It subscribes to the
//!   change events before it reads any namespace or flag, so a change lands in what it
//!   read or in what it hears.
//!
//! The steps are public so tests drive a ticker by hand: [`Ticker::campaign`] takes a fair
//! share of the free shards and fences their namespaces, [`Ticker::fire_due`] runs one
//! round, [`Ticker::check_kill_switches`] one kill switch check, [`Ticker::rebalance`] one
//! balancing step, [`Ticker::resign`] gives every shard back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use rollout_core::freeze::Freezes;
use rollout_core::{DurationMs, Timestamp};
use rollout_runtime::shutdown::Shutdown;
use rollout_store::lease::{Balance, FenceRaise, ShardLeases, Stance};
use rollout_store::Keys;
use rollout_store::{due, namespaces, redis_time, Connection, Relay, StoreError, Writer};
use rollout_wire::codec::{self, Encoding, Limits, CONTENT_TYPE_HEADER};
use rollout_wire::events::ChangeEvent;
use rollout_wire::subjects::{Namespace, Route, Subjects};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::TickerSettings;
use crate::error::TickerError;
use crate::fire::{fire_batch, FireContext, Fired, TICKER_ACTOR};
use crate::kill_switch::KillSwitchReport;
use crate::leadership::{Abandoned, Leadership, LedNamespace};
use crate::stats::TickerStats;

/// A led namespace no freeze holds at a round's time, with its freezes (past ones still
/// hold the timers that ran out while they lasted).
struct OpenNamespace {
    led: LedNamespace,
    freezes: Arc<Freezes>,
}

/// The outcome of each rollout of a batch, or the batch's failed round trip.
type FiredBatch = Result<Vec<Result<Fired, StoreError>>, StoreError>;

/// A batch's namespace (`None` when its task did not finish), its rollouts and what firing
/// them came to.
type BatchResult = (Option<Namespace>, Vec<String>, FiredBatch);

/// How soon a namespace held for unconfirmed commits is looked at again.
const UNCONFIRMED_RETRY_MS: i64 = 500;

/// What the worker reads before deciding to fire or sleep.
struct Peek {
    /// Redis time.
    now: Timestamp,
    /// When something is next due (a due score or a freeze's end).
    next: Option<Timestamp>,
    /// The led namespaces no freeze holds at `now`.
    open: Vec<OpenNamespace>,
}

/// The kill switch index is rebuilt from Redis this often, in case an event was missed.
const KILL_SWITCH_RESCAN: Duration = Duration::from_secs(300);
/// Pause after a round that failed, so a broken Redis is not hammered.
const ERROR_BACKOFF: Duration = Duration::from_millis(200);
/// Margin after another replica's heartbeat runs out before balancing again: its leases
/// expire in the same millisecond.
const EXPIRY_MARGIN: Duration = Duration::from_millis(3);

/// What one round of firing did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Due rollouts looked at.
    pub looked_at: usize,
    /// Transitions committed.
    pub committed: usize,
    /// Rollouts that failed (retried later).
    pub errors: usize,
    /// A write was refused by a fence: another replica leads that shard now.
    pub fenced: bool,
    /// Some namespace had more due rollouts than one batch.
    pub full: bool,
}

/// Only the actor of a change event, to tell our own events from others' cheaply.
#[derive(Deserialize)]
struct EventActor {
    #[serde(default)]
    actor: Option<String>,
}

/// A ticker replica. Cheap to clone; clones share the lease identity and the stats.
#[derive(Clone, Debug)]
pub struct Ticker {
    leases: ShardLeases,
    context: FireContext,
    nats: async_nats::Client,
    subjects: Subjects,
    settings: TickerSettings,
    /// Publishes what a held namespace's outbox kept once its commits are confirmed.
    relay: Relay,
}

impl Ticker {
    /// A replica using `redis` for state and the leases and `nats` for events.
    pub fn new(
        redis: Connection,
        nats: async_nats::Client,
        subjects: Subjects,
        settings: TickerSettings,
    ) -> Ticker {
        let replica = settings.replica();
        let stale_ms = i64::try_from(settings.stale_agent_after.as_millis()).unwrap_or(i64::MAX);
        let relay = Relay::new(nats.clone(), redis.clone(), subjects.clone());
        Ticker {
            leases: ShardLeases::new(redis.clone(), replica, settings.lease_ttl, settings.shards),
            context: FireContext {
                writer: Writer::publishing(redis.clone(), relay.clone()),
                redis,
                stats: TickerStats::new(),
                stale_agent_after: DurationMs::from_millis(stale_ms),
            },
            nats,
            subjects,
            settings,
            relay,
        }
    }

    /// The counters of this replica.
    pub fn stats(&self) -> TickerStats {
        self.context.stats.clone()
    }

    /// This replica's id in the leases.
    pub fn replica_id(&self) -> &str {
        self.leases.replica_id()
    }

    /// The shard lease handle.
    pub fn leases(&self) -> &ShardLeases {
        &self.leases
    }

    /// One attempt to lead: join the replicas, take a fair share of the free shards and
    /// fence their namespaces. `None` (after leaving the replicas again) when no shard was
    /// free.
    pub async fn campaign(&self) -> Result<Option<Leadership>, TickerError> {
        let events = self.subscribe_events().await;
        let mut leadership = Leadership::new(Shutdown::new(), events);
        self.rebalance(&mut leadership).await?;
        if leadership.is_lost() {
            self.leases
                .balance(&BTreeMap::new(), &BTreeMap::new(), Stance::Leave)
                .await?;
            return Ok(None);
        }
        Ok(Some(leadership))
    }

    /// One balancing step for `leadership`: renew its shards, give back those a fence
    /// refused or above the fair share, take free ones up to it, and fence the namespaces
    /// of those taken.
    pub async fn rebalance(&self, leadership: &mut Leadership) -> Result<Balance, TickerError> {
        let give_up = leadership.take_abandoned();
        let held: BTreeMap<u32, u64> = leadership
            .shards
            .iter()
            .filter(|(shard, _)| !give_up.contains_key(shard))
            .map(|(shard, epoch)| (*shard, *epoch))
            .collect();
        let balance = self.leases.balance(&held, &give_up, Stance::Share).await?;
        self.adopt(leadership, &balance.held());
        self.refresh_namespaces(leadership).await?;
        Ok(balance)
    }

    /// Takes `held` as the shards led now, and counts them.
    fn adopt(&self, leadership: &mut Leadership, held: &BTreeMap<u32, u64>) {
        let new = leadership.adopt(held);
        self.context.stats.leading(&leadership.shards, new);
    }

    /// Reads the namespace registry and fences (and indexes the kill switches of) every
    /// namespace of a led shard not fenced at that shard's epoch yet. A fence above the
    /// shard's epoch gives the shard up.
    pub async fn refresh_namespaces(&self, leadership: &mut Leadership) -> Result<(), TickerError> {
        if leadership.shards.is_empty() {
            leadership.namespaces_stale = false;
            return Ok(());
        }
        let mut connection = self.context.redis.clone();
        for namespace in namespaces::registered(&mut connection).await? {
            let shard = self.leases.shard_of(&namespace);
            let Some(epoch) = leadership.shards.get(&shard).copied() else {
                continue;
            };
            if leadership.epoch_of(namespace.as_str()) == Some(epoch) {
                continue;
            }
            let keys = Keys::new(&namespace);
            match self.leases.raise_fence(&keys, epoch).await? {
                FenceRaise::Ours => {}
                FenceRaise::Ahead(fence) => {
                    tracing::warn!(namespace = %namespace, shard, epoch, fence, "a namespace fence is ahead of our shard's epoch; giving the shard up");
                    self.give_up(leadership, shard);
                    continue;
                }
            }
            if let Err(error) = leadership
                .kill_switches
                .scan(&self.context, &namespace, &keys)
                .await
            {
                tracing::warn!(%error, namespace = %namespace, "kill switch index incomplete; rescanning later");
            }
            tracing::debug!(namespace = %namespace, shard, epoch, "namespace fenced");
            leadership.namespaces.insert(
                namespace.as_str().to_owned(),
                LedNamespace {
                    namespace,
                    keys,
                    shard,
                    epoch,
                },
            );
        }
        leadership.namespaces_stale = false;
        Ok(())
    }

    /// Gives `shard` up after a fence refusal, and counts what is still led.
    fn give_up(&self, leadership: &mut Leadership, shard: u32) {
        leadership.abandon(shard);
        self.context.stats.leading(&leadership.shards, 0);
    }

    /// Subscribes to every change event and waits until the server has the interest, so
    /// that a change committed after this returns is heard. `None` (timers only) when
    /// NATS refuses.
    async fn subscribe_events(&self) -> Option<async_nats::Subscriber> {
        let subscribed = async {
            let subscriber = self.nats.subscribe(self.subjects.events_all()).await?;
            self.nats.flush().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(subscriber)
        };
        match subscribed.await {
            Ok(subscriber) => Some(subscriber),
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe to change events; relying on timers");
                None
            }
        }
    }

    /// Rebuilds the kill switch index of every led namespace.
    pub async fn rescan_kill_switches(
        &self,
        leadership: &mut Leadership,
    ) -> Result<(), TickerError> {
        for led in leadership.namespaces.values() {
            leadership
                .kill_switches
                .scan(&self.context, &led.namespace, &led.keys)
                .await?;
        }
        Ok(())
    }

    /// One round: fires every rollout due at the current Redis time (up to a batch per
    /// led namespace).
    pub async fn fire_due(&self, leadership: &mut Leadership) -> Result<Round, TickerError> {
        let mut connection = self.context.redis.clone();
        let now = redis_time(&mut connection).await?;
        self.fire_round(leadership, now).await
    }

    /// One round as if Redis time were `now`: fires every rollout due by then. Tests and
    /// benchmarks drive time with it; a transition a timer caused is still refused by the
    /// commit script while Redis time is before its due time ([`Fired::Early`]).
    pub async fn fire_round(
        &self,
        leadership: &mut Leadership,
        now: Timestamp,
    ) -> Result<Round, TickerError> {
        let mut connection = self.context.redis.clone();
        let (open, _) = self.partition(&mut connection, leadership, now).await?;
        self.fire_open(leadership, now, open).await
    }

    /// A round at `now` over `open`, the led namespaces no freeze holds then (a frozen
    /// namespace's due rollouts are left where they are).
    async fn fire_open(
        &self,
        leadership: &mut Leadership,
        now: Timestamp,
        open: Vec<OpenNamespace>,
    ) -> Result<Round, TickerError> {
        let mut round = Round::default();
        if open.is_empty() || leadership.signal.is_triggered() {
            return Ok(round);
        }
        let batch = self.settings.batch_size;
        let mut connection = self.context.redis.clone();
        let namespace_keys: Vec<&Keys> = open.iter().map(|open| &open.led.keys).collect();
        let due = due::due_by(&mut connection, &namespace_keys, now, batch).await?;
        let mut work = Vec::new();
        for (open, ids) in open.iter().zip(due) {
            round.full |= ids.len() >= batch;
            round.looked_at += ids.len();
            for chunk in ids.chunks(self.settings.commit_batch.max(1)) {
                work.push((open.led.clone(), Arc::clone(&open.freezes), chunk.to_vec()));
            }
        }
        // shards a fence refused during the round: their batches not started yet are
        // skipped
        let fenced: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
        // `now` was read from Redis before the round; under a backlog a batch is fired
        // later in the round, and its transitions are stamped with the Redis time advanced
        // by the monotonic time since (never ahead of the real time: the clock started
        // after `now` was read)
        let round_started = Instant::now();
        // each batch is a task of its own, so batches decode, decide and encode on every
        // worker thread at once (they own what they use); a batch still running when the
        // round is dropped (the replica overstayed its shutdown grace) is aborted with it
        let results: Vec<BatchResult> = futures_util::stream::iter(work)
            .map(|(led, freezes, rollout_ids)| {
                let fenced = Arc::clone(&fenced);
                let context = self.context.clone();
                let signal = leadership.signal.clone();
                let batch = Spawned(tokio::spawn(async move {
                    // a stopping replica, or a shard another replica took, takes no more
                    // work; what is in flight finishes
                    let refused = fenced
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains(&led.shard);
                    if signal.is_triggered() || refused {
                        return (Some(led.namespace), rollout_ids, Ok(Vec::new()));
                    }
                    let elapsed =
                        i64::try_from(round_started.elapsed().as_millis()).unwrap_or(i64::MAX);
                    let now = now.plus(DurationMs::from_millis(elapsed));
                    let fired = fire_batch(
                        &context,
                        &led.namespace,
                        &led.keys,
                        led.epoch,
                        &rollout_ids,
                        now,
                        &freezes,
                    )
                    .await;
                    if let Ok(outcomes) = &fired {
                        if outcomes
                            .iter()
                            .any(|outcome| matches!(outcome, Ok(Fired::Fenced)))
                        {
                            fenced
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .insert(led.shard);
                        }
                    }
                    (Some(led.namespace), rollout_ids, fired)
                }));
                async move {
                    batch.await.unwrap_or_else(|error| {
                        let failed =
                            StoreError::Protocol(format!("a firing batch did not finish: {error}"));
                        (None, Vec::new(), Err(failed))
                    })
                }
            })
            .buffer_unordered(self.settings.batches_in_flight())
            .collect()
            .await;
        for (namespace, rollout_ids, fired) in results {
            let unreplicated = match &fired {
                Err(StoreError::Unreplicated(_)) => true,
                Ok(outcomes) => outcomes
                    .iter()
                    .any(|outcome| matches!(outcome, Err(StoreError::Unreplicated(_)))),
                Err(_) => false,
            };
            if let (true, Some(namespace)) = (unreplicated, &namespace) {
                let newly = leadership
                    .unconfirmed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(namespace.as_str().to_owned());
                if newly {
                    tracing::warn!(namespace = %namespace, "commits could not be confirmed on the replicas; holding the namespace's rollouts until they are");
                }
            }
            let outcomes = match fired {
                Ok(outcomes) => outcomes,
                Err(error) => {
                    round.errors += rollout_ids.len().max(1);
                    self.context.stats.error();
                    tracing::warn!(rollouts = rollout_ids.len(), %error, "firing a batch failed; trying again next round");
                    continue;
                }
            };
            for (rollout_id, outcome) in rollout_ids.iter().zip(outcomes) {
                match outcome {
                    Ok(Fired::Committed) => round.committed += 1,
                    Ok(Fired::Fenced) => round.fenced = true,
                    Ok(Fired::Failed(reason)) => {
                        round.errors += 1;
                        self.context.stats.error();
                        tracing::error!(rollout_id = %rollout_id, %reason, "rollout could not be fired; trying again later");
                    }
                    Ok(Fired::Unchanged | Fired::Removed | Fired::Conflict | Fired::Early) => {}
                    Err(error) => {
                        round.errors += 1;
                        self.context.stats.error();
                        tracing::warn!(rollout_id = %rollout_id, %error, "firing failed; trying again next round");
                    }
                }
            }
        }
        // the shards the batches found fenced
        let refused_shards =
            std::mem::take(&mut *fenced.lock().unwrap_or_else(PoisonError::into_inner));
        for shard in refused_shards {
            tracing::warn!(
                shard,
                epoch = leadership.shards.get(&shard).copied(),
                "a fence refused our write: another replica leads this shard; giving it up"
            );
            self.give_up(leadership, shard);
        }
        Ok(round)
    }

    /// Judges every enabled kill switch of the led namespaces now, disabling the flags
    /// whose switch is breached.
    pub async fn check_kill_switches(
        &self,
        leadership: &mut Leadership,
    ) -> Result<KillSwitchReport, TickerError> {
        // judged with every change heard so far
        self.drain_events(leadership);
        if !leadership.kill_switches.any_enabled() {
            return Ok(KillSwitchReport::default());
        }
        let mut connection = self.context.redis.clone();
        let now = redis_time(&mut connection).await?;
        let report = leadership
            .kill_switches
            .check(&self.context, &leadership.namespaces, now)
            .await?;
        for namespace in &report.fenced {
            if let Some(shard) = leadership.namespaces.get(namespace).map(|led| led.shard) {
                self.give_up(leadership, shard);
            }
        }
        Ok(report)
    }

    /// Gives every shard of `leadership` back and leaves the replicas, so the others take
    /// them over at once; `true` when every shard it led was still ours to give.
    pub async fn resign(&self, leadership: Leadership) -> Result<bool, TickerError> {
        leadership.signal.trigger();
        let mut give_up = leadership.take_abandoned();
        give_up.extend(&leadership.shards);
        let led = leadership.shards.len();
        self.context.stats.leading(&BTreeMap::new(), 0);
        let balance = self
            .leases
            .balance(&BTreeMap::new(), &give_up, Stance::Leave)
            .await?;
        tracing::info!(replica = %self.replica_id(), released = balance.released.len(), led, "shards given back");
        Ok(balance.released.len() == led && led > 0)
    }

    /// The current Redis time, the led namespaces no freeze holds then, and when something
    /// is next due: the earliest due score over those namespaces, or the end of a freeze
    /// that has one.
    async fn peek_due(&self, leadership: &Leadership) -> Result<Peek, TickerError> {
        let mut connection = self.context.redis.clone();
        let now = redis_time(&mut connection).await?;
        let (open, thaws) = self.partition(&mut connection, leadership, now).await?;
        let open_keys: Vec<&Keys> = open.iter().map(|open| &open.led.keys).collect();
        let earliest = due::earliest(&mut connection, &open_keys).await?;
        let next = match (earliest, thaws) {
            (Some(earliest), Some(thaw)) => Some(earliest.min(thaw)),
            (earliest, thaw) => earliest.or(thaw),
        };
        Ok(Peek { now, next, open })
    }

    /// Splits the led namespaces by their freezes at `now`: those no freeze holds, each
    /// with its freezes (past ones still hold the timers that ran out while they lasted),
    /// and the earliest end of a freeze that holds.
    async fn partition(
        &self,
        connection: &mut Connection,
        leadership: &Leadership,
        now: Timestamp,
    ) -> Result<(Vec<OpenNamespace>, Option<Timestamp>), TickerError> {
        let all: Vec<&Keys> = leadership
            .namespaces
            .values()
            .map(|led| &led.keys)
            .collect();
        let freezes = rollout_store::freezes::load_many(connection, &all).await?;
        let mut open = Vec::with_capacity(all.len());
        let mut thaws: Option<Timestamp> = None;
        let held: Vec<String> = leadership
            .unconfirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        let mut still_held = BTreeSet::new();
        for name in held {
            // the sweep publishes the events the outbox kept, in order, once the replicas
            // confirm they hold them (an empty outbox: another sweep did already)
            let confirmed = match leadership.namespaces.get(&name) {
                Some(led) => self
                    .relay
                    .sweep(&led.namespace, Duration::ZERO)
                    .await
                    .is_ok(),
                None => true,
            };
            if confirmed {
                tracing::info!(namespace = %name, "commits are confirmed on the replicas again and the held events published; firing resumes");
                leadership
                    .unconfirmed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&name);
            } else {
                // looked at again soon, whatever else is due
                let again = now.plus(DurationMs::from_millis(UNCONFIRMED_RETRY_MS));
                thaws = Some(thaws.map_or(again, |thaw| thaw.min(again)));
                still_held.insert(name);
            }
        }
        for (led, freezes) in leadership.namespaces.values().zip(freezes) {
            if still_held.contains(led.namespace.as_str()) {
                continue;
            }
            match freezes.active_at(now) {
                Some(freeze) => {
                    if let Some(until) = freeze.until {
                        thaws = Some(thaws.map_or(until, |thaw| thaw.min(until)));
                    }
                }
                None => open.push(OpenNamespace {
                    led: led.clone(),
                    freezes: Arc::new(freezes),
                }),
            }
        }
        Ok((open, thaws))
    }

    /// Runs until `shutdown`: the balancer and the worker side by side; on shutdown the
    /// worker finishes what is in flight (within `shutdown_grace`) and every shard is
    /// given back.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), TickerError> {
        tracing::info!(
            replica = %self.replica_id(),
            shards = self.leases.shards(),
            lease_ttl_ms = self.settings.lease_ttl.as_millis() as u64,
            renew_ms = self.settings.renew_every().as_millis() as u64,
            "ticker started"
        );
        let events = self.subscribe_events().await;
        let mut leadership = Leadership::new(shutdown.child(), events);
        let abandoned = Arc::clone(&leadership.abandoned);
        let (held_sender, held) = watch::channel(BTreeMap::new());
        let worker_done = Shutdown::new();
        let worker = async {
            self.work(&mut leadership, held).await;
            worker_done.trigger();
        };
        let balancer = self.keep_shards(held_sender, abandoned, &shutdown, &worker_done);
        tokio::pin!(worker, balancer);
        tokio::select! {
            // the balancer ends only after shutdown, once the worker finished or overstayed
            () = &mut balancer => {}
            () = &mut worker => balancer.await,
        }
        let stats = self.context.stats.snapshot();
        tracing::info!(
            replica = %self.replica_id(),
            transitions = stats.transitions,
            fenced = stats.fenced,
            conflicts = stats.conflicts,
            shard_leases_won = stats.terms,
            kill_switch_trips = stats.kill_switch_trips,
            lag_p99_ms = stats.lag_p99_ms,
            "ticker stopped"
        );
        Ok(())
    }

    /// The balancer: a balancing step every renewal interval (sooner when another
    /// replica's heartbeat runs out), publishing the shards held to the worker. A replica
    /// that cannot renew drops every shard half a renewal interval before its leases can
    /// expire (an attempt never outlasts that moment), until it can renew again. On shutdown it waits for the worker (at most `shutdown_grace`), then gives
    /// every shard back.
    async fn keep_shards(
        &self,
        held_sender: watch::Sender<BTreeMap<u32, u64>>,
        abandoned: Abandoned,
        shutdown: &Shutdown,
        worker_done: &Shutdown,
    ) {
        let every = self.settings.renew_every();
        let ttl = self.leases.ttl();
        // the shards are dropped this long before their leases can expire in Redis, so the
        // worker has stopped firing them before another replica can take them
        let margin = every / 2;
        let mut held: BTreeMap<u32, u64> = BTreeMap::new();
        let mut drop_at = Instant::now();
        while !shutdown.is_triggered() {
            if !held.is_empty() && Instant::now() >= drop_at {
                tracing::warn!(
                    shards = held.len(),
                    "the shard leases could not be renewed before they expire; dropping them"
                );
                held.clear();
                held_sender.send_replace(held.clone());
            }
            let give_up =
                std::mem::take(&mut *abandoned.lock().unwrap_or_else(PoisonError::into_inner));
            forget_given_up(&mut held, &give_up);
            let attempt = Instant::now();
            // an attempt holding shards may not outlast the moment they must be dropped
            let deadline = if held.is_empty() {
                attempt + every
            } else {
                (attempt + every).min(drop_at)
            };
            let mut wait = every;
            match tokio::time::timeout_at(
                deadline,
                self.leases.balance(&held, &give_up, Stance::Share),
            )
            .await
            {
                Ok(Ok(balance)) => {
                    log_balance(&balance);
                    held = balance.held();
                    // Redis set the expiries after `attempt`: they run out after this
                    drop_at = attempt + ttl.saturating_sub(margin);
                    held_sender.send_replace(held.clone());
                    if let Some(others) = balance.others_expire_in {
                        wait = wait.min(others + EXPIRY_MARGIN);
                    }
                }
                Ok(Err(StoreError::Misconfigured(message))) => {
                    tracing::error!(%message, "this replica cannot lead any shard");
                    held.clear();
                    held_sender.send_replace(held.clone());
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "balancing the shard leases failed; retrying")
                }
                Err(_) => tracing::warn!("balancing the shard leases timed out; retrying"),
            }
            if !held.is_empty() {
                wait = wait.min(drop_at.saturating_duration_since(Instant::now()));
            }
            sleep_or_stop(wait, shutdown).await;
        }
        // the worker stops taking work; what is in flight gets the grace period
        let grace = self.settings.shutdown_grace;
        tokio::select! {
            () = worker_done.cancelled() => {}
            () = tokio::time::sleep(grace) => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "work in flight did not finish within the grace period");
            }
        }
        held_sender.send_replace(BTreeMap::new());
        self.context.stats.leading(&BTreeMap::new(), 0);
        let mut give_up = held;
        give_up.extend(std::mem::take(
            &mut *abandoned.lock().unwrap_or_else(PoisonError::into_inner),
        ));
        tracing::info!(
            shards = give_up.len(),
            "shutting down: giving the shards back"
        );
        if let Err(error) = self
            .leases
            .balance(&BTreeMap::new(), &give_up, Stance::Leave)
            .await
        {
            tracing::warn!(%error, "could not give the shards back; their leases expire on their own");
        }
    }

    /// The worker: take the shards the balancer publishes, fire what is due in their
    /// namespaces, judge kill switches, sleep until the next due time, an event or a change
    /// of shards, until the replica stops.
    async fn work(
        &self,
        leadership: &mut Leadership,
        mut held: watch::Receiver<BTreeMap<u32, u64>>,
    ) {
        let every = self.settings.renew_every();
        let health_interval = self.settings.health_check_interval;
        let mut next_refresh = Instant::now() + every;
        let mut next_health = Instant::now();
        let mut next_rescan = Instant::now() + KILL_SWITCH_RESCAN;
        let mut adopted = BTreeMap::new();
        // how long a step runs before a shard taken over meanwhile may interrupt it
        let patience = self.settings.lease_ttl;
        loop {
            if leadership.signal.is_triggered() {
                return;
            }
            // (`changed()` in the sleep marks a new value seen: compare, do not ask)
            let published = held.borrow_and_update().clone();
            if published != adopted {
                self.adopt(leadership, &published);
                adopted = published;
            }
            self.drain_events(leadership);
            let instant = Instant::now();
            if leadership.namespaces_stale || instant >= next_refresh {
                next_refresh = instant + every;
                let refreshed = unless_taken_over(
                    self.refresh_namespaces(leadership),
                    patience,
                    &mut held,
                    &adopted,
                )
                .await;
                if let Some(Err(error)) = refreshed {
                    tracing::warn!(%error, "namespace refresh failed");
                }
                if leadership.events.is_none() {
                    leadership.events = self.subscribe_events().await;
                }
            }
            if leadership.is_lost() {
                // nothing led: wait for shards (events still keep the subscription drained)
                let deadline = Instant::now() + KILL_SWITCH_RESCAN;
                self.sleep_until(leadership, &mut held, deadline).await;
                continue;
            }
            if instant >= next_rescan {
                next_rescan = instant + KILL_SWITCH_RESCAN;
                if let Err(error) = self.rescan_kill_switches(leadership).await {
                    tracing::warn!(%error, "kill switch rescan failed");
                }
            }
            if instant >= next_health {
                next_health = instant + health_interval;
                if let Err(error) = self.check_kill_switches(leadership).await {
                    tracing::warn!(%error, "kill switch check failed");
                }
            }
            if leadership.signal.is_triggered() {
                return;
            }
            let peeked =
                unless_taken_over(self.peek_due(leadership), patience, &mut held, &adopted).await;
            let Peek { now, next, open } = match peeked {
                // shards were taken meanwhile: adopt them first
                None => continue,
                Some(Ok(peek)) => peek,
                Some(Err(error)) => {
                    tracing::warn!(%error, "cannot read the due index; retrying");
                    sleep_or_stop(ERROR_BACKOFF, &leadership.signal).await;
                    continue;
                }
            };
            if next.is_some_and(|next| next <= now) {
                // the freezes the peek read serve the round too
                let fired = unless_taken_over(
                    self.fire_open(leadership, now, open),
                    patience,
                    &mut held,
                    &adopted,
                )
                .await;
                match fired {
                    // shards were taken meanwhile: adopt them first (the round's rollouts
                    // are still due and are looked at again)
                    None => {}
                    Some(Ok(round)) if round.errors > 0 && round.committed == 0 => {
                        sleep_or_stop(ERROR_BACKOFF, &leadership.signal).await;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::warn!(%error, "firing round failed; retrying");
                        sleep_or_stop(ERROR_BACKOFF, &leadership.signal).await;
                    }
                }
                continue;
            }
            let mut deadline = next_refresh.min(next_rescan);
            if leadership.kill_switches.any_enabled() {
                deadline = deadline.min(next_health);
            }
            if let Some(next) = next {
                let wait_ms = u64::try_from(next.millis_since(now)).unwrap_or(0);
                deadline = deadline.min(Instant::now() + Duration::from_millis(wait_ms));
            }
            self.sleep_until(leadership, &mut held, deadline).await;
        }
    }

    /// Sleeps until `deadline`, the replica stops, the shards held change, or a change
    /// event from another writer in a led shard arrives (our own events only update the
    /// kill switch index).
    async fn sleep_until(
        &self,
        leadership: &mut Leadership,
        held: &mut watch::Receiver<BTreeMap<u32, u64>>,
        deadline: Instant,
    ) {
        loop {
            let signal = leadership.signal.clone();
            let woke = tokio::select! {
                biased;
                () = signal.cancelled() => Wake::Stop,
                () = tokio::time::sleep_until(deadline) => Wake::Stop,
                changed = held.changed() => match changed {
                    Ok(()) => Wake::Stop,
                    // the balancer is gone: only the end of the run is left
                    Err(_) => Wake::Closed,
                },
                message = next_event(&mut leadership.events) => Wake::Event(message),
            };
            match woke {
                Wake::Stop => return,
                Wake::Closed => {
                    signal.cancelled().await;
                    return;
                }
                Wake::Event(None) => {
                    tracing::warn!("change event subscription ended; relying on timers");
                    leadership.events = None;
                }
                Wake::Event(Some(message)) => {
                    if self.absorb(leadership, &message) {
                        return;
                    }
                }
            }
        }
    }

    /// Takes every event already received, without waiting.
    fn drain_events(&self, leadership: &mut Leadership) {
        while let Some(Some(message)) = leadership
            .events
            .as_mut()
            .and_then(|subscriber| subscriber.next().now_or_never())
        {
            self.absorb(leadership, &message);
        }
    }

    /// Applies a change event to the leadership; `true` when it may have made something due
    /// earlier in a led shard (it came from another writer, or from a namespace of a led
    /// shard not fenced yet).
    fn absorb(&self, leadership: &mut Leadership, message: &async_nats::Message) -> bool {
        let Ok(Route::Events { namespace, flag }) = self.subjects.parse(message.subject.as_str())
        else {
            return false;
        };
        if !leadership.namespaces.contains_key(namespace.as_str()) {
            let shard = self.leases.shard_of(&namespace);
            if leadership.shards.contains_key(&shard) {
                leadership.namespaces_stale = true;
                return true;
            }
            return false;
        }
        let encoding = Encoding::from_content_type(
            message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(CONTENT_TYPE_HEADER))
                .map(|value| value.as_str()),
        );
        let own =
            codec::decode_with::<EventActor>(&message.payload, encoding, Limits::SERVICE_OUTPUT)
                .map(|peek| peek.actor.as_deref() == Some(TICKER_ACTOR))
                .unwrap_or(false);
        if !own || leadership.kill_switches.contains(namespace.as_str(), &flag) {
            match ChangeEvent::decode(&message.payload, encoding) {
                Ok(event) => leadership.kill_switches.absorb(&event),
                Err(error) => tracing::debug!(%error, "ignoring an undecodable change event"),
            }
        }
        !own
    }
}

/// Logs what a balancing step changed.
/// Drops from `held` the shards the worker gave up, each only at the epoch it gave it up
/// at: a lease of the same shard taken again since, at a newer epoch, stays held.
fn forget_given_up(held: &mut BTreeMap<u32, u64>, give_up: &BTreeMap<u32, u64>) {
    held.retain(|shard, epoch| give_up.get(shard) != Some(epoch));
}

fn log_balance(balance: &Balance) {
    if !balance.acquired.is_empty() {
        tracing::info!(shards = ?balance.acquired, replicas = balance.replicas, "shards taken");
    }
    if !balance.lost.is_empty() {
        tracing::warn!(shards = ?balance.lost, "shard leases lost: another replica leads them now");
    }
    if !balance.released.is_empty() {
        tracing::info!(shards = ?balance.released, replicas = balance.replicas, "shards given back");
    }
}

/// A spawned task that is aborted when its handle is dropped (a no-op once it finished).
struct Spawned<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Spawned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for Spawned<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(context)
    }
}

enum Wake {
    Stop,
    Closed,
    Event(Option<async_nats::Message>),
}
async fn next_event(events: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match events.as_mut() {
        Some(subscriber) => subscriber.next().await,
        None => std::future::pending().await,
    }
}

/// Runs a worker step (`step`) unless it has run for `patience` and, by then or later
/// before it ends, the balancer has published a shard (or an epoch) the worker has not
/// adopted yet: the replica took a shard over and must fence and fire it now. A step can
/// hang for the whole Redis response timeout on a connection that went silent under a
/// partition (the chaos tests use 30 s) while the balancer, whose attempts have their own
/// short deadline, already renews fresh leases on a new connection; without this, a
/// replica that regains shards leads them without firing them until that old request times
/// out. A step that is getting on (shorter than `patience`, a lease) is never dropped: a
/// round dropped between its commits and their publish leaves its events to the outbox
/// sweep, seconds later. `None` when the step gave way (it is dropped: its batches are
/// aborted, and whatever it left due is looked at again in the next round).
async fn unless_taken_over<T>(
    step: impl std::future::Future<Output = T>,
    patience: Duration,
    held: &mut watch::Receiver<BTreeMap<u32, u64>>,
    adopted: &BTreeMap<u32, u64>,
) -> Option<T> {
    let taken_over = async {
        tokio::time::sleep(patience).await;
        let gone = held
            .wait_for(|published| {
                published
                    .iter()
                    .any(|(shard, epoch)| adopted.get(shard) != Some(epoch))
            })
            .await
            .is_err();
        if gone {
            // the balancer is gone: only shutdown is left, which the worker checks itself
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        biased;
        value = step => Some(value),
        () = taken_over => None,
    }
}

async fn sleep_or_stop(duration: Duration, stop: &Shutdown) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(duration) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_given_up_is_forgotten_only_at_the_epoch_it_was_given_up_at() {
        let mut held = BTreeMap::from([(1, 5), (2, 7), (3, 9)]);
        // shard 1 given up at its epoch; shard 2 given up at epoch 6 and taken again at 7
        let give_up = BTreeMap::from([(1, 5), (2, 6)]);
        forget_given_up(&mut held, &give_up);
        assert_eq!(held, BTreeMap::from([(2, 7), (3, 9)]));
    }

    /// A worker step stuck on a silent Redis connection gives way once it has run for its
    /// patience and the balancer has published a shard it did not adopt, and only then: the
    /// same shards published again (every renewal does) or a shard lost leave it running,
    /// and a shard taken over early waits for the patience to run out.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_step_gives_way_to_shards_taken_over_only() {
        let adopted = BTreeMap::from([(3, 10)]);
        let (sender, mut held) = watch::channel(adopted.clone());
        let publisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            sender.send_replace(BTreeMap::from([(3, 10)]));
            tokio::time::sleep(Duration::from_millis(150)).await;
            sender.send_replace(BTreeMap::new());
            tokio::time::sleep(Duration::from_millis(150)).await;
            // taken over again, at a new epoch
            sender.send_replace(BTreeMap::from([(3, 11)]));
            sender
        });
        let patience = Duration::from_millis(200);
        let started = Instant::now();
        let stuck = std::future::pending::<()>();
        assert_eq!(
            unless_taken_over(stuck, patience, &mut held, &adopted).await,
            None
        );
        assert_eq!(started.elapsed(), Duration::from_millis(450));
        let sender = publisher.await.expect("publisher");
        // a step that ends first keeps its outcome
        let adopted = BTreeMap::from([(3, 11)]);
        assert_eq!(
            unless_taken_over(async { 7 }, patience, &mut held, &adopted).await,
            Some(7)
        );
        // a shard taken over while the step is young: it gives way at its patience
        sender.send_replace(BTreeMap::from([(3, 11), (4, 1)]));
        let started = Instant::now();
        assert_eq!(
            unless_taken_over(std::future::pending::<()>(), patience, &mut held, &adopted).await,
            None
        );
        assert_eq!(started.elapsed(), patience);
    }
}
