//! The one error type of the SDK: every failure carries a [`WireError`] (a stable
//! [`ErrorCode`], a lowercase message, the field at fault) plus an [`ErrorKind`] saying
//! whether a service refused the request or the request never got an answer.

use std::fmt;
use std::time::Duration;

use rollout_wire::{CodecError, ErrorCode, WireError};

/// Where a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A service answered with an error reply; [`Error::code`] is the service's code.
    Refused,
    /// Nobody subscribes to the subject: no planner or evaluator is running for this
    /// namespace and subject prefix.
    NoResponders,
    /// No answer within the request timeout.
    Timeout,
    /// NATS refused or lost the request (disconnected, permission denied by the server).
    Transport,
    /// The request was refused before sending: a key, id or value that cannot travel.
    InvalidInput,
    /// The reply could not be decoded.
    Decode,
}

/// A failed SDK call. Match on [`Error::kind`] and [`Error::code`], never on the message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    wire: WireError,
}

impl fmt::Display for Error {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.wire.code, self.wire.message)?;
        if let Some(field) = &self.wire.field {
            write!(formatter, " (field: {field})")?;
        }
        Ok(())
    }
}

impl Error {
    /// An error of `kind` carrying `wire`.
    pub fn new(kind: ErrorKind, wire: WireError) -> Error {
        Error { kind, wire }
    }

    /// A service's error reply.
    pub fn refused(wire: WireError) -> Error {
        Error::new(ErrorKind::Refused, wire)
    }

    /// Nobody listens on `subject`.
    pub fn no_responders(subject: &str) -> Error {
        Error::new(
            ErrorKind::NoResponders,
            WireError::unavailable(format!("no responders on {subject}")),
        )
    }

    /// No answer on `subject` within `after`.
    pub fn timeout(subject: &str, after: Duration) -> Error {
        Error::new(
            ErrorKind::Timeout,
            WireError::unavailable(format!("no reply on {subject} within {after:?}")),
        )
    }

    /// NATS failed to carry the request.
    pub fn transport(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Transport, WireError::unavailable(message))
    }

    /// Input refused before sending, naming `field`.
    pub fn invalid_input(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::new(
            ErrorKind::InvalidInput,
            WireError::invalid_argument(field, message),
        )
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The stable code: the service's for [`ErrorKind::Refused`], `unavailable` when no
    /// answer came, `invalid_argument` for input refused locally, `internal` for an
    /// undecodable reply.
    pub fn code(&self) -> ErrorCode {
        self.wire.code
    }

    /// The lowercase explanation.
    pub fn message(&self) -> &str {
        &self.wire.message
    }

    /// The path of the field at fault (`rollout.phases[1].percentage`), when known.
    pub fn field(&self) -> Option<&str> {
        self.wire.field.as_deref()
    }

    /// The whole error as it travels on the wire, with every validation problem in
    /// `details`.
    pub fn wire(&self) -> &WireError {
        &self.wire
    }

    /// True when the request may not have reached a service (no responders, timeout,
    /// transport): a retry with the same command id is safe.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::NoResponders | ErrorKind::Timeout | ErrorKind::Transport
        )
    }
}

impl From<CodecError> for Error {
    /// An encoding failure of an outgoing request: the input cannot travel.
    fn from(error: CodecError) -> Error {
        Error::new(ErrorKind::InvalidInput, WireError::from(error))
    }
}

/// The result of an SDK call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_code_message_and_field() {
        let error = Error::refused(
            WireError::conflict("flag f already has active rollout r-1").with_field("rollout.flag"),
        );
        assert_eq!(
            error.to_string(),
            "conflict: flag f already has active rollout r-1 (field: rollout.flag)"
        );
        assert_eq!(error.code(), ErrorCode::Conflict);
        assert_eq!(error.kind(), ErrorKind::Refused);
        assert!(!error.is_retryable());
    }

    #[test]
    fn missing_answers_are_unavailable_and_retryable() {
        let error = Error::no_responders("rollout.cmd.prod.flag.create");
        assert_eq!(error.code(), ErrorCode::Unavailable);
        assert!(error.is_retryable());
        let error = Error::timeout("rollout.eval.prod", Duration::from_secs(1));
        assert_eq!(error.kind(), ErrorKind::Timeout);
        assert_eq!(error.code(), ErrorCode::Unavailable);
    }
}
