//! The Rust SDK of the rollout scheduler, speaking the wire contract of `rollout-wire` over
//! an `async_nats::Client`:
//!
//! - [`CommandClient`]: every planner command and query as a typed method; each command
//!   carries a command id (generated per call unless given), so retries are idempotent.
//! - [`EvalClient`]: which variation an entity gets, from the evaluators on
//!   `rollout.eval.<ns>`, with a bounded local cache invalidated by change events; outcome
//!   reports for guards.
//! - [`openfeature::RolloutProvider`] (feature `openfeature`, on by default): the same
//!   evaluations behind the standard OpenFeature API.
//! - [`EventSubscription`]: change events of a flag or a namespace, decoded.
//! - [`FleetAgent`]: a fleet machine's calls on `rollout.fleet.<ns>` — register with labels,
//!   heartbeat, which variation to run, applied/failed reports — registering again on its
//!   own when the evaluators have forgotten it.
//!
//! Errors are one [`Error`] type carrying the wire error (a stable [`ErrorCode`], a message,
//! the field at fault) and an [`ErrorKind`] telling a refusal from a missing answer.
//!
//! The `openfeature` feature (on by default) adds the OpenFeature provider. `rolloutctl`,
//! the operator CLI built on this crate, is its own crate (`shared/rolloutctl`), so
//! embedding the SDK compiles no CLI dependency.
//!
//! ```no_run
//! use rollout_sdk::{CommandClient, Entity, EvalClient, Namespace};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let namespace = Namespace::new("prod")?;
//!
//! let commands = CommandClient::new(nats.clone(), namespace.clone());
//! let flag = commands.get_flag("new-checkout").await?;
//! println!("new-checkout is at version {}", flag.version);
//!
//! let eval = EvalClient::connect(nats, namespace).await?;
//! let answer = eval.evaluate("new-checkout", &Entity::with_id("user-42")).await?;
//! println!("user-42 gets {} ({:?})", answer.variation, answer.reason);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
pub mod cluster;
pub mod commands;
pub mod error;
pub mod eval;
pub mod events;
pub mod fleet;
#[cfg(feature = "openfeature")]
pub mod openfeature;
pub mod specs;
pub mod transport;

pub use cache::CacheStats;
pub use commands::{CommandClient, CommandOutcome, QueryOutcome};
pub use error::{Error, ErrorKind, Result};
pub use eval::{EvalClient, EvalClientBuilder};
pub use events::{decode_event, EventSubscription};
pub use fleet::FleetAgent;
pub use specs::{parse_flag, parse_rollout_spec, SpecError, SpecFormat};
pub use transport::{new_command_id, RequestOptions, NO_RESPONDERS_PATIENCE};

pub use rollout_core::spec::RescheduleStepSpec;
pub use rollout_core::{AttributeValue, Attributes, Entity, Flag, Labels, Reason, RolloutSpec};
pub use rollout_wire::{
    ChangeEvent, Desired, Encoding, ErrorCode, EvalMany, EvalResult, Namespace, Outcome,
    OutcomeReport, Subjects, WireError,
};
