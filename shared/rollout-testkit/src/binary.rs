//! Finding the `nats-server` and `redis-server` binaries.
//!
//! Lookup order for a binary called `name`:
//! 1. the env var `ROLLOUT_<NAME>_BIN` (`ROLLOUT_NATS_SERVER_BIN`,
//!    `ROLLOUT_REDIS_SERVER_BIN`), which must then be usable;
//! 2. `<workspace root>/.tools/bin/<name>` (filled by `deploy/tools/install.sh`);
//! 3. the `PATH`.
//!
//! `nats-server` must be at least 2.10 (Debian 12 ships 2.9.10): a too-old
//! candidate is skipped in favour of the next one, and if none is good the
//! error tells the user to run `deploy/tools/install.sh`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::error::{Result, TestkitError};

/// The oldest `nats-server` the test kit accepts (major, minor).
pub const MIN_NATS_SERVER_VERSION: (u64, u64) = (2, 10);

/// The workspace root: the nearest ancestor of this crate's manifest dir
/// that holds a `Cargo.lock` or a `Cargo.toml` with a `[workspace]` table.
pub fn workspace_root() -> Option<PathBuf> {
    let start = Path::new(env!("CARGO_MANIFEST_DIR"));
    start
        .ancestors()
        .find(|dir| {
            dir.join("Cargo.lock").is_file()
                || std::fs::read_to_string(dir.join("Cargo.toml"))
                    .map(|text| text.lines().any(|l| l.trim() == "[workspace]"))
                    .unwrap_or(false)
        })
        .map(Path::to_path_buf)
}

/// The project-local tools folder, `<workspace root>/.tools/bin`.
pub fn tools_bin_dir() -> Option<PathBuf> {
    workspace_root().map(|root| root.join(".tools").join("bin"))
}

/// The env var that overrides the location of `name`:
/// `nats-server` → `ROLLOUT_NATS_SERVER_BIN`.
pub fn env_var_for(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("ROLLOUT_{upper}_BIN")
}

/// Finds the binary `name` (see the module doc for the order) and, for
/// `nats-server`, checks that it is at least version 2.10.
///
/// Does the lookup afresh each call; the server wrappers cache the result.
pub fn find_binary(name: &str) -> Result<PathBuf> {
    let var = env_var_for(name);
    if let Some(value) = std::env::var_os(&var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        if !is_executable(&path) {
            return Err(TestkitError::BinaryNotFound {
                name: name.to_owned(),
                searched: format!("{var}={} is not an executable file", path.display()),
            });
        }
        check_version(name, &path)?;
        return Ok(path);
    }

    let mut searched = vec![format!("${var} unset")];
    let mut candidates = Vec::new();
    match tools_bin_dir() {
        Some(dir) => {
            let path = dir.join(name);
            searched.push(path.display().to_string());
            candidates.push(path);
        }
        None => searched.push("no workspace root found for .tools/bin".to_owned()),
    }
    searched.push("$PATH".to_owned());
    candidates.extend(path_candidates(name, std::env::var_os("PATH")));

    let mut rejected: Vec<TestkitError> = Vec::new();
    for path in candidates.into_iter().filter(|p| is_executable(p)) {
        match check_version(name, &path) {
            Ok(()) => return Ok(path),
            Err(err) => rejected.push(err),
        }
    }

    let mut rejected = rejected.into_iter();
    match rejected.next() {
        None => Err(TestkitError::BinaryNotFound {
            name: name.to_owned(),
            searched: searched.join(", "),
        }),
        Some(TestkitError::BinaryTooOld {
            name,
            path,
            found,
            required,
            ..
        }) => {
            let others = rejected
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            Err(TestkitError::BinaryTooOld {
                name,
                path,
                found,
                required,
                others,
            })
        }
        Some(other) => Err(other),
    }
}

/// [`find_binary`], memoised per name for the life of the process (only
/// successes are remembered).
pub(crate) fn cached_binary(name: &str) -> Result<PathBuf> {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(path) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
    {
        return Ok(path.clone());
    }
    let path = find_binary(name)?;
    cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name.to_owned(), path.clone());
    Ok(path)
}

/// Runs `<path> --version` and returns the first `X.Y.Z` version found in
/// its output (`nats-server: v2.10.7` → `(2, 10, 7)`).
pub fn binary_version(path: &Path) -> Result<(u64, u64, u64)> {
    let output = Command::new(path)
        .arg("--version")
        .output()
        .map_err(TestkitError::io(format!(
            "running {} --version",
            path.display()
        )))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    parse_version(&text).ok_or_else(|| TestkitError::BinaryVersion {
        path: path.to_path_buf(),
        detail: format!("no version number in {:?}", text.trim()),
    })
}

/// Rejects binaries that are too old for the test kit (only `nats-server`
/// has a minimum for now).
fn check_version(name: &str, path: &Path) -> Result<()> {
    if name != "nats-server" {
        return Ok(());
    }
    let (major, minor, patch) = binary_version(path)?;
    if (major, minor) < MIN_NATS_SERVER_VERSION {
        return Err(TestkitError::BinaryTooOld {
            name: name.to_owned(),
            path: path.to_path_buf(),
            found: format!("{major}.{minor}.{patch}"),
            required: format!(
                "{}.{}",
                MIN_NATS_SERVER_VERSION.0, MIN_NATS_SERVER_VERSION.1
            ),
            others: String::new(),
        });
    }
    Ok(())
}

/// Finds the first `digits.digits.digits` run in `text`.
fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|token| {
            let mut parts = token.split('.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            let patch = parts.next()?.parse().ok()?;
            Some((major, minor, patch))
        })
        .next()
}

/// `dir/name` for every dir of a `PATH`-style value.
fn path_candidates(name: &str, path_var: Option<OsString>) -> Vec<PathBuf> {
    path_var
        .map(|value| {
            std::env::split_paths(&value)
                .filter(|dir| !dir.as_os_str().is_empty())
                .map(|dir| dir.join(name))
                .collect()
        })
        .unwrap_or_default()
}

/// A regular file (after following symlinks) with an execute bit set.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.9.10\n"), Some((2, 9, 10)));
        assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15, 1)));
        assert_eq!(
            parse_version("Redis server v=7.0.15 sha=00000000:0 bits=64"),
            Some((7, 0, 15))
        );
        assert_eq!(parse_version("no digits"), None);
    }

    #[test]
    fn env_var_names() {
        assert_eq!(env_var_for("nats-server"), "ROLLOUT_NATS_SERVER_BIN");
        assert_eq!(env_var_for("redis-server"), "ROLLOUT_REDIS_SERVER_BIN");
    }

    #[test]
    fn finds_the_workspace_root() {
        let root = workspace_root().expect("workspace root");
        assert!(root.join("shared").join("rollout-testkit").is_dir());
    }

    #[test]
    fn path_candidates_skip_empty_entries() {
        let got = path_candidates("x", Some(OsString::from("/a::/b")));
        assert_eq!(got, vec![PathBuf::from("/a/x"), PathBuf::from("/b/x")]);
    }
}
