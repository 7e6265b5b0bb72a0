//! What the system tests share: the service binaries as child processes ([`procs`]), a
//! TCP proxy that can sever or blackhole one process's link to a server ([`proxy`]), a
//! whole system on private servers with planners and evaluators in process and a phased
//! workload ([`cluster`]), committed records read from Redis ([`committed`]), the compose
//! cluster in Docker with its faults ([`compose`]), the invariant checks and the per-run report ([`checks`]), the
//! served-content oracle — what every replica serves against what the committed state gives
//! ([`oracle`], the sandbox's) — a webhook receiver ([`receiver`]) — a tiny HTTP client for evaluator endpoints ([`http`], the
//! sandbox's), and the seeded simulation's schedule, lanes and invariants ([`simulation`]).

// each test binary uses a different part of this module
#![allow(dead_code)]

pub mod checks;
pub mod cluster;
pub mod committed;
pub mod compose;
pub mod nats_cluster;
pub mod procs;
pub mod proxy;
pub mod receiver;
pub mod simulation;

pub use rollout_sandbox::{http, oracle};

/// The namespace every test uses.
pub const NS: &str = "prod";

/// Bound on waiting for something that should happen within a second or two; only a
/// failure ever takes it.
pub use rollout_sandbox::PATIENCE;

/// Polls `check` until it returns `Some`, or panics naming `what` after `deadline`.
pub use rollout_sandbox::wait_until_within as eventually;
