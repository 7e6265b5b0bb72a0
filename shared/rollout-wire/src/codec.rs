//! Encoding and decoding of every wire message (SPEC §8.2): MessagePack with named fields by
//! default, JSON when the request says `Content-Type: application/json`; decoders with a size
//! and a nesting cap enforced by a pre-scan before serde allocates anything.
//!
//! **Architecture Invariant:** no input makes a decoder panic, recurse deeper than
//! [`Limits::max_depth`], or allocate more than the message could hold. A refused input is a
//! [`CodecError`] whose [`CodecErrorKind`] says why and whose message names the field.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::scan;

/// NATS header that selects the encoding of a request (and so of its reply).
pub const CONTENT_TYPE_HEADER: &str = "Content-Type";
/// [`CONTENT_TYPE_HEADER`] value for JSON.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// [`CONTENT_TYPE_HEADER`] value for MessagePack; the same as sending no header.
pub const MSGPACK_CONTENT_TYPE: &str = "application/msgpack";
/// Default cap on a message's size: 1 MiB, the NATS default `max_payload`.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
/// Default cap on nesting: objects and arrays inside each other, the outermost counting 1.
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// How a message body is encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// MessagePack (rmp-serde) with named fields: structs are maps keyed by field name.
    #[default]
    MessagePack,
    /// UTF-8 JSON.
    Json,
}

impl Encoding {
    /// The encoding a request's `Content-Type` header value selects: JSON for
    /// `application/json` (parameters such as `; charset=utf-8` and case are ignored),
    /// MessagePack for anything else or no header.
    pub fn from_content_type(value: Option<&str>) -> Encoding {
        let media_type = value
            .and_then(|text| text.split(';').next())
            .map(str::trim)
            .unwrap_or_default();
        if media_type.eq_ignore_ascii_case(JSON_CONTENT_TYPE) {
            Encoding::Json
        } else {
            Encoding::MessagePack
        }
    }

    /// The [`CONTENT_TYPE_HEADER`] value naming this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::MessagePack => MSGPACK_CONTENT_TYPE,
            Encoding::Json => JSON_CONTENT_TYPE,
        }
    }
}

/// Caps applied before decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of objects/maps and arrays accepted; the outermost counts 1.
    pub max_depth: usize,
}

impl Limits {
    /// Caps for requests from clients: 1 MiB, depth 32.
    pub const REQUESTS: Limits = Limits {
        max_bytes: DEFAULT_MAX_BYTES,
        max_depth: DEFAULT_MAX_DEPTH,
    };

    /// Caps for what our own services produce (replies, events, stored records): they wrap
    /// request content a few levels deeper (`result.flag.variations[0].value`), so a value
    /// that passed [`Limits::REQUESTS`] must still decode here.
    pub const SERVICE_OUTPUT: Limits = Limits {
        max_bytes: 16 * DEFAULT_MAX_BYTES,
        max_depth: DEFAULT_MAX_DEPTH + 16,
    };
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::REQUESTS
    }
}

/// Why a message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodecErrorKind {
    /// Larger than [`Limits::max_bytes`].
    TooLarge,
    /// Nested deeper than [`Limits::max_depth`].
    TooDeep,
    /// Not well-formed MessagePack/JSON: truncated, bad markers, lengths past the end.
    Malformed,
    /// Well-formed but not the expected shape: unknown or missing fields, wrong types,
    /// out-of-range values.
    Invalid,
    /// Bytes follow the one message.
    Trailing,
    /// Encoding a value failed (a bug on the sending side, not bad input).
    Encode,
}

/// A message that could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CodecError {
    kind: CodecErrorKind,
    message: String,
    field: Option<String>,
}

impl CodecError {
    /// An error of `kind`.
    pub fn new(kind: CodecErrorKind, message: impl Into<String>) -> CodecError {
        CodecError {
            kind,
            message: message.into(),
            field: None,
        }
    }

    /// Why the message was refused; match on this, not on the text.
    pub fn kind(&self) -> CodecErrorKind {
        self.kind
    }

    /// The lowercase explanation, naming the field when one is at fault.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Path of the field at fault (`flag.variations[1].id`), when known.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

/// Encodes `value`; MessagePack always with named fields, because field names are the
/// contract.
pub fn encode<T: Serialize + ?Sized>(value: &T, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
    encode_reserving(value, encoding, 0)
}

/// [`encode`] into a buffer of `capacity` bytes to begin with: a message of about that size
/// (a reply on a hot path) is written without the buffer growing on the way.
pub fn encode_reserving<T: Serialize + ?Sized>(
    value: &T,
    encoding: Encoding,
    capacity: usize,
) -> Result<Vec<u8>, CodecError> {
    let mut buffer = Vec::with_capacity(capacity);
    let encoded = match encoding {
        Encoding::MessagePack => {
            rmp_serde::encode::write_named(&mut buffer, value).map_err(|error| error.to_string())
        }
        Encoding::Json => {
            serde_json::to_writer(&mut buffer, value).map_err(|error| error.to_string())
        }
    };
    encoded.map(|()| buffer).map_err(|message| {
        CodecError::new(CodecErrorKind::Encode, format!("cannot encode: {message}"))
    })
}

/// Decodes a request under the default [`Limits`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8], encoding: Encoding) -> Result<T, CodecError> {
    decode_with(bytes, encoding, Limits::default())
}

/// Decodes under `limits`: size check, pre-scan, then serde. On a serde error the input is
/// decoded once more with path tracking, so the error names the field without slowing the
/// successful path down.
pub fn decode_with<T: DeserializeOwned>(
    bytes: &[u8],
    encoding: Encoding,
    limits: Limits,
) -> Result<T, CodecError> {
    check(bytes, encoding, limits)?;
    let decoded = match encoding {
        Encoding::MessagePack => {
            rmp_serde::from_slice::<T>(bytes).map_err(|error| msgpack_error(&error))
        }
        Encoding::Json => serde_json::from_slice::<T>(bytes).map_err(|error| json_error(&error)),
    };
    decoded.map_err(|first_error| explain::<T>(bytes, encoding).unwrap_or(first_error))
}

/// Only the caps and the pre-scan: size, depth, declared lengths, one value, no trailing
/// bytes. [`decode_with`] runs this first; it is public so a service can refuse a message
/// before choosing its type.
pub fn check(bytes: &[u8], encoding: Encoding, limits: Limits) -> Result<(), CodecError> {
    if bytes.len() > limits.max_bytes {
        return Err(CodecError::new(
            CodecErrorKind::TooLarge,
            format!(
                "message of {} bytes exceeds the limit of {} bytes",
                bytes.len(),
                limits.max_bytes
            ),
        ));
    }
    match encoding {
        Encoding::MessagePack => scan::scan_msgpack(bytes, limits.max_depth),
        Encoding::Json => scan::scan_json(bytes, limits.max_depth),
    }
}

/// Decodes again with path tracking to name the field at fault.
fn explain<T: DeserializeOwned>(bytes: &[u8], encoding: Encoding) -> Option<CodecError> {
    let (path, error) = match encoding {
        Encoding::MessagePack => {
            let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
            let error = serde_path_to_error::deserialize::<_, T>(&mut deserializer).err()?;
            (error.path().to_string(), msgpack_error(error.inner()))
        }
        Encoding::Json => {
            let mut deserializer = serde_json::Deserializer::from_slice(bytes);
            let error = serde_path_to_error::deserialize::<_, T>(&mut deserializer).err()?;
            (error.path().to_string(), json_error(error.inner()))
        }
    };
    let field = field_at_fault(&path, &error.message);
    let message = match &field {
        Some(field) => format!("{field}: {}", error.message),
        None => error.message,
    };
    Some(CodecError {
        kind: error.kind,
        message,
        field,
    })
}

/// The path of the field at fault: serde_path_to_error's path (which already ends in an
/// unknown field's name), extended by the field a "missing field `x`" message names (that
/// path points at the parent).
fn field_at_fault(path: &str, message: &str) -> Option<String> {
    let parent = if path == "." || path.is_empty() {
        None
    } else {
        Some(path)
    };
    let missing = message.strip_prefix("missing field `").and_then(|rest| {
        let end = rest.find('`')?;
        Some(&rest[..end])
    });
    match (parent, missing) {
        (Some(parent), Some(name)) => Some(format!("{parent}.{name}")),
        (None, Some(name)) => Some(name.to_owned()),
        (Some(parent), None) => Some(parent.to_owned()),
        (None, None) => None,
    }
}

fn json_error(error: &serde_json::Error) -> CodecError {
    use serde_json::error::Category;
    let kind = match error.classify() {
        Category::Data => CodecErrorKind::Invalid,
        Category::Syntax if error.to_string().starts_with("trailing") => CodecErrorKind::Trailing,
        Category::Syntax | Category::Eof | Category::Io => CodecErrorKind::Malformed,
    };
    CodecError::new(kind, error.to_string())
}

fn msgpack_error(error: &rmp_serde::decode::Error) -> CodecError {
    use rmp_serde::decode::Error;
    let kind = match error {
        Error::InvalidMarkerRead(_) | Error::InvalidDataRead(_) => CodecErrorKind::Malformed,
        Error::DepthLimitExceeded => CodecErrorKind::TooDeep,
        Error::TypeMismatch(_)
        | Error::OutOfRange
        | Error::LengthMismatch(_)
        | Error::Uncategorized(_)
        | Error::Syntax(_)
        | Error::Utf8Error(_) => CodecErrorKind::Invalid,
    };
    let message = match error {
        // rmp-serde's own text for these is terse ("syntax error: ...")
        Error::Syntax(text) | Error::Uncategorized(text) => text.clone(),
        other => other.to_string(),
    };
    CodecError::new(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        count: u64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        items: Vec<Inner>,
    }

    #[test]
    fn content_type_selects_json_only_for_application_json() {
        assert_eq!(Encoding::from_content_type(None), Encoding::MessagePack);
        assert_eq!(
            Encoding::from_content_type(Some("application/json")),
            Encoding::Json
        );
        assert_eq!(
            Encoding::from_content_type(Some("Application/JSON; charset=utf-8")),
            Encoding::Json
        );
        assert_eq!(
            Encoding::from_content_type(Some("application/msgpack")),
            Encoding::MessagePack
        );
        assert_eq!(
            Encoding::from_content_type(Some("text/plain")),
            Encoding::MessagePack
        );
        assert_eq!(Encoding::Json.content_type(), JSON_CONTENT_TYPE);
        assert_eq!(Encoding::default(), Encoding::MessagePack);
    }

    #[test]
    fn msgpack_uses_named_fields() {
        let value = Inner { count: 7 };
        let bytes = encode(&value, Encoding::MessagePack).expect("encodes");
        assert_eq!(bytes, [0x81, 0xa5, b'c', b'o', b'u', b'n', b't', 0x07]);
        assert_eq!(decode::<Inner>(&bytes, Encoding::MessagePack), Ok(value));
    }

    #[test]
    fn wrong_types_name_the_field_by_path() {
        let text = br#"{"name": "x", "items": [{"count": 1}, {"count": "two"}]}"#;
        let error = decode::<Outer>(text, Encoding::Json).expect_err("wrong type");
        assert_eq!(error.kind(), CodecErrorKind::Invalid);
        assert_eq!(error.field(), Some("items[1].count"));
        assert!(
            error.message().contains("items[1].count"),
            "{}",
            error.message()
        );
        assert!(
            error.message().contains("invalid type"),
            "{}",
            error.message()
        );

        let value = serde_json::json!({"name": "x", "items": [{"count": 1}, {"count": "two"}]});
        let packed = rmp_serde::to_vec_named(&value).expect("encodes");
        let error = decode::<Outer>(&packed, Encoding::MessagePack).expect_err("wrong type");
        assert_eq!(error.kind(), CodecErrorKind::Invalid);
        assert_eq!(error.field(), Some("items[1].count"));
    }

    #[test]
    fn unknown_and_missing_fields_name_the_field() {
        let error = decode::<Outer>(
            br#"{"name": "x", "items": [{"count": 1, "colour": 2}]}"#,
            Encoding::Json,
        )
        .expect_err("unknown");
        assert_eq!(error.field(), Some("items[0].colour"));
        assert!(
            error.message().contains("unknown field `colour`"),
            "{}",
            error.message()
        );

        let error = decode::<Outer>(br#"{"items": []}"#, Encoding::Json).expect_err("missing");
        assert_eq!(error.field(), Some("name"));
        assert!(
            error.message().contains("missing field `name`"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn caps_apply_before_serde() {
        let limits = Limits {
            max_bytes: 8,
            max_depth: 2,
        };
        let error = decode_with::<serde_json::Value>(b"[1,2,3,4,5]", Encoding::Json, limits)
            .expect_err("large");
        assert_eq!(error.kind(), CodecErrorKind::TooLarge);
        let error =
            decode_with::<serde_json::Value>(b"[[[1]]]", Encoding::Json, limits).expect_err("deep");
        assert_eq!(error.kind(), CodecErrorKind::TooDeep);
        let error = decode::<Inner>(b"{\"count\": 1} x", Encoding::Json).expect_err("trailing");
        assert_eq!(error.kind(), CodecErrorKind::Trailing);
        let error = decode::<u64>(b"1 x", Encoding::Json).expect_err("trailing scalar");
        assert_eq!(error.kind(), CodecErrorKind::Trailing);
    }
}
