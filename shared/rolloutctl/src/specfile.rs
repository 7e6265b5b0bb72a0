//! Reading flag and rollout spec files: YAML (`.yaml`, `.yml`) or JSON (`.json`), either the
//! bare object or wrapped in its command key (`rollout:` / `flag:`), with errors naming the
//! file, line, column and field; and the `+DURATION` convenience for times.

use std::path::Path;

use rollout_core::{DurationMs, Flag, RolloutSpec, Timestamp};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::failure::Failure;

/// Largest file read: the planner refuses bigger messages anyway.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Yaml,
    Json,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagFile {
    flag: Flag,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    rollout: RolloutSpec,
}

/// Reads a flag definition.
pub fn read_flag(path: &Path) -> Result<Flag, Failure> {
    let (text, format) = read(path)?;
    if wrapped_in(&text, format, path, "flag")? {
        Ok(deserialize::<FlagFile>(&text, format, path)?.flag)
    } else {
        deserialize::<Flag>(&text, format, path)
    }
}

/// Reads a rollout spec, turning `+DURATION` times into absolute ones from `now`.
pub fn read_spec(path: &Path, now: Timestamp) -> Result<RolloutSpec, Failure> {
    let (text, format) = read(path)?;
    let mut spec = if wrapped_in(&text, format, path, "rollout")? {
        deserialize::<SpecFile>(&text, format, path)?.rollout
    } else {
        deserialize::<RolloutSpec>(&text, format, path)?
    };
    resolve_relative_times(&mut spec, now).map_err(|(field, message)| Failure::File {
        path: path.to_owned(),
        line: None,
        column: None,
        field: Some(field),
        message,
    })?;
    Ok(spec)
}

/// Replaces every `+DURATION` in `start_at`, `template.start_at` and `manual[].execute_at`
/// with `now + DURATION` in RFC 3339. Returns the field and the problem on a bad duration.
pub fn resolve_relative_times(
    spec: &mut RolloutSpec,
    now: Timestamp,
) -> Result<(), (String, String)> {
    if let Some(start_at) = &mut spec.start_at {
        resolve(start_at, now, "start_at")?;
    }
    if let Some(template) = &mut spec.template {
        if let Some(start_at) = &mut template.start_at {
            resolve(start_at, now, "template.start_at")?;
        }
    }
    if let Some(manual) = &mut spec.manual {
        for (index, step) in manual.iter_mut().enumerate() {
            resolve(
                &mut step.execute_at,
                now,
                &format!("manual[{index}].execute_at"),
            )?;
        }
    }
    Ok(())
}

fn resolve(text: &mut String, now: Timestamp, field: &str) -> Result<(), (String, String)> {
    let Some(relative) = text.trim().strip_prefix('+') else {
        return Ok(());
    };
    let duration = DurationMs::parse(relative).map_err(|message| {
        (
            field.to_owned(),
            format!("{message}; relative times look like +10m, +1h30m, +2d"),
        )
    })?;
    *text = now.plus(duration).to_rfc3339();
    Ok(())
}

/// The current time from this machine's clock (only used to resolve `+DURATION`).
pub fn now() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Timestamp::from_millis(millis)
}

fn read(path: &Path) -> Result<(String, Format), Failure> {
    let extension = path
        .extension()
        .and_then(|extension| extension.to_str())
        .map(str::to_ascii_lowercase);
    let format = match extension.as_deref() {
        Some("yaml" | "yml") => Format::Yaml,
        Some("json") => Format::Json,
        _ => {
            return Err(Failure::file(
                path,
                "unknown file type: name it .yaml, .yml or .json",
            ))
        }
    };
    let size = std::fs::metadata(path)
        .map_err(|error| Failure::file(path, format!("cannot read: {error}")))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(Failure::file(
            path,
            format!("{size} bytes is more than the {MAX_FILE_BYTES} bytes a command may carry"),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| Failure::file(path, format!("cannot read: {error}")))?;
    Ok((text, format))
}

/// Whether the document is a mapping whose only key is `key`; syntax errors are reported
/// here, with their position.
fn wrapped_in(text: &str, format: Format, path: &Path, key: &str) -> Result<bool, Failure> {
    match format {
        Format::Yaml => {
            let value: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(text).map_err(|error| yaml_failure(path, None, &error))?;
            Ok(match value {
                serde_yaml_ng::Value::Mapping(mapping) => {
                    mapping.len() == 1 && mapping.contains_key(key)
                }
                _ => false,
            })
        }
        Format::Json => {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|error| json_failure(path, None, &error))?;
            Ok(value
                .as_object()
                .is_some_and(|object| object.len() == 1 && object.contains_key(key)))
        }
    }
}

fn deserialize<T: DeserializeOwned>(text: &str, format: Format, path: &Path) -> Result<T, Failure> {
    match format {
        Format::Yaml => {
            let deserializer = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                let field = field_path(&error.path().to_string());
                yaml_failure(path, field, error.inner())
            })
        }
        Format::Json => {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                let field = field_path(&error.path().to_string());
                json_failure(path, field, error.inner())
            })?;
            deserializer
                .end()
                .map_err(|error| json_failure(path, None, &error))?;
            Ok(value)
        }
    }
}

fn field_path(path: &str) -> Option<String> {
    (!path.is_empty() && path != ".").then(|| path.to_owned())
}

/// serde's messages end in ` at line L column C`; the position is shown separately.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(cut) => message[..cut].to_owned(),
        None => message.to_owned(),
    }
}

fn yaml_failure(path: &Path, field: Option<String>, error: &serde_yaml_ng::Error) -> Failure {
    let location = error.location();
    let message = without_position(&error.to_string());
    // serde_yaml_ng starts its message with the parent's path, which `field` already names
    let message = match message.split_once(": ") {
        Some((prefix, rest))
            if field
                .as_deref()
                .is_some_and(|field| field.starts_with(prefix)) =>
        {
            rest.to_owned()
        }
        _ => message,
    };
    Failure::File {
        path: path.to_owned(),
        line: location.as_ref().map(serde_yaml_ng::Location::line),
        column: location.as_ref().map(serde_yaml_ng::Location::column),
        field,
        message,
    }
}

fn json_failure(path: &Path, field: Option<String>, error: &serde_json::Error) -> Failure {
    let known = error.line() > 0;
    Failure::File {
        path: path.to_owned(),
        line: known.then(|| error.line()),
        column: known.then(|| error.column()),
        field,
        message: without_position(&error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(name);
        let mut handle = std::fs::File::create(&path).expect("create");
        handle.write_all(text.as_bytes()).expect("write");
        (dir, path)
    }

    fn position(failure: &Failure) -> (Option<usize>, Option<String>, String) {
        match failure {
            Failure::File {
                line,
                field,
                message,
                ..
            } => (*line, field.clone(), message.clone()),
            other => panic!("expected a file failure, got {other:?}"),
        }
    }

    const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

    #[test]
    fn yaml_and_json_bare_or_wrapped_read_alike() {
        let yaml = "flag: new-checkout\nbaseline: \"off\"\ncandidate: \"on\"\nphases:\n  - {percentage: 5, duration: 6h}\n  - percentage: 100\n";
        let (_dir, bare) = file("spec.yaml", yaml);
        let wrapped_text = format!(
            "rollout:\n{}",
            yaml.lines()
                .map(|line| format!("  {line}\n"))
                .collect::<String>()
        );
        let (_dir2, wrapped) = file("spec.yml", &wrapped_text);
        let json = r#"{"rollout": {"flag": "new-checkout", "baseline": "off", "candidate": "on",
            "phases": [{"percentage": 5, "duration": "6h"}, {"percentage": 100}]}}"#;
        let (_dir3, json_path) = file("spec.json", json);
        let first = read_spec(&bare, NOW).expect("bare yaml");
        assert_eq!(first.phases.as_ref().map(Vec::len), Some(2));
        assert_eq!(read_spec(&wrapped, NOW).expect("wrapped yaml"), first);
        assert_eq!(read_spec(&json_path, NOW).expect("json"), first);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let (_dir, path) = file(
            "bad.yaml",
            "flag: f\nbaseline: off\nphases:\n  - percentage: 5\n   duration: [\n",
        );
        let (line, _, _) = position(&read_spec(&path, NOW).expect_err("bad yaml"));
        assert!(matches!(line, Some(4..=6)), "{line:?}");
        let (_dir, path) = file("bad.json", "{\"flag\": \"f\",\n \"baseline\": }");
        let (line, _, _) = position(&read_spec(&path, NOW).expect_err("bad json"));
        assert_eq!(line, Some(2));
    }

    #[test]
    fn unknown_fields_name_the_field_and_line() {
        let (_dir, path) = file(
            "typo.yaml",
            "flag: f\nbaseline: \"off\"\ncandidate: \"on\"\nphases:\n  - percentage: 5\n    durtion: 6h\n",
        );
        let (line, field, message) = position(&read_spec(&path, NOW).expect_err("typo"));
        assert_eq!(line, Some(6), "{message}");
        assert_eq!(field.as_deref(), Some("phases[0].durtion"));
        assert!(message.contains("unknown field `durtion`"), "{message}");
    }

    #[test]
    fn relative_times_become_absolute() {
        let (_dir, path) = file(
            "manual.yaml",
            "flag: f\nbaseline: \"off\"\ncandidate: \"on\"\nmanual:\n  - {weight: 10, execute_at: \"+10m\"}\n  - {weight: 50, execute_at: 2030-01-01T00:00:00Z}\n",
        );
        let spec = read_spec(&path, NOW).expect("reads");
        let manual = spec.manual.expect("manual");
        assert_eq!(
            manual[0].execute_at,
            NOW.plus(DurationMs::from_minutes(10)).to_rfc3339()
        );
        assert_eq!(manual[1].execute_at, "2030-01-01T00:00:00Z");
        let (_dir, path) = file(
            "bad-time.yaml",
            "flag: f\nbaseline: \"off\"\ncandidate: \"on\"\npreset: 1hr\nstart_at: \"+soon\"\n",
        );
        let (_, field, _) = position(&read_spec(&path, NOW).expect_err("bad relative time"));
        assert_eq!(field.as_deref(), Some("start_at"));
    }

    #[test]
    fn other_extensions_are_refused() {
        let (_dir, path) = file("spec.toml", "flag = 'f'");
        let (_, _, message) = position(&read_spec(&path, NOW).expect_err("toml"));
        assert!(message.contains(".yaml"), "{message}");
    }
}
