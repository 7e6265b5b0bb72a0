//! Why the ticker could not do something. Transient failures (Redis or NATS unreachable)
//! are logged and retried by the loop; only start-up failures end `run`.

use rollout_runtime::connect::ConnectError;
use rollout_store::StoreError;
use rollout_wire::subjects::SubjectError;

/// A ticker failure.
#[derive(Debug, thiserror::Error)]
pub enum TickerError {
    /// Reading or committing state failed.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// A lease, fence or index command failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// NATS or Redis could not be reached at start-up.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The configured subject prefix is not valid.
    #[error("nats.subject_prefix: {0}")]
    Subjects(#[from] SubjectError),
}
