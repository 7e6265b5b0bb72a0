//! Validation errors: every problem found in one input, each with the path of the field that
//! caused it (`rollout.phases[2].duration`), so a user fixes them all in one go.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One invalid field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Path of the field, `rollout.phases[2].duration`.
    pub field: String,
    /// What is wrong, lowercase, without a trailing period.
    pub message: String,
}

/// Every problem found in one input; never empty when returned as an error.
#[derive(Clone, Debug, PartialEq, Eq, Default, thiserror::Error, Serialize, Deserialize)]
pub struct ValidationErrors {
    /// The problems, in the order the fields appear in the input.
    pub errors: Vec<FieldError>,
}

impl ValidationErrors {
    /// Records a problem with `field`.
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(value)` when nothing was recorded, else `Err(self)`.
    pub fn into_result<T>(self, value: T) -> Result<T, ValidationErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// The first problem's field, for error replies that carry a single `field`.
    pub fn first_field(&self) -> Option<&str> {
        self.errors.first().map(|error| error.field.as_str())
    }

    /// Whether any problem concerns `field` exactly.
    pub fn has_field(&self, field: &str) -> bool {
        self.errors.iter().any(|error| error.field == field)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, error) in self.errors.iter().enumerate() {
            if position > 0 {
                formatter.write_str("; ")?;
            }
            write!(formatter, "{}: {}", error.field, error.message)?;
        }
        Ok(())
    }
}

/// Limits on names that travel in NATS subjects and Redis keys.
pub mod names {
    /// Longest flag key, namespace, rule id, variation id or stage name.
    pub const MAX_NAME_LEN: usize = 128;

    /// A key that can be one NATS subject token and part of a Redis key: ASCII letters,
    /// digits, `-` and `_`, 1..=128 characters. Dots are refused because they split subjects.
    pub fn check_token(text: &str) -> Result<(), String> {
        if text.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if text.len() > MAX_NAME_LEN {
            return Err(format!("must be at most {MAX_NAME_LEN} characters"));
        }
        if !text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        {
            return Err(format!(
                "{text:?} may contain only ASCII letters, digits, '-' and '_'"
            ));
        }
        Ok(())
    }
}
