//! The in-memory snapshot every evaluation reads: per namespace, each flag compiled at its
//! version (or the version at which it was deleted), and the rule deciding what a change
//! event does to it.
//!
//! Readers never block and never wait for writers: the namespace map, each namespace's
//! flag index and each flag's state sit behind [`ArcSwap`]s, so a read is a few atomic
//! loads. Writers — the event applier and the resync worker — take one mutex between
//! them, and every install is a compare on versions: a flag's version only ever rises.
//!
//! A flag update swaps one slot; only a flag key never seen before (or a new namespace)
//! rebuilds an index, once per batch of writes. Each batch that changes a namespace notes
//! it for [`Snapshot::take_changed`] and wakes [`Snapshot::changed`] (the OFREP change push,
//! [`crate::push`]).
//!
//! A version is known by its number and the Redis time of the commit that wrote it
//! ([`Held`]): after Redis was restored from an older backup, its new history can reach a
//! version number served from the lost one with other content, and only the commit time
//! tells them apart.
//!
//! **Architecture Invariant:** nothing here does IO; [`decide`] is the whole apply rule
//! and is tested without servers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use rollout_core::{CompiledFlag, RolloutView, Timestamp};

use crate::metrics::EvalCounters;

/// A flag as served: compiled at one version, with the view of its active rollout (kept
/// for fleet answers, which name the agent's label stage).
#[derive(Debug)]
pub struct LiveFlag {
    compiled: CompiledFlag,
    // boxed: most flags have no active rollout, and an inline view would double the
    // size of every flag's state
    rollout: Option<Box<RolloutView>>,
    /// The rollout that last finished on the flag, while none is active: agents' reports
    /// without a rollout id count for it.
    last_rollout: Option<String>,
    /// The Redis time of the commit that wrote this version, when known.
    committed_at: Option<Timestamp>,
}

impl LiveFlag {
    /// A flag compiled with the view `rollout` of its active rollout.
    pub fn new(compiled: CompiledFlag, rollout: Option<RolloutView>) -> LiveFlag {
        LiveFlag {
            compiled,
            rollout: rollout.map(Box::new),
            last_rollout: None,
            committed_at: None,
        }
    }

    /// The same, written by the commit at Redis time `at` (the flag record's `updated_at`,
    /// each of that commit's events' `time`).
    #[must_use]
    pub fn committed_at(mut self, at: Timestamp) -> LiveFlag {
        self.committed_at = Some(at);
        self
    }

    /// The same, remembering the rollout that last finished on the flag.
    #[must_use]
    pub fn with_last_rollout(mut self, last_rollout: Option<String>) -> LiveFlag {
        self.last_rollout = last_rollout;
        self
    }

    /// The rollout that last finished on the flag.
    pub fn last_rollout(&self) -> Option<&str> {
        self.last_rollout.as_deref()
    }

    /// The compiled flag.
    pub fn compiled(&self) -> &CompiledFlag {
        &self.compiled
    }

    /// The active rollout's view, while one runs or is paused.
    pub fn rollout(&self) -> Option<&RolloutView> {
        self.rollout.as_deref()
    }

    /// Per-flag state version.
    pub fn version(&self) -> u64 {
        self.compiled.version()
    }
}

/// What the snapshot holds for one flag key.
// each state sits alone behind an `Arc` and deletions are rare: boxing the live variant
// would only add an indirection to every evaluation
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum FlagState {
    /// Served.
    Live(LiveFlag),
    /// Deleted at `version`: kept so a late, older event cannot bring it back.
    Deleted {
        /// Version of the deletion.
        version: u64,
    },
}

impl FlagState {
    /// The version this state stands for.
    pub fn version(&self) -> u64 {
        match self {
            FlagState::Live(live) => live.version(),
            FlagState::Deleted { version } => *version,
        }
    }

    /// The version and, for a served flag, the time of the commit that wrote it.
    pub fn held(&self) -> Held {
        match self {
            FlagState::Live(live) => Held {
                version: live.version(),
                committed_at: live.committed_at,
            },
            FlagState::Deleted { version } => Held {
                version: *version,
                committed_at: None,
            },
        }
    }

    /// The served flag, unless deleted.
    pub fn live(&self) -> Option<&LiveFlag> {
        match self {
            FlagState::Live(live) => Some(live),
            FlagState::Deleted { .. } => None,
        }
    }
}

/// What the snapshot holds of a flag: a version, and the Redis time of the commit that
/// wrote it when known (not for deletions, nor for records that do not say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The version.
    pub version: u64,
    /// The commit's Redis time.
    pub committed_at: Option<Timestamp>,
}

impl Held {
    /// How `other`'s commit compares in time with this one's, when both are of the same
    /// version and both times are known; `None` otherwise.
    fn commit_order(&self, other: &Held) -> Option<std::cmp::Ordering> {
        match (self.committed_at, other.committed_at) {
            (Some(mine), Some(theirs)) if self.version == other.version => Some(theirs.cmp(&mine)),
            _ => None,
        }
    }

    /// Whether `other` is the same version written by another commit: two histories,
    /// one of them lost by Redis.
    pub fn diverges_from(&self, other: &Held) -> bool {
        self.commit_order(other)
            .is_some_and(|order| order != std::cmp::Ordering::Equal)
    }

    /// Whether `other` is the same version written by a later commit: the history Redis
    /// went on with after losing this one (a restore comes after what it loses, and the
    /// new history after the restore). A read of the lost history that arrives late is
    /// not one.
    pub fn superseded_by(&self, other: &Held) -> bool {
        self.commit_order(other) == Some(std::cmp::Ordering::Greater)
    }
}

/// Why a flag is read again from Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResyncReason {
    /// An event's version skipped at least one version.
    Gap,
    /// An event without a usable snapshot.
    NoSnapshot,
    /// An event that could not be decoded or compiled.
    Invalid,
    /// The periodic comparison of versions with Redis found the flag behind.
    Periodic,
    /// After a NATS reconnection (events may have been missed meanwhile).
    Reconnect,
    /// Too many resyncs were queued at once; everything was compared instead.
    Overflow,
    /// The NATS client dropped messages of a subscription that did not keep up (a slow
    /// consumer): events may be lost, so everything was compared.
    SlowConsumer,
    /// Redis lost its data (its generation id changed): every flag was read again and
    /// replaced, whatever version was held.
    StoreReset,
    /// The namespace's flag-version counter showed a change whose event never arrived
    /// (see `sync::watch`).
    Missed,
    /// An event or Redis has the version held from another commit: Redis was restored
    /// from an older backup and its new history reached the version served from the lost
    /// one.
    Diverged,
}

impl ResyncReason {
    /// Every reason, in metric order.
    pub const ALL: [ResyncReason; 10] = [
        ResyncReason::Gap,
        ResyncReason::NoSnapshot,
        ResyncReason::Invalid,
        ResyncReason::Periodic,
        ResyncReason::Reconnect,
        ResyncReason::Overflow,
        ResyncReason::SlowConsumer,
        ResyncReason::StoreReset,
        ResyncReason::Missed,
        ResyncReason::Diverged,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::Gap => "gap",
            ResyncReason::NoSnapshot => "no_snapshot",
            ResyncReason::Invalid => "invalid",
            ResyncReason::Periodic => "periodic",
            ResyncReason::Reconnect => "reconnect",
            ResyncReason::Overflow => "overflow",
            ResyncReason::SlowConsumer => "slow_consumer",
            ResyncReason::StoreReset => "store_reset",
            ResyncReason::Missed => "missed",
            ResyncReason::Diverged => "diverged",
        }
    }

    /// Position in [`ResyncReason::ALL`].
    pub fn index(self) -> usize {
        ResyncReason::ALL
            .iter()
            .position(|reason| *reason == self)
            .unwrap_or(0)
    }
}

/// What a change event does to the flag it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventAction {
    /// At or below the version held: already applied, or older. Nothing changes.
    Ignore,
    /// The next version, with the whole state: compile and install its snapshot.
    Apply,
    /// The next version, and the flag is deleted.
    Delete,
    /// The flag cannot be brought up to date from this event: read it from Redis.
    Resync(ResyncReason),
}

/// The apply rule. `held` is what is held for the flag (`None`: never seen, which counts as
/// version 0); the event is at `event_version`, committed at `event_time`;
/// `snapshot_version` is the version of the event's snapshot, if it has one.
///
/// - the version held, committed later: Redis lost the history held and its new one
///   reached the same version, read the flag from Redis (committed earlier: a straggler
///   of the lost history, ignored);
/// - at or below `held`: ignore (never go backwards; duplicates are harmless);
/// - more than one above: a gap, resync;
/// - exactly one above: a deletion deletes; a snapshot at least as new as the event is
///   installed (one commit may publish several events that all carry its final
///   snapshot); anything else is read from Redis.
pub fn decide(
    held: Option<Held>,
    event_version: u64,
    event_time: Timestamp,
    deleted: bool,
    snapshot_version: Option<u64>,
) -> EventAction {
    let event = Held {
        version: event_version,
        committed_at: Some(event_time),
    };
    if held.is_some_and(|held| held.superseded_by(&event)) {
        return EventAction::Resync(ResyncReason::Diverged);
    }
    let held_version = held.map_or(0, |held| held.version);
    if event_version <= held_version {
        return EventAction::Ignore;
    }
    if event_version > held_version.saturating_add(1) {
        return EventAction::Resync(ResyncReason::Gap);
    }
    if deleted {
        return EventAction::Delete;
    }
    match snapshot_version {
        Some(version) if version >= event_version => EventAction::Apply,
        _ => EventAction::Resync(ResyncReason::NoSnapshot),
    }
}

#[derive(Debug)]
struct FlagSlot {
    key: String,
    state: ArcSwap<FlagState>,
}

/// The flags of one namespace: by key for lookups, in key order for "all flags".
#[derive(Debug, Default)]
struct FlagIndex {
    by_key: HashMap<String, Arc<FlagSlot>>,
    ordered: Vec<Arc<FlagSlot>>,
}

impl FlagIndex {
    fn with_new(&self, additions: BTreeMap<String, Arc<FlagState>>) -> FlagIndex {
        let mut by_key = self.by_key.clone();
        let mut ordered = self.ordered.clone();
        for (key, state) in additions {
            let slot = Arc::new(FlagSlot {
                key: key.clone(),
                state: ArcSwap::new(state),
            });
            ordered.push(Arc::clone(&slot));
            by_key.insert(key, slot);
        }
        ordered.sort_by(|left, right| left.key.cmp(&right.key));
        FlagIndex { by_key, ordered }
    }
}

/// One namespace's flags, with its evaluation counters.
#[derive(Debug)]
pub struct NamespaceSnapshot {
    name: String,
    index: ArcSwap<FlagIndex>,
    counters: EvalCounters,
}

impl NamespaceSnapshot {
    fn new(name: &str) -> NamespaceSnapshot {
        NamespaceSnapshot {
            name: name.to_owned(),
            index: ArcSwap::from_pointee(FlagIndex::default()),
            counters: EvalCounters::default(),
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Evaluation counters of this namespace.
    pub fn counters(&self) -> &EvalCounters {
        &self.counters
    }

    /// Runs `read` on the served flag `key`; `None` when there is none (or it is deleted).
    pub fn with_flag<R>(&self, key: &str, read: impl FnOnce(&LiveFlag) -> R) -> Option<R> {
        let index = self.index.load();
        let slot = index.by_key.get(key)?;
        let state = slot.state.load();
        state.live().map(read)
    }

    /// Runs `read` on every served flag, in key order.
    pub fn for_each_flag(&self, mut read: impl FnMut(&LiveFlag)) {
        let index = self.index.load();
        for slot in &index.ordered {
            let state = slot.state.load_full();
            if let Some(live) = state.live() {
                read(live);
            }
        }
    }

    /// The version held for `key`, including a deletion's.
    pub fn held_version(&self, key: &str) -> Option<u64> {
        self.held(key).map(|held| held.version)
    }

    /// What is held for `key`, including a deletion.
    pub fn held(&self, key: &str) -> Option<Held> {
        let index = self.index.load();
        index.by_key.get(key).map(|slot| slot.state.load().held())
    }

    /// Every key held with its version and whether it is served (false: deleted).
    pub fn versions(&self) -> BTreeMap<String, (u64, bool)> {
        let index = self.index.load();
        index
            .ordered
            .iter()
            .map(|slot| {
                let state = slot.state.load();
                (slot.key.clone(), (state.version(), state.live().is_some()))
            })
            .collect()
    }

    /// Keys of the served flags.
    pub fn live_keys(&self) -> Vec<String> {
        let index = self.index.load();
        index
            .ordered
            .iter()
            .filter(|slot| slot.state.load().live().is_some())
            .map(|slot| slot.key.clone())
            .collect()
    }

    /// The sum of the versions of the served flags (deletions not included).
    pub fn live_version_sum(&self) -> u64 {
        let index = self.index.load();
        index
            .ordered
            .iter()
            .filter_map(|slot| {
                let state = slot.state.load();
                state.live().is_some().then(|| state.version())
            })
            .fold(0_u64, u64::saturating_add)
    }

    /// How many flags are served, and the sum of every held version (deletions included):
    /// the sum only rises, and replicas holding the same state report the same sum.
    pub fn totals(&self) -> (u64, u64) {
        let index = self.index.load();
        let mut live = 0_u64;
        let mut version_sum = 0_u64;
        for slot in &index.ordered {
            let state = slot.state.load();
            version_sum = version_sum.saturating_add(state.version());
            if state.live().is_some() {
                live += 1;
            }
        }
        (live, version_sum)
    }
}

#[derive(Debug, Default)]
struct Inner {
    namespaces: ArcSwap<HashMap<String, Arc<NamespaceSnapshot>>>,
    writer: Mutex<()>,
    /// Namespaces whose flags changed since [`Snapshot::take_changed`] last looked.
    changed: Mutex<BTreeSet<String>>,
    /// Woken when `changed` gains a namespace (a permit is kept if nobody waits).
    change_signal: tokio::sync::Notify,
}

/// Every namespace's flags. Cheap to clone; clones share the same state.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    inner: Arc<Inner>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    /// One namespace, if anything of it is known.
    pub fn namespace(&self, name: &str) -> Option<Arc<NamespaceSnapshot>> {
        self.inner.namespaces.load().get(name).cloned()
    }

    /// Every known namespace, by name.
    pub fn namespaces(&self) -> Vec<Arc<NamespaceSnapshot>> {
        let mut all: Vec<_> = self.inner.namespaces.load().values().cloned().collect();
        all.sort_by(|left, right| left.name.cmp(&right.name));
        all
    }

    /// The version held for flag `key` of `namespace`, including a deletion's.
    pub fn held_version(&self, namespace: &str, key: &str) -> Option<u64> {
        self.namespace(namespace)?.held_version(key)
    }

    /// What is held for flag `key` of `namespace`, including a deletion.
    pub fn held(&self, namespace: &str, key: &str) -> Option<Held> {
        self.namespace(namespace)?.held(key)
    }

    /// Waits until a batch of writes changed some namespace since the last
    /// [`Snapshot::take_changed`] (returns at once if one did meanwhile).
    pub async fn changed(&self) {
        self.inner.change_signal.notified().await;
    }

    /// The namespaces whose flags changed since the last call, forgetting them.
    pub fn take_changed(&self) -> BTreeSet<String> {
        std::mem::take(
            &mut *self
                .inner
                .changed
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Starts a batch of writes; they become visible as they are installed (updates of
    /// known flags) or when the writer is dropped (new keys and namespaces).
    pub fn writer(&self) -> SnapshotWriter<'_> {
        SnapshotWriter {
            snapshot: self,
            _exclusive: self
                .inner
                .writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            new_flags: BTreeMap::new(),
            new_namespaces: Vec::new(),
            touched: BTreeSet::new(),
        }
    }
}

/// Exclusive access for installing flag states. Dropping it publishes what is pending.
#[derive(Debug)]
pub struct SnapshotWriter<'s> {
    snapshot: &'s Snapshot,
    _exclusive: MutexGuard<'s, ()>,
    new_flags: BTreeMap<String, BTreeMap<String, Arc<FlagState>>>,
    new_namespaces: Vec<String>,
    /// Namespaces this batch changed a flag of.
    touched: BTreeSet<String>,
}

impl SnapshotWriter<'_> {
    /// The version held for `key` of `namespace`, counting writes of this batch.
    pub fn held_version(&self, namespace: &str, key: &str) -> Option<u64> {
        self.held(namespace, key).map(|held| held.version)
    }

    /// What is held for `key` of `namespace`, counting writes of this batch.
    pub fn held(&self, namespace: &str, key: &str) -> Option<Held> {
        if let Some(state) = self
            .new_flags
            .get(namespace)
            .and_then(|flags| flags.get(key))
        {
            return Some(state.held());
        }
        self.snapshot.held(namespace, key)
    }

    /// Makes sure `namespace` exists (empty) once this batch is published.
    pub fn ensure_namespace(&mut self, namespace: &str) {
        if self.snapshot.namespace(namespace).is_none()
            && !self.new_namespaces.iter().any(|name| name == namespace)
        {
            self.new_namespaces.push(namespace.to_owned());
        }
    }

    /// Installs `state` for `key` of `namespace` if it is newer than what is held, or the
    /// held version written by a later commit (read from Redis after the two diverged);
    /// returns whether it did.
    pub fn install(&mut self, namespace: &str, key: &str, state: FlagState) -> bool {
        let newer = match self.held(namespace, key) {
            None => true,
            Some(held) => state.version() > held.version || held.superseded_by(&state.held()),
        };
        if !newer {
            return false;
        }
        self.replace(namespace, key, state);
        true
    }

    /// Installs `state` for `key` of `namespace` whatever version is held: only for a
    /// rebuild after Redis lost its data, when the held versions belong to a lost history.
    pub fn replace(&mut self, namespace: &str, key: &str, state: FlagState) {
        if !self.touched.contains(namespace) {
            self.touched.insert(namespace.to_owned());
        }
        let existing_slot = self.snapshot.namespace(namespace).and_then(|snapshot| {
            let index = snapshot.index.load();
            index.by_key.get(key).cloned()
        });
        match existing_slot {
            Some(slot) => slot.state.store(Arc::new(state)),
            None => {
                self.ensure_namespace(namespace);
                self.new_flags
                    .entry(namespace.to_owned())
                    .or_default()
                    .insert(key.to_owned(), Arc::new(state));
            }
        }
    }

    fn publish(&mut self) {
        let inner = &self.snapshot.inner;
        if !self.new_namespaces.is_empty() {
            let mut namespaces = HashMap::clone(&inner.namespaces.load());
            for name in self.new_namespaces.drain(..) {
                namespaces
                    .entry(name.clone())
                    .or_insert_with(|| Arc::new(NamespaceSnapshot::new(&name)));
            }
            inner.namespaces.store(Arc::new(namespaces));
        }
        for (namespace, additions) in std::mem::take(&mut self.new_flags) {
            if let Some(snapshot) = self.snapshot.namespace(&namespace) {
                let index = snapshot.index.load_full().with_new(additions);
                snapshot.index.store(Arc::new(index));
            }
        }
        if !self.touched.is_empty() {
            inner
                .changed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .append(&mut self.touched);
            inner.change_signal.notify_one();
        }
    }
}

impl Drop for SnapshotWriter<'_> {
    fn drop(&mut self) {
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::{Entity, Flag};

    fn flag(key: &str, serve: &str) -> Flag {
        serde_json::from_value(serde_json::json!({
            "key": key,
            "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
            "off_variation": "off",
            "default": {"variation": serve},
        }))
        .expect("flag")
    }

    /// The time of the commits in these tests.
    fn at() -> Timestamp {
        Timestamp::from_millis(1_000)
    }

    /// `version` held, committed at [`at`].
    fn held(version: u64) -> Option<Held> {
        Some(Held {
            version,
            committed_at: Some(at()),
        })
    }

    fn live(key: &str, version: u64, serve: &str) -> FlagState {
        let compiled = CompiledFlag::compile(&flag(key, serve), version, None).expect("compiles");
        FlagState::Live(LiveFlag::new(compiled, None))
    }

    fn served(snapshot: &Snapshot, namespace: &str, key: &str) -> Option<(String, u64)> {
        snapshot.namespace(namespace)?.with_flag(key, |live| {
            let evaluation = live.compiled().evaluate(&Entity::with_id("u"));
            (evaluation.variation.to_owned(), live.version())
        })
    }

    #[test]
    fn the_apply_rule_never_goes_backwards_and_resyncs_on_gaps() {
        assert_eq!(decide(None, 1, at(), false, Some(1)), EventAction::Apply);
        assert_eq!(
            decide(None, 3, at(), false, Some(3)),
            EventAction::Resync(ResyncReason::Gap)
        );
        assert_eq!(
            decide(held(4), 4, at(), false, Some(4)),
            EventAction::Ignore
        );
        assert_eq!(decide(held(4), 2, at(), true, None), EventAction::Ignore);
        assert_eq!(decide(held(4), 5, at(), false, Some(5)), EventAction::Apply);
        // one commit publishing two events: both carry the final snapshot
        assert_eq!(decide(held(4), 5, at(), false, Some(6)), EventAction::Apply);
        assert_eq!(
            decide(held(6), 6, at(), false, Some(6)),
            EventAction::Ignore
        );
        assert_eq!(
            decide(held(4), 7, at(), false, Some(7)),
            EventAction::Resync(ResyncReason::Gap)
        );
        assert_eq!(decide(held(4), 5, at(), true, None), EventAction::Delete);
        assert_eq!(
            decide(held(4), 5, at(), false, None),
            EventAction::Resync(ResyncReason::NoSnapshot)
        );
        assert_eq!(
            decide(held(4), 5, at(), false, Some(4)),
            EventAction::Resync(ResyncReason::NoSnapshot)
        );
        assert_eq!(
            decide(held(u64::MAX), u64::MAX, at(), false, None),
            EventAction::Ignore
        );
    }

    #[test]
    fn the_version_held_from_another_commit_is_read_from_redis() {
        let later = Timestamp::from_millis(9_000);
        // Redis lost the history held and its new one reached the same version
        assert_eq!(
            decide(held(4), 4, later, false, Some(4)),
            EventAction::Resync(ResyncReason::Diverged)
        );
        assert_eq!(
            decide(held(4), 4, later, true, None),
            EventAction::Resync(ResyncReason::Diverged)
        );
        // a straggler of the lost history, committed before the version held
        assert_eq!(
            decide(held(4), 4, Timestamp::from_millis(500), false, Some(4)),
            EventAction::Ignore
        );
        // versions of another number go by the version rule alone
        assert_eq!(
            decide(held(4), 3, later, false, Some(3)),
            EventAction::Ignore
        );
        assert_eq!(
            decide(held(4), 5, later, false, Some(5)),
            EventAction::Apply
        );
        // nothing to compare with: a deletion, or a record that did not say
        let unknown = Some(Held {
            version: 4,
            committed_at: None,
        });
        assert_eq!(
            decide(unknown, 4, later, false, Some(4)),
            EventAction::Ignore
        );
    }

    #[test]
    fn a_version_written_by_another_commit_replaces_the_one_held() {
        let snapshot = Snapshot::new();
        let stamped = |version, serve, millis| match live("a", version, serve) {
            FlagState::Live(flag) => {
                FlagState::Live(flag.committed_at(Timestamp::from_millis(millis)))
            }
            deleted => deleted,
        };
        let mut writer = snapshot.writer();
        assert!(writer.install("prod", "a", stamped(3, "on", 1_000)));
        assert!(
            !writer.install("prod", "a", stamped(3, "on", 1_000)),
            "the same"
        );
        assert!(!writer.install("prod", "a", live("a", 3, "off")), "unknown");
        assert!(
            !writer.install("prod", "a", stamped(3, "off", 500)),
            "a late read of the lost history"
        );
        assert!(
            writer.install("prod", "a", stamped(3, "off", 2_000)),
            "another"
        );
        drop(writer);
        assert_eq!(served(&snapshot, "prod", "a"), Some(("off".into(), 3)));
    }

    #[test]
    fn installs_only_newer_versions_and_keeps_deletions() {
        let snapshot = Snapshot::new();
        {
            let mut writer = snapshot.writer();
            assert!(writer.install("prod", "a", live("a", 3, "on")));
            assert!(writer.install("prod", "b", live("b", 1, "off")));
            // not visible before the batch is published
            assert_eq!(writer.held_version("prod", "a"), Some(3));
        }
        assert_eq!(served(&snapshot, "prod", "a"), Some(("on".into(), 3)));
        {
            let mut writer = snapshot.writer();
            assert!(!writer.install("prod", "a", live("a", 2, "off")), "older");
            assert!(!writer.install("prod", "a", live("a", 3, "off")), "same");
            assert!(writer.install("prod", "a", live("a", 4, "off")));
            // an update of a known flag is visible at once
            assert_eq!(served(&snapshot, "prod", "a"), Some(("off".into(), 4)));
            assert!(writer.install("prod", "b", FlagState::Deleted { version: 2 }));
            assert!(
                !writer.install("prod", "b", live("b", 2, "on")),
                "no resurrection"
            );
        }
        assert_eq!(served(&snapshot, "prod", "b"), None);
        assert_eq!(snapshot.held_version("prod", "b"), Some(2));
        let namespace = snapshot.namespace("prod").expect("namespace");
        assert_eq!(namespace.live_keys(), vec!["a".to_owned()]);
        assert_eq!(namespace.totals(), (1, 6));
        {
            let mut writer = snapshot.writer();
            assert!(
                writer.install("prod", "b", live("b", 3, "on")),
                "re-created"
            );
        }
        assert_eq!(served(&snapshot, "prod", "b"), Some(("on".into(), 3)));
    }

    #[test]
    fn all_flags_come_in_key_order_across_batches() {
        let snapshot = Snapshot::new();
        for key in ["m", "c", "x"] {
            let mut writer = snapshot.writer();
            writer.install("dev", key, live(key, 1, "on"));
        }
        {
            let mut writer = snapshot.writer();
            writer.install("dev", "a", live("a", 1, "on"));
            writer.ensure_namespace("empty");
        }
        let mut keys = Vec::new();
        snapshot
            .namespace("dev")
            .expect("dev")
            .for_each_flag(|live| keys.push(live.compiled().key().to_owned()));
        assert_eq!(keys, ["a", "c", "m", "x"]);
        let names: Vec<_> = snapshot
            .namespaces()
            .iter()
            .map(|namespace| namespace.name().to_owned())
            .collect();
        assert_eq!(names, ["dev", "empty"]);
    }
}
