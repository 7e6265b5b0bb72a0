//! The pure domain core of the rollout scheduler: flags and entities, rollout specs of every
//! kind compiled into one normalised [`plan::Plan`], validation with field paths,
//! deterministic bucketing, flag evaluation, the rollout step function
//! `(plan, state, event, now) -> (state, effects)`, the records flags and rollouts are
//! stored as ([`record`]), and one transition from a decision to those records
//! ([`transition`]: the step, what it does to the flag, when to look next).
//!
//! **Architecture Invariant:** this crate does no IO, spawns nothing and reads no clock:
//! time comes in as an argument (the services take it from Redis `TIME`), so every rule
//! here is testable without servers and identical on every replica.

#![forbid(unsafe_code)]

pub mod bucket;
pub mod continuation;
pub mod entity;
pub mod error;
pub mod eval;
pub mod flag;
pub mod freeze;
pub mod guard;
pub mod machine;
pub mod plan;
pub mod record;
pub mod reschedule;
pub mod share;
pub mod spec;
pub mod time;
pub mod transition;
pub mod window;

pub use bucket::{bucket, BucketSeed};
pub use entity::{AttributeValue, Attributes, Entity, Labels};
pub use error::{FieldError, ValidationErrors};
pub use eval::{CompiledFlag, Evaluation, Reason, RolloutView, ViewAudience};
pub use flag::{Condition, Flag, Operator, Rule, Serve, Variation, WeightedVariation};
pub use guard::{
    Guard, GuardAction, GuardFigures, GuardSpec, GuardVerdict, OutcomeCounts, SideCounts,
};
pub use machine::{
    step, Approval, Effect, EndCause, EntryCause, Eta, Event, GateHold, Health, HeldBy, Lifecycle,
    Rejection, RejectionCode, RolloutState, StageCounts, StepOutcome, StepRecord, WaitingFor,
};
pub use plan::{
    compile, ApprovalGate, Audience, CompileContext, Gate, Plan, PlanKind, StartMode, Step, Target,
};
pub use record::{FlagRecord, RolloutRecord};
pub use share::Share;
pub use spec::RolloutSpec;
pub use time::{DurationMs, Timestamp};
pub use transition::Transition;
