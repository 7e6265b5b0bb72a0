//! NATS subjects (SPEC §8.1): the builders for every subject a service publishes or
//! subscribes to, the closed verb sets, queue groups and the command stream, and the parser
//! that turns a received subject back into its namespace and verb.
//!
//! Layout under the prefix (default `rollout`):
//!
//! | subject | built by |
//! |---|---|
//! | `rollout.cmd.<ns>.<verb>` | [`Subjects::cmd`], wildcard [`Subjects::cmd_all`] |
//! | `rollout.cmdq.<ns>.<verb>` (stream [`COMMAND_STREAM`]) | [`Subjects::cmdq`], filter [`Subjects::cmdq_all`] |
//! | `rollout.outcome.<ns>.<command_id>` | [`Subjects::outcome`] |
//! | `rollout.query.<ns>.<what>` | [`Subjects::query`] |
//! | `rollout.eval.<ns>` | [`Subjects::eval`] |
//! | `rollout.fleet.<ns>.<verb>` | [`Subjects::fleet`] |
//! | `rollout.events.<ns>.<flag>` | [`Subjects::events`], [`Subjects::events_all`], [`Subjects::events_namespace`] |
//! | `rollout.metrics.<ns>` | [`Subjects::metrics`] |
//! | `rollout.cluster.ping` (every replica answers, [`crate::cluster`]) | [`Subjects::cluster_ping`] |
//!
//! **Architecture Invariant:** a namespace, flag key or command id is exactly one subject
//! token (ASCII letters, digits, `-`, `_`), so `*` and `>` permissions can confine a
//! credential to one namespace and a subject always parses back unambiguously.

use std::fmt;
use std::str::FromStr;

use rollout_core::error::names;
use serde::{Deserialize, Serialize};

/// The subject prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "rollout";
/// Queue group of the planners on `rollout.cmd.*.>` and `rollout.query.*.>`.
pub const PLANNER_QUEUE: &str = "planner";
/// Queue group of the evaluators on `rollout.eval.*` and `rollout.fleet.*.*`.
pub const EVALUATOR_QUEUE: &str = "evaluator";
/// JetStream stream holding durable commands (`rollout.cmdq.>`).
pub const COMMAND_STREAM: &str = "ROLLOUT_CMDS";
/// Durable consumer name the planners share on [`COMMAND_STREAM`].
pub const COMMAND_CONSUMER: &str = "planner";

/// What is wrong with a subject, a prefix or a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubjectErrorKind {
    /// The configured prefix is not a dot-separated list of tokens.
    InvalidPrefix,
    /// The subject does not start with the configured prefix.
    WrongPrefix,
    /// The token after the prefix is not one of ours (`cmd`, `query`, ...).
    UnknownFamily,
    /// The verb or query is not in the closed set.
    UnknownVerb,
    /// The namespace is not a single valid token.
    InvalidNamespace,
    /// A flag key or command id is not a single valid token.
    InvalidToken,
    /// Tokens are missing or surplus.
    Malformed,
}

/// A subject, prefix or token that was refused, with what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SubjectError {
    kind: SubjectErrorKind,
    message: String,
}

impl SubjectError {
    fn new(kind: SubjectErrorKind, message: impl Into<String>) -> SubjectError {
        SubjectError {
            kind,
            message: message.into(),
        }
    }

    /// What kind of problem this is; tests and callers match on it, not on the text.
    pub fn kind(&self) -> SubjectErrorKind {
        self.kind
    }

    /// The lowercase explanation.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A validated namespace (`dev`, `prod`): one subject token and one Redis hash tag.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Namespace(String);

impl Namespace {
    /// Checks `name` with [`names::check_token`].
    pub fn new(name: impl Into<String>) -> Result<Namespace, SubjectError> {
        let name = name.into();
        match names::check_token(&name) {
            Ok(()) => Ok(Namespace(name)),
            Err(problem) => Err(SubjectError::new(
                SubjectErrorKind::InvalidNamespace,
                format!("invalid namespace: {problem}"),
            )),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl AsRef<str> for Namespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Namespace {
    type Err = SubjectError;

    fn from_str(text: &str) -> Result<Namespace, SubjectError> {
        Namespace::new(text)
    }
}

impl TryFrom<String> for Namespace {
    type Error = SubjectError;

    fn try_from(name: String) -> Result<Namespace, SubjectError> {
        Namespace::new(name)
    }
}

impl From<Namespace> for String {
    fn from(namespace: Namespace) -> String {
        namespace.0
    }
}

/// Checks that `text` is one subject token; `what` names it in the error.
pub fn check_subject_token(text: &str, what: &str) -> Result<(), SubjectError> {
    names::check_token(text).map_err(|problem| {
        SubjectError::new(
            SubjectErrorKind::InvalidToken,
            format!("invalid {what}: {problem}"),
        )
    })
}

/// Declares a closed verb set with its wire names, `as_str`, `parse`, `Display`, `FromStr`.
macro_rules! verb_set {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$variant_meta:meta])* $variant:ident => $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every member, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name, as it appears in subjects.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $wire, )+
                }
            }

            /// The member named `text`, or an `UnknownVerb` error listing the valid names.
            pub fn parse(text: &str) -> Result<$name, SubjectError> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|member| member.as_str() == text)
                    .ok_or_else(|| {
                        let known: Vec<&str> = $name::ALL.iter().map(|member| member.as_str()).collect();
                        SubjectError::new(
                            SubjectErrorKind::UnknownVerb,
                            format!("unknown {} {:?}; expected one of {}", $what, text, known.join(", ")),
                        )
                    })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = SubjectError;

            fn from_str(text: &str) -> Result<$name, SubjectError> {
                $name::parse(text)
            }
        }
    };
}

verb_set! {
    /// The command verbs of `rollout.cmd.<ns>.<verb>` and `rollout.cmdq.<ns>.<verb>`.
    CommandVerb, "command verb" {
        /// Create a flag.
        FlagCreate => "flag.create",
        /// Replace a flag's definition.
        FlagUpdate => "flag.update",
        /// Enable a flag.
        FlagEnable => "flag.enable",
        /// Disable a flag (stops its rollout at the current share).
        FlagDisable => "flag.disable",
        /// Delete a flag.
        FlagDelete => "flag.delete",
        /// Create (and usually start) a rollout.
        RolloutCreate => "rollout.create",
        /// Start a rollout created to wait.
        RolloutStart => "rollout.start",
        /// Freeze a running rollout.
        RolloutPause => "rollout.pause",
        /// Unfreeze a paused rollout.
        RolloutResume => "rollout.resume",
        /// Open the current step's gate.
        RolloutContinue => "rollout.continue",
        /// Approve the current step (an approval gate counts distinct actors).
        RolloutApprove => "rollout.approve",
        /// Jump to the final step.
        RolloutPromote => "rollout.promote",
        /// Replace the steps after the current one.
        RolloutReschedule => "rollout.reschedule",
        /// End keeping a share.
        RolloutStop => "rollout.stop",
        /// End with everyone on the baseline.
        RolloutRollback => "rollout.rollback",
        /// Remove a rollout (its audit stays).
        RolloutDelete => "rollout.delete",
        /// Hold every timer and automatic gate of the namespace.
        NamespaceFreeze => "namespace.freeze",
        /// Lift the namespace's freeze.
        NamespaceUnfreeze => "namespace.unfreeze",
        /// Add or replace a webhook of the namespace.
        WebhookPut => "namespace.webhook.put",
        /// Remove a webhook of the namespace.
        WebhookDelete => "namespace.webhook.delete",
    }
}

verb_set! {
    /// The reads of `rollout.query.<ns>.<what>`.
    QueryKind, "query" {
        /// One flag with its version.
        FlagGet => "flag.get",
        /// Flag summaries, paged.
        FlagList => "flag.list",
        /// A flag's outcome counters per side and its kill switch's verdict.
        FlagCounts => "flag.counts",
        /// One rollout with every step, its times and stage counts.
        RolloutStatus => "rollout.status",
        /// The counters behind a rollout's health gates: outcomes, guard verdict, stages.
        RolloutCounts => "rollout.counts",
        /// Active or finished rollouts, paged.
        RolloutList => "rollout.list",
        /// Audit of a rollout or a flag, newest first, paged.
        RolloutAudit => "rollout.audit",
        /// Dry run: compile a spec and project its times without storing it.
        RolloutPlan => "rollout.plan",
        /// The namespace's webhooks and how their deliveries go.
        NamespaceWebhooks => "namespace.webhooks",
    }
}

verb_set! {
    /// The fleet calls of `rollout.fleet.<ns>.<verb>`.
    FleetVerb, "fleet verb" {
        /// An agent announces itself with its labels.
        Register => "register",
        /// An agent is still alive.
        Heartbeat => "heartbeat",
        /// Which variation should the agent run.
        Desired => "desired",
        /// The agent applied (or failed to apply) a variation.
        Report => "report",
    }
}

/// Where a received subject belongs, with its namespace and verb.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `rollout.cmd.<ns>.<verb>`: a request-reply command.
    Command {
        namespace: Namespace,
        verb: CommandVerb,
    },
    /// `rollout.cmdq.<ns>.<verb>`: a durable command from the stream.
    QueuedCommand {
        namespace: Namespace,
        verb: CommandVerb,
    },
    /// `rollout.query.<ns>.<what>`.
    Query {
        namespace: Namespace,
        /// What is read.
        kind: QueryKind,
    },
    /// `rollout.eval.<ns>`.
    Eval { namespace: Namespace },
    /// `rollout.fleet.<ns>.<verb>`.
    Fleet {
        namespace: Namespace,
        verb: FleetVerb,
    },
    /// `rollout.events.<ns>.<flag>`.
    Events {
        namespace: Namespace,
        /// Flag key.
        flag: String,
    },
    /// `rollout.metrics.<ns>`.
    Metrics { namespace: Namespace },
    /// `rollout.alert.<ns>`: an alert acting on the namespace's matching rollouts.
    Alert { namespace: Namespace },
    /// `rollout.outcome.<command_id>`.
    Outcome {
        /// Namespace of the command.
        namespace: Namespace,
        /// The command's idempotency key.
        command_id: String,
    },
}

impl Route {
    /// The namespace, for every route but outcomes.
    pub fn namespace(&self) -> Option<&Namespace> {
        match self {
            Route::Command { namespace, .. }
            | Route::QueuedCommand { namespace, .. }
            | Route::Query { namespace, .. }
            | Route::Eval { namespace }
            | Route::Fleet { namespace, .. }
            | Route::Events { namespace, .. }
            | Route::Metrics { namespace }
            | Route::Alert { namespace } => Some(namespace),
            Route::Outcome { namespace, .. } => Some(namespace),
        }
    }
}

/// Builds and parses the subjects under one prefix. Cheap to clone; build once from config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Subjects {
        Subjects {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Subjects {
    /// Subjects under `prefix`: one or more dot-separated tokens (`rollout`, `acme.rollout`).
    pub fn new(prefix: impl Into<String>) -> Result<Subjects, SubjectError> {
        let prefix = prefix.into();
        for token in prefix.split('.') {
            if let Err(problem) = names::check_token(token) {
                return Err(SubjectError::new(
                    SubjectErrorKind::InvalidPrefix,
                    format!("invalid subject prefix {prefix:?}: token {token:?} {problem}"),
                ));
            }
        }
        Ok(Subjects { prefix })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `rollout.cmd.<ns>.<verb>`, e.g. `rollout.cmd.prod.rollout.pause`.
    pub fn cmd(&self, namespace: &Namespace, verb: CommandVerb) -> String {
        format!("{}.cmd.{namespace}.{verb}", self.prefix)
    }

    /// `rollout.cmd.*.>`: what the planners subscribe to, in queue group [`PLANNER_QUEUE`].
    pub fn cmd_all(&self) -> String {
        format!("{}.cmd.*.>", self.prefix)
    }

    /// `rollout.cmd.<ns>.>`: every command of one namespace (for permissions).
    pub fn cmd_namespace(&self, namespace: &Namespace) -> String {
        format!("{}.cmd.{namespace}.>", self.prefix)
    }

    /// `rollout.cmdq.<ns>.<verb>`: a durable command, captured by [`COMMAND_STREAM`].
    pub fn cmdq(&self, namespace: &Namespace, verb: CommandVerb) -> String {
        format!("{}.cmdq.{namespace}.{verb}", self.prefix)
    }

    /// The namespace of a `rollout.cmdq.<ns>.…` subject, even when the rest of it names no
    /// verb (so a bad queued message can still be answered in its namespace).
    pub fn queued_namespace(&self, subject: &str) -> Option<Namespace> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".cmdq.")?;
        let token = rest.split('.').next()?;
        Namespace::new(token).ok()
    }

    /// `rollout.cmdq.>`: the subject filter of [`COMMAND_STREAM`].
    pub fn cmdq_all(&self) -> String {
        format!("{}.cmdq.>", self.prefix)
    }

    /// `rollout.outcome.<ns>.<command_id>`: where the outcome of a durable command is
    /// published (under its namespace, so a namespace's users can be allowed its outcomes
    /// only).
    pub fn outcome(&self, namespace: &Namespace, command_id: &str) -> Result<String, SubjectError> {
        check_subject_token(command_id, "command id")?;
        Ok(format!("{}.outcome.{namespace}.{command_id}", self.prefix))
    }

    /// `rollout.outcome.>`: every durable command outcome.
    pub fn outcome_all(&self) -> String {
        format!("{}.outcome.>", self.prefix)
    }

    /// `rollout.query.<ns>.<what>`, e.g. `rollout.query.prod.rollout.status`.
    pub fn query(&self, namespace: &Namespace, kind: QueryKind) -> String {
        format!("{}.query.{namespace}.{kind}", self.prefix)
    }

    /// `rollout.query.*.>`: every read.
    pub fn query_all(&self) -> String {
        format!("{}.query.*.>", self.prefix)
    }

    /// `rollout.eval.<ns>`: evaluation requests, queue group [`EVALUATOR_QUEUE`].
    pub fn eval(&self, namespace: &Namespace) -> String {
        format!("{}.eval.{namespace}", self.prefix)
    }

    /// `rollout.eval.*`: evaluation requests of every namespace.
    pub fn eval_all(&self) -> String {
        format!("{}.eval.*", self.prefix)
    }

    /// `rollout.fleet.<ns>.<verb>`.
    pub fn fleet(&self, namespace: &Namespace, verb: FleetVerb) -> String {
        format!("{}.fleet.{namespace}.{verb}", self.prefix)
    }

    /// `rollout.fleet.*.*`: every fleet call.
    pub fn fleet_all(&self) -> String {
        format!("{}.fleet.*.*", self.prefix)
    }

    /// `rollout.cluster.ping`: every replica of every service answers who it is.
    pub fn cluster_ping(&self) -> String {
        format!("{}.cluster.ping", self.prefix)
    }

    /// `rollout.fleet.*.<verb>`: one kind of fleet call in every namespace.
    pub fn fleet_verb_all(&self, verb: FleetVerb) -> String {
        format!("{}.fleet.*.{verb}", self.prefix)
    }

    /// `rollout.events.<ns>.<flag>`: the change events of one flag.
    pub fn events(&self, namespace: &Namespace, flag: &str) -> Result<String, SubjectError> {
        check_subject_token(flag, "flag key")?;
        Ok(format!("{}.events.{namespace}.{flag}", self.prefix))
    }

    /// `rollout.notices.<ns>`: the namespace's own changes (freezes), as audit entries.
    pub fn notices(&self, namespace: &Namespace) -> String {
        format!("{}.notices.{namespace}", self.prefix)
    }

    /// `rollout.notices.>`: every namespace's notices (what the ticker wakes on).
    pub fn notices_all(&self) -> String {
        format!("{}.notices.>", self.prefix)
    }

    /// `rollout.events.>`: every change event (what evaluators subscribe to).
    pub fn events_all(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// `rollout.events.<ns>.*`: every change event of one namespace.
    pub fn events_namespace(&self, namespace: &Namespace) -> String {
        format!("{}.events.{namespace}.*", self.prefix)
    }

    /// `rollout.metrics.<ns>`: outcome reports for guards.
    pub fn metrics(&self, namespace: &Namespace) -> String {
        format!("{}.metrics.{namespace}", self.prefix)
    }

    /// `rollout.alert.<ns>`: alerts on one namespace's rollouts.
    pub fn alert(&self, namespace: &Namespace) -> String {
        format!("{}.alert.{namespace}", self.prefix)
    }

    /// `rollout.alert.*`: alerts of every namespace (what the planner serves).
    pub fn alert_all(&self) -> String {
        format!("{}.alert.*", self.prefix)
    }

    /// `rollout.metrics.*`: outcome reports of every namespace.
    pub fn metrics_all(&self) -> String {
        format!("{}.metrics.*", self.prefix)
    }

    /// Turns a received subject back into where it belongs. Unknown families and verbs,
    /// invalid namespaces and missing or surplus tokens are refused.
    pub fn parse(&self, subject: &str) -> Result<Route, SubjectError> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|after| after.strip_prefix('.'))
            .ok_or_else(|| {
                SubjectError::new(
                    SubjectErrorKind::WrongPrefix,
                    format!("subject {subject:?} is not under {:?}", self.prefix),
                )
            })?;
        let (family, after_family) = rest.split_once('.').unwrap_or((rest, ""));
        if family == "outcome" {
            let (namespace_token, command_id) =
                after_family.split_once('.').unwrap_or((after_family, ""));
            let namespace = Namespace::new(namespace_token)?;
            check_subject_token(command_id, "command id")?;
            return Ok(Route::Outcome {
                namespace,
                command_id: command_id.to_owned(),
            });
        }
        let (namespace_token, tail) = after_family.split_once('.').unwrap_or((after_family, ""));
        let namespace = match family {
            "cmd" | "cmdq" | "query" | "eval" | "fleet" | "events" | "metrics" | "alert" => {
                Namespace::new(namespace_token)?
            }
            other => {
                return Err(SubjectError::new(
                    SubjectErrorKind::UnknownFamily,
                    format!(
                        "subject {subject:?}: unknown kind {other:?}; expected cmd, cmdq, query, eval, fleet, events, metrics, alert or outcome"
                    ),
                ))
            }
        };
        let needs_tail = !matches!(family, "eval" | "metrics" | "alert");
        if needs_tail == tail.is_empty() {
            let expectation = if needs_tail {
                "is missing its verb"
            } else {
                "has tokens after the namespace"
            };
            return Err(SubjectError::new(
                SubjectErrorKind::Malformed,
                format!("subject {subject:?} {expectation}"),
            ));
        }
        Ok(match family {
            "cmd" => Route::Command {
                namespace,
                verb: CommandVerb::parse(tail)?,
            },
            "cmdq" => Route::QueuedCommand {
                namespace,
                verb: CommandVerb::parse(tail)?,
            },
            "query" => Route::Query {
                namespace,
                kind: QueryKind::parse(tail)?,
            },
            "fleet" => Route::Fleet {
                namespace,
                verb: FleetVerb::parse(tail)?,
            },
            "events" => {
                check_subject_token(tail, "flag key")?;
                Route::Events {
                    namespace,
                    flag: tail.to_owned(),
                }
            }
            "eval" => Route::Eval { namespace },
            "alert" => Route::Alert { namespace },
            _ => Route::Metrics { namespace },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prod() -> Namespace {
        Namespace::new("prod").expect("valid namespace")
    }

    #[test]
    fn builds_every_subject_of_the_spec() {
        let subjects = Subjects::default();
        let ns = prod();
        assert_eq!(
            subjects.cmd(&ns, CommandVerb::FlagCreate),
            "rollout.cmd.prod.flag.create"
        );
        assert_eq!(
            subjects.cmd(&ns, CommandVerb::RolloutPause),
            "rollout.cmd.prod.rollout.pause"
        );
        assert_eq!(subjects.cmd_all(), "rollout.cmd.*.>");
        assert_eq!(subjects.cmd_namespace(&ns), "rollout.cmd.prod.>");
        assert_eq!(
            subjects.cmdq(&ns, CommandVerb::RolloutStop),
            "rollout.cmdq.prod.rollout.stop"
        );
        assert_eq!(subjects.cmdq_all(), "rollout.cmdq.>");
        assert_eq!(
            subjects.fleet_verb_all(FleetVerb::Report),
            "rollout.fleet.*.report"
        );
        assert_eq!(COMMAND_STREAM, "ROLLOUT_CMDS");
        assert_eq!(
            subjects.outcome(&ns, "c-1").expect("token"),
            "rollout.outcome.prod.c-1"
        );
        assert_eq!(
            subjects.query(&ns, QueryKind::RolloutStatus),
            "rollout.query.prod.rollout.status"
        );
        assert_eq!(subjects.eval(&ns), "rollout.eval.prod");
        assert_eq!(
            subjects.fleet(&ns, FleetVerb::Report),
            "rollout.fleet.prod.report"
        );
        assert_eq!(
            subjects.events(&ns, "new-checkout").expect("token"),
            "rollout.events.prod.new-checkout"
        );
        assert_eq!(subjects.events_all(), "rollout.events.>");
        assert_eq!(subjects.events_namespace(&ns), "rollout.events.prod.*");
        assert_eq!(subjects.metrics(&ns), "rollout.metrics.prod");
        assert_eq!(PLANNER_QUEUE, "planner");
        assert_eq!(EVALUATOR_QUEUE, "evaluator");
    }

    #[test]
    fn a_configured_prefix_is_used_everywhere() {
        let subjects = Subjects::new("acme.rollout").expect("valid prefix");
        let ns = prod();
        assert_eq!(subjects.eval(&ns), "acme.rollout.eval.prod");
        assert_eq!(
            subjects.parse("acme.rollout.eval.prod").expect("parses"),
            Route::Eval { namespace: ns }
        );
        for bad in ["", "a..b", "a.*", "a b", ".a", "a."] {
            assert_eq!(
                Subjects::new(bad).expect_err(bad).kind(),
                SubjectErrorKind::InvalidPrefix
            );
        }
    }

    #[test]
    fn every_built_subject_parses_back() {
        let subjects = Subjects::default();
        let ns = prod();
        for verb in CommandVerb::ALL {
            let route = subjects.parse(&subjects.cmd(&ns, *verb)).expect("cmd");
            assert_eq!(
                route,
                Route::Command {
                    namespace: ns.clone(),
                    verb: *verb
                }
            );
            let queued = subjects.parse(&subjects.cmdq(&ns, *verb)).expect("cmdq");
            assert_eq!(
                queued,
                Route::QueuedCommand {
                    namespace: ns.clone(),
                    verb: *verb
                }
            );
        }
        for kind in QueryKind::ALL {
            let route = subjects.parse(&subjects.query(&ns, *kind)).expect("query");
            assert_eq!(
                route,
                Route::Query {
                    namespace: ns.clone(),
                    kind: *kind
                }
            );
        }
        for verb in FleetVerb::ALL {
            let route = subjects.parse(&subjects.fleet(&ns, *verb)).expect("fleet");
            assert_eq!(
                route,
                Route::Fleet {
                    namespace: ns.clone(),
                    verb: *verb
                }
            );
        }
        assert_eq!(
            subjects.parse(&subjects.eval(&ns)).expect("eval"),
            Route::Eval {
                namespace: ns.clone()
            }
        );
        assert_eq!(
            subjects.parse(&subjects.metrics(&ns)).expect("metrics"),
            Route::Metrics {
                namespace: ns.clone()
            }
        );
        let events = subjects.events(&ns, "new-checkout").expect("token");
        assert_eq!(
            subjects.parse(&events).expect("events"),
            Route::Events {
                namespace: ns.clone(),
                flag: "new-checkout".into()
            }
        );
        let outcome = subjects.outcome(&ns, "c-42").expect("token");
        let route = subjects.parse(&outcome).expect("outcome");
        assert_eq!(
            route,
            Route::Outcome {
                namespace: ns.clone(),
                command_id: "c-42".into()
            }
        );
        assert_eq!(route.namespace(), Some(&ns));
    }

    #[test]
    fn verbs_round_trip_through_their_names() {
        for verb in CommandVerb::ALL {
            assert_eq!(CommandVerb::parse(verb.as_str()), Ok(*verb));
            assert_eq!(verb.to_string().parse::<CommandVerb>(), Ok(*verb));
        }
        assert_eq!(CommandVerb::ALL.len(), 20);
        for kind in QueryKind::ALL {
            assert_eq!(QueryKind::parse(kind.as_str()), Ok(*kind));
        }
        for verb in FleetVerb::ALL {
            assert_eq!(FleetVerb::parse(verb.as_str()), Ok(*verb));
        }
    }

    #[test]
    fn refuses_unknown_verbs_and_bad_namespaces_with_a_kind() {
        let subjects = Subjects::default();
        let cases: &[(&str, SubjectErrorKind)] = &[
            (
                "rollout.cmd.prod.flag.explode",
                SubjectErrorKind::UnknownVerb,
            ),
            ("rollout.cmd.prod.flag", SubjectErrorKind::UnknownVerb),
            ("rollout.cmd.prod", SubjectErrorKind::Malformed),
            ("rollout.cmd.prod.", SubjectErrorKind::Malformed),
            (
                "rollout.query.prod.rollout.explode",
                SubjectErrorKind::UnknownVerb,
            ),
            ("rollout.fleet.prod.dance", SubjectErrorKind::UnknownVerb),
            ("rollout.eval.prod.extra", SubjectErrorKind::Malformed),
            ("rollout.metrics.prod.extra", SubjectErrorKind::Malformed),
            ("rollout.eval.pr*d", SubjectErrorKind::InvalidNamespace),
            (
                "rollout.cmd.p@d.flag.create",
                SubjectErrorKind::InvalidNamespace,
            ),
            ("rollout.eval.", SubjectErrorKind::InvalidNamespace),
            ("rollout.events.prod.a.b", SubjectErrorKind::InvalidToken),
            ("rollout.outcome.", SubjectErrorKind::InvalidNamespace),
            ("rollout.outcome.prod.", SubjectErrorKind::InvalidToken),
            ("rollout.outcome.prod.a.b", SubjectErrorKind::InvalidToken),
            ("rollout.nonsense.prod", SubjectErrorKind::UnknownFamily),
            ("other.cmd.prod.flag.create", SubjectErrorKind::WrongPrefix),
            (
                "rolloutx.cmd.prod.flag.create",
                SubjectErrorKind::WrongPrefix,
            ),
            ("rollout", SubjectErrorKind::WrongPrefix),
        ];
        for (subject, kind) in cases {
            let error = subjects.parse(subject).expect_err(subject);
            assert_eq!(error.kind(), *kind, "{subject}: {error}");
            assert!(!error.message().is_empty());
        }
    }

    #[test]
    fn namespaces_and_tokens_are_single_subject_tokens() {
        for good in ["prod", "dev-1", "eu_west", "A9"] {
            assert!(Namespace::new(good).is_ok(), "{good}");
        }
        let too_long = "n".repeat(129);
        for bad in [
            "",
            "pr.od",
            "pr od",
            "*",
            ">",
            "ns{x}",
            "é",
            too_long.as_str(),
        ] {
            let error = Namespace::new(bad).expect_err(bad);
            assert_eq!(error.kind(), SubjectErrorKind::InvalidNamespace);
        }
        let subjects = Subjects::default();
        let ns = prod();
        assert_eq!(
            subjects.events(&ns, "a.b").expect_err("dot").kind(),
            SubjectErrorKind::InvalidToken
        );
        assert_eq!(
            subjects.outcome(&ns, "c 1").expect_err("space").kind(),
            SubjectErrorKind::InvalidToken
        );
    }

    #[test]
    fn namespaces_validate_when_deserialised() {
        let ns: Namespace = serde_json::from_str("\"prod\"").expect("valid");
        assert_eq!(ns.as_str(), "prod");
        assert!(serde_json::from_str::<Namespace>("\"pr.od\"").is_err());
        assert_eq!(serde_json::to_string(&ns).expect("serialises"), "\"prod\"");
    }
}
