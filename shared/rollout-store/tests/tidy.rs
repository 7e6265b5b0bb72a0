//! Tidy: `rollout-store` is the one Redis boundary of the system (see the crate's docs).
//! No other crate of the product may depend on the Redis client or name it in its code;
//! services hold a `rollout_store::Connection` and call the store's typed functions.
//!
//! Exempt, each for a reason that keeps the boundary meaningful:
//! - `rollout-runtime`'s `connect.rs` and `config/settings.rs` open connections (and check
//!   a URL parses) from the shared settings: they send no command but the `PING` that
//!   proves a connection;
//! - `rollout-testkit` starts Redis servers for tests;
//! - the test and load-test harnesses (`tests/`, `loadtest/`), and every crate's own
//!   `tests/` and `benches/`, which inspect, fault or measure Redis from outside (their
//!   `redis` is a dev-dependency).

use std::fs;
use std::path::{Path, PathBuf};

/// Crates whose code may use the Redis client.
const OWNERS: &[&str] = &[
    "shared/rollout-store",
    "shared/rollout-testkit",
    "loadtest",
    "tests",
];

/// Crates that may depend on the Redis client for the exempt files below.
const DEPENDENCY_EXEMPT: &[&str] = &["shared/rollout-runtime"];

/// Files of other crates that may, with the reason above.
const EXEMPT_FILES: &[&str] = &[
    "shared/rollout-runtime/src/connect.rs",
    "shared/rollout-runtime/src/config/settings.rs",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the store sits two levels below the workspace root")
        .to_path_buf()
}

/// The `members` of the workspace manifest.
fn members(root: &Path) -> Vec<String> {
    let manifest = fs::read_to_string(root.join("Cargo.toml")).expect("workspace manifest");
    let start = manifest.find("members = [").expect("a members list");
    let end = start + manifest[start..].find(']').expect("the members list ends");
    manifest[start..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The lines of the `[dependencies]` table (and target-specific ones) of a manifest.
fn normal_dependencies(manifest: &str) -> Vec<&str> {
    let mut in_dependencies = false;
    let mut lines = Vec::new();
    for line in manifest.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_dependencies = trimmed == "[dependencies]"
                || (trimmed.starts_with("[target.") && trimmed.ends_with(".dependencies]"));
            continue;
        }
        if in_dependencies {
            lines.push(trimmed);
        }
    }
    lines
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

/// Lines of code (not comments) that name the Redis client.
fn redis_uses(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .filter(|(_, line)| line.contains("redis::") || line.trim_start().starts_with("use redis"))
        .map(|(index, line)| (index + 1, line.trim()))
        .collect()
}

#[test]
fn no_crate_but_the_store_uses_the_redis_client() {
    let root = workspace_root();
    let mut violations = Vec::new();
    let mut checked_files = 0;
    for member in members(&root) {
        if OWNERS.contains(&member.as_str()) {
            continue;
        }
        let manifest =
            fs::read_to_string(root.join(&member).join("Cargo.toml")).expect("member manifest");
        for line in normal_dependencies(&manifest) {
            if DEPENDENCY_EXEMPT.contains(&member.as_str()) {
                break;
            }
            if line.starts_with("redis") && line[5..].trim_start().starts_with(['=', '.']) {
                violations.push(format!("{member}/Cargo.toml: depends on redis: {line}"));
            }
        }
        let mut files = Vec::new();
        rust_files(&root.join(&member).join("src"), &mut files);
        for file in files {
            let relative = file
                .strip_prefix(&root)
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/");
            if EXEMPT_FILES.contains(&relative.as_str()) {
                continue;
            }
            checked_files += 1;
            let text = fs::read_to_string(&file).expect("source file");
            for (line, code) in redis_uses(&text) {
                violations.push(format!("{relative}:{line}: {code}"));
            }
        }
    }
    assert!(
        checked_files > 50,
        "the tidy check read only {checked_files} files: is the workspace layout what it expects?"
    );
    assert!(
        violations.is_empty(),
        "only rollout-store talks to Redis; call a store function instead:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_check_sees_a_use_of_the_client() {
    let code = "use redis::aio::ConnectionManager;\n// redis::cmd in a comment\nlet x = redis::cmd(\"GET\");\n";
    assert_eq!(
        redis_uses(code)
            .into_iter()
            .map(|(line, _)| line)
            .collect::<Vec<_>>(),
        vec![1, 3]
    );
    let manifest = "[dependencies]\nredis.workspace = true\n[dev-dependencies]\nredis = \"1\"\n";
    assert_eq!(
        normal_dependencies(manifest),
        vec!["redis.workspace = true"]
    );
}
