//! The scenarios, one module each: `run(args) -> Report`.

pub mod agents;
pub mod commands;
pub mod edge;
pub mod eval;
pub mod failover;
pub mod ofrep;
pub mod propagation;
pub mod scale;
pub mod sse;
pub mod ticker;
