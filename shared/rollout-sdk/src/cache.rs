//! The evaluation cache of [`crate::EvalClient`]: a bounded LRU map from (flag, entity id,
//! attributes and labels) to the evaluator's answer, with a per-flag version high-water
//! mark.
//!
//! **Invariant:** the cache never returns an answer older than a version it has seen for
//! that flag, whether the newer version came in a change event or in another reply. An
//! event at version V drops every entry of the flag below V; a reply below the mark (a
//! lagging evaluator replica) is not stored.
//!
//! No IO and no clock of its own: callers pass `now`, so tests drive time.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use rollout_core::{AttributeValue, Attributes, Entity, Labels};
use rollout_wire::EvalResult;

/// Entries held when no capacity is configured.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// How long an entry may be served when no time-to-live is configured: a safety net for
/// change events lost while the connection was down.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Counters of cache use, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers served from the cache.
    pub hits: u64,
    /// Lookups that went to an evaluator.
    pub misses: u64,
    /// Entries dropped by change events.
    pub invalidated: u64,
    /// Replies not stored because a newer version of their flag was already seen.
    pub stale_replies: u64,
    /// Entries held now.
    pub entries: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    flag: String,
    entity_id: String,
    context_hash: u64,
}

#[derive(Clone, Debug)]
struct Entry {
    attributes: Attributes,
    labels: Labels,
    result: EvalResult,
    stored_at: Instant,
}

/// The bounded, version-aware cache.
#[derive(Debug)]
pub(crate) struct EvalCache {
    entries: LruCache<CacheKey, Entry>,
    high_water: HashMap<String, u64>,
    ttl: Duration,
    stats: CacheStats,
}

impl EvalCache {
    /// A cache of at most `capacity` entries (at least one), each served for `ttl`.
    pub(crate) fn new(capacity: usize, ttl: Duration) -> EvalCache {
        EvalCache {
            entries: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
            high_water: HashMap::new(),
            ttl,
            stats: CacheStats::default(),
        }
    }

    /// The cached answer for `flag` and `entity`, if one is fresh and not older than the
    /// flag's high-water mark. Counts a hit or a miss.
    pub(crate) fn get(&mut self, flag: &str, entity: &Entity, now: Instant) -> Option<EvalResult> {
        let key = key(flag, entity);
        let mark = self.mark(flag);
        let usable = self.entries.get(&key).map(|entry| {
            entry.attributes == entity.attributes
                && entry.labels == entity.labels
                && entry.result.version >= mark
                && now.saturating_duration_since(entry.stored_at) < self.ttl
        });
        match usable {
            Some(true) => {
                self.stats.hits += 1;
                self.entries.get(&key).map(|entry| entry.result.clone())
            }
            Some(false) => {
                self.entries.pop(&key);
                self.stats.misses += 1;
                None
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Stores an evaluator's answer for `entity`, unless a newer version of the flag was
    /// already seen; raises the flag's mark to the answer's version. Returns whether it was
    /// stored.
    pub(crate) fn insert(&mut self, entity: &Entity, result: &EvalResult, now: Instant) -> bool {
        if result.version < self.mark(&result.flag) {
            self.stats.stale_replies += 1;
            return false;
        }
        self.raise_mark(&result.flag, result.version);
        self.entries.put(
            key(&result.flag, entity),
            Entry {
                attributes: entity.attributes.clone(),
                labels: entity.labels.clone(),
                result: result.clone(),
                stored_at: now,
            },
        );
        true
    }

    /// A change event for `flag` at `version`: raises the mark and drops every entry of the
    /// flag computed before it. Returns how many entries were dropped.
    pub(crate) fn observe_event(&mut self, flag: &str, version: u64) -> usize {
        self.raise_mark(flag, version);
        let stale: Vec<CacheKey> = self
            .entries
            .iter()
            .filter(|(key, entry)| key.flag == flag && entry.result.version < version)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &stale {
            self.entries.pop(key);
        }
        self.stats.invalidated += stale.len() as u64;
        stale.len()
    }

    /// The highest version seen for `flag` (0 when none).
    pub(crate) fn mark(&self, flag: &str) -> u64 {
        self.high_water.get(flag).copied().unwrap_or(0)
    }

    /// Drops every entry (the marks stay: versions never go back).
    pub(crate) fn clear(&mut self) {
        self.stats.invalidated += self.entries.len() as u64;
        self.entries.clear();
    }

    /// A copy of the counters.
    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.entries.len(),
            ..self.stats
        }
    }

    fn raise_mark(&mut self, flag: &str, version: u64) {
        match self.high_water.get_mut(flag) {
            Some(mark) => *mark = (*mark).max(version),
            None => {
                self.high_water.insert(flag.to_owned(), version);
            }
        }
    }
}

fn key(flag: &str, entity: &Entity) -> CacheKey {
    CacheKey {
        flag: flag.to_owned(),
        entity_id: entity.id.clone(),
        context_hash: context_hash(&entity.attributes, &entity.labels),
    }
}

/// A hash of attributes and labels; entries also keep both, so a collision only costs a miss.
fn context_hash(attributes: &Attributes, labels: &Labels) -> u64 {
    let mut hasher = DefaultHasher::new();
    for (name, value) in attributes {
        name.hash(&mut hasher);
        match value {
            AttributeValue::String(text) => (0_u8, text).hash(&mut hasher),
            AttributeValue::Number(number) => (1_u8, number.to_bits()).hash(&mut hasher),
            AttributeValue::Bool(flag) => (2_u8, flag).hash(&mut hasher),
            AttributeValue::List(items) => (3_u8, items).hash(&mut hasher),
        }
    }
    0xff_u8.hash(&mut hasher);
    labels.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::Reason;

    fn result(flag: &str, variation: &str, version: u64) -> EvalResult {
        EvalResult {
            flag: flag.into(),
            variation: variation.into(),
            value: serde_json::Value::Bool(variation == "on"),
            reason: Reason::Default,
            rule_id: None,
            rollout_id: None,
            step: None,
            bucket: None,
            version,
            explanation: None,
        }
    }

    #[test]
    fn hits_need_the_same_entity_attributes_and_labels() {
        let now = Instant::now();
        let mut cache = EvalCache::new(10, DEFAULT_TTL);
        let pro = Entity::with_id("u-1").attribute("plan", AttributeValue::String("pro".into()));
        cache.insert(&pro, &result("f", "on", 3), now);
        assert_eq!(
            cache.get("f", &pro, now).map(|hit| hit.variation),
            Some("on".to_owned())
        );
        let free = Entity::with_id("u-1").attribute("plan", AttributeValue::String("free".into()));
        assert_eq!(cache.get("f", &free, now), None);
        assert_eq!(cache.get("f", &pro.clone().label("env", "prod"), now), None);
        assert_eq!(cache.get("g", &pro, now), None);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 3, 1));
    }

    #[test]
    fn an_event_drops_older_entries_of_its_flag_only() {
        let now = Instant::now();
        let mut cache = EvalCache::new(10, DEFAULT_TTL);
        let user = Entity::with_id("u-1");
        let other = Entity::with_id("u-2");
        cache.insert(&user, &result("f", "off", 3), now);
        cache.insert(&other, &result("f", "off", 3), now);
        cache.insert(&user, &result("g", "on", 9), now);
        assert_eq!(cache.observe_event("f", 4), 2);
        assert_eq!(cache.get("f", &user, now), None);
        assert!(cache.get("g", &user, now).is_some());
        // an event no newer than what an entry already reflects keeps it
        assert_eq!(cache.observe_event("g", 9), 0);
        assert!(cache.get("g", &user, now).is_some());
        assert_eq!(cache.stats().invalidated, 2);
    }

    #[test]
    fn versions_never_go_backwards() {
        let now = Instant::now();
        let mut cache = EvalCache::new(10, DEFAULT_TTL);
        let user = Entity::with_id("u-1");
        cache.observe_event("f", 7);
        assert!(!cache.insert(&user, &result("f", "off", 6), now));
        assert_eq!(cache.get("f", &user, now), None);
        assert!(cache.insert(&user, &result("f", "on", 8), now));
        // a lagging replica's older answer for another entity does not lower the mark
        assert!(!cache.insert(&Entity::with_id("u-2"), &result("f", "off", 7), now));
        assert_eq!(cache.mark("f"), 8);
        assert_eq!(cache.stats().stale_replies, 2);
        assert_eq!(cache.get("f", &user, now).map(|hit| hit.version), Some(8));
    }

    #[test]
    fn capacity_and_ttl_bound_what_is_served() {
        let start = Instant::now();
        let mut cache = EvalCache::new(2, Duration::from_secs(10));
        for id in ["a", "b", "c"] {
            cache.insert(&Entity::with_id(id), &result("f", "on", 1), start);
        }
        assert_eq!(cache.stats().entries, 2);
        assert_eq!(cache.get("f", &Entity::with_id("a"), start), None);
        let later = start + Duration::from_secs(11);
        assert_eq!(cache.get("f", &Entity::with_id("c"), later), None);
        cache.clear();
        assert_eq!(cache.stats().entries, 0);
        assert_eq!(cache.mark("f"), 1);
    }
}
