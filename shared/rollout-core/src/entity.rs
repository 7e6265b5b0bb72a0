//! Entities — the users, accounts or fleet machines a flag is evaluated for — and their
//! attribute values (string, number, bool, list of strings; deliberately not recursive).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One attribute value of an entity.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    /// Text.
    String(String),
    /// Any JSON number, held as f64.
    Number(f64),
    /// true / false.
    Bool(bool),
    /// A list of strings (e.g. groups).
    List(Vec<String>),
}

impl AttributeValue {
    /// The value as text when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttributeValue::String(text) => Some(text),
            _ => None,
        }
    }

    /// The bucketing key this value stands for when it names the stickiness of a rollout.
    /// Strings are used as they are, numbers in their shortest decimal form, bools as
    /// `true`/`false`; lists have no single key.
    pub fn stickiness_key(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            AttributeValue::String(text) => Some(std::borrow::Cow::Borrowed(text)),
            AttributeValue::Number(number) => Some(std::borrow::Cow::Owned(number.to_string())),
            AttributeValue::Bool(flag) => Some(std::borrow::Cow::Borrowed(if *flag {
                "true"
            } else {
                "false"
            })),
            AttributeValue::List(_) => None,
        }
    }
}

impl Serialize for AttributeValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            AttributeValue::String(text) => serializer.serialize_str(text),
            AttributeValue::Number(number) => serializer.serialize_f64(*number),
            AttributeValue::Bool(flag) => serializer.serialize_bool(*flag),
            AttributeValue::List(items) => items.serialize(serializer),
        }
    }
}

struct AttributeValueVisitor;

impl<'de> Visitor<'de> for AttributeValueVisitor {
    type Value = AttributeValue;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a string, number, bool or list of strings")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<AttributeValue, E> {
        Ok(AttributeValue::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<AttributeValue, E> {
        Ok(AttributeValue::String(value))
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<AttributeValue, E> {
        Ok(AttributeValue::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<AttributeValue, E> {
        #[allow(clippy::cast_precision_loss)]
        Ok(AttributeValue::Number(value as f64))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<AttributeValue, E> {
        #[allow(clippy::cast_precision_loss)]
        Ok(AttributeValue::Number(value as f64))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<AttributeValue, E> {
        if value.is_finite() {
            Ok(AttributeValue::Number(value))
        } else {
            Err(E::custom("attribute numbers must be finite"))
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<AttributeValue, A::Error> {
        let mut items = Vec::with_capacity(sequence.size_hint().unwrap_or(0).min(64));
        // String elements only: a nested list or map is a type error, which keeps this flat.
        while let Some(item) = sequence.next_element::<String>()? {
            items.push(item);
        }
        Ok(AttributeValue::List(items))
    }
}

impl<'de> Deserialize<'de> for AttributeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<AttributeValue, D::Error> {
        deserializer.deserialize_any(AttributeValueVisitor)
    }
}

/// Attributes by name, ordered so that encodings are deterministic.
pub type Attributes = BTreeMap<String, AttributeValue>;

/// Fleet labels (`env: prod`), string to string.
pub type Labels = BTreeMap<String, String>;

/// Who a flag is evaluated for.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    /// Stable id; the default bucketing key.
    pub id: String,
    /// Targeting attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: Attributes,
    /// Fleet labels, matched by label-stage rollouts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

impl Entity {
    /// An entity with only an id.
    pub fn with_id(id: impl Into<String>) -> Entity {
        Entity {
            id: id.into(),
            ..Entity::default()
        }
    }

    /// Adds an attribute (builder style, for tests and examples).
    pub fn attribute(mut self, name: impl Into<String>, value: AttributeValue) -> Entity {
        self.attributes.insert(name.into(), value);
        self
    }

    /// Adds a label (builder style).
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Entity {
        self.labels.insert(name.into(), value.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values_decode_from_each_shape() {
        let entity: Entity = serde_json::from_str(
            r#"{"id":"u1","attributes":{"plan":"pro","age":42,"beta":true,"groups":["a","b"]}}"#,
        )
        .expect("valid entity");
        assert_eq!(
            entity.attributes["plan"],
            AttributeValue::String("pro".into())
        );
        assert_eq!(entity.attributes["age"], AttributeValue::Number(42.0));
        assert_eq!(entity.attributes["beta"], AttributeValue::Bool(true));
        assert_eq!(
            entity.attributes["groups"],
            AttributeValue::List(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn nested_attribute_values_are_refused() {
        assert!(
            serde_json::from_str::<Entity>(r#"{"id":"u","attributes":{"x":{"y":1}}}"#).is_err()
        );
        assert!(serde_json::from_str::<Entity>(r#"{"id":"u","attributes":{"x":[[1]]}}"#).is_err());
        assert!(serde_json::from_str::<Entity>(r#"{"id":"u","attributes":{"x":null}}"#).is_err());
        assert!(serde_json::from_str::<Entity>(r#"{"id":"u","unknown":1}"#).is_err());
    }
}
