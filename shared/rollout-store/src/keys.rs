//! Redis key names, private to the store: other crates hold a [`Keys`] (built once per
//! namespace) to pass to the store's functions, and never see a key. Every key of a namespace carries the hash tag `{<ns>}`, so each atomic
//! script — which touches a flag, its rollouts, their indexes, the audit and the outbox
//! together — stays in one Redis Cluster slot (SPEC §9).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `ro:{ns}:flag:<key>` | hash | definition, version, active rollout |
//! | `ro:{ns}:flags` | set | flag keys (index) |
//! | `ro:{ns}:rollout:<id>` | hash | plan, state, revision, timestamps |
//! | `ro:{ns}:rollouts:active` / `:finished` | sorted set | rollout ids by creation / finish time |
//! | `ro:{ns}:due` | sorted set | rollout ids by due time (ms) |
//! | `ro:{ns}:audit:rollout:<id>` / `ro:{ns}:audit:flag:<key>` | list | audit entries, newest first |
//! | `ro:{ns}:outbox` | stream | change events not yet relayed to NATS |
//! | `ro:{ns}:outbox:sweep` | string | time of the last outbox sweep (its write is what `WAIT` confirms) |
//! | `ro:{ns}:webhooks` / `:webhooks:delivery` | hash / hash | webhooks (with secrets) / their delivery state |
//! | `ro:{ns}:notify` / `:notify:lease` | stream / string | notices for the webhooks / the planner delivering them |
//! | `ro:{ns}:cmd:<command_id>` | string | first outcome of a command (idempotency) |
//! | `ro:{ns}:fence` | string | the fencing epoch of the ticker replica leading the namespace's shard |
//! | `ro:{ns}:agent:<id>` / `ro:{ns}:agents` | hash / sorted set | fleet agents, by last heartbeat |
//! | `ro:{ns}:rollout:<id>:reports` | hash | agent id → applied / failed |
//! | `ro:{ns}:outcomes:<flag>:<window_start_ms>` | hash | a flag's outcome counters of one window, per variation (kill switches) |
//! | `ro:{ns}:rollout:<id>:outcomes:<window_start_ms>` | hash | a rollout's outcome counters of one window, per side (guards) |
//! | `ro:namespaces` | set | every namespace (untagged) |
//! | `ro:generation` | string | a random id that vanishes only with Redis's data (untagged) |
//! | `ro:{ticker}:lease:<shard>` / `ro:{ticker}:epoch` | string / counter | one ticker shard's lease and the rising epoch all shards draw from |
//! | `ro:{ticker}:replicas` / `ro:{ticker}:shards` | sorted set / string | live ticker replicas by heartbeat expiry / the shard count they agreed on |
//!
//! **Architecture Invariant:** apart from [`namespaces`] and [`generation`], every key built by [`Keys`] has
//! the hash tag of its namespace and no other `{`.

use rollout_core::Timestamp;

use rollout_wire::subjects::Namespace;

/// Prefix of every key this system owns.
pub(crate) const KEY_PREFIX: &str = "ro:";

/// The global registry of namespaces, `ro:namespaces`: the only key without a hash tag (it
/// is never touched by a namespace's scripts).
pub(crate) fn namespaces() -> String {
    format!("{KEY_PREFIX}namespaces")
}

/// `ro:generation`: a random id created (`SET NX`) by the first evaluator that finds it
/// missing. It disappears only with the rest of Redis's data, so an evaluator that finds a
/// different id than the one it loaded under knows the versions it holds belong to a lost
/// history, and rebuilds its snapshot from what Redis holds now. Untagged like
/// [`namespaces`]: no script touches it.
pub(crate) fn generation() -> String {
    format!("{KEY_PREFIX}generation")
}

/// `ro:{ticker}:lease:<shard>`: the lease of one ticker shard, a string
/// `<replica id>:<epoch>` with a time to live, taken and renewed by
/// [`crate::lease::ShardLeases::balance`]. The `{ticker}` hash tag puts every shard's lease
/// in [`ticker_epoch`]'s Cluster slot, so one script balances them all together.
pub(crate) fn ticker_lease(shard: u32) -> String {
    format!("{KEY_PREFIX}{{ticker}}:lease:{shard}")
}

/// `ro:{ticker}:epoch`: the shard leadership counter, `INCR`ed on every acquisition of a
/// shard lease. It outlives the leases (and restarts, with persistence), so epochs only
/// rise; each namespace's `fence` is raised to the epoch of its shard's lease.
pub(crate) fn ticker_epoch() -> String {
    format!("{KEY_PREFIX}{{ticker}}:epoch")
}

/// `ro:{ticker}:replicas`: the live ticker replicas, a sorted set of replica id → when its
/// heartbeat expires (Redis time, ms); the fair share of shards is the shard count over
/// its size.
pub(crate) fn ticker_replicas() -> String {
    format!("{KEY_PREFIX}{{ticker}}:replicas")
}

/// `ro:{ticker}:shards`: the shard count the ticker replicas agreed on (set by the first).
pub(crate) fn ticker_shards() -> String {
    format!("{KEY_PREFIX}{{ticker}}:shards")
}

/// The hash tag Redis Cluster hashes `key` by: the text between the first `{` and the next
/// `}`, when that is not empty.
#[cfg(test)]
pub(crate) fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let after_open = &key[open + 1..];
    let close = after_open.find('}')?;
    if close == 0 {
        return None;
    }
    Some(&after_open[..close])
}

/// The keys of one namespace. Cheap to clone; build once per namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// `ro:{<ns>}`, the start of every key.
    base: String,
}

impl Keys {
    /// `base` followed by `parts`, written into a string sized once (every commit makes a
    /// dozen keys: no formatting machinery).
    fn join(&self, parts: &[&str]) -> String {
        let length = self.base.len() + parts.iter().map(|part| part.len()).sum::<usize>();
        let mut key = String::with_capacity(length);
        key.push_str(&self.base);
        for part in parts {
            key.push_str(part);
        }
        key
    }

    /// The keys of `namespace`.
    pub fn new(namespace: &Namespace) -> Keys {
        Keys {
            base: format!("{KEY_PREFIX}{{{namespace}}}"),
        }
    }

    /// `ro:{ns}:flag:<key>`: one flag.
    pub(crate) fn flag(&self, key: &str) -> String {
        self.join(&[":flag:", key])
    }

    /// `ro:{ns}:flags`: index of flag keys.
    pub(crate) fn flags(&self) -> String {
        self.join(&[":flags"])
    }

    /// `ro:{ns}:versions`: the namespace's flag-version counter. Every commit adds what it
    /// changes of the sum of the versions of the flags in [`Keys::flags`] (a new flag adds
    /// its version, an edit the versions it moves, a deletion takes its version away). Only
    /// its changes mean anything: a namespace whose data predates the counter, or that
    /// older writers changed, has it off by a constant. An evaluator in step with Redis
    /// sees it move with the versions it holds, so a change whose event never arrived shows
    /// as a difference that does not close (`evaluator::sync`).
    pub(crate) fn versions(&self) -> String {
        self.join(&[":versions"])
    }

    /// `ro:{ns}:rollout:<id>`: one rollout.
    pub(crate) fn rollout(&self, rollout_id: &str) -> String {
        self.join(&[":rollout:", rollout_id])
    }

    /// `ro:{ns}:rollouts:active`: index of queued, running and paused rollouts.
    pub(crate) fn rollouts_active(&self) -> String {
        self.join(&[":rollouts:active"])
    }

    /// `ro:{ns}:rollouts:finished`: index of completed, stopped and rolled-back rollouts.
    pub(crate) fn rollouts_finished(&self) -> String {
        self.join(&[":rollouts:finished"])
    }

    /// `ro:{ns}:due`: rollout ids scored by when the ticker must next look at them.
    pub(crate) fn due(&self) -> String {
        self.join(&[":due"])
    }

    /// `ro:{ns}:audit:rollout:<id>`: audit of one rollout (kept after it is deleted).
    pub(crate) fn audit_rollout(&self, rollout_id: &str) -> String {
        self.join(&[":audit:rollout:", rollout_id])
    }

    /// `ro:{ns}:audit:flag:<key>`: audit of one flag.
    pub(crate) fn audit_flag(&self, key: &str) -> String {
        self.join(&[":audit:flag:", key])
    }

    /// `ro:{ns}:freezes`: the namespace's freezes, current and past (JSON).
    pub(crate) fn freezes(&self) -> String {
        self.join(&[":freezes"])
    }

    /// `ro:{ns}:audit:namespace`: audit of the namespace's own changes (freezes).
    pub(crate) fn audit_namespace(&self) -> String {
        self.join(&[":audit:namespace"])
    }

    /// `ro:{ns}:outbox`: events appended by the same script as the change, relayed to NATS.
    pub(crate) fn outbox(&self) -> String {
        self.join(&[":outbox"])
    }

    /// `ro:{ns}:outbox:sweep`: when the outbox was last swept. The sweep writes it before
    /// `WAIT`, so that the replicas' acknowledgement covers every entry it read (`WAIT`
    /// only counts the asking client's own writes).
    pub(crate) fn outbox_sweep(&self) -> String {
        self.join(&[":outbox:sweep"])
    }

    /// `ro:{ns}:webhooks`: the namespace's webhooks, id → record with secret (JSON). While
    /// it exists, every commit also appends its events to [`Keys::notify`].
    pub(crate) fn webhooks(&self) -> String {
        self.join(&[":webhooks"])
    }

    /// `ro:{ns}:webhooks:delivery`: each webhook's delivery state, id → cursor and counts
    /// (JSON).
    pub(crate) fn deliveries(&self) -> String {
        self.join(&[":webhooks:delivery"])
    }

    /// `ro:{ns}:notify`: notices for the namespace's webhooks, appended by the commit that
    /// makes the change, trimmed once every webhook has them.
    pub(crate) fn notify(&self) -> String {
        self.join(&[":notify"])
    }

    /// `ro:{ns}:notify:lease`: the planner delivering the namespace's notifications.
    pub(crate) fn notify_lease(&self) -> String {
        self.join(&[":notify:lease"])
    }

    /// `ro:{ns}:cmd:<command_id>`: the first outcome of a command, returned on repeats.
    pub(crate) fn command(&self, command_id: &str) -> String {
        self.join(&[":cmd:", command_id])
    }

    /// `ro:{ns}:fence`: the fencing epoch of the ticker leader allowed to write.
    pub(crate) fn fence(&self) -> String {
        self.join(&[":fence"])
    }

    /// `ro:{ns}:agent:<id>`: one fleet agent's labels and attributes.
    pub(crate) fn agent(&self, agent_id: &str) -> String {
        self.join(&[":agent:", agent_id])
    }

    /// `ro:{ns}:agents`: agent ids scored by last heartbeat.
    pub(crate) fn agents(&self) -> String {
        self.join(&[":agents"])
    }

    /// `ro:{ns}:rollout:<id>:reports`: each agent's latest applied/failed report.
    pub(crate) fn stage_reports(&self, rollout_id: &str) -> String {
        self.join(&[":rollout:", rollout_id, ":reports"])
    }

    /// `ro:{ns}:outcomes:<flag>:<window_start_ms>`: a flag's outcome counters of one window,
    /// by variation.
    pub(crate) fn outcomes(&self, flag: &str, window_start: Timestamp) -> String {
        format!("{}:outcomes:{flag}:{}", self.base, window_start.as_millis())
    }

    /// `ro:{ns}:rollout:<id>:outcomes:<window_start_ms>`: a rollout's outcome counters of one
    /// window, by side (candidate, baseline).
    pub(crate) fn rollout_outcomes(&self, rollout_id: &str, window_start: Timestamp) -> String {
        format!(
            "{}:rollout:{rollout_id}:outcomes:{}",
            self.base,
            window_start.as_millis()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_namespace_shares_its_hash_tag() {
        let namespace = Namespace::new("prod").expect("namespace");
        let keys = Keys::new(&namespace);
        let all = [
            keys.flag("new-checkout"),
            keys.flags(),
            keys.rollout("r-1"),
            keys.rollouts_active(),
            keys.rollouts_finished(),
            keys.due(),
            keys.audit_rollout("r-1"),
            keys.audit_flag("new-checkout"),
            keys.outbox(),
            keys.command("c-1"),
            keys.fence(),
            keys.agent("edge-7"),
            keys.agents(),
            keys.stage_reports("r-1"),
            keys.outcomes("new-checkout", Timestamp::from_millis(1_700_000_000_000)),
            keys.rollout_outcomes("r-1", Timestamp::from_millis(1_700_000_000_000)),
        ];
        for key in &all {
            assert_eq!(hash_tag(key), Some("prod"), "{key}");
            assert!(key.starts_with("ro:{prod}:"), "{key}");
            assert_eq!(key.matches('{').count(), 1, "{key}");
        }
        assert_eq!(keys.rollout("r-1"), "ro:{prod}:rollout:r-1");
        assert_eq!(namespaces(), "ro:namespaces");
        assert_eq!(hash_tag(&namespaces()), None);
    }

    #[test]
    fn ticker_keys_share_one_slot_apart_from_namespaces() {
        assert_eq!(ticker_lease(7), "ro:{ticker}:lease:7");
        assert_eq!(ticker_epoch(), "ro:{ticker}:epoch");
        let ticker_keys = [
            ticker_lease(0),
            ticker_lease(63),
            ticker_epoch(),
            ticker_replicas(),
            ticker_shards(),
        ];
        for key in &ticker_keys {
            assert_eq!(hash_tag(key), Some("ticker"), "{key}");
        }
        // a namespace called `ticker` shares the slot but never these names
        let keys = Keys::new(&Namespace::new("ticker").expect("namespace"));
        for key in [keys.fence(), keys.due(), keys.notify_lease(), keys.flags()] {
            assert!(!ticker_keys.contains(&key), "{key}");
        }
    }

    #[test]
    fn hash_tags_follow_redis_cluster_rules() {
        assert_eq!(hash_tag("ro:{prod}:x"), Some("prod"));
        assert_eq!(hash_tag("a{}b{c}"), None);
        assert_eq!(hash_tag("a{b"), None);
        assert_eq!(hash_tag("a}b{c}d"), Some("c"));
        assert_eq!(hash_tag("{x}{y}"), Some("x"));
    }
}
