//! Reading flag and rollout spec files: YAML (`.yaml`, `.yml`) or JSON (`.json`), parsed by
//! the SDK's [`rollout_sdk::specs`] (bare or wrapped in `rollout:` / `flag:`, `+DURATION`
//! times), with errors naming the file, line, column and field.

use std::path::Path;

use rollout_core::spec::RescheduleStepSpec;
use rollout_core::{Flag, RolloutSpec, Timestamp};
use rollout_sdk::specs::{self, SpecError, SpecFormat};

use crate::failure::Failure;

/// Largest file read: the planner refuses bigger messages anyway.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a flag definition.
pub fn read_flag(path: &Path) -> Result<Flag, Failure> {
    let (text, format) = read(path)?;
    specs::parse_flag(&text, format).map_err(|error| file_failure(path, error))
}

/// Reads a rollout spec, turning `+DURATION` times into absolute ones from `now`.
pub fn read_spec(path: &Path, now: Timestamp) -> Result<RolloutSpec, Failure> {
    let (text, format) = read(path)?;
    specs::parse_rollout_spec(&text, format, now).map_err(|error| file_failure(path, error))
}

/// Reads the steps of a reschedule from a YAML or JSON file.
pub fn read_steps(path: &Path) -> Result<Vec<RescheduleStepSpec>, Failure> {
    let (text, format) = read(path)?;
    specs::parse_reschedule_steps(&text, format).map_err(|error| file_failure(path, error))
}

fn file_failure(path: &Path, error: SpecError) -> Failure {
    Failure::File {
        path: path.to_owned(),
        line: error.line,
        column: error.column,
        field: error.field,
        message: error.message,
    }
}

fn read(path: &Path) -> Result<(String, SpecFormat), Failure> {
    let format = path
        .extension()
        .and_then(|extension| extension.to_str())
        .and_then(SpecFormat::of_extension)
        .ok_or_else(|| Failure::file(path, "unknown file type: name it .yaml, .yml or .json"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::DurationMs;
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
