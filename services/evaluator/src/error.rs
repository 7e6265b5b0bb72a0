//! Why an evaluator could not start, and the exit code each reason gives.

use std::net::SocketAddr;

use rollout_runtime::connect::ConnectError;
use rollout_runtime::service::{ExitStatus, EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE};

/// Why an evaluator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EvaluatorError {
    /// NATS or Redis could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The subject prefix is not valid.
    #[error("nats.subject_prefix: {0}")]
    Subjects(String),
    /// The HTTP listener could not be bound.
    #[error("http.listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A NATS subscription could not be made.
    #[error("nats subscribe to {subject}: {message}")]
    Subscribe {
        subject: String,
        /// Why.
        message: String,
    },
}

impl ExitStatus for EvaluatorError {
    fn exit_code(&self) -> u8 {
        match self {
            EvaluatorError::Connect(_) => EX_UNAVAILABLE,
            EvaluatorError::Subjects(_) => EX_USAGE,
            EvaluatorError::Bind { .. } | EvaluatorError::Subscribe { .. } => EX_SOFTWARE,
        }
    }
}
