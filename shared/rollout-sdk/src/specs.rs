//! Flag definitions and rollout specs written by people: YAML or JSON text, either the bare
//! object or wrapped in its command key (`rollout:` / `flag:`), with errors naming the line,
//! column and field, and the `+DURATION` convenience for times (`start_at: +10m`). The
//! operator CLI reads files with it and the console reads what an operator pastes, so both
//! accept the same documents.

use rollout_core::spec::RescheduleStepSpec;
use rollout_core::{DurationMs, Flag, RolloutSpec, Timestamp};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// How a document is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecFormat {
    /// YAML (JSON is YAML too, but JSON errors read better from the JSON parser).
    Yaml,
    /// JSON.
    Json,
}

impl SpecFormat {
    /// The format a file name's extension names (`.yaml`, `.yml`, `.json`).
    pub fn of_extension(extension: &str) -> Option<SpecFormat> {
        match extension.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Some(SpecFormat::Yaml),
            "json" => Some(SpecFormat::Json),
            _ => None,
        }
    }

    /// The format of pasted text: JSON when it starts with `{`, else YAML.
    pub fn sniff(text: &str) -> SpecFormat {
        if text.trim_start().starts_with('{') {
            SpecFormat::Json
        } else {
            SpecFormat::Yaml
        }
    }
}

/// Why a document was refused: where (line and column, 1-based, when known), which field
/// (`phases[0].durtion`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    /// Line of the problem, when the parser knows it.
    pub line: Option<usize>,
    /// Column of the problem, when the parser knows it.
    pub column: Option<usize>,
    /// The field at fault, as a path.
    pub field: Option<String>,
    /// What is wrong, without the position.
    pub message: String,
}

impl SpecError {
    fn field(field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            line: None,
            column: None,
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagDocument {
    flag: Flag,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecDocument {
    rollout: RolloutSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepsDocument {
    steps: Vec<RescheduleStepSpec>,
}

/// Reads the steps of a `rollout.reschedule`: a list, or a document with `steps:`.
pub fn parse_reschedule_steps(
    text: &str,
    format: SpecFormat,
) -> Result<Vec<RescheduleStepSpec>, SpecError> {
    if wrapped_in(text, format, "steps")? {
        Ok(deserialize::<StepsDocument>(text, format)?.steps)
    } else {
        deserialize::<Vec<RescheduleStepSpec>>(text, format)
    }
}

/// Reads a flag definition.
pub fn parse_flag(text: &str, format: SpecFormat) -> Result<Flag, SpecError> {
    if wrapped_in(text, format, "flag")? {
        Ok(deserialize::<FlagDocument>(text, format)?.flag)
    } else {
        deserialize::<Flag>(text, format)
    }
}

/// Reads a rollout spec, turning `+DURATION` times into absolute ones from `now`.
pub fn parse_rollout_spec(
    text: &str,
    format: SpecFormat,
    now: Timestamp,
) -> Result<RolloutSpec, SpecError> {
    let mut spec = if wrapped_in(text, format, "rollout")? {
        deserialize::<SpecDocument>(text, format)?.rollout
    } else {
        deserialize::<RolloutSpec>(text, format)?
    };
    resolve_relative_times(&mut spec, now)?;
    Ok(spec)
}

/// This machine's clock, for resolving `+DURATION` (the scheduler itself runs on Redis's
/// clock; a spec's times only need to be close).
pub fn local_now() -> Timestamp {
    Timestamp::local_now()
}

/// Replaces every `+DURATION` in `start_at`, `template.start_at` and `manual[].execute_at`
/// with `now + DURATION` in RFC 3339; a bad duration names its field.
pub fn resolve_relative_times(spec: &mut RolloutSpec, now: Timestamp) -> Result<(), SpecError> {
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

fn resolve(text: &mut String, now: Timestamp, field: &str) -> Result<(), SpecError> {
    let Some(relative) = text.trim().strip_prefix('+') else {
        return Ok(());
    };
    let duration = DurationMs::parse(relative).map_err(|message| {
        SpecError::field(
            field,
            format!("{message}; relative times look like +10m, +1h30m, +2d"),
        )
    })?;
    *text = now.plus(duration).to_rfc3339();
    Ok(())
}

/// Whether the document is a mapping whose only key is `key`; syntax errors are reported
/// here, with their position.
fn wrapped_in(text: &str, format: SpecFormat, key: &str) -> Result<bool, SpecError> {
    match format {
        SpecFormat::Yaml => {
            let value: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(text).map_err(|error| yaml_error(None, &error))?;
            Ok(match value {
                serde_yaml_ng::Value::Mapping(mapping) => {
                    mapping.len() == 1 && mapping.contains_key(key)
                }
                _ => false,
            })
        }
        SpecFormat::Json => {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|error| json_error(None, &error))?;
            Ok(value
                .as_object()
                .is_some_and(|object| object.len() == 1 && object.contains_key(key)))
        }
    }
}

fn deserialize<T: DeserializeOwned>(text: &str, format: SpecFormat) -> Result<T, SpecError> {
    match format {
        SpecFormat::Yaml => {
            let deserializer = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                let field = field_path(&error.path().to_string());
                yaml_error(field, error.inner())
            })
        }
        SpecFormat::Json => {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                let field = field_path(&error.path().to_string());
                json_error(field, error.inner())
            })?;
            deserializer
                .end()
                .map_err(|error| json_error(None, &error))?;
            Ok(value)
        }
    }
}

fn field_path(path: &str) -> Option<String> {
    (!path.is_empty() && path != ".").then(|| path.to_owned())
}

/// serde's messages end in ` at line L column C`; the position is kept separately.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(cut) => message[..cut].to_owned(),
        None => message.to_owned(),
    }
}

fn yaml_error(field: Option<String>, error: &serde_yaml_ng::Error) -> SpecError {
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
    SpecError {
        line: location.as_ref().map(serde_yaml_ng::Location::line),
        column: location.as_ref().map(serde_yaml_ng::Location::column),
        field,
        message,
    }
}

fn json_error(field: Option<String>, error: &serde_json::Error) -> SpecError {
    let known = error.line() > 0;
    SpecError {
        line: known.then(|| error.line()),
        column: known.then(|| error.column()),
        field,
        message: without_position(&error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

    #[test]
    fn pasted_text_is_sniffed() {
        assert_eq!(SpecFormat::sniff("  {\"flag\": 1}"), SpecFormat::Json);
        assert_eq!(SpecFormat::sniff("flag: f"), SpecFormat::Yaml);
        assert_eq!(SpecFormat::of_extension("YML"), Some(SpecFormat::Yaml));
        assert_eq!(SpecFormat::of_extension("toml"), None);
    }

    #[test]
    fn yaml_and_json_bare_or_wrapped_read_alike() {
        let yaml = "flag: f\nbaseline: \"off\"\ncandidate: \"on\"\nphases:\n  - {percentage: 5, duration: 6h}\n  - percentage: 100\n";
        let wrapped: String = std::iter::once("rollout:\n".to_owned())
            .chain(yaml.lines().map(|line| format!("  {line}\n")))
            .collect();
        let json = r#"{"rollout": {"flag": "f", "baseline": "off", "candidate": "on",
            "phases": [{"percentage": 5, "duration": "6h"}, {"percentage": 100}]}}"#;
        let bare = parse_rollout_spec(yaml, SpecFormat::Yaml, NOW).expect("bare");
        assert_eq!(bare.phases.as_ref().map(Vec::len), Some(2));
        assert_eq!(
            parse_rollout_spec(&wrapped, SpecFormat::Yaml, NOW).expect("wrapped"),
            bare
        );
        assert_eq!(
            parse_rollout_spec(json, SpecFormat::Json, NOW).expect("json"),
            bare
        );
    }

    #[test]
    fn a_misspelt_field_is_named_with_its_line() {
        let error = parse_rollout_spec(
            "flag: f\nbaseline: \"off\"\ncandidate: \"on\"\nphases:\n  - percentage: 5\n    durtion: 6h\n",
            SpecFormat::Yaml,
            NOW,
        )
        .expect_err("typo");
        assert_eq!(error.line, Some(6), "{error:?}");
        assert_eq!(error.field.as_deref(), Some("phases[0].durtion"));
        assert!(
            error.message.contains("unknown field `durtion`"),
            "{error:?}"
        );
    }

    #[test]
    fn a_bad_relative_time_names_its_field() {
        let error = parse_rollout_spec(
            "flag: f\nbaseline: \"off\"\ncandidate: \"on\"\npreset: 1hr\nstart_at: \"+soon\"\n",
            SpecFormat::Yaml,
            NOW,
        )
        .expect_err("bad relative time");
        assert_eq!(error.field.as_deref(), Some("start_at"));
    }
}
