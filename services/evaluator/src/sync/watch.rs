//! Noticing a change whose event never arrived, within a check or two instead of the next
//! periodic comparison (SPEC §11.1: served = committed within 2 s, events being plain NATS
//! messages that a lost node or a route being re-formed can drop — the last event of a
//! flag has no later one to reveal the gap).
//!
//! Every commit moves its namespace's flag-version counter by what it changes of the sum
//! of the listed flags' versions (`rollout_store::versions`). Every
//! `reconnect_check_interval` the resync worker reads the counter of every known namespace
//! (one `GET` each, pipelined); less the namespace's offset (measured once with one
//! script, again whenever a comparison explains nothing) it is the sum of the versions
//! Redis lists, and the difference to the sum of the versions this replica serves is its
//! lag. An event in flight makes a lag for a few milliseconds; a lag found at two checks
//! in a row (either way: a missed deletion serves more than Redis lists) is a change that
//! did not arrive, and the namespace is compared with Redis
//! ([`super::sync_namespace`], reason `missed`) — within two intervals of the commit.
//! When that finds nothing behind, the lag was the offset's (data written by a version
//! without the counter, a restored backup), which is measured again.

use std::collections::HashMap;

use rollout_store::versions;

use super::load::{known_namespaces, sync_namespace};
use super::SyncError;
use crate::snapshot::ResyncReason;
use crate::Shared;

/// What the resync worker remembers of each namespace between checks.
#[derive(Debug, Default)]
pub(crate) struct VersionWatch {
    namespaces: HashMap<String, Watched>,
}

#[derive(Debug, Default)]
struct Watched {
    /// The counter less the listed versions' sum, when measured.
    offset: Option<i64>,
    /// Whether the previous check found a lag.
    lagging: bool,
}

impl VersionWatch {
    /// One check of every known namespace; compares with Redis those found lagging twice
    /// in a row. Returns how many flags were found behind.
    pub(crate) async fn check(&mut self, shared: &Shared) -> Result<usize, SyncError> {
        let namespaces = known_namespaces(shared).await?;
        let counters = versions::counters(&shared.io.redis, &namespaces).await?;
        let mut missed = 0;
        for (namespace, counter) in namespaces.iter().zip(counters) {
            let watched = self.namespaces.entry(namespace.to_string()).or_default();
            let offset = match watched.offset {
                Some(offset) => offset,
                None => {
                    let offset = versions::calibrate(&shared.io.redis, namespace).await?;
                    watched.offset = Some(offset);
                    // measured after the counter was read: judged from the next check
                    continue;
                }
            };
            let lagging = counter - offset != served_sum(shared, namespace.as_str());
            let lagged_before = std::mem::replace(&mut watched.lagging, lagging);
            if !(lagging && lagged_before) {
                continue;
            }
            let found = sync_namespace(shared, namespace, Some(ResyncReason::Missed)).await?;
            if found == 0 {
                watched.offset = None;
            }
            watched.lagging = false;
            missed += found;
        }
        Ok(missed)
    }
}

/// The sum of the versions of the flags served in `namespace` (deleted ones not counted,
/// as Redis's index does not list them).
fn served_sum(shared: &Shared, namespace: &str) -> i64 {
    shared
        .served
        .snapshot
        .namespace(namespace)
        .map_or(0, |held| {
            i64::try_from(held.live_version_sum()).unwrap_or(i64::MAX)
        })
}
