//! Why `rolloutctl` failed, how that is printed (`error: <code>: <message> (field: …)` and a
//! hint of what to fix) and the exit code it maps to.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rollout_runtime::config::ConfigError;
use rollout_runtime::connect::ConnectError;
use rollout_sdk::{Error, ErrorCode, ErrorKind};

/// The planner (or evaluator) refused: not found, conflict, failed precondition, denied.
pub const EXIT_REFUSED: u8 = 1;
/// Invalid input: usage, an unreadable or invalid file, `invalid_argument`.
pub const EXIT_INVALID: u8 = 2;
/// NATS or the service could not be reached (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// A bug or an unexpected reply (`EX_SOFTWARE`).
pub const EXIT_INTERNAL: u8 = 70;

/// What the failed call was about, for the hint.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// The file the request came from.
    pub file: Option<PathBuf>,
    /// The rollout named on the command line.
    pub rollout_id: Option<String>,
    /// The flag named on the command line.
    pub flag: Option<String>,
    /// `planner` or `evaluator`: who should have answered.
    pub service: &'static str,
}

/// A failure of one `rolloutctl` run.
#[derive(Debug)]
pub enum Failure {
    /// An SDK call failed.
    Sdk {
        error: Error,
        /// What the call was about.
        context: Box<Context>,
    },
    /// A file could not be read or parsed; nothing was sent.
    File {
        /// The file.
        path: PathBuf,
        /// Where in it, when known.
        line: Option<usize>,
        /// Column, when known.
        column: Option<usize>,
        /// The field at fault, when known.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// NATS could not be reached.
    Connect(ConnectError),
    /// A `ROLLOUT_NATS__*` setting is invalid.
    Config(ConfigError),
    /// Anything else wrong with the command line.
    Usage(String),
    /// A reply that does not decode as expected.
    Internal(String),
}

impl Failure {
    /// An SDK error about `context`.
    pub fn sdk(error: Error, context: &Context) -> Failure {
        Failure::Sdk {
            error,
            context: Box::new(context.clone()),
        }
    }

    /// A file problem without a position.
    pub fn file(path: &Path, message: impl Into<String>) -> Failure {
        Failure::File {
            path: path.to_owned(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
        }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Sdk { error, .. } => match (error.kind(), error.code()) {
                (ErrorKind::NoResponders | ErrorKind::Timeout | ErrorKind::Transport, _) => {
                    EXIT_UNAVAILABLE
                }
                (ErrorKind::Decode, _) => EXIT_INTERNAL,
                (_, ErrorCode::InvalidArgument) => EXIT_INVALID,
                (_, ErrorCode::Unavailable) => EXIT_UNAVAILABLE,
                (_, ErrorCode::Internal) => EXIT_INTERNAL,
                (
                    _,
                    ErrorCode::NotFound
                    | ErrorCode::Conflict
                    | ErrorCode::FailedPrecondition
                    | ErrorCode::PermissionDenied,
                ) => EXIT_REFUSED,
            },
            Failure::File { .. } | Failure::Config(_) | Failure::Usage(_) => EXIT_INVALID,
            Failure::Connect(_) => EXIT_UNAVAILABLE,
            Failure::Internal(_) => EXIT_INTERNAL,
        }
    }

    /// The text printed on stderr: the error line, every validation problem, a hint.
    pub fn render(&self, nats_url: &str, namespace: &str) -> String {
        let mut text = String::new();
        match self {
            Failure::Sdk { error, context } => {
                // several problems are listed one a line rather than joined in the message
                let details = &error.wire().details;
                let message = if details.len() > 1 {
                    format!("{} problems", details.len())
                } else {
                    error.message().to_owned()
                };
                let _ = write!(text, "error: {}: {message}", error.code());
                if let Some(field) = error.field() {
                    let _ = write!(text, " (field: {field})");
                }
                text.push('\n');
                if details.len() > 1 {
                    for problem in details {
                        let _ = writeln!(text, "  - {}: {}", problem.field, problem.message);
                    }
                }
                let _ = writeln!(text, "hint: {}", sdk_hint(error, context, namespace));
            }
            Failure::File {
                path,
                line,
                column,
                field,
                message,
            } => {
                let position = match (line, column) {
                    (Some(line), Some(column)) => format!(" at line {line}, column {column}"),
                    (Some(line), None) => format!(" at line {line}"),
                    _ => String::new(),
                };
                let _ = write!(
                    text,
                    "error: invalid_argument: {}{position}: {message}",
                    path.display()
                );
                if let Some(field) = field {
                    let _ = write!(text, " (field: {field})");
                }
                text.push('\n');
                let _ = writeln!(
                    text,
                    "hint: fix the file and run again; nothing was sent. Valid examples of every kind are in deploy/examples/"
                );
            }
            Failure::Connect(error) => {
                let _ = writeln!(text, "error: unavailable: {error}");
                let _ = writeln!(
                    text,
                    "hint: is nats-server running at {nats_url}? Pass --nats-url or set ROLLOUT_NATS__URL (credentials: ROLLOUT_NATS__USER/PASSWORD/TOKEN/CREDENTIALS_FILE)"
                );
            }
            Failure::Config(error) => {
                let _ = writeln!(text, "error: invalid_argument: {error}");
                let _ = writeln!(
                    text,
                    "hint: fix or unset that ROLLOUT_NATS__* environment variable"
                );
            }
            Failure::Usage(message) => {
                let _ = writeln!(text, "error: invalid_argument: {message}");
                let _ = writeln!(text, "hint: see rolloutctl --help");
            }
            Failure::Internal(message) => {
                let _ = writeln!(text, "error: internal: {message}");
                let _ = writeln!(
                    text,
                    "hint: rolloutctl and the services may be of different releases; try --json to see the raw reply"
                );
            }
        }
        text
    }
}

fn sdk_hint(error: &Error, context: &Context, namespace: &str) -> String {
    let service = if context.service.is_empty() {
        "planner"
    } else {
        context.service
    };
    match (error.kind(), error.code()) {
        (ErrorKind::NoResponders, _) => format!(
            "no {service} answers in namespace {namespace}: start one, or check -n/--namespace and --subject-prefix"
        ),
        (ErrorKind::Timeout, _) => format!(
            "the {service} did not answer in time: raise --timeout or check the {service}'s health (commands are safe to repeat); a NATS user allowed replies only under its own inbox needs ROLLOUT_NATS__INBOX_PREFIX (e.g. _INBOX_<user>)"
        ),
        (ErrorKind::Transport, _) => "the NATS connection failed: check the server and your credentials".to_owned(),
        (ErrorKind::Decode, _) => "the reply did not decode: rolloutctl and the services may be of different releases".to_owned(),
        (ErrorKind::InvalidInput, _) => "fix the value named above and run again; nothing was sent".to_owned(),
        (ErrorKind::Refused, ErrorCode::InvalidArgument) => match &context.file {
            Some(path) => format!(
                "fix {} in {} and run again (the planner stored nothing); valid examples are in deploy/examples/",
                error.field().unwrap_or("the field named above"),
                path.display()
            ),
            None => "fix the value named above and run again; the planner stored nothing".to_owned(),
        },
        (ErrorKind::Refused, ErrorCode::NotFound) => match (&context.rollout_id, &context.flag) {
            (Some(rollout_id), _) => format!(
                "no rollout {rollout_id} in namespace {namespace}: list them with `rolloutctl -n {namespace} rollout list` (add --finished for ended ones); a deleted rollout's history stays readable with `rolloutctl -n {namespace} rollout audit --rollout {rollout_id}`"
            ),
            (None, Some(flag)) => format!(
                "no flag {flag} in namespace {namespace}: list them with `rolloutctl -n {namespace} flag list`"
            ),
            (None, None) => format!("check the name and the namespace ({namespace}, set with -n)"),
        },
        (ErrorKind::Refused, ErrorCode::Conflict) => match &context.flag {
            Some(flag) => format!(
                "another change holds the flag: see `rolloutctl -n {namespace} rollout list --flag {flag}`; stop, roll back or wait for its active rollout, or re-read the flag before updating"
            ),
            None => "another change got there first: re-read the current state and try again".to_owned(),
        },
        (ErrorKind::Refused, ErrorCode::FailedPrecondition) => match &context.rollout_id {
            Some(rollout_id) => format!(
                "the rollout's state does not allow this: see `rolloutctl -n {namespace} rollout status {rollout_id}`"
            ),
            None => "the current state does not allow this: check the flag's active rollout".to_owned(),
        },
        (ErrorKind::Refused, ErrorCode::PermissionDenied) => {
            "your NATS credentials may not do this: use operator credentials".to_owned()
        }
        (ErrorKind::Refused, ErrorCode::Unavailable) => format!(
            "a dependency of the {service} is down: try again later (commands are safe to repeat)"
        ),
        (ErrorKind::Refused, ErrorCode::Internal) => format!("the {service} failed: see its logs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_sdk::WireError;

    #[test]
    fn exit_codes_follow_the_kind_of_failure() {
        let context = Context::default();
        let refused = Failure::sdk(Error::refused(WireError::conflict("busy")), &context);
        assert_eq!(refused.exit_code(), EXIT_REFUSED);
        let invalid = Failure::sdk(
            Error::refused(WireError::invalid_argument("rollout.phases", "bad")),
            &context,
        );
        assert_eq!(invalid.exit_code(), EXIT_INVALID);
        let gone = Failure::sdk(
            Error::no_responders("rollout.cmd.default.flag.create"),
            &context,
        );
        assert_eq!(gone.exit_code(), EXIT_UNAVAILABLE);
        assert_eq!(Failure::Usage("x".into()).exit_code(), EXIT_INVALID);
    }

    #[test]
    fn the_error_line_names_code_message_and_field() {
        let context = Context {
            file: Some(PathBuf::from("spec.yaml")),
            ..Context::default()
        };
        let failure = Failure::sdk(
            Error::refused(WireError::invalid_argument(
                "rollout.phases[1].percentage",
                "must be greater than the previous step's 50%",
            )),
            &context,
        );
        let text = failure.render("nats://127.0.0.1:4222", "default");
        assert!(text.starts_with(
            "error: invalid_argument: must be greater than the previous step's 50% (field: rollout.phases[1].percentage)\n"
        ), "{text}");
        assert!(
            text.contains("hint: fix rollout.phases[1].percentage in spec.yaml"),
            "{text}"
        );
    }
}
