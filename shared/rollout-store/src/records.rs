//! The records stored in Redis. Each lives in a hash `{rev, data}`: `rev` is what commits
//! compare, `data` the MessagePack (named fields) encoding of the record. A deleted flag
//! keeps its hash with `rev` only (a tombstone), so a re-created flag's versions continue
//! upwards and evaluators never see a version go back.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use rollout_core::{Flag, Plan, RolloutSpec, RolloutState, Timestamp};

use crate::StoreError;

/// A flag and which rollout, if any, holds its one active slot. Its version is the hash's
/// revision: it rises with every change to the flag *or* its active rollout, because
/// evaluators serve both together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlagRecord {
    /// The definition. While a rollout is active its target's serve is the pre-rollout
    /// one; the rollout's final serve replaces it when the rollout ends.
    pub flag: Flag,
    /// The active (queued, running or paused) rollout.
    pub active_rollout: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// A flag hash as read: its version and record (`None` for a tombstone or no hash).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredFlag {
    /// Revision of the hash (0 when it never existed).
    pub version: u64,
    /// The record, unless deleted or never created.
    pub record: Option<FlagRecord>,
}

/// A rollout: the spec as submitted, its compiled plan and its mutable state. Its hash
/// revision is `state.revision`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// Rollout id.
    pub id: String,
    /// Namespace.
    pub namespace: String,
    /// The spec as submitted.
    pub spec: RolloutSpec,
    /// The compiled plan.
    pub plan: Plan,
    /// The lifecycle state.
    pub state: RolloutState,
    /// When it was created (Redis time).
    pub created_at: Timestamp,
    /// Who created it.
    pub created_by: Option<String>,
    /// W3C traceparent of the creating command, so later transitions link to it.
    pub traceparent: Option<String>,
}

/// MessagePack with named fields: the encoding of every stored record.
pub fn encode_record<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(record)
        .map_err(|error| StoreError::Corrupt(format!("cannot encode record: {error}")))
}

/// Decodes a stored record; `what` names it in the error.
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes)
        .map_err(|error| StoreError::Corrupt(format!("cannot decode {what}: {error}")))
}
