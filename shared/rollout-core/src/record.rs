//! The records a flag and a rollout are kept as — the stored format of the system (the
//! store encodes them as MessagePack with named fields, one hash each, see
//! `rollout-store`) and what events carry. A change to their serde shape is a change of the
//! stored format.

use serde::{Deserialize, Serialize};

use crate::flag::Flag;
use crate::machine::RolloutState;
use crate::plan::Plan;
use crate::spec::RolloutSpec;
use crate::time::Timestamp;

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
    /// The rollout that last finished on this flag (while none is active): fleet agents
    /// report for it after it completed, so its last stage's counts do not stay pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollout: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// A rollout: the spec as submitted, its compiled plan and its mutable state. Its hash
/// revision is `state.revision`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// Rollout id.
    pub id: String,
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
