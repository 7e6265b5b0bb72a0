//! The ticker: campaign for the lease, and while leading, fire every due rollout at its
//! due time and judge kill switches; step down at once when the lease or a fence says
//! another replica leads, and release the lease on shutdown.
//!
//! There is no polling interval. The leader sleeps until the earliest score of any
//! namespace's `due` index (Redis time; a frozen namespace's index waits, and the end of its
//! freeze wakes the leader), or until a change event from another writer
//! arrives on `rollout.events.>` (a command may have made something due earlier), or until
//! its next kill switch check or namespace refresh. Lease renewal runs beside the work, so
//! a long round never delays it. A term subscribes to the change events before it reads
//! the namespaces and their flags, so a change lands in what it read or in what it hears.
//!
//! The steps are public so tests drive a ticker by hand: [`Ticker::campaign`] takes the
//! lease and fences every namespace, [`Ticker::fire_due`] runs one round,
//! [`Ticker::check_kill_switches`] one kill switch check, [`Ticker::resign`] releases.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use rollout_core::freeze::Freezes;
use rollout_core::{DurationMs, Timestamp};
use rollout_runtime::shutdown::Shutdown;
use rollout_store::lease::{FenceRaise, Lease};
use rollout_store::Keys;
use rollout_store::{due, namespaces, redis_time, Connection, Relay, Writer};
use rollout_wire::codec::{self, Encoding, Limits, CONTENT_TYPE_HEADER};
use rollout_wire::events::ChangeEvent;
use rollout_wire::subjects::{Namespace, Route, Subjects};
use serde::Deserialize;
use tokio::time::Instant;

use crate::config::TickerSettings;
use crate::error::TickerError;
use crate::fire::{fire_batch, FireContext, Fired, TICKER_ACTOR};
use crate::kill_switch::{KillSwitchReport, KillSwitches};
use crate::stats::TickerStats;

/// A namespace no freeze holds at a round's time, with its freezes (past ones still hold
/// the timers that ran out while they lasted).
type OpenNamespace = (Namespace, Keys, Arc<Freezes>);
/// The outcome of each rollout of a batch, or the batch's failed round trip.
type FiredBatch = Result<Vec<Result<Fired, rollout_store::StoreError>>, rollout_store::StoreError>;

/// What the leader's loop reads before deciding to fire or sleep.
struct Peek {
    /// Redis time.
    now: Timestamp,
    /// When something is next due (a due score or a freeze's end).
    next: Option<Timestamp>,
    /// The namespaces no freeze holds at `now`.
    open: Vec<OpenNamespace>,
}

/// The kill switch index is rebuilt from Redis this often, in case an event was missed.
const KILL_SWITCH_RESCAN: Duration = Duration::from_secs(300);
/// Pause after a round that failed, so a broken Redis is not hammered.
const ERROR_BACKOFF: Duration = Duration::from_millis(200);
/// Shortest wait between two attempts to take a free lease.
const MIN_CAMPAIGN_WAIT: Duration = Duration::from_millis(5);

/// One term of leadership: the epoch every write carries, the namespaces whose fence holds
/// it, and the kill switch index.
#[derive(Debug)]
pub struct Term {
    epoch: u64,
    namespaces: BTreeMap<String, (Namespace, Keys)>,
    kill_switches: KillSwitches,
    namespaces_stale: bool,
    lost: bool,
    /// Triggered when the term ends: shutdown, a failed renewal or a fence refusal.
    signal: Shutdown,
    /// The change events, subscribed before the term's first scan so that no change
    /// falls between what the scan read and what the subscription hears.
    events: Option<async_nats::Subscriber>,
}

impl Term {
    fn new(epoch: u64, signal: Shutdown, events: Option<async_nats::Subscriber>) -> Term {
        Term {
            epoch,
            namespaces: BTreeMap::new(),
            kill_switches: KillSwitches::default(),
            namespaces_stale: true,
            lost: false,
            signal,
            events,
        }
    }

    /// The epoch of this term.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether a fence or the lease said another replica leads now.
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// The namespaces fenced for this term.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.keys().cloned().collect()
    }

    /// How many flags with a kill switch the term knows.
    pub fn kill_switch_count(&self) -> usize {
        self.kill_switches.len()
    }

    fn lose(&mut self) {
        self.lost = true;
        self.signal.trigger();
    }
}

/// What one round of firing did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Due rollouts looked at.
    pub looked_at: usize,
    /// Transitions committed.
    pub committed: usize,
    /// Rollouts that failed (retried later).
    pub errors: usize,
    /// A write was refused by a fence: the term is lost.
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
    lease: Lease,
    context: FireContext,
    nats: async_nats::Client,
    subjects: Subjects,
    settings: TickerSettings,
}

impl Ticker {
    /// A replica using `redis` for state and the lease and `nats` for events.
    pub fn new(
        redis: Connection,
        nats: async_nats::Client,
        subjects: Subjects,
        settings: TickerSettings,
    ) -> Ticker {
        let replica = settings.replica();
        let stale_ms = i64::try_from(settings.stale_agent_after.as_millis()).unwrap_or(i64::MAX);
        Ticker {
            lease: Lease::new(redis.clone(), replica, settings.lease_ttl),
            context: FireContext {
                writer: Writer::publishing(
                    redis.clone(),
                    Relay::new(nats.clone(), redis.clone(), subjects.clone()),
                ),
                redis,
                stats: TickerStats::new(),
                stale_agent_after: DurationMs::from_millis(stale_ms),
            },
            nats,
            subjects,
            settings,
        }
    }

    /// The counters of this replica.
    pub fn stats(&self) -> TickerStats {
        self.context.stats.clone()
    }

    /// This replica's id in the lease.
    pub fn replica_id(&self) -> &str {
        self.lease.replica_id()
    }

    /// The lease handle.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// One attempt to become leader: take the lease if it is free, then raise every
    /// namespace's fence to the new epoch and index the kill switches. `None` when another
    /// replica holds the lease (or a fence showed a newer epoch).
    pub async fn campaign(&self) -> Result<Option<Term>, TickerError> {
        self.campaign_under(&Shutdown::new()).await
    }

    async fn campaign_under(&self, parent: &Shutdown) -> Result<Option<Term>, TickerError> {
        let Some(epoch) = self.lease.acquire().await? else {
            return Ok(None);
        };
        self.context.stats.term_started(epoch);
        tracing::info!(replica = %self.replica_id(), epoch, "leadership acquired");
        let events = self.subscribe_events().await;
        let mut term = Term::new(epoch, parent.child(), events);
        if let Err(error) = self.refresh_namespaces(&mut term).await {
            let _ = self.resign(term).await;
            return Err(error);
        }
        if term.lost {
            let _ = self.resign(term).await;
            return Ok(None);
        }
        Ok(Some(term))
    }

    /// Reads the namespace registry and fences (and indexes the kill switches of) every
    /// namespace the term does not hold yet. A fence above our epoch loses the term.
    pub async fn refresh_namespaces(&self, term: &mut Term) -> Result<(), TickerError> {
        let mut connection = self.context.redis.clone();
        for namespace in namespaces::registered(&mut connection).await? {
            if term.namespaces.contains_key(namespace.as_str()) {
                continue;
            }
            let keys = Keys::new(&namespace);
            match self.lease.raise_fence(&keys, term.epoch).await? {
                FenceRaise::Ours => {}
                FenceRaise::Ahead(fence) => {
                    tracing::warn!(namespace = %namespace, epoch = term.epoch, fence, "a namespace fence is ahead of our epoch; stepping down");
                    term.lose();
                    return Ok(());
                }
            }
            if let Err(error) = term
                .kill_switches
                .scan(&self.context, &namespace, &keys)
                .await
            {
                tracing::warn!(%error, namespace = %namespace, "kill switch index incomplete; rescanning later");
            }
            tracing::debug!(namespace = %namespace, epoch = term.epoch, "namespace fenced");
            term.namespaces
                .insert(namespace.as_str().to_owned(), (namespace, keys));
        }
        term.namespaces_stale = false;
        Ok(())
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

    /// Rebuilds the kill switch index of every fenced namespace.
    pub async fn rescan_kill_switches(&self, term: &mut Term) -> Result<(), TickerError> {
        for (namespace, keys) in term.namespaces.values() {
            term.kill_switches
                .scan(&self.context, namespace, keys)
                .await?;
        }
        Ok(())
    }

    /// One round: fires every rollout due at the current Redis time (up to a batch per
    /// namespace).
    pub async fn fire_due(&self, term: &mut Term) -> Result<Round, TickerError> {
        let mut connection = self.context.redis.clone();
        let now = redis_time(&mut connection).await?;
        self.fire_round(term, now).await
    }

    /// One round as if Redis time were `now`: fires every rollout due by then. Tests and
    /// benchmarks drive time with it; a transition a timer caused is still refused by the
    /// commit script while Redis time is before its due time ([`Fired::Early`]).
    pub async fn fire_round(&self, term: &mut Term, now: Timestamp) -> Result<Round, TickerError> {
        let mut connection = self.context.redis.clone();
        let (open, _) = self.partition(&mut connection, term, now).await?;
        self.fire_open(term, now, open).await
    }

    /// A round at `now` over `open`, the namespaces no freeze holds then (a frozen
    /// namespace's due rollouts are left where they are).
    async fn fire_open(
        &self,
        term: &mut Term,
        now: Timestamp,
        open: Vec<OpenNamespace>,
    ) -> Result<Round, TickerError> {
        let mut round = Round::default();
        if term.namespaces.is_empty() || term.signal.is_triggered() {
            return Ok(round);
        }
        let batch = self.settings.batch_size;
        let mut connection = self.context.redis.clone();
        let namespace_keys: Vec<&Keys> = open.iter().map(|(_, keys, _)| keys).collect();
        let due = due::due_by(&mut connection, &namespace_keys, now, batch).await?;
        let mut work = Vec::new();
        for ((namespace, keys, freezes), ids) in open.iter().zip(due) {
            round.full |= ids.len() >= batch;
            round.looked_at += ids.len();
            for chunk in ids.chunks(self.settings.commit_batch.max(1)) {
                work.push((
                    namespace.clone(),
                    keys.clone(),
                    Arc::clone(freezes),
                    chunk.to_vec(),
                ));
            }
        }
        let epoch = term.epoch;
        let fenced = Arc::new(AtomicBool::new(false));
        // `now` was read from Redis before the round; under a backlog a batch is fired
        // later in the round, and its transitions are stamped with the Redis time advanced
        // by the monotonic time since (never ahead of the real time: the clock started
        // after `now` was read)
        let round_started = Instant::now();
        // each batch is a task of its own, so batches decode, decide and encode on every
        // worker thread at once (they own what they use); a batch still running when the
        // round is dropped (the term overstayed its grace) is aborted with it
        let results: Vec<(Vec<String>, FiredBatch)> = futures_util::stream::iter(work)
            .map(|(namespace, keys, freezes, rollout_ids)| {
                let fenced = Arc::clone(&fenced);
                let context = self.context.clone();
                let signal = term.signal.clone();
                let batch = Spawned(tokio::spawn(async move {
                    // a term that ended stops taking work; what is in flight finishes
                    if signal.is_triggered() || fenced.load(Ordering::Relaxed) {
                        return (rollout_ids, Ok(Vec::new()));
                    }
                    let elapsed =
                        i64::try_from(round_started.elapsed().as_millis()).unwrap_or(i64::MAX);
                    let now = now.plus(DurationMs::from_millis(elapsed));
                    let fired = fire_batch(
                        &context,
                        &namespace,
                        &keys,
                        epoch,
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
                            fenced.store(true, Ordering::Relaxed);
                        }
                    }
                    (rollout_ids, fired)
                }));
                async move {
                    batch.await.unwrap_or_else(|error| {
                        let failed = rollout_store::StoreError::Protocol(format!(
                            "a firing batch did not finish: {error}"
                        ));
                        (Vec::new(), Err(failed))
                    })
                }
            })
            .buffer_unordered(self.settings.batches_in_flight())
            .collect()
            .await;
        for (rollout_ids, fired) in results {
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
        if round.fenced {
            tracing::warn!(
                epoch,
                "a fence refused our write: another replica leads; stepping down"
            );
            term.lose();
        }
        Ok(round)
    }

    /// Judges every enabled kill switch now, disabling the flags whose switch is breached.
    pub async fn check_kill_switches(
        &self,
        term: &mut Term,
    ) -> Result<KillSwitchReport, TickerError> {
        // judged with every change heard so far
        self.drain_events(term);
        if !term.kill_switches.any_enabled() {
            return Ok(KillSwitchReport::default());
        }
        let mut connection = self.context.redis.clone();
        let now = redis_time(&mut connection).await?;
        let report = term
            .kill_switches
            .check(&self.context, &term.namespaces, term.epoch, now)
            .await?;
        if report.fenced {
            term.lose();
        }
        Ok(report)
    }

    /// Extends the lease of `term`; `false` when it is no longer ours.
    pub async fn renew(&self, term: &Term) -> Result<bool, TickerError> {
        Ok(self.lease.renew(term.epoch).await?)
    }

    /// Ends `term`, releasing the lease if it is still ours so another replica takes over
    /// at once; `true` when it was released.
    pub async fn resign(&self, term: Term) -> Result<bool, TickerError> {
        term.signal.trigger();
        self.context.stats.term_ended();
        let released = self.lease.release(term.epoch).await?;
        tracing::info!(replica = %self.replica_id(), epoch = term.epoch, released, "leadership ended");
        Ok(released)
    }

    /// The current Redis time, the term's namespaces no freeze holds then, and when
    /// something is next due: the earliest due score over those namespaces, or the end of
    /// a freeze that has one.
    async fn peek_due(&self, term: &Term) -> Result<Peek, TickerError> {
        let mut connection = self.context.redis.clone();
        let now = redis_time(&mut connection).await?;
        let (open, thaws) = self.partition(&mut connection, term, now).await?;
        let open_keys: Vec<&Keys> = open.iter().map(|(_, keys, _)| keys).collect();
        let earliest = due::earliest(&mut connection, &open_keys).await?;
        let next = match (earliest, thaws) {
            (Some(earliest), Some(thaw)) => Some(earliest.min(thaw)),
            (earliest, thaw) => earliest.or(thaw),
        };
        Ok(Peek { now, next, open })
    }

    /// Splits the term's namespaces by their freezes at `now`: those no freeze holds, each
    /// with its freezes (past ones still hold the timers that ran out while they lasted),
    /// and the earliest end of a freeze that holds.
    async fn partition(
        &self,
        connection: &mut Connection,
        term: &Term,
        now: Timestamp,
    ) -> Result<(Vec<OpenNamespace>, Option<Timestamp>), TickerError> {
        let all: Vec<&Keys> = term.namespaces.values().map(|(_, keys)| keys).collect();
        let freezes = rollout_store::freezes::load_many(connection, &all).await?;
        let mut open = Vec::with_capacity(all.len());
        let mut thaws: Option<Timestamp> = None;
        for ((namespace, keys), freezes) in term.namespaces.values().zip(freezes) {
            match freezes.active_at(now) {
                Some(freeze) => {
                    if let Some(until) = freeze.until {
                        thaws = Some(thaws.map_or(until, |thaw| thaw.min(until)));
                    }
                }
                None => open.push((namespace.clone(), keys.clone(), Arc::new(freezes))),
            }
        }
        Ok((open, thaws))
    }

    /// Runs until `shutdown`: campaign, lead while leading, campaign again.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), TickerError> {
        tracing::info!(
            replica = %self.replica_id(),
            lease_ttl_ms = self.settings.lease_ttl.as_millis() as u64,
            renew_ms = self.settings.renew_every().as_millis() as u64,
            "ticker started"
        );
        while !shutdown.is_triggered() {
            match self.campaign_under(&shutdown).await {
                Ok(Some(term)) => self.lead(term, &shutdown).await,
                Ok(None) => self.wait_for_lease(&shutdown).await,
                Err(error) => {
                    tracing::warn!(%error, "campaign failed; trying again");
                    sleep_or_stop(self.settings.renew_every(), &shutdown).await;
                }
            }
        }
        let stats = self.context.stats.snapshot();
        tracing::info!(
            replica = %self.replica_id(),
            transitions = stats.transitions,
            fenced = stats.fenced,
            conflicts = stats.conflicts,
            terms = stats.terms,
            kill_switch_trips = stats.kill_switch_trips,
            lag_p99_ms = stats.lag_p99_ms,
            "ticker stopped"
        );
        Ok(())
    }

    /// Waits until the lease may be free: until it expires, but no longer than the
    /// renewal interval (a released lease is noticed within it).
    async fn wait_for_lease(&self, shutdown: &Shutdown) {
        let every = self.settings.renew_every();
        let wait = match self.lease.remaining().await {
            Ok(Some(remaining)) => remaining.min(every),
            Ok(None) => MIN_CAMPAIGN_WAIT,
            Err(error) => {
                tracing::warn!(%error, "cannot read the lease; trying again");
                every
            }
        };
        sleep_or_stop(wait.max(MIN_CAMPAIGN_WAIT), shutdown).await;
    }

    /// Leads for one term: work and lease renewal side by side until the term ends, then
    /// resign.
    async fn lead(&self, mut term: Term, shutdown: &Shutdown) {
        let signal = term.signal.clone();
        let grace = self.settings.shutdown_grace;
        let both = async {
            tokio::join!(
                self.keep_lease(term.epoch, signal.clone()),
                self.work(&mut term)
            )
        };
        let overstay = async {
            signal.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let still_ours = tokio::select! {
            (still_ours, ()) = both => still_ours,
            () = overstay => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "work in flight did not finish within the grace period");
                true
            }
        };
        term.events = None;
        if !still_ours {
            term.lost = true;
        }
        if shutdown.is_triggered() {
            tracing::info!(epoch = term.epoch, "shutting down: releasing the lease");
        }
        if let Err(error) = self.resign(term).await {
            tracing::warn!(%error, "could not release the lease; it expires on its own");
        }
    }

    /// Renews the lease every renewal interval until `signal`. Returns `false` (after
    /// triggering `signal`) when the lease is lost or could not be renewed before it would
    /// expire.
    async fn keep_lease(&self, epoch: u64, signal: Shutdown) -> bool {
        let every = self.settings.renew_every();
        let ttl = self.lease.ttl();
        let mut valid_until = Instant::now() + ttl;
        loop {
            tokio::select! {
                () = signal.cancelled() => return true,
                () = tokio::time::sleep(every) => {}
            }
            let attempt = Instant::now();
            match tokio::time::timeout(every, self.lease.renew(epoch)).await {
                Ok(Ok(true)) => valid_until = attempt + ttl,
                Ok(Ok(false)) => {
                    tracing::warn!(epoch, "the lease is held by another replica; stepping down");
                    signal.trigger();
                    return false;
                }
                Ok(Err(_)) | Err(_) if Instant::now() + every >= valid_until => {
                    tracing::warn!(
                        epoch,
                        "the lease could not be renewed before it expires; stepping down"
                    );
                    signal.trigger();
                    return false;
                }
                Ok(Err(error)) => tracing::warn!(%error, epoch, "lease renewal failed; retrying"),
                Err(_) => tracing::warn!(epoch, "lease renewal timed out; retrying"),
            }
        }
    }

    /// The leader's loop: fire what is due, judge kill switches, sleep until the next due
    /// time or an event, until the term ends.
    async fn work(&self, term: &mut Term) {
        let every = self.settings.renew_every();
        let health_interval = self.settings.health_check_interval;
        let mut next_refresh = Instant::now() + every;
        let mut next_health = Instant::now();
        let mut next_rescan = Instant::now() + KILL_SWITCH_RESCAN;
        loop {
            if term.signal.is_triggered() {
                return;
            }
            self.drain_events(term);
            let instant = Instant::now();
            if term.namespaces_stale || instant >= next_refresh {
                next_refresh = instant + every;
                if let Err(error) = self.refresh_namespaces(term).await {
                    tracing::warn!(%error, "namespace refresh failed");
                }
                if term.events.is_none() {
                    term.events = self.subscribe_events().await;
                }
            }
            if instant >= next_rescan {
                next_rescan = instant + KILL_SWITCH_RESCAN;
                if let Err(error) = self.rescan_kill_switches(term).await {
                    tracing::warn!(%error, "kill switch rescan failed");
                }
            }
            if instant >= next_health {
                next_health = instant + health_interval;
                if let Err(error) = self.check_kill_switches(term).await {
                    tracing::warn!(%error, "kill switch check failed");
                }
            }
            if term.signal.is_triggered() {
                return;
            }
            let Peek { now, next, open } = match self.peek_due(term).await {
                Ok(peek) => peek,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the due index; retrying");
                    sleep_or_stop(ERROR_BACKOFF, &term.signal).await;
                    continue;
                }
            };
            if next.is_some_and(|next| next <= now) {
                // the freezes the peek read serve the round too
                match self.fire_open(term, now, open).await {
                    Ok(round) if round.errors > 0 && round.committed == 0 => {
                        sleep_or_stop(ERROR_BACKOFF, &term.signal).await;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "firing round failed; retrying");
                        sleep_or_stop(ERROR_BACKOFF, &term.signal).await;
                    }
                }
                continue;
            }
            let mut deadline = next_refresh.min(next_rescan);
            if term.kill_switches.any_enabled() {
                deadline = deadline.min(next_health);
            }
            if let Some(next) = next {
                let wait_ms = u64::try_from(next.millis_since(now)).unwrap_or(0);
                deadline = deadline.min(Instant::now() + Duration::from_millis(wait_ms));
            }
            self.sleep_until(term, deadline).await;
        }
    }

    /// Sleeps until `deadline`, the end of the term, or a change event from another
    /// writer (our own events only update the kill switch index).
    async fn sleep_until(&self, term: &mut Term, deadline: Instant) {
        loop {
            let signal = term.signal.clone();
            let woke = tokio::select! {
                biased;
                () = signal.cancelled() => Wake::Stop,
                () = tokio::time::sleep_until(deadline) => Wake::Stop,
                message = next_event(&mut term.events) => Wake::Event(message),
            };
            match woke {
                Wake::Stop => return,
                Wake::Event(None) => {
                    tracing::warn!("change event subscription ended; relying on timers");
                    term.events = None;
                }
                Wake::Event(Some(message)) => {
                    if self.absorb(term, &message) {
                        return;
                    }
                }
            }
        }
    }

    /// Takes every event already received, without waiting.
    fn drain_events(&self, term: &mut Term) {
        while let Some(Some(message)) = term
            .events
            .as_mut()
            .and_then(|subscriber| subscriber.next().now_or_never())
        {
            self.absorb(term, &message);
        }
    }

    /// Applies a change event to the term; `true` when it may have made something due
    /// earlier (it came from another writer, or from a namespace not fenced yet).
    fn absorb(&self, term: &mut Term, message: &async_nats::Message) -> bool {
        let Ok(Route::Events { namespace, flag }) = self.subjects.parse(message.subject.as_str())
        else {
            return false;
        };
        if !term.namespaces.contains_key(namespace.as_str()) {
            term.namespaces_stale = true;
            return true;
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
        if !own || term.kill_switches.contains(namespace.as_str(), &flag) {
            match ChangeEvent::decode(&message.payload, encoding) {
                Ok(event) => term.kill_switches.absorb(&event),
                Err(error) => tracing::debug!(%error, "ignoring an undecodable change event"),
            }
        }
        !own
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
    Event(Option<async_nats::Message>),
}

async fn next_event(events: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match events.as_mut() {
        Some(subscriber) => subscriber.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_or_stop(duration: Duration, stop: &Shutdown) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(duration) => {}
    }
}
