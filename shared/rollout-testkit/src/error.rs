//! The error type returned by every fallible function of the test kit.

use std::path::PathBuf;

/// Shorthand for `Result<T, TestkitError>`.
pub type Result<T, E = TestkitError> = std::result::Result<T, E>;

/// Everything that can go wrong while finding, starting, signalling or
/// probing a test server.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// The server binary was found nowhere (env var, `.tools/bin`, `PATH`).
    #[error("`{name}` not found ({searched}); run deploy/tools/install.sh")]
    BinaryNotFound {
        /// Binary name, e.g. `nats-server`.
        name: String,
        /// Human-readable list of the places that were searched.
        searched: String,
    },

    /// A binary was found but is older than the test kit needs.
    #[error(
        "`{}` is version {found}, but {name} >= {required} is required; run deploy/tools/install.sh{}",
        path.display(),
        if others.is_empty() { String::new() } else { format!(" (also rejected: {others})") }
    )]
    BinaryTooOld {
        /// Binary name, e.g. `nats-server`.
        name: String,
        /// The rejected binary.
        path: PathBuf,
        /// The version it reported.
        found: String,
        /// The minimum version accepted.
        required: String,
        /// Other candidates that were rejected as well, if any.
        others: String,
    },

    /// A binary's `--version` output could not be understood.
    #[error("could not read the version of `{}`: {detail}", path.display())]
    BinaryVersion {
        /// The binary that was asked.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },

    /// An I/O operation failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What the test kit was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Sending a signal to a server process failed.
    #[error("could not send {signal} to pid {pid}: {source}")]
    Signal {
        /// Target process.
        pid: u32,
        /// Signal name, e.g. `SIGSTOP`.
        signal: String,
        /// The errno returned by `kill(2)`.
        #[source]
        source: nix::errno::Errno,
    },

    /// The server did not become ready before the deadline, or exited
    /// while starting.
    #[error(
        "{server} on 127.0.0.1:{port} did not become ready: {reason}\n--- tail of {} ---\n{log_tail}",
        log.display()
    )]
    NotReady {
        /// Which server (`nats-server` / `redis-server`).
        server: &'static str,
        /// The port it was started on.
        port: u16,
        /// Why it is not ready (exit status, last probe result, ...).
        reason: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of the server's log.
        log_tail: String,
    },

    /// Every port tried was already taken by someone else.
    #[error("{server}: no free port after {attempts} attempts; last failure: {last}")]
    PortsExhausted {
        /// Which server (`nats-server` / `redis-server`).
        server: &'static str,
        /// How many ports were tried.
        attempts: usize,
        /// The last failure.
        last: Box<TestkitError>,
    },

    /// An operation that needs a live process was called while the server
    /// was killed or stopped.
    #[error("{server} is not running")]
    NotRunning {
        /// Which server (`nats-server` / `redis-server`).
        server: &'static str,
    },

    /// `start` was asked for while the process is still alive.
    #[error("{server} is already running (pid {pid})")]
    AlreadyRunning {
        /// Which server (`nats-server` / `redis-server`).
        server: &'static str,
        /// Its pid.
        pid: u32,
    },

    /// The options given make no sense together.
    #[error("invalid options: {0}")]
    InvalidOptions(String),

    /// A server answered something unexpected.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl TestkitError {
    /// Builds a closure mapping an `io::Error` to [`TestkitError::Io`] with
    /// the given context, for use with `map_err`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestkitError {
        let context = context.into();
        move |source| TestkitError::Io { context, source }
    }
}
