//! The wire contract of the rollout scheduler: the one crate that knows what travels between
//! planner, ticker, evaluators, CLI, SDKs and agents.
//!
//! - [`subjects`]: every NATS subject (SPEC §8.1), the closed verb sets, queue groups, the
//!   command stream, and the parser from a received subject back to `(namespace, verb)`.
//! - [`codec`]: MessagePack with named fields by default, JSON on
//!   `Content-Type: application/json`; decoders capped in size (1 MiB) and nesting (32) by a
//!   non-recursive pre-scan that runs before serde.
//! - [`envelope`]: every reply is `{"ok": true, "result": …}` or
//!   `{"ok": false, "error": {"code", "message", "field"?}}`, with the seven stable codes.
//! - Messages, one module per family, each type documented with a JSON example taken from
//!   `shapes/` (all listed in [`shapes::SHAPES`]): [`commands`], [`queries`], [`eval`], [`webhooks`],
//!   [`fleet`], [`outcomes`], [`events`], and the shared read-side [`views`].
//!
//! Domain types (flags, specs, entities, lifecycle, stage counts, rollout views) are
//! `rollout-core`'s, reused inside messages, never redefined.
//!
//! **Architecture Invariant:** field names are the contract. Fields may be added, never
//! renamed or removed. Requests refuse unknown fields (`deny_unknown_fields`), so a typo is an
//! error rather than a silent default; replies and events accept unknown fields, so an older
//! client keeps working when a newer service adds one.
//!
//! **Architecture Invariant:** no input makes a decoder panic, recurse without bound or
//! allocate beyond what the message could hold; wire types are not recursive, and the only
//! free-form values (variation values, `details`) sit under the depth cap.

#![forbid(unsafe_code)]

/// The text of the documented example `shapes/<file>.json`.
macro_rules! shape_json {
    ($file:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shapes/",
            $file,
            ".json"
        ))
    };
}

/// A doc-comment section showing the documented example `shapes/<file>.json`.
macro_rules! shape_doc {
    ($file:literal) => {
        concat!("\n\n# Example\n\n```json\n", shape_json!($file), "```\n")
    };
}

pub mod alerts;
pub mod checks;
pub mod cluster;
pub mod codec;
pub mod commands;
pub mod envelope;
pub mod eval;
pub mod events;
pub mod fleet;
pub mod outcomes;
pub mod queries;
mod scan;
pub mod shapes;
pub mod subjects;
pub mod views;
pub mod webhooks;

pub use checks::PageWindow;
pub use cluster::{MemberInfo, Served};
pub use codec::{decode, decode_with, encode, CodecError, CodecErrorKind, Encoding, Limits};
pub use commands::{
    Command, CommandReply, Deleted, FlagCreate, FlagDelete, FlagResult, FlagToggle, FlagUpdate,
    NamespaceFreeze, NamespaceResult, NamespaceUnfreeze, RolloutAction, RolloutCreate,
    RolloutReschedule, RolloutResult, RolloutRollback, RolloutStop, SideEffect,
};
pub use envelope::{decode_reply, encode_error_reply, encode_reply, ErrorCode, Reply, WireError};
pub use eval::{EvalMany, EvalRequest, EvalResult, EvalTarget};
pub use events::{ChangeEvent, EventKind, FlagSnapshot};
pub use fleet::{
    AgentAck, AgentHeartbeat, AgentRegister, AgentReport, Desired, DesiredQuery, FleetRequest,
    ReportStatus,
};
pub use outcomes::{decode_outcomes, Outcome, OutcomeBatch, OutcomeReport};
pub use queries::{
    AuditEntry, AuditPage, AuditQuery, FlagCounts, FlagCountsQuery, FlagGetQuery, FlagList,
    FlagListQuery, FlagSummary, ListState, NamedStageCounts, PlanPreview, PlanQuery, Query,
    RolloutCounts, RolloutCountsQuery, RolloutList, RolloutListQuery, RolloutStatus,
    RolloutStatusQuery, RolloutSummary, DEFAULT_COUNTS_WINDOW,
};
pub use subjects::{
    CommandVerb, FleetVerb, Namespace, QueryKind, Route, SubjectError, SubjectErrorKind, Subjects,
    COMMAND_STREAM, EVALUATOR_QUEUE, PLANNER_QUEUE,
};
pub use views::{GateKind, GateStatus, RolloutKind, StepStatus};
