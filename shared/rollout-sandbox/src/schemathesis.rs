//! Conformance runs against an OpenAPI description with schemathesis (installed by
//! `deploy/tools/install.sh` into `.tools/schemathesis`): every check on, once with a fixed
//! seed and once with a random one (`ROLLOUT_SCHEMATHESIS_SEED` replays the seed a failed
//! run printed). A failure comes back as the report with the command that replays it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The fixed seed every run starts with.
pub const FIXED_SEED: u64 = 20_261_205;

/// One conformance run's settings.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// The OpenAPI file, relative to the repository root.
    pub spec: String,
    /// The server's base URL.
    pub url: String,
    /// Headers sent with every request (`Authorization: Bearer …`).
    pub headers: Vec<String>,
    /// Paths left out (streams that never end).
    pub exclude_paths: Vec<String>,
    /// Checks left out, each with the reason in the caller's docs.
    pub exclude_checks: Vec<String>,
}

/// The repository root (two levels above a crate under `services/` or `shared/`).
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// Whether schemathesis is importable.
pub fn installed() -> bool {
    Command::new("python3")
        .args(["-c", "import schemathesis"])
        .env("PYTHONPATH", repository_root().join(".tools/schemathesis"))
        .status()
        .is_ok_and(|status| status.success())
}

/// The seeds to run with: the fixed one, then `ROLLOUT_SCHEMATHESIS_SEED` or a random one.
pub fn seeds() -> [u64; 2] {
    let second = std::env::var("ROLLOUT_SCHEMATHESIS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| rand::random::<u32>().into());
    [FIXED_SEED, second]
}

impl Run {
    /// Runs schemathesis once with `seed`; the report on failure.
    pub fn with_seed(&self, seed: u64) -> Result<(), String> {
        let root = repository_root();
        let mut args = vec![
            "-m".to_owned(),
            "schemathesis.cli".to_owned(),
            "run".to_owned(),
            root.join(&self.spec).display().to_string(),
            "--url".to_owned(),
            self.url.clone(),
            "--checks".to_owned(),
            "all".to_owned(),
            "--seed".to_owned(),
            seed.to_string(),
            "--max-examples".to_owned(),
            "60".to_owned(),
            "--generation-codec".to_owned(),
            "ascii".to_owned(),
            "--request-timeout".to_owned(),
            "5".to_owned(),
        ];
        for header in &self.headers {
            args.extend(["--header".to_owned(), header.clone()]);
        }
        for path in &self.exclude_paths {
            args.extend(["--exclude-path".to_owned(), path.clone()]);
        }
        for check in &self.exclude_checks {
            args.extend(["--exclude-checks".to_owned(), check.clone()]);
        }
        let output = Command::new("python3")
            .args(&args)
            // schemathesis keeps a `.schemathesis/` cache where it runs: not in the checkout
            .current_dir(std::env::temp_dir())
            .env("PYTHONPATH", root.join(".tools/schemathesis"))
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .map_err(|error| format!("python3: {error}"))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "schemathesis found differences (seed {seed}; rerun this test with ROLLOUT_SCHEMATHESIS_SEED={seed}); replay against a running server with\n  PYTHONPATH=.tools/schemathesis python3 {}\n--- stdout\n{}\n--- stderr\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }

    /// Runs with both [`seeds`], panicking with the first report.
    pub async fn conforms(&self) {
        assert!(
            installed(),
            "schemathesis is missing: run deploy/tools/install.sh (it installs it into .tools/schemathesis)"
        );
        for seed in seeds() {
            let run = self.clone();
            let outcome = tokio::task::spawn_blocking(move || run.with_seed(seed))
                .await
                .expect("schemathesis ran");
            if let Err(report) = outcome {
                panic!("{report}");
            }
        }
    }
}
