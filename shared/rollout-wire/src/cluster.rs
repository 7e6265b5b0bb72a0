//! `rollout.cluster.ping` (SPEC §8.1): who is running. A client publishes an empty request
//! with a reply subject and gathers, for a moment, one [`MemberInfo`] from every planner,
//! ticker, evaluator and console replica that hears it — the answer to "is anything
//! ticking?" without reaching into Redis or the services' hosts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One running replica, as it describes itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// `planner`, `ticker`, `evaluator` or `console`.
    pub service: String,
    /// Which replica (the ticker's replica id; else host and process id).
    pub replica: String,
    /// The build's version.
    pub version: String,
    /// Whether it can do its work now.
    pub ready: bool,
    /// Why not, when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Tickers: whether this one leads any shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
    /// Tickers: the highest epoch of a shard lease it held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Tickers: the shards it leads now, each with the epoch of its lease.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shards: BTreeMap<u32, u64>,
    /// Tickers: how many shards there are in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_count: Option<u32>,
    /// Evaluators: what each namespace's snapshot holds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub served: BTreeMap<String, Served>,
}

impl MemberInfo {
    /// A replica of `service` whose readiness is `readiness` (the reason when not ready),
    /// at this build's version; tickers and evaluators add what they know.
    pub fn new(service: &str, replica: &str, readiness: Result<(), String>) -> MemberInfo {
        MemberInfo {
            service: service.to_owned(),
            replica: replica.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ready: readiness.is_ok(),
            reason: readiness.err(),
            leader: None,
            epoch: None,
            shards: BTreeMap::new(),
            shard_count: None,
            served: BTreeMap::new(),
        }
    }
}

/// What an evaluator serves in one namespace: replicas serving the same state show the same
/// figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// Flags held.
    pub flags: u64,
    /// The sum of their state versions (it rises with every change any flag takes).
    pub versions: u64,
}

/// The replica name of a process that has no configured one: `<host>-<pid>`.
pub fn process_replica() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    format!("{host}-{}", std::process::id())
}
