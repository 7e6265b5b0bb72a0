//! Running the built `rolloutctl` against the SDK tests' sandbox cluster (shared by path:
//! it is a thin layer over `rollout-sandbox`).

#[path = "../../../rollout-sdk/tests/common/mod.rs"]
mod sdk;

pub use sdk::*;

/// `rolloutctl` runs against a [`Cluster`].
#[allow(dead_code)] // not every test binary uses it
pub(crate) trait Ctl {
    /// Runs the built `rolloutctl` against this cluster in namespace [`NS`].
    async fn ctl(&self, args: &[&str]) -> CtlRun;
    /// `rolloutctl` with `--json`, expecting success, and its output as JSON.
    async fn ctl_json(&self, args: &[&str]) -> serde_json::Value;
}

impl Ctl for Cluster {
    async fn ctl(&self, args: &[&str]) -> CtlRun {
        run_ctl(&self.nats.url(), args).await
    }

    async fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(args);
        let output = self.ctl(&with_json).await;
        output.assert_ok();
        serde_json::from_str(&output.stdout)
            .unwrap_or_else(|error| panic!("--json output parses ({error}): {}", output.stdout))
    }
}

/// What one `rolloutctl` run printed and how it exited.
#[derive(Debug)]
pub struct CtlRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlRun {
    pub fn assert_ok(&self) {
        assert_eq!(
            self.code,
            Some(0),
            "rolloutctl failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `rolloutctl` with `--nats-url nats_url -n test`, no ROLLOUT_* variables inherited.
pub async fn run_ctl(nats_url: &str, args: &[&str]) -> CtlRun {
    let mut command = ctl_command(nats_url, args);
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("rolloutctl finishes in time")
        .expect("rolloutctl runs");
    CtlRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub fn ctl_command(nats_url: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rolloutctl"));
    for (name, _) in std::env::vars() {
        if name.starts_with("ROLLOUT_") && name.contains("__") {
            command.env_remove(name);
        }
    }
    command.args(["--nats-url", nats_url, "-n", NS]);
    // a test that acts as someone names them itself
    if !args.contains(&"--actor") {
        command.args(["--actor", "ctl-test"]);
    }
    command.args(args).kill_on_drop(true);
    command
}
