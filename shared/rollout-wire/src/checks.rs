//! Input checks shared by the request types: subject tokens, bounded texts, the command
//! metadata every command carries, paging, and the caps on entities (ids, attributes,
//! labels) that evaluation and fleet requests share.

use std::fmt;

use rollout_core::error::names;
use rollout_core::{AttributeValue, Attributes, Entity, Labels, ValidationErrors};

use crate::envelope::WireError;

/// Longest entity id, agent id or actor, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest attribute or label name, in bytes.
pub const MAX_ATTRIBUTE_NAME_BYTES: usize = 128;
/// Largest attribute or label value, in bytes (a list counts the bytes of its strings).
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 4 * 1024;
/// Most attributes one entity may carry.
pub const MAX_ATTRIBUTES: usize = 64;
/// Most items of a list attribute.
pub const MAX_LIST_ITEMS: usize = 16;
/// Longest item of a list attribute, in bytes (16 × 256 = the 4 KiB value cap, so the
/// OFREP description can state the rule exactly).
pub const MAX_LIST_ITEM_BYTES: usize = 256;
/// Most labels one entity may carry.
pub const MAX_LABELS: usize = 64;
/// Longest free-text message (agent reports), in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;
/// Page size when a paged query names none.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page size a paged query may ask for.
pub const MAX_PAGE_SIZE: u32 = 500;

/// Records a problem unless `value` is one subject token.
pub(crate) fn token(errors: &mut ValidationErrors, field: &str, value: &str) {
    if let Err(problem) = names::check_token(value) {
        errors.push(field, problem);
    }
}

/// Records a problem unless `value` has 1..=`max_bytes` bytes (the field's name is written
/// out only for a problem).
pub(crate) fn bounded_text(
    errors: &mut ValidationErrors,
    field: impl fmt::Display,
    value: &str,
    max_bytes: usize,
) {
    if value.is_empty() {
        errors.push(field.to_string(), "must not be empty");
    } else if value.len() > max_bytes {
        errors.push(
            field.to_string(),
            format!("must be at most {max_bytes} bytes"),
        );
    }
}

/// Command ids a client may not use: the planner answers commands queued without an id
/// under `js-<stream sequence>`.
pub const STAND_IN_COMMAND_ID_PREFIX: &str = "js-";

/// Checks the `command_id` (a subject token: it names `rollout.outcome.<ns>.<command_id>`;
/// not starting with [`STAND_IN_COMMAND_ID_PREFIX`]) and the `actor` every command carries.
pub(crate) fn command_meta(
    errors: &mut ValidationErrors,
    command_id: Option<&str>,
    actor: Option<&str>,
) {
    if let Some(command_id) = command_id {
        token(errors, "command_id", command_id);
        if command_id.starts_with(STAND_IN_COMMAND_ID_PREFIX) {
            errors.push(
                "command_id",
                format!("must not start with {STAND_IN_COMMAND_ID_PREFIX:?} (reserved for commands queued without an id)"),
            );
        }
    }
    if let Some(actor) = actor {
        bounded_text(errors, "actor", actor, MAX_ID_BYTES);
    }
}

/// Checks `page_size` against [`MAX_PAGE_SIZE`].
pub(crate) fn page_size(errors: &mut ValidationErrors, page_size: Option<u32>) {
    if let Some(size) = page_size {
        if size == 0 || size > MAX_PAGE_SIZE {
            errors.push(
                "page_size",
                format!("must be between 1 and {MAX_PAGE_SIZE}"),
            );
        }
    }
}

/// `Ok` when nothing was recorded, else the `invalid_argument` error listing every problem.
pub(crate) fn finish(errors: ValidationErrors) -> Result<(), WireError> {
    errors.into_result(()).map_err(WireError::from)
}

/// Which slice of a paged list a query asks for: pages are numbered from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageWindow {
    /// Page number, from 0.
    pub page: u32,
    /// Entries per page, 1..=[`MAX_PAGE_SIZE`].
    pub size: u32,
}

impl PageWindow {
    /// The window a query's `page` and `page_size` describe, with defaults, clamped.
    pub fn new(page: Option<u32>, page_size: Option<u32>) -> PageWindow {
        PageWindow {
            page: page.unwrap_or(0),
            size: page_size
                .unwrap_or(DEFAULT_PAGE_SIZE)
                .clamp(1, MAX_PAGE_SIZE),
        }
    }

    /// Index of the first entry on the page.
    pub fn offset(self) -> u64 {
        u64::from(self.page) * u64::from(self.size)
    }

    /// The `next_page` to return when the list holds `total` entries.
    pub fn next_page(self, total: u64) -> Option<u32> {
        let end = self.offset() + u64::from(self.size);
        if end < total {
            self.page.checked_add(1)
        } else {
            None
        }
    }
}

/// Checks an entity against the caps: id 1..=256 bytes, at most 64 attributes and 64
/// labels, names 1..=128 bytes, values at most 4 KiB (a list: at most 16 items of at most
/// 256 bytes). Problems are recorded under `path`.
pub fn validate_entity(entity: &Entity, path: &str, errors: &mut ValidationErrors) {
    // every evaluation runs this: the nested paths are formatted only for a problem
    bounded_text(errors, Nested(path, "id"), &entity.id, MAX_ID_BYTES);
    validate_attributes(&entity.attributes, Nested(path, "attributes"), errors);
    validate_labels(&entity.labels, Nested(path, "labels"), errors);
}

/// `parent.child`, written out only when a problem is recorded under it.
#[derive(Clone, Copy)]
struct Nested<'a>(&'a str, &'a str);

impl fmt::Display for Nested<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}.{}", self.0, self.1)
    }
}

/// Checks attributes against the caps; problems are recorded under `path`.
pub fn validate_attributes(
    attributes: &Attributes,
    path: impl fmt::Display,
    errors: &mut ValidationErrors,
) {
    if attributes.len() > MAX_ATTRIBUTES {
        errors.push(
            path.to_string(),
            format!("at most {MAX_ATTRIBUTES} attributes"),
        );
        return;
    }
    for (name, value) in attributes {
        if let AttributeValue::List(items) = value {
            let too_long = items.len() > MAX_LIST_ITEMS
                || items.iter().any(|item| item.len() > MAX_LIST_ITEM_BYTES);
            // a bad name is reported (without echoing it) by check_entry below
            if too_long && !name.is_empty() && name.len() <= MAX_ATTRIBUTE_NAME_BYTES {
                errors.push(
                    format!("{path}.{name}"),
                    format!("a list holds at most {MAX_LIST_ITEMS} items of at most {MAX_LIST_ITEM_BYTES} bytes"),
                );
                continue;
            }
        }
        let value_bytes = match value {
            AttributeValue::String(text) => text.len(),
            AttributeValue::List(items) => items.iter().map(String::len).sum(),
            AttributeValue::Number(_) | AttributeValue::Bool(_) => 0,
        };
        check_entry(errors, &path, name, value_bytes);
    }
}

/// Checks labels against the caps; problems are recorded under `path`.
pub fn validate_labels(labels: &Labels, path: impl fmt::Display, errors: &mut ValidationErrors) {
    if labels.len() > MAX_LABELS {
        errors.push(path.to_string(), format!("at most {MAX_LABELS} labels"));
        return;
    }
    for (name, value) in labels {
        check_entry(errors, &path, name, value.len());
    }
}

fn check_entry(
    errors: &mut ValidationErrors,
    path: &impl fmt::Display,
    name: &str,
    value_bytes: usize,
) {
    if name.is_empty() || name.len() > MAX_ATTRIBUTE_NAME_BYTES {
        // the name itself may be huge: do not echo it into the path
        errors.push(
            path.to_string(),
            format!("names must be 1..={MAX_ATTRIBUTE_NAME_BYTES} bytes"),
        );
        return;
    }
    if value_bytes > MAX_ATTRIBUTE_VALUE_BYTES {
        errors.push(
            format!("{path}.{name}"),
            format!("value is larger than {MAX_ATTRIBUTE_VALUE_BYTES} bytes"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_count_from_zero_and_clamp() {
        let window = PageWindow::new(None, None);
        assert_eq!(
            window,
            PageWindow {
                page: 0,
                size: DEFAULT_PAGE_SIZE
            }
        );
        assert_eq!(window.next_page(50), None);
        assert_eq!(window.next_page(51), Some(1));
        let window = PageWindow::new(Some(2), Some(10_000));
        assert_eq!(window.size, MAX_PAGE_SIZE);
        assert_eq!(window.offset(), 1000);
        assert_eq!(
            PageWindow::new(Some(u32::MAX), Some(1)).next_page(u64::MAX),
            None
        );
    }

    #[test]
    fn entity_caps_name_the_field() {
        let mut entity = Entity::with_id("u-1")
            .attribute(
                "plan",
                AttributeValue::String("x".repeat(MAX_ATTRIBUTE_VALUE_BYTES + 1)),
            )
            .label("env", "prod");
        let mut errors = ValidationErrors::default();
        validate_entity(&entity, "entity", &mut errors);
        assert!(errors.has_field("entity.attributes.plan"), "{errors}");

        entity.id = "i".repeat(MAX_ID_BYTES + 1);
        entity.attributes.clear();
        for index in 0..=MAX_LABELS {
            entity.labels.insert(format!("l{index}"), "v".into());
        }
        let mut errors = ValidationErrors::default();
        validate_entity(&entity, "entity", &mut errors);
        assert!(errors.has_field("entity.id"), "{errors}");
        assert!(errors.has_field("entity.labels"), "{errors}");
    }
}
