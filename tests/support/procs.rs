//! The services as child processes: this package's `sut-planner`, `sut-ticker` and
//! `sut-evaluator` — the services' own `main.rs` compiled here (see `tests/Cargo.toml`), so
//! cargo builds them fresh before these tests run — spawned through the sandbox's
//! [`ServiceProcess`].

use std::collections::HashMap;
use std::path::Path;

pub use rollout_sandbox::process::ServiceProcess;

/// Which service a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Planner,
    Ticker,
    Evaluator,
}

impl Service {
    /// The binary, built by cargo for this package.
    pub fn binary(self) -> &'static str {
        match self {
            Service::Planner => env!("CARGO_BIN_EXE_sut-planner"),
            Service::Ticker => env!("CARGO_BIN_EXE_sut-ticker"),
            Service::Evaluator => env!("CARGO_BIN_EXE_sut-evaluator"),
        }
    }

    /// Starts this service as `name` with exactly the `ROLLOUT_*` settings in `env`, its
    /// output in `<dir>/<name>.log`.
    pub fn spawn(self, name: &str, dir: &Path, env: &HashMap<String, String>) -> ServiceProcess {
        ServiceProcess::spawn(self.binary(), name, dir, env)
    }
}
