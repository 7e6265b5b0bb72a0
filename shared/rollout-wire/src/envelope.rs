//! The reply envelope (SPEC §8.2): every reply is `{"ok": true, "result": ...}` or
//! `{"ok": false, "error": {"code", "message", "field"?, "details"?}}`, identical in JSON and
//! MessagePack, with the closed set of error codes and the conversions that turn domain
//! refusals and decode failures into them.

use std::fmt;

use rollout_core::{FieldError, Rejection, RejectionCode, ValidationErrors};
use serde::de::{DeserializeOwned, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, CodecErrorKind, Encoding, Limits};
use crate::subjects::{SubjectError, SubjectErrorKind};

/// The stable error codes; tests and clients match on these, never on message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a field is out of range; `field` names it.
    InvalidArgument,
    /// The flag, rollout or agent does not exist.
    NotFound,
    /// Clashes with existing state: a second active rollout, a stale `expected_version`.
    Conflict,
    /// Not possible in the current state: pausing a paused rollout, continuing a finished one.
    FailedPrecondition,
    /// The credential may not do this.
    PermissionDenied,
    /// A dependency (Redis, NATS) is down; retry later with the same `command_id`.
    Unavailable,
    /// A bug or an unexpected failure.
    Internal,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::FailedPrecondition,
        ErrorCode::PermissionDenied,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The wire name (`failed_precondition`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The error half of a reply: a stable code, a lowercase message, the field at fault and,
/// for validation failures, every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
pub struct WireError {
    /// Stable code.
    pub code: ErrorCode,
    /// What is wrong and, where it helps, what to do; lowercase.
    pub message: String,
    /// Path of the field at fault (`rollout.phases[1].percentage`); omitted when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every validation problem, so a user fixes them all at once; omitted when empty.
    /// (An extension of SPEC §8.2: `field` stays the first problem's field.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

impl WireError {
    /// An error with `code` and `message`, no field.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
            field: None,
            details: Vec::new(),
        }
    }

    /// The same error naming `field`.
    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> WireError {
        self.field = Some(field.into());
        self
    }

    /// `invalid_argument` naming the field at fault.
    pub fn invalid_argument(field: impl Into<String>, message: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::InvalidArgument, message).with_field(field)
    }

    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::NotFound, message)
    }

    /// `conflict`.
    pub fn conflict(message: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::Conflict, message)
    }

    /// `failed_precondition`.
    pub fn failed_precondition(message: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::FailedPrecondition, message)
    }

    /// `permission_denied`.
    pub fn permission_denied(message: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::PermissionDenied, message)
    }

    /// `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::Unavailable, message)
    }

    /// `internal`.
    pub fn internal(message: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::Internal, message)
    }
}

impl From<ValidationErrors> for WireError {
    /// `invalid_argument`; `field` is the first problem's field, the message joins every
    /// problem, `details` lists them all.
    fn from(errors: ValidationErrors) -> WireError {
        let message = if errors.is_empty() {
            "invalid argument".to_owned()
        } else {
            errors.to_string()
        };
        WireError {
            code: ErrorCode::InvalidArgument,
            message,
            field: errors.first_field().map(str::to_owned),
            details: errors.errors,
        }
    }
}

impl From<Rejection> for WireError {
    fn from(rejection: Rejection) -> WireError {
        let code = match rejection.code {
            RejectionCode::FailedPrecondition => ErrorCode::FailedPrecondition,
            RejectionCode::InvalidArgument => ErrorCode::InvalidArgument,
        };
        WireError {
            code,
            message: rejection.message,
            field: rejection.field,
            details: Vec::new(),
        }
    }
}

impl From<CodecError> for WireError {
    /// Bad input is `invalid_argument` naming the field; a failure to encode is `internal`.
    fn from(error: CodecError) -> WireError {
        let code = match error.kind() {
            CodecErrorKind::Encode => ErrorCode::Internal,
            CodecErrorKind::TooLarge
            | CodecErrorKind::TooDeep
            | CodecErrorKind::Malformed
            | CodecErrorKind::Invalid
            | CodecErrorKind::Trailing => ErrorCode::InvalidArgument,
        };
        WireError {
            code,
            message: error.message().to_owned(),
            field: error.field().map(str::to_owned),
            details: Vec::new(),
        }
    }
}

impl From<SubjectError> for WireError {
    /// `invalid_argument`, naming `namespace` or `subject`.
    fn from(error: SubjectError) -> WireError {
        let field = match error.kind() {
            SubjectErrorKind::InvalidNamespace => "namespace",
            SubjectErrorKind::InvalidPrefix
            | SubjectErrorKind::WrongPrefix
            | SubjectErrorKind::UnknownFamily
            | SubjectErrorKind::UnknownVerb
            | SubjectErrorKind::InvalidToken
            | SubjectErrorKind::Malformed => "subject",
        };
        WireError::invalid_argument(field, error.message())
    }
}

/// A reply: the result of a request, or why it failed. Serialises as the SPEC §8.2
/// envelope; decode it with [`decode_reply`] to get a plain `Result`.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply<T> {
    /// `{"ok": true, "result": ...}`.
    Ok(T),
    /// `{"ok": false, "error": {...}}`.
    Err(WireError),
}

impl<T> Reply<T> {
    /// The reply as a `Result`.
    pub fn into_result(self) -> Result<T, WireError> {
        match self {
            Reply::Ok(result) => Ok(result),
            Reply::Err(error) => Err(error),
        }
    }

    /// Whether the request succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Ok(_))
    }
}

impl<T> From<Result<T, WireError>> for Reply<T> {
    fn from(outcome: Result<T, WireError>) -> Reply<T> {
        match outcome {
            Ok(result) => Reply::Ok(result),
            Err(error) => Reply::Err(error),
        }
    }
}

impl<T> From<Reply<T>> for Result<T, WireError> {
    fn from(reply: Reply<T>) -> Result<T, WireError> {
        reply.into_result()
    }
}

fn serialize_envelope<S: Serializer, T: Serialize>(
    outcome: Result<&T, &WireError>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(2))?;
    match outcome {
        Ok(result) => {
            map.serialize_entry("ok", &true)?;
            map.serialize_entry("result", result)?;
        }
        Err(error) => {
            map.serialize_entry("ok", &false)?;
            map.serialize_entry("error", error)?;
        }
    }
    map.end()
}

impl<T: Serialize> Serialize for Reply<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Reply::Ok(result) => serialize_envelope(Ok(result), serializer),
            Reply::Err(error) => serialize_envelope::<S, T>(Err(error), serializer),
        }
    }
}

/// The envelope as it arrives; `result` is `Some` whenever the key is present, even when
/// its value is `null`.
#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct RawReply<T> {
    ok: bool,
    #[serde(default, deserialize_with = "present")]
    result: Option<T>,
    #[serde(default)]
    error: Option<WireError>,
}

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Reply<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Reply<T>, D::Error> {
        let raw = RawReply::<T>::deserialize(deserializer)?;
        match (raw.ok, raw.result, raw.error) {
            (true, Some(result), _) => Ok(Reply::Ok(result)),
            (true, None, _) => Err(serde::de::Error::custom("reply has ok true but no result")),
            (false, _, Some(error)) => Ok(Reply::Err(error)),
            (false, _, None) => Err(serde::de::Error::custom("reply has ok false but no error")),
        }
    }
}

/// What a reply's buffer starts with, in bytes: an evaluation answer fits.
const REPLY_CAPACITY: usize = 256;

/// Encodes the reply to a request in the request's encoding. Never fails: should the result
/// itself not encode, the reply becomes an `internal` error (which always encodes).
pub fn encode_reply<T: Serialize>(outcome: &Result<T, WireError>, encoding: Encoding) -> Vec<u8> {
    struct Envelope<'a, T>(Result<&'a T, &'a WireError>);

    impl<T: Serialize> Serialize for Envelope<'_, T> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serialize_envelope(self.0, serializer)
        }
    }

    codec::encode_reserving(&Envelope(outcome.as_ref()), encoding, REPLY_CAPACITY).unwrap_or_else(
        |error| {
            let fallback =
                WireError::internal(format!("cannot encode the reply: {}", error.message()));
            encode_error_reply(&fallback, encoding)
        },
    )
}

/// Encodes an error reply.
pub fn encode_error_reply(error: &WireError, encoding: Encoding) -> Vec<u8> {
    let envelope = Reply::<()>::Err(error.clone());
    // a WireError has only strings, an enum and a list of string pairs: it always encodes
    codec::encode(&envelope, encoding).unwrap_or_default()
}

/// Decodes a reply into the result or the error it carries. A reply that cannot be decoded
/// becomes an `internal` error saying so.
pub fn decode_reply<T: DeserializeOwned>(bytes: &[u8], encoding: Encoding) -> Result<T, WireError> {
    match codec::decode_with::<Reply<T>>(bytes, encoding, Limits::SERVICE_OUTPUT) {
        Ok(reply) => reply.into_result(),
        Err(error) => Err(WireError::internal(format!(
            "malformed reply: {}",
            error.message()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Answer {
        rollout_id: String,
        state: String,
    }

    fn both_encodings_as_json<T: Serialize>(outcome: &Result<T, WireError>) -> (Value, Value) {
        let json_bytes = encode_reply(outcome, Encoding::Json);
        let packed = encode_reply(outcome, Encoding::MessagePack);
        let from_json: Value = serde_json::from_slice(&json_bytes).expect("json reply");
        let from_pack: Value = rmp_serde::from_slice(&packed).expect("msgpack reply");
        (from_json, from_pack)
    }

    #[test]
    fn success_has_exactly_ok_and_result_in_both_encodings() {
        let outcome: Result<Answer, WireError> = Ok(Answer {
            rollout_id: "r-1".into(),
            state: "running".into(),
        });
        let (from_json, from_pack) = both_encodings_as_json(&outcome);
        let expected = json!({"ok": true, "result": {"rollout_id": "r-1", "state": "running"}});
        assert_eq!(from_json, expected);
        assert_eq!(from_pack, expected);
        for encoding in [Encoding::Json, Encoding::MessagePack] {
            let bytes = encode_reply(&outcome, encoding);
            let decoded = decode_reply::<Answer>(&bytes, encoding).expect("ok reply");
            assert_eq!(Ok(&decoded), outcome.as_ref());
        }
    }

    #[test]
    fn failure_has_code_message_and_field_only_when_set() {
        let with_field: Result<Answer, WireError> = Err(WireError::conflict(
            "flag new-checkout already has active rollout r-9",
        )
        .with_field("rollout.flag"));
        let (from_json, from_pack) = both_encodings_as_json(&with_field);
        let expected = json!({"ok": false, "error": {
            "code": "conflict",
            "message": "flag new-checkout already has active rollout r-9",
            "field": "rollout.flag"}});
        assert_eq!(from_json, expected);
        assert_eq!(from_pack, expected);

        let without_field: Result<Answer, WireError> = Err(WireError::not_found("no rollout r-1"));
        let (from_json, from_pack) = both_encodings_as_json(&without_field);
        let expected =
            json!({"ok": false, "error": {"code": "not_found", "message": "no rollout r-1"}});
        assert_eq!(from_json, expected);
        assert_eq!(from_pack, expected);

        for encoding in [Encoding::Json, Encoding::MessagePack] {
            let bytes = encode_reply(&with_field, encoding);
            let error = decode_reply::<Answer>(&bytes, encoding).expect_err("error reply");
            assert_eq!(error.code, ErrorCode::Conflict);
            assert_eq!(error.field.as_deref(), Some("rollout.flag"));
        }
    }

    #[test]
    fn codes_are_snake_case_on_the_wire() {
        let names: Vec<Value> = ErrorCode::ALL
            .iter()
            .map(|code| serde_json::to_value(code).expect("serialises"))
            .collect();
        assert_eq!(
            names,
            [
                "invalid_argument",
                "not_found",
                "conflict",
                "failed_precondition",
                "permission_denied",
                "unavailable",
                "internal"
            ]
            .map(Value::from)
        );
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).expect("serialises"),
                json!(code.as_str())
            );
        }
    }

    #[test]
    fn validation_errors_become_invalid_argument_with_every_detail() {
        let mut errors = ValidationErrors::default();
        errors.push(
            "rollout.phases[1].percentage",
            "must be greater than the previous step's 5%",
        );
        errors.push("rollout.guard.window", "must be between 1s and 24h");
        let error = WireError::from(errors);
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert_eq!(error.field.as_deref(), Some("rollout.phases[1].percentage"));
        assert!(error.message.contains("rollout.guard.window"));
        assert_eq!(error.details.len(), 2);
        let value = serde_json::to_value(&error).expect("serialises");
        assert_eq!(value["details"][1]["field"], json!("rollout.guard.window"));
    }

    #[test]
    fn rejections_keep_their_code_and_field() {
        let rejection = Rejection {
            code: RejectionCode::FailedPrecondition,
            message: "rollout is paused; resume it first".into(),
            field: None,
        };
        let error = WireError::from(rejection);
        assert_eq!(error.code, ErrorCode::FailedPrecondition);
        let rejection = Rejection {
            code: RejectionCode::InvalidArgument,
            message: "percentage 120 is outside 0..=100".into(),
            field: Some("percentage".into()),
        };
        let error = WireError::from(rejection);
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert_eq!(error.field.as_deref(), Some("percentage"));
    }

    #[test]
    fn envelopes_missing_their_half_are_refused() {
        for text in [
            r#"{"ok": true}"#,
            r#"{"ok": false}"#,
            r#"{"result": 1}"#,
            "[]",
        ] {
            let error = decode_reply::<Value>(text.as_bytes(), Encoding::Json).expect_err(text);
            assert_eq!(error.code, ErrorCode::Internal);
        }
        // a present null result is a result, not a missing one
        let unit = decode_reply::<()>(br#"{"ok": true, "result": null}"#, Encoding::Json);
        assert_eq!(unit, Ok(()));
    }
}
