//! Evaluation requests on `rollout.eval.<ns>` (queue group `evaluator`): one flag, several,
//! or every flag of the namespace for an entity, answered from the snapshot alone.
//!
//! **Architecture Invariant:** this path reads only the in-memory snapshot: no Redis, no
//! lock shared with writers, no allocation beyond the reply.

use std::time::Instant;

use rollout_wire::codec::{self, Encoding};
use rollout_wire::envelope::{encode_reply, ErrorCode, WireError};
use rollout_wire::eval::{EvalMany, EvalRequest, EvalResultRef, EvalTarget};
use rollout_wire::subjects::Route;

use crate::metrics::Transport;
use crate::snapshot::{LiveFlag, NamespaceSnapshot};
use crate::Shared;
use rollout_runtime::serve::request_encoding;

/// The answer `live` gives `request`'s entity, borrowed from the flag.
fn result_for<'a>(live: &'a LiveFlag, request: &EvalRequest) -> EvalResultRef<'a> {
    let compiled = live.compiled();
    let evaluation = compiled.evaluate(&request.entity);
    EvalResultRef::from_evaluation(
        compiled.key(),
        compiled.version(),
        &evaluation,
        request.explain,
    )
}

/// The refusal for a flag the namespace does not have (`not_found` on `flag`).
pub(crate) fn unknown_flag(key: &str, namespace: &str) -> WireError {
    WireError::not_found(format!(
        "flag {key} does not exist in namespace {namespace}"
    ))
    .with_field("flag")
}

/// The answers to a (validated) request naming several flags (`keys`), or every flag of
/// `namespace` (`keys` = `None`); `namespace` = `None`: nothing of it is known. Keys it
/// does not have are listed in `missing`.
pub fn evaluate_many(
    namespace: Option<&NamespaceSnapshot>,
    keys: Option<&[String]>,
    request: &EvalRequest,
) -> EvalMany {
    let mut many = EvalMany {
        results: Vec::with_capacity(keys.map_or(0, <[String]>::len)),
        missing: Vec::new(),
    };
    match keys {
        Some(keys) => {
            for key in keys {
                let answer = namespace.and_then(|namespace| {
                    namespace.with_flag(key, |live| result_for(live, request).to_result())
                });
                match answer {
                    Some(result) => many.results.push(result),
                    None => many.missing.push(key.clone()),
                }
            }
        }
        None => {
            if let Some(namespace) = namespace {
                namespace
                    .for_each_flag(|live| many.results.push(result_for(live, request).to_result()));
            }
        }
    }
    many
}

/// Decodes, checks and answers one request body for namespace `name`; the reply is
/// encoded in `encoding`. Returns the reply and the error code, if it failed.
pub fn answer(
    namespace: Option<&NamespaceSnapshot>,
    name: &str,
    body: &[u8],
    encoding: Encoding,
) -> (Vec<u8>, Option<ErrorCode>) {
    let request = codec::decode::<EvalRequest>(body, encoding)
        .map_err(WireError::from)
        .and_then(|request| request.validate().map(|()| request));
    let outcome = match request {
        Err(error) => Err(error),
        // the common case: the reply is written from the snapshot, nothing copied out
        Ok(request) => match request.target() {
            EvalTarget::One(key) => match answer_one(namespace, key, &request, encoding) {
                Some(reply) => return (reply, None),
                None => Err(unknown_flag(key, name)),
            },
            EvalTarget::Many(keys) => Ok(evaluate_many(namespace, Some(keys), &request)),
            EvalTarget::All => Ok(evaluate_many(namespace, None, &request)),
        },
    };
    let code = outcome.as_ref().err().map(|error| error.code);
    (encode_reply(&outcome, encoding), code)
}

/// The encoded reply to a one-flag `request` for `key`, or `None` when the namespace has
/// no such flag.
fn answer_one(
    namespace: Option<&NamespaceSnapshot>,
    key: &str,
    request: &EvalRequest,
    encoding: Encoding,
) -> Option<Vec<u8>> {
    namespace?.with_flag(key, |live| {
        encode_reply(&Ok(result_for(live, request)), encoding)
    })
}

/// The reply to one message of `rollout.eval.*`, and its encoding (the caller publishes it).
pub(crate) fn answer_message(
    shared: &Shared,
    message: &async_nats::Message,
) -> (Encoding, Vec<u8>) {
    let started = Instant::now();
    let encoding = request_encoding(message.headers.as_ref());
    let (reply, code) = match shared.io.subjects.parse(message.subject.as_str()) {
        Ok(Route::Eval { namespace }) => {
            let snapshot = shared.served.snapshot.namespace(namespace.as_str());
            let (reply, code) = answer(
                snapshot.as_deref(),
                namespace.as_str(),
                &message.payload,
                encoding,
            );
            let counters = snapshot.as_deref().map_or(
                shared.metrics.unknown_namespace(),
                NamespaceSnapshot::counters,
            );
            counters.record(Transport::Nats, code);
            (reply, code)
        }
        Ok(_) | Err(_) => {
            let error = WireError::invalid_argument(
                "subject",
                format!("{} is not an evaluation subject", message.subject),
            );
            shared
                .metrics
                .unknown_namespace()
                .record(Transport::Nats, Some(error.code));
            (
                encode_reply::<()>(&Err(error), encoding),
                Some(ErrorCode::InvalidArgument),
            )
        }
    };
    if code == Some(ErrorCode::Internal) {
        tracing::error!(subject = %message.subject, "evaluation failed internally");
    }
    shared
        .metrics
        .record_latency(Transport::Nats, started.elapsed());
    (encoding, reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{FlagState, Snapshot};
    use rollout_core::{CompiledFlag, Flag};
    use rollout_wire::envelope::decode_reply;

    fn snapshot() -> Snapshot {
        let flag: Flag = serde_json::from_value(serde_json::json!({
            "key": "checkout",
            "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
            "off_variation": "off",
            "default": {"variation": "off"},
            "rules": [{"id": "beta", "conditions": [{"attribute": "plan", "op": "in", "values": ["beta"]}],
                       "serve": {"variation": "on"}}],
        }))
        .expect("flag");
        let snapshot = Snapshot::new();
        let compiled = CompiledFlag::compile(&flag, 7, None).expect("compiles");
        snapshot.writer().install(
            "prod",
            "checkout",
            FlagState::Live(LiveFlag::new(compiled, None)),
        );
        snapshot
    }

    fn ask(snapshot: &Snapshot, body: &serde_json::Value) -> Result<serde_json::Value, WireError> {
        let namespace = snapshot.namespace("prod");
        let bytes = serde_json::to_vec(body).expect("json");
        let (reply, _) = answer(namespace.as_deref(), "prod", &bytes, Encoding::Json);
        decode_reply(&reply, Encoding::Json)
    }

    #[test]
    fn one_many_and_all_flags() {
        let snapshot = snapshot();
        let one = ask(
            &snapshot,
            &serde_json::json!({"flag": "checkout", "entity": {"id": "u", "attributes": {"plan": "beta"}}, "explain": true}),
        )
        .expect("one");
        assert_eq!(one["variation"], "on");
        assert_eq!(one["reason"], "rule_match");
        assert_eq!(one["version"], 7);
        assert!(one["explanation"].as_str().is_some());
        let many = ask(
            &snapshot,
            &serde_json::json!({"flags": ["checkout", "nope"], "entity": {"id": "u"}}),
        )
        .expect("many");
        assert_eq!(many["results"][0]["variation"], "off");
        assert_eq!(many["missing"], serde_json::json!(["nope"]));
        let all = ask(&snapshot, &serde_json::json!({"entity": {"id": "u"}})).expect("all");
        assert_eq!(all["results"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn a_one_flag_answer_is_the_entry_a_bulk_answer_holds() {
        let snapshot = snapshot();
        for entity in [
            serde_json::json!({"id": "u", "attributes": {"plan": "beta"}}),
            serde_json::json!({"id": "u"}),
        ] {
            for explain in [false, true] {
                let one = ask(
                    &snapshot,
                    &serde_json::json!({"flag": "checkout", "entity": entity, "explain": explain}),
                )
                .expect("one");
                let many = ask(
                    &snapshot,
                    &serde_json::json!({"flags": ["checkout"], "entity": entity, "explain": explain}),
                )
                .expect("many");
                assert_eq!(one, many["results"][0], "{entity}, explain {explain}");
            }
        }
    }

    #[test]
    fn unknown_flags_and_bad_input_get_their_codes() {
        let snapshot = snapshot();
        let missing = ask(
            &snapshot,
            &serde_json::json!({"flag": "nope", "entity": {"id": "u"}}),
        )
        .expect_err("missing");
        assert_eq!(missing.code, ErrorCode::NotFound);
        let unknown_field = ask(
            &snapshot,
            &serde_json::json!({"flag": "checkout", "entity": {"id": "u"}, "colour": 1}),
        )
        .expect_err("unknown field");
        assert_eq!(unknown_field.code, ErrorCode::InvalidArgument);
        let empty_id = ask(
            &snapshot,
            &serde_json::json!({"flag": "checkout", "entity": {"id": ""}}),
        )
        .expect_err("empty id");
        assert_eq!(empty_id.field.as_deref(), Some("entity.id"));
        for garbage in [&b"\xc1\xff"[..], b"", b"\x92\x01"] {
            let (reply, code) = answer(None, "prod", garbage, Encoding::MessagePack);
            assert_eq!(code, Some(ErrorCode::InvalidArgument));
            let decoded = decode_reply::<serde_json::Value>(&reply, Encoding::MessagePack);
            assert_eq!(
                decoded.expect_err("error reply").code,
                ErrorCode::InvalidArgument
            );
        }
    }
}
