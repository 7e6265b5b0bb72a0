//! Deterministic bucketing (SPEC §4). The algorithm, pinned by `testdata/bucket_vectors.json`:
//!
//! ```text
//! seed   = XXH3-64(utf8(salt))                      // no seed, computed once per rollout
//! bucket = XXH3-64-with-seed(utf8(key), seed) mod 1 000 000
//! ```
//!
//! `key` is the entity id, or the value of the rollout's stickiness attribute. An entity
//! gets the candidate iff `bucket < share in ppm`, so raising the share only ever adds
//! entities. XXH3 is specified and implemented identically on every platform; 2^64 mod 10^6
//! leaves a bias below 10^-13, far under anything measurable.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::share::PPM_PER_WHOLE;

/// A salt prepared for bucketing: the XXH3 seed it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BucketSeed(u64);

impl BucketSeed {
    /// Prepares `salt` (hash it once, reuse for every entity).
    pub fn from_salt(salt: &str) -> BucketSeed {
        BucketSeed(xxh3_64(salt.as_bytes()))
    }

    /// The raw 64-bit seed.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// The bucket of `key`, in 0 ..< 1 000 000.
    #[inline]
    pub fn bucket(self, key: &str) -> u32 {
        let hash = xxh3_64_with_seed(key.as_bytes(), self.0);
        // the remainder is below 10^6, so it always fits
        #[allow(clippy::cast_possible_truncation)]
        let bucket = (hash % u64::from(PPM_PER_WHOLE)) as u32;
        bucket
    }
}

/// One-shot bucketing of `key` under `salt`.
pub fn bucket(salt: &str, key: &str) -> u32 {
    BucketSeed::from_salt(salt).bucket(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::Share;
    use proptest::prelude::*;

    #[derive(serde::Deserialize)]
    struct Vector {
        salt: String,
        key: String,
        bucket: u32,
    }

    /// The committed vectors pin the algorithm across platforms and releases.
    #[test]
    fn matches_the_committed_test_vectors() {
        let text = include_str!("../testdata/bucket_vectors.json");
        let vectors: Vec<Vector> = serde_json::from_str(text).expect("vector file parses");
        assert!(vectors.len() >= 50, "the vector file should pin many cases");
        for vector in &vectors {
            assert_eq!(
                bucket(&vector.salt, &vector.key),
                vector.bucket,
                "salt {:?} key {:?}",
                vector.salt,
                vector.key
            );
        }
    }

    /// Chi-square over 10^6 ids in 100 bins at the 0.001 level: with 99 degrees of freedom
    /// the critical value is 148.23.
    #[test]
    fn buckets_are_uniform() {
        const IDS: u32 = 1_000_000;
        const BINS: usize = 100;
        const CRITICAL_0_001_DF_99: f64 = 148.23;
        let seed = BucketSeed::from_salt("uniformity-check");
        let mut counts = [0_u64; BINS];
        for id in 0..IDS {
            let key = format!("user-{id}");
            counts[(seed.bucket(&key) / 10_000) as usize] += 1;
        }
        let expected = f64::from(IDS) / BINS as f64;
        let chi_square: f64 = counts
            .iter()
            .map(|count| {
                let difference = *count as f64 - expected;
                difference * difference / expected
            })
            .sum();
        assert!(
            chi_square < CRITICAL_0_001_DF_99,
            "chi-square {chi_square} over 100 bins"
        );
    }

    #[test]
    fn different_salts_pick_independent_cohorts() {
        let first = BucketSeed::from_salt("rollout-a");
        let second = BucketSeed::from_salt("rollout-b");
        let share = Share::from_ppm(100_000);
        let in_both = (0..100_000)
            .map(|id| format!("user-{id}"))
            .filter(|key| share.contains(first.bucket(key)) && share.contains(second.bucket(key)))
            .count();
        // independent 10 % cohorts overlap in about 1 % = 1000 of 100 000
        assert!((700..1300).contains(&in_both), "overlap {in_both}");
    }

    proptest! {
        /// Monotonic: whoever is inside a share stays inside every larger share.
        #[test]
        fn raising_the_share_only_adds_entities(
            salt in "[a-z0-9]{1,16}",
            key in "\\PC{0,40}",
            lower in 0_u32..=1_000_000,
            extra in 0_u32..=1_000_000,
        ) {
            let higher = lower.saturating_add(extra).min(1_000_000);
            let entity_bucket = bucket(&salt, &key);
            prop_assert!(entity_bucket < 1_000_000);
            if Share::from_ppm(lower).contains(entity_bucket) {
                prop_assert!(Share::from_ppm(higher).contains(entity_bucket));
            }
        }

        #[test]
        fn bucketing_is_a_pure_function(salt in "\\PC{0,20}", key in "\\PC{0,40}") {
            prop_assert_eq!(bucket(&salt, &key), BucketSeed::from_salt(&salt).bucket(&key));
        }
    }
}
