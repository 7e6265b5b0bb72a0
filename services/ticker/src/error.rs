//! Why the ticker could not do something. Transient failures (Redis or NATS unreachable)
//! are logged and retried by the loop; only start-up failures end `run`, each with its exit
//! code.

use rollout_runtime::connect::ConnectError;
use rollout_runtime::service::{ExitStatus, EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE};
use rollout_store::StoreError;
use rollout_wire::subjects::SubjectError;

/// A ticker failure.
#[derive(Debug, thiserror::Error)]
pub enum TickerError {
    /// Reading or committing state failed.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// NATS or Redis could not be reached at start-up.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The configured subject prefix is not valid.
    #[error("nats.subject_prefix: {0}")]
    Subjects(#[from] SubjectError),
    /// NATS refused a subscription the ticker answers on.
    #[error("cannot subscribe to {subject}: {message}")]
    Subscribe {
        /// What was subscribed to.
        subject: String,
        /// Why.
        message: String,
    },
    /// The probe listener (`http.listen`) could not be bound.
    #[error("cannot listen on {addr} (http.listen): {message}")]
    Bind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        message: String,
    },
}

impl ExitStatus for TickerError {
    fn exit_code(&self) -> u8 {
        match self {
            TickerError::Connect(_) => EX_UNAVAILABLE,
            TickerError::Subjects(_) => EX_USAGE,
            TickerError::Store(_) | TickerError::Bind { .. } | TickerError::Subscribe { .. } => {
                EX_SOFTWARE
            }
        }
    }
}
