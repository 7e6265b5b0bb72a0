//! Why the planner stopped, and the exit code each reason gives.

use rollout_runtime::config::ConfigError;
use rollout_runtime::connect::ConnectError;
use rollout_runtime::service::{ExitStatus, EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE};

/// Why the planner stopped.
#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    /// A connection could not be made.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A setting is invalid.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// NATS refused a subscription or the stream setup.
    #[error("nats: {0}")]
    Nats(String),
    /// The probe listener (`http.listen`) could not be bound.
    #[error("cannot listen on {addr} (http.listen): {message}")]
    Bind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        message: String,
    },
}

impl ExitStatus for PlannerError {
    fn exit_code(&self) -> u8 {
        match self {
            PlannerError::Connect(_) => EX_UNAVAILABLE,
            PlannerError::Config(_) => EX_USAGE,
            PlannerError::Nats(_) | PlannerError::Bind { .. } => EX_SOFTWARE,
        }
    }
}
