//! The rollout step function: `step(plan, state, event, now) -> (state, effects)`.
//!
//! One pure function decides every lifecycle change (SPEC §5): queued start, timers,
//! manual `continue`, pause (keeping the remaining step time) and resume (shifting later
//! times by the pause length), promote, stop with a share, rollback, completion after bake
//! time, guard breaches, and catch-up in one jump that never crosses a manual or health
//! gate. The planner runs it for commands, the ticker for ticks; both persist the returned
//! state and effects in one atomic script, guarded by the state's `revision`.
//!
//! Timers run from a step's *planned* start (its anchor), not from when a ticker happened
//! to fire, so lateness never accumulates and catch-up lands exactly where the clock says.
//!
//! [`state`] holds the types (state, events, effects, rejections); [`step`](fn@step) the
//! function.

mod state;
mod step;

pub use state::*;
pub use step::step;
