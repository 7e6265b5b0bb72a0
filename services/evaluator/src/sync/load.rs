//! Reading from Redis: one flag, a namespace, everything; the generation check; the
//! resync worker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rollout_core::CompiledFlag;
use rollout_runtime::shutdown::Shutdown;
use rollout_store::Keys;
use rollout_store::{generation, load_flag, load_rollout, namespaces, reads, Connection};
use rollout_wire::subjects::Namespace;
use tokio::sync::mpsc;

use crate::snapshot::{FlagState, Held, LiveFlag, ResyncReason};
use crate::Shared;

use super::{ResyncRequest, SyncError};

/// Flags read from Redis at once during a sync.
const LOAD_CONCURRENCY: usize = 64;
/// Flags whose revision is asked for in one pipeline.
const REVISION_CHUNK: usize = 1000;
/// How often a flag is read again when its version moved while it was being read.
const MAX_LOAD_ATTEMPTS: u32 = 8;
/// Most resync requests handled together.
const RESYNC_BATCH: usize = 1024;
/// Capacity of the resync queue; beyond it, everything is compared instead.
pub(crate) const RESYNC_QUEUE: usize = 4096;

/// Reads the evaluable state of one flag: its record at a version and, when it has an
/// active rollout, that rollout's view. The two live in different hashes, so the flag's
/// revision is read again afterwards and the read repeated if it moved (every rollout
/// change also raises its flag's version). `None`: the flag never existed.
pub async fn load_state(
    redis: &Connection,
    namespace: &Namespace,
    key: &str,
) -> Result<Option<FlagState>, SyncError> {
    let keys = Keys::new(namespace);
    let mut connection = redis.clone();
    for _ in 0..MAX_LOAD_ATTEMPTS {
        let stored = load_flag(&mut connection, &keys, key).await?;
        let Some(record) = stored.record else {
            return Ok((stored.version > 0).then_some(FlagState::Deleted {
                version: stored.version,
            }));
        };
        let view = match &record.active_rollout {
            None => None,
            Some(rollout_id) => {
                let rollout = load_rollout(&mut connection, &keys, rollout_id).await?;
                let version = reads::flag_version(&mut connection, &keys, key).await?;
                if version != stored.version {
                    continue;
                }
                rollout.and_then(|rollout| rollout.state.view(&rollout.id, &rollout.plan))
            }
        };
        let compiled = CompiledFlag::compile(&record.flag, stored.version, view.as_ref()).map_err(
            |errors| SyncError::Compile {
                namespace: namespace.to_string(),
                flag: key.to_owned(),
                message: errors.to_string(),
            },
        )?;
        return Ok(Some(FlagState::Live(
            LiveFlag::new(compiled, view)
                .with_last_rollout(record.last_rollout)
                .committed_at(record.updated_at),
        )));
    }
    Err(SyncError::Unstable {
        namespace: namespace.to_string(),
        flag: key.to_owned(),
    })
}

/// Reads `flags` of `namespace` and installs whatever is newer than held; returns how
/// many were installed. A flag that fails is skipped; the first failure is returned
/// after the others are installed.
async fn load_and_install(
    shared: &Shared,
    namespace: &Namespace,
    flags: Vec<String>,
) -> Result<usize, SyncError> {
    let loaded = load_states(shared, namespace, flags).await;
    let mut first_error = None;
    let mut installed = 0;
    let mut writer = shared.served.snapshot.writer();
    writer.ensure_namespace(namespace.as_str());
    for (flag, state) in loaded {
        match state {
            Ok(Some(state)) => {
                if writer.install(namespace.as_str(), &flag, state) {
                    installed += 1;
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, namespace = %namespace, flag = %flag, "flag could not be loaded");
                first_error.get_or_insert(error);
            }
        }
    }
    drop(writer);
    match first_error {
        Some(error) => Err(error),
        None => Ok(installed),
    }
}

/// Reads the state of each of `flags`, [`LOAD_CONCURRENCY`] at a time.
async fn load_states(
    shared: &Shared,
    namespace: &Namespace,
    flags: impl IntoIterator<Item = String>,
) -> Vec<(String, Result<Option<FlagState>, SyncError>)> {
    futures_util::stream::iter(flags)
        .map(|flag| async move {
            let state = load_state(&shared.io.redis, namespace, &flag).await;
            (flag, state)
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .collect()
        .await
}

/// The flags Redis lists for `namespace` and those the snapshot holds (deletions included
/// when `with_deleted`).
async fn known_flags(
    shared: &Shared,
    namespace: &Namespace,
    with_deleted: bool,
) -> Result<BTreeSet<String>, SyncError> {
    let mut connection = shared.io.redis.clone();
    let listed = reads::flag_keys(&mut connection, &Keys::new(namespace)).await?;
    let mut flags: BTreeSet<String> = listed.into_iter().collect();
    if let Some(held) = shared.served.snapshot.namespace(namespace.as_str()) {
        if with_deleted {
            flags.extend(held.versions().into_keys());
        } else {
            flags.extend(held.live_keys());
        }
    }
    Ok(flags)
}

/// Compares every flag of `namespace` (those Redis lists and those held) with its
/// revision in Redis and reads again the ones held behind. Counts them as resyncs for
/// `reason` (`None` for the first load). Returns how many were behind. A flag Redis holds
/// at an older version than the one held, or at the version held but from another commit,
/// is replaced by what Redis holds: Redis was restored from an older backup.
pub async fn sync_namespace(
    shared: &Shared,
    namespace: &Namespace,
    reason: Option<ResyncReason>,
) -> Result<usize, SyncError> {
    let keys = Keys::new(namespace);
    let mut connection = shared.io.redis.clone();
    let candidates: Vec<String> = known_flags(shared, namespace, false)
        .await?
        .into_iter()
        .collect();
    let mut behind = Vec::new();
    let mut rewound = Vec::new();
    let mut diverged = Vec::new();
    for chunk in candidates.chunks(REVISION_CHUNK) {
        // what was held before Redis is read: Redis can only be below one of these versions,
        // or hold one from another commit, if it lost writes (an event is published after
        // its commit)
        let held_before: Vec<Option<Held>> = chunk
            .iter()
            .map(|flag| shared.served.snapshot.held(namespace.as_str(), flag))
            .collect();
        let stored = reads::flag_commits(&mut connection, &keys, chunk).await?;
        for ((flag, (revision, committed_at)), held_before) in
            chunk.iter().zip(stored).zip(held_before)
        {
            let stored = Held {
                version: revision,
                committed_at,
            };
            if revision < held_before.map_or(0, |held| held.version) {
                rewound.push(flag.clone());
                continue;
            }
            if held_before.is_some_and(|held| held.diverges_from(&stored)) {
                diverged.push(flag.clone());
                continue;
            }
            let held = shared
                .served
                .snapshot
                .held_version(namespace.as_str(), flag)
                .unwrap_or(0);
            if revision > held {
                behind.push(flag.clone());
            }
        }
    }
    if !rewound.is_empty() {
        tracing::warn!(namespace = %namespace, flags = rewound.len(), "redis holds older versions than served (restored from an older backup?); serving what it holds now");
        replace_with_stored(shared, namespace, rewound, ResyncReason::StoreReset).await?;
    }
    if !diverged.is_empty() {
        tracing::warn!(namespace = %namespace, flags = diverged.len(), "redis holds the versions served from other commits (restored from an older backup, and written since?); serving what it holds now");
        replace_with_stored(shared, namespace, diverged, ResyncReason::Diverged).await?;
    }
    let behind_count = behind.len();
    if let Some(reason) = reason {
        shared
            .metrics
            .add_resyncs(reason, u64::try_from(behind_count).unwrap_or(u64::MAX));
        if behind_count > 0 {
            tracing::info!(namespace = %namespace, flags = behind_count, reason = reason.as_str(), "flags behind redis, resynchronising");
        }
    }
    load_and_install(shared, namespace, behind).await?;
    Ok(behind_count)
}

/// Compares every namespace in the registry with Redis (see [`sync_namespace`]) and
/// measures the Redis clock. The first load passes `None`.
pub async fn full_sync(shared: &Shared, reason: Option<ResyncReason>) -> Result<(), SyncError> {
    let outcome = full_sync_inner(shared, reason).await;
    shared.metrics.add_full_sync(outcome.is_ok());
    outcome
}

async fn full_sync_inner(shared: &Shared, reason: Option<ResyncReason>) -> Result<(), SyncError> {
    shared.io.clock.measure(&shared.io.redis).await?;
    check_store_generation(shared).await?;
    let mut first_error = None;
    for namespace in known_namespaces(shared).await? {
        if let Err(error) = sync_namespace(shared, &namespace, reason).await {
            tracing::warn!(%error, namespace = %namespace, "namespace sync failed");
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// The namespaces in Redis's registry and those held.
pub(super) async fn known_namespaces(shared: &Shared) -> Result<Vec<Namespace>, SyncError> {
    let mut connection = shared.io.redis.clone();
    let mut known: BTreeSet<Namespace> = namespaces::registered(&mut connection)
        .await?
        .into_iter()
        .collect();
    // held namespaces were validated when they were loaded
    known.extend(
        shared
            .served
            .snapshot
            .namespaces()
            .iter()
            .filter_map(|held| Namespace::new(held.name()).ok()),
    );
    Ok(known.into_iter().collect())
}

/// Redis's generation id: the stored one, or a fresh one stored now if it was missing.
async fn read_store_generation(shared: &Shared) -> Result<String, SyncError> {
    let fresh = format!("{:032x}", rand::random::<u128>());
    let mut connection = shared.io.redis.clone();
    Ok(generation::current_or_set(&mut connection, &fresh).await?)
}

/// Compares Redis's generation id with the one the snapshot was loaded under and, when
/// Redis lost its data since, [`rebuild`]s the snapshot; the new id is recorded only once
/// that succeeded, so a failed rebuild is tried again. The first call only records it.
pub async fn check_store_generation(shared: &Shared) -> Result<(), SyncError> {
    let current = read_store_generation(shared).await?;
    let held = shared
        .served
        .store_generation
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if held.as_deref() == Some(current.as_str()) {
        return Ok(());
    }
    if let Some(held) = held {
        tracing::warn!(
            previous = %held,
            current = %current,
            "redis lost its data (its generation changed); rebuilding the snapshot from what it holds now"
        );
        rebuild(shared).await?;
    }
    *shared
        .served
        .store_generation
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(current);
    Ok(())
}

/// Installs what Redis holds for `flags` whatever version is held (a flag Redis no longer
/// has becomes deleted at version 0): for a Redis that lost data, whose history restarts
/// below what was served or diverged from it. Counted as resyncs for `reason`.
async fn replace_with_stored(
    shared: &Shared,
    namespace: &Namespace,
    flags: impl IntoIterator<Item = String>,
    reason: ResyncReason,
) -> Result<(), SyncError> {
    let loaded = load_states(shared, namespace, flags).await;
    let mut states = Vec::with_capacity(loaded.len());
    for (flag, state) in loaded {
        states.push((flag, state?.unwrap_or(FlagState::Deleted { version: 0 })));
    }
    let count = u64::try_from(states.len()).unwrap_or(u64::MAX);
    {
        let mut writer = shared.served.snapshot.writer();
        writer.ensure_namespace(namespace.as_str());
        for (flag, state) in states {
            writer.replace(namespace.as_str(), &flag, state);
        }
    }
    shared.metrics.add_resyncs(reason, count);
    Ok(())
}

/// Reads every flag Redis lists or the snapshot holds and installs what Redis has,
/// whatever version is held: a flag Redis no longer has becomes deleted at version 0, so
/// the new history's first version applies. Afterwards each namespace is compared with
/// Redis once more, which brings up to date any flag whose event was applied while its
/// read was under way.
pub async fn rebuild(shared: &Shared) -> Result<(), SyncError> {
    for namespace in known_namespaces(shared).await? {
        let flags = known_flags(shared, &namespace, true).await?;
        replace_with_stored(shared, &namespace, flags, ResyncReason::StoreReset).await?;
        sync_namespace(shared, &namespace, None).await?;
    }
    Ok(())
}

/// Reads the requested flags again; the newer of what is held and what Redis has wins.
pub async fn resync_flags(shared: &Shared, requests: Vec<ResyncRequest>) -> Result<(), SyncError> {
    let mut by_namespace: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for request in requests {
        shared.metrics.add_resyncs(request.reason, 1);
        tracing::debug!(namespace = %request.namespace, flag = %request.flag, reason = request.reason.as_str(), "resynchronising flag");
        by_namespace
            .entry(request.namespace)
            .or_default()
            .insert(request.flag);
    }
    let mut first_error = None;
    for (name, flags) in by_namespace {
        let Ok(namespace) = Namespace::new(name.as_str()) else {
            continue;
        };
        if let Err(error) = load_and_install(shared, &namespace, flags.into_iter().collect()).await
        {
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Reads flags named by resync requests, compares everything with Redis every
/// `resync_interval`, and after a NATS reconnection, a queue overflow or a failed
/// resync compares everything at the next check.
pub(crate) async fn resync_worker(
    shared: Arc<Shared>,
    mut requests: mpsc::Receiver<ResyncRequest>,
    shutdown: Shutdown,
) {
    let settings = &shared.settings;
    let mut periodic = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.resync_interval,
        settings.resync_interval,
    );
    periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(settings.reconnect_check_interval);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let statistics = shared.io.nats.statistics();
    let mut connects = statistics.connects.load(Ordering::Relaxed);
    let mut slow_consumers = shared.served.nats_events.slow_consumers();
    let mut pending_full: Option<ResyncReason> = None;
    let mut requests_closed = false;
    let mut watch = super::VersionWatch::default();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            request = requests.recv(), if !requests_closed => {
                // the applier is gone (its subscription ended): keep the periodic
                // comparisons, which now carry the snapshot alone
                let Some(request) = request else {
                    requests_closed = true;
                    continue;
                };
                let mut batch = vec![request];
                while batch.len() < RESYNC_BATCH {
                    match requests.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                let reason = batch[0].reason;
                if let Err(error) = resync_flags(&shared, batch).await {
                    tracing::warn!(%error, "resync failed; comparing everything at the next check");
                    pending_full.get_or_insert(reason);
                }
            }
            _ = periodic.tick() => {
                if let Err(error) = full_sync(&shared, Some(ResyncReason::Periodic)).await {
                    tracing::warn!(%error, "periodic comparison with redis failed");
                    pending_full.get_or_insert(ResyncReason::Periodic);
                }
            }
            _ = check.tick() => {
                let now_connects = statistics.connects.load(Ordering::Relaxed);
                if now_connects != connects {
                    connects = now_connects;
                    tracing::info!("nats reconnected; comparing every flag with redis");
                    // the flush is a round trip: the server has our subscriptions again
                    // before redis is read, so no event falls between the two
                    if let Err(error) = shared.io.nats.flush().await {
                        tracing::warn!(%error, "nats flush after reconnect failed");
                    }
                    pending_full = Some(ResyncReason::Reconnect);
                }
                let now_slow = shared.served.nats_events.slow_consumers();
                if now_slow != slow_consumers {
                    slow_consumers = now_slow;
                    tracing::warn!("nats dropped messages (slow consumer); comparing every flag with redis");
                    pending_full.get_or_insert(ResyncReason::SlowConsumer);
                }
                if shared.served.resync_overflow.swap(false, Ordering::Relaxed) {
                    pending_full.get_or_insert(ResyncReason::Overflow);
                }
                // one SET NX GET: catches a Redis that lost its data within a check interval;
                // a failed check changes nothing and is simply made again at the next tick
                if let Err(error) = check_store_generation(&shared).await {
                    tracing::debug!(%error, "checking redis's generation failed; trying again at the next check");
                }
                // a change whose event never arrived (the last of its flag: no later one
                // reveals the gap) shows in its namespace's version counter
                match watch.check(&shared).await {
                    Ok(0) => {}
                    Ok(missed) => tracing::info!(flags = missed, "changes whose events never arrived, read from redis"),
                    Err(error) => tracing::debug!(%error, "checking the namespaces' version counters failed; trying again at the next check"),
                }
                if let Some(reason) = pending_full.take() {
                    if let Err(error) = full_sync(&shared, Some(reason)).await {
                        tracing::warn!(%error, reason = reason.as_str(), "comparison with redis failed; retrying");
                        pending_full = Some(reason);
                    }
                }
            }
        }
    }
}

/// The first full load, retried with backoff until it succeeds; `false` on shutdown.
pub(crate) async fn first_load(shared: &Shared, shutdown: &Shutdown) -> bool {
    let mut delay = Duration::from_millis(100);
    loop {
        match full_sync(shared, None).await {
            Ok(()) => return true,
            Err(error) => {
                tracing::warn!(%error, retry_ms = delay.as_millis() as u64, "first load from redis failed; retrying");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
