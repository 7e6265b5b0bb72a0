//! Keeping the snapshot current (SPEC §9: evaluators never serve an older version after a
//! newer one; on a gap in events they resynchronise from Redis).
//!
//! - At start, the event subscription is opened first (events buffer), then every
//!   namespace's flags are loaded from Redis ([`full_sync`]), then the buffered and later
//!   events are applied by `apply_events` in batches (see [`apply_batch`]), each event through
//!   [`crate::snapshot::decide`].
//! - Events that cannot bring a flag up to date (a version gap, no snapshot, undecodable)
//!   become [`ResyncRequest`]s for the resync worker, which reads those flags from Redis,
//!   so Redis latency never holds up the applying of other events.
//! - The resync worker also compares every held version with Redis every
//!   `resync_interval` (pipelined `HGET rev`), and within `reconnect_check_interval` after
//!   every NATS reconnection and every slow-consumer drop of the client, to catch events
//!   that were never delivered.
//! - At each of those checks it also reads every namespace's flag-version counter
//!   ([`watch`]): a change whose event never arrived — the last of its flag, which no later
//!   event would reveal — is read from Redis within two checks.
//!
//! Every install goes through the snapshot's version check, so the applier and the
//! resync worker can race freely: the newer version wins, an older one is dropped.
//!
//! A Redis restored from an older backup keeps its generation but holds versions below
//! those served: [`sync_namespace`] notices a flag whose stored version is below the one
//! held before Redis was read, and installs what Redis holds for it (then compares again).
//!
//! The one exception is a lost Redis: versions restart at 1 in an empty Redis, and a
//! snapshot that refused to go backwards would serve the lost history forever. Every sync
//! and every `reconnect_check_interval`, [`check_store_generation`] reads `ro:generation`
//! (created with `SET NX GET` when missing, so it changes only when Redis lost its data);
//! when it differs from the one the snapshot was loaded under, [`rebuild`] replaces every
//! flag with what Redis holds now, whatever version was held.

//!
//! [`load`] reads from Redis (single flags, namespaces, the generation check, the resync
//! worker); [`apply`] applies events as they arrive.

mod apply;
mod load;
mod watch;

use crate::snapshot::ResyncReason;
use rollout_store::StoreError;

pub(crate) use apply::apply_events;
pub use apply::{apply_batch, apply_event, EventOutcome};
pub use load::{
    check_store_generation, full_sync, load_state, rebuild, resync_flags, sync_namespace,
};
pub(crate) use load::{first_load, resync_worker, RESYNC_QUEUE};
pub(crate) use watch::VersionWatch;

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Redis failed or held something unreadable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored flag did not compile (a bug upstream: every write validates).
    #[error("flag {namespace}/{flag} does not compile: {message}")]
    Compile {
        namespace: String,
        /// Flag key.
        flag: String,
        /// The validation errors.
        message: String,
    },
    /// The flag kept changing while it was being read.
    #[error("flag {namespace}/{flag} kept changing while being read")]
    Unstable {
        namespace: String,
        /// Flag key.
        flag: String,
    },
}

/// A flag to read again from Redis.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResyncRequest {
    pub namespace: String,
    /// Flag key.
    pub flag: String,
    /// Why.
    pub reason: ResyncReason,
}
