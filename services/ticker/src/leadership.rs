//! What one ticker replica leads (SPEC §14): the shards whose lease it holds, each at its
//! own epoch, and the namespaces of those shards whose fence it raised to that epoch.
//!
//! The shard leases themselves are the store's ([`rollout_store::lease::ShardLeases`]); a
//! [`Leadership`] is the replica's working view of them. A shard enters it when a
//! balancing step wins or keeps its lease ([`Leadership::adopt`]), and its namespaces are
//! fenced before any of them is fired. A shard leaves it when a balancing step lost or gave
//! it back, or when a fence refused one of its writes ([`Leadership::abandon`]): another
//! replica leads it now, and the next balancing step hands its lease back if it is still
//! ours.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use rollout_runtime::shutdown::Shutdown;
use rollout_store::Keys;
use rollout_wire::subjects::Namespace;

use crate::kill_switch::KillSwitches;

/// A namespace of a shard this replica leads, fenced at the epoch of the shard's lease.
#[derive(Clone, Debug)]
pub struct LedNamespace {
    /// The namespace.
    pub namespace: Namespace,
    /// Its keys.
    pub keys: Keys,
    /// Its shard.
    pub shard: u32,
    /// The epoch of its shard's lease, which every write in it carries.
    pub epoch: u64,
}

/// Shards a fence refused, shared with the task that balances the leases so that it gives
/// them back.
pub(crate) type Abandoned = Arc<Mutex<BTreeMap<u32, u64>>>;

/// The shards one replica leads and their fenced namespaces, with the kill switch index of
/// those namespaces.
#[derive(Debug)]
pub struct Leadership {
    pub(crate) shards: BTreeMap<u32, u64>,
    pub(crate) namespaces: BTreeMap<String, LedNamespace>,
    pub(crate) kill_switches: KillSwitches,
    /// Some led shard may have namespaces not fenced yet.
    pub(crate) namespaces_stale: bool,
    pub(crate) abandoned: Abandoned,
    /// Namespaces whose last commits could not be confirmed on a replica: nothing more is
    /// fired in them until their outbox is swept (its events published once a `WAIT`
    /// confirms what their master holds), so a rollout does not go on stepping while the
    /// events of its last step are held back.
    pub(crate) unconfirmed: Arc<Mutex<BTreeSet<String>>>,
    /// Triggered when the replica stops.
    pub(crate) signal: Shutdown,
    /// The change events, subscribed before the first namespace is read, so that no change
    /// falls between what a scan read and what the subscription hears.
    pub(crate) events: Option<async_nats::Subscriber>,
}

impl Leadership {
    pub(crate) fn new(signal: Shutdown, events: Option<async_nats::Subscriber>) -> Leadership {
        Leadership {
            shards: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            kill_switches: KillSwitches::default(),
            namespaces_stale: false,
            abandoned: Arc::default(),
            unconfirmed: Arc::default(),
            signal,
            events,
        }
    }

    /// The shards led, with the epoch of their lease.
    pub fn shards(&self) -> &BTreeMap<u32, u64> {
        &self.shards
    }

    /// The highest epoch among the shards led (0 when none is).
    pub fn highest_epoch(&self) -> u64 {
        self.shards.values().copied().max().unwrap_or(0)
    }

    /// Whether it leads no shard (any more).
    pub fn is_lost(&self) -> bool {
        self.shards.is_empty()
    }

    /// The namespaces fenced so far.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.keys().cloned().collect()
    }

    /// The epoch `namespace` is fenced at, when it is led.
    pub fn epoch_of(&self, namespace: &str) -> Option<u64> {
        self.namespaces.get(namespace).map(|led| led.epoch)
    }

    /// How many flags with a kill switch it knows.
    pub fn kill_switch_count(&self) -> usize {
        self.kill_switches.len()
    }

    /// Takes `held` (shard → epoch) as the shards led now: shards no longer held (or held
    /// at another epoch) drop out with their namespaces; new ones wait for their namespaces
    /// to be fenced. Shards abandoned at the same epoch are not taken back. Returns how
    /// many shards are new.
    pub(crate) fn adopt(&mut self, held: &BTreeMap<u32, u64>) -> usize {
        let gone: Vec<u32> = self
            .shards
            .iter()
            .filter(|(shard, epoch)| held.get(shard) != Some(epoch))
            .map(|(shard, _)| *shard)
            .collect();
        for shard in gone {
            self.drop_shard(shard);
        }
        let abandoned = self
            .abandoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut new = 0;
        for (shard, epoch) in held {
            if abandoned.get(shard) == Some(epoch) || self.shards.contains_key(shard) {
                continue;
            }
            self.shards.insert(*shard, *epoch);
            self.namespaces_stale = true;
            new += 1;
        }
        new
    }

    /// Gives up `shard`: a fence showed another replica leads it. Its namespaces stop being
    /// fired now; the next balancing step returns its lease if it is still ours.
    pub(crate) fn abandon(&mut self, shard: u32) {
        if let Some(epoch) = self.shards.get(&shard).copied() {
            self.abandoned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(shard, epoch);
            self.drop_shard(shard);
        }
    }

    /// The shards abandoned since the last call, to hand back.
    pub(crate) fn take_abandoned(&self) -> BTreeMap<u32, u64> {
        std::mem::take(
            &mut *self
                .abandoned
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn drop_shard(&mut self, shard: u32) {
        self.shards.remove(&shard);
        let dropped: Vec<String> = self
            .namespaces
            .iter()
            .filter(|(_, led)| led.shard == shard)
            .map(|(name, _)| name.clone())
            .collect();
        for name in dropped {
            self.namespaces.remove(&name);
            self.kill_switches.forget(&name);
        }
    }
}
