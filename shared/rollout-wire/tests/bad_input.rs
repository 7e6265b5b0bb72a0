//! Bad input at the wire boundary (SPEC §11): malformed, truncated, oversized and deeply
//! nested messages, wrong types, unknown and missing fields. Each must come back as a
//! structured `CodecError` naming the problem, never a panic, a stack overflow or a huge
//! allocation.

use proptest::prelude::*;
use rollout_wire::shapes::SHAPES;
use rollout_wire::{
    decode, decode_with, encode, CodecError, CodecErrorKind, Command, CommandVerb, Encoding,
    ErrorCode, EvalRequest, FlagCreate, FlagDelete, FlagToggle, FlagUpdate, Limits, RolloutAction,
    RolloutCreate, RolloutStop, WireError,
};
use serde_json::{json, Value};

const BOTH: [Encoding; 2] = [Encoding::Json, Encoding::MessagePack];

/// `value` in `encoding`, MessagePack with named fields.
fn bytes_of(value: &Value, encoding: Encoding) -> Vec<u8> {
    encode(value, encoding).expect("test value encodes")
}

fn example(type_name: &str) -> Value {
    let shape = SHAPES
        .iter()
        .find(|shape| shape.type_name == type_name)
        .unwrap_or_else(|| panic!("no example for {type_name}"));
    serde_json::from_str(shape.json).expect("example is json")
}

fn decode_error<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    value: &Value,
    encoding: Encoding,
) -> CodecError {
    decode::<T>(&bytes_of(value, encoding), encoding).expect_err("must be refused")
}

#[test]
fn unknown_fields_are_refused_naming_the_field() {
    for encoding in BOTH {
        let mut stop = example("RolloutStop");
        stop["percent"] = json!(25);
        let error = decode_error::<RolloutStop>(&stop, encoding);
        assert_eq!(error.kind(), CodecErrorKind::Invalid);
        assert_eq!(error.field(), Some("percent"), "{encoding:?}");
        assert!(error.message().contains("percent"), "{}", error.message());

        let mut create = example("FlagCreate");
        create["flag"]["variations"][1]["colour"] = json!("red");
        let error = decode_error::<FlagCreate>(&create, encoding);
        assert_eq!(
            error.field(),
            Some("flag.variations[1].colour"),
            "{encoding:?}"
        );
        assert!(error.message().contains("colour"), "{}", error.message());

        let mut eval = example("EvalRequest");
        eval["entity"]["name"] = json!("x");
        let error = decode_error::<EvalRequest>(&eval, encoding);
        assert_eq!(error.field(), Some("entity.name"), "{encoding:?}");
    }
}

#[test]
fn wrong_types_are_refused_naming_the_field() {
    for encoding in BOTH {
        let mut create = example("FlagCreate");
        create["flag"]["enabled"] = json!("yes");
        let error = decode_error::<FlagCreate>(&create, encoding);
        assert_eq!(error.kind(), CodecErrorKind::Invalid);
        assert_eq!(error.field(), Some("flag.enabled"), "{encoding:?}");
        assert!(
            error.message().contains("flag.enabled"),
            "{}",
            error.message()
        );

        let mut stop = example("RolloutStop");
        stop["percentage"] = json!("a quarter");
        let error = decode_error::<RolloutStop>(&stop, encoding);
        assert_eq!(error.field(), Some("percentage"), "{encoding:?}");

        let mut rollout = example("RolloutCreate");
        rollout["rollout"]["phases"][0]["duration"] = json!(6);
        let error = decode_error::<RolloutCreate>(&rollout, encoding);
        assert_eq!(
            error.field(),
            Some("rollout.phases[0].duration"),
            "{encoding:?}"
        );

        let mut update = example("FlagUpdate");
        update["expected_version"] = json!(-1);
        let error = decode_error::<FlagUpdate>(&update, encoding);
        assert_eq!(error.field(), Some("expected_version"), "{encoding:?}");
    }
}

#[test]
fn missing_required_fields_are_refused_naming_the_field() {
    for encoding in BOTH {
        let error = decode_error::<RolloutAction>(&json!({"command_id": "c-1"}), encoding);
        assert_eq!(error.kind(), CodecErrorKind::Invalid);
        assert_eq!(error.field(), Some("rollout_id"), "{encoding:?}");
        assert!(
            error.message().contains("missing field `rollout_id`"),
            "{}",
            error.message()
        );

        let mut create = example("FlagCreate");
        if let Some(flag) = create["flag"].as_object_mut() {
            flag.remove("off_variation");
        }
        let error = decode_error::<FlagCreate>(&create, encoding);
        assert_eq!(error.field(), Some("flag.off_variation"), "{encoding:?}");
    }
}

#[test]
fn decode_errors_become_invalid_argument_replies_with_the_field() {
    let error = decode_error::<RolloutAction>(&json!({"command_id": "c-1"}), Encoding::Json);
    let reply_error = WireError::from(error);
    assert_eq!(reply_error.code, ErrorCode::InvalidArgument);
    assert_eq!(reply_error.field.as_deref(), Some("rollout_id"));
}

/// Decodes bytes as one message type, keeping only the error.
type DecodeAs = fn(&[u8], Encoding) -> Result<(), CodecError>;

/// A few messages of different types, with the decode that must refuse their prefixes.
fn truncation_cases() -> Vec<(Value, DecodeAs)> {
    fn with<T: serde::de::DeserializeOwned>(
        bytes: &[u8],
        encoding: Encoding,
    ) -> Result<(), CodecError> {
        decode::<T>(bytes, encoding).map(|_| ())
    }
    vec![
        (example("FlagCreate"), with::<FlagCreate>),
        (example("RolloutCreate"), with::<RolloutCreate>),
        (example("RolloutStop"), with::<RolloutStop>),
        (example("EvalRequest"), with::<EvalRequest>),
        (example("FlagToggle"), with::<FlagToggle>),
    ]
}

#[test]
fn every_prefix_of_a_valid_message_is_refused() {
    for (value, decode_as) in truncation_cases() {
        for encoding in BOTH {
            let bytes = bytes_of(&value, encoding);
            assert_eq!(
                decode_as(&bytes, encoding),
                Ok(()),
                "the whole message decodes"
            );
            for length in 0..bytes.len() {
                let error = decode_as(&bytes[..length], encoding)
                    .expect_err("a truncated message must be refused");
                assert!(
                    matches!(
                        error.kind(),
                        CodecErrorKind::Malformed | CodecErrorKind::Invalid
                    ),
                    "{encoding:?} prefix {length}: {error:?}"
                );
            }
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    for encoding in BOTH {
        let mut bytes = bytes_of(&example("FlagToggle"), encoding);
        bytes.extend_from_slice(b"{}");
        let error = decode::<FlagToggle>(&bytes, encoding).expect_err("trailing");
        assert_eq!(error.kind(), CodecErrorKind::Trailing, "{encoding:?}");
    }
}

#[test]
fn oversized_messages_are_refused_before_decoding() {
    let limits = Limits::default();
    assert_eq!(limits.max_bytes, 1024 * 1024);
    for encoding in BOTH {
        let big = json!({"key": "x".repeat(limits.max_bytes)});
        let error = decode_error::<FlagDelete>(&big, encoding);
        assert_eq!(error.kind(), CodecErrorKind::TooLarge, "{encoding:?}");
    }
    let tight = Limits {
        max_bytes: 10,
        max_depth: 32,
    };
    let error = decode_with::<FlagDelete>(br#"{"key": "abcdefgh"}"#, Encoding::Json, tight)
        .expect_err("large");
    assert_eq!(error.kind(), CodecErrorKind::TooLarge);
}

#[test]
fn ten_thousand_levels_of_nesting_are_refused_without_recursion() {
    let json = "[".repeat(10_000);
    let error = decode::<Value>(json.as_bytes(), Encoding::Json).expect_err("deep json");
    assert_eq!(error.kind(), CodecErrorKind::TooDeep);
    let closed = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let error = decode::<Value>(closed.as_bytes(), Encoding::Json).expect_err("deep closed json");
    assert_eq!(error.kind(), CodecErrorKind::TooDeep);

    let mut packed = vec![0x91_u8; 10_000];
    packed.push(0xc0);
    let error = decode::<Value>(&packed, Encoding::MessagePack).expect_err("deep msgpack");
    assert_eq!(error.kind(), CodecErrorKind::TooDeep);
    let error = Command::decode(CommandVerb::FlagCreate, &packed, Encoding::MessagePack)
        .expect_err("deep command");
    assert_eq!(error.kind(), CodecErrorKind::TooDeep);
}

fn nested_value(depth: usize) -> Value {
    (0..depth).fold(json!(true), |inner, _| json!({ "inner": inner }))
}

#[test]
fn a_deep_variation_value_inside_a_valid_flag_create_is_refused() {
    // the value sits at depth 5: message, flag, variations, variation, value
    for encoding in BOTH {
        let mut create = example("FlagCreate");
        create["flag"]["variations"][1]["value"] = nested_value(40);
        let error = decode_error::<FlagCreate>(&create, encoding);
        assert_eq!(error.kind(), CodecErrorKind::TooDeep, "{encoding:?}");

        create["flag"]["variations"][1]["value"] = nested_value(28);
        let bytes = bytes_of(&create, encoding);
        assert!(
            decode::<FlagCreate>(&bytes, encoding).is_ok(),
            "depth 32 is allowed"
        );
        create["flag"]["variations"][1]["value"] = nested_value(29);
        let error = decode_error::<FlagCreate>(&create, encoding);
        assert_eq!(error.kind(), CodecErrorKind::TooDeep, "depth 33 is not");
    }
}

#[test]
fn a_huge_declared_length_is_refused_before_any_allocation() {
    // array32 claiming u32::MAX elements, in a 10-byte message
    let array = [0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02, 0x03, 0x04, 0x05];
    let error = decode::<Vec<u64>>(&array, Encoding::MessagePack).expect_err("huge array");
    assert_eq!(error.kind(), CodecErrorKind::Malformed);
    let error =
        decode::<FlagCreate>(&array, Encoding::MessagePack).expect_err("huge array as command");
    assert_eq!(error.kind(), CodecErrorKind::Malformed);

    // a map claiming u32::MAX pairs, and a string claiming 4 GiB, in five bytes and a few
    let map = [0xdf, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        decode::<Value>(&map, Encoding::MessagePack)
            .expect_err("huge map")
            .kind(),
        CodecErrorKind::Malformed
    );
    let string = [0x81, 0xa3, b'k', b'e', b'y', 0xdb, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        decode::<FlagDelete>(&string, Encoding::MessagePack)
            .expect_err("huge string")
            .kind(),
        CodecErrorKind::Malformed
    );
}

#[test]
fn garbage_is_malformed_not_a_panic() {
    for bytes in [
        &b""[..],
        b"\xc1",
        b"\xff\xff",
        b"{",
        b"nul",
        b"\"abc",
        b"{\"key\": tru}",
    ] {
        for encoding in BOTH {
            assert!(
                decode::<FlagToggle>(bytes, encoding).is_err(),
                "{bytes:?} {encoding:?}"
            );
        }
    }
}

/// Decodes `bytes` as every command type; only the absence of a panic matters.
fn decode_as_every_command(bytes: &[u8], encoding: Encoding) {
    for verb in CommandVerb::ALL {
        let _ = Command::decode(*verb, bytes, encoding);
    }
    let _ = decode::<FlagCreate>(bytes, encoding);
    let _ = decode::<FlagUpdate>(bytes, encoding);
    let _ = decode::<FlagToggle>(bytes, encoding);
    let _ = decode::<FlagDelete>(bytes, encoding);
    let _ = decode::<RolloutCreate>(bytes, encoding);
    let _ = decode::<RolloutAction>(bytes, encoding);
    let _ = decode::<RolloutStop>(bytes, encoding);
    let _ = decode::<EvalRequest>(bytes, encoding);
}

fn example_bytes() -> Vec<Vec<u8>> {
    SHAPES
        .iter()
        .flat_map(|shape| {
            let value: Value = serde_json::from_str(shape.json).expect("example is json");
            [
                bytes_of(&value, Encoding::MessagePack),
                bytes_of(&value, Encoding::Json),
            ]
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_as_every_command(&bytes, Encoding::MessagePack);
        decode_as_every_command(&bytes, Encoding::Json);
    }

    /// Valid messages with a few bytes overwritten, a cut and a splice: close to valid,
    /// so they reach far into the decoders.
    #[test]
    fn mutated_valid_messages_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let corpus = example_bytes();
        let mut bytes = pick.get(&corpus).clone();
        for (position, byte) in &edits {
            let index = position.index(bytes.len());
            bytes[index] = *byte;
        }
        decode_as_every_command(&bytes, Encoding::MessagePack);
        decode_as_every_command(&bytes, Encoding::Json);
        let length = cut.index(bytes.len() + 1);
        decode_as_every_command(&bytes[..length], Encoding::MessagePack);
        decode_as_every_command(&bytes[..length], Encoding::Json);
    }
}
