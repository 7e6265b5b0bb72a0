//! The HTTP face of an evaluator (SPEC §8.3): OFREP single and bulk evaluation, answered
//! from the snapshot like `rollout.eval`, and `GET /healthz` (the process runs),
//! `GET /readyz` (200 once the first full load is done, 503 before) and `GET /metrics`
//! (Prometheus text).
//!
//! The namespace is the `X-Rollout-Namespace` header, else `http.namespace`; a namespace
//! the header names that no command ever used is 404 (a typo must not look like a
//! namespace without flags). With
//! `http.require_token`, OFREP requests need `Authorization: Bearer <token>` ([`auth`]):
//! none, a malformed or an unknown one is 401, a token asking for a namespace other than
//! its own is 403, and a request without the header gets the token's namespace; health,
//! readiness and metrics stay open. Refusals have the OFREP error shape. The bulk
//! response carries a strong `ETag` of its body; a request whose `If-None-Match` matches
//! gets `304 Not Modified`.
//!
//! [`auth`]: crate::auth

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, ETAG, IF_NONE_MATCH, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rollout_wire::codec::{self, CodecErrorKind, Encoding, DEFAULT_MAX_BYTES};
use rollout_wire::envelope::ErrorCode;
use rollout_wire::subjects::Namespace;
use serde_json::Value;

use crate::auth::Denied;
use crate::metrics::Transport;
use crate::ofrep::{self, OfrepError, OfrepRequest};
use crate::snapshot::NamespaceSnapshot;
use crate::Shared;

/// Header naming the namespace of an OFREP request.
pub const NAMESPACE_HEADER: &str = "x-rollout-namespace";

/// The evaluator's routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ofrep/v1/evaluate/flags/{key}", post(evaluate_one))
        .route("/ofrep/v1/evaluate/flags", post(evaluate_bulk))
        .route("/ofrep/v1/configuration", get(configuration))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(DEFAULT_MAX_BYTES))
        .with_state(shared)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        bytes,
    )
        .into_response()
}

/// A refusal of the request's credentials: 401 with its `WWW-Authenticate` challenge, or
/// 403, with the OFREP error `body`.
fn denied_response(denied: &Denied, body: &Value) -> Response {
    let status = StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut response = json_response(status, body);
    if let Some(challenge) = denied.challenge() {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    response
}

fn status_of(error: &OfrepError) -> StatusCode {
    StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST)
}

fn code_of(error: &OfrepError) -> ErrorCode {
    match error.status {
        404 => ErrorCode::NotFound,
        503 => ErrorCode::Unavailable,
        500 => ErrorCode::Internal,
        _ => ErrorCode::InvalidArgument,
    }
}

/// What every evaluation request needs before evaluating: readiness, the namespace, the
/// entity.
struct Prepared {
    name: String,
    namespace: Option<Arc<NamespaceSnapshot>>,
    entity: rollout_core::Entity,
}

enum Refused {
    /// The request's credentials were refused (before anything else is looked at).
    Denied(Denied),
    NotReady,
    Bad(Option<Arc<NamespaceSnapshot>>, OfrepError),
}

fn prepare(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Prepared, Refused> {
    let bound = shared
        .access
        .tokens
        .authorize(headers.get(AUTHORIZATION))
        .map_err(Refused::Denied)?;
    if !shared.metrics.is_ready() {
        return Err(Refused::NotReady);
    }
    let name = match headers.get(NAMESPACE_HEADER) {
        None => bound.unwrap_or(&shared.access.default_namespace).to_owned(),
        Some(value) => {
            let text = value.to_str().unwrap_or_default();
            match Namespace::new(text) {
                Ok(namespace) => match bound {
                    Some(bound) if bound != namespace.as_str() => {
                        return Err(Refused::Denied(Denied::OtherNamespace {
                            bound: bound.to_owned(),
                            requested: namespace.into(),
                        }))
                    }
                    _ => namespace.into(),
                },
                Err(error) => {
                    return Err(Refused::Bad(
                        None,
                        OfrepError::general(format!("{NAMESPACE_HEADER}: {}", error.message())),
                    ))
                }
            }
        }
    };
    let namespace = shared.served.snapshot.namespace(&name);
    if namespace.is_none() && headers.contains_key(NAMESPACE_HEADER) {
        // a typo must not look like a namespace without flags
        return Err(Refused::Bad(None, OfrepError::namespace_not_found(&name)));
    }
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        OfrepRequest::default()
    } else {
        match codec::decode::<OfrepRequest>(body, Encoding::Json) {
            Ok(request) => request,
            Err(error) if error.kind() == CodecErrorKind::Invalid => {
                return Err(Refused::Bad(
                    namespace,
                    OfrepError::invalid_context(error.message()),
                ))
            }
            Err(error) => return Err(Refused::Bad(namespace, OfrepError::parse(error.message()))),
        }
    };
    match ofrep::entity_from_context(request.context.as_ref()) {
        Ok(entity) => Ok(Prepared {
            name,
            namespace,
            entity,
        }),
        Err(error) => Err(Refused::Bad(namespace, error)),
    }
}

fn record(shared: &Shared, namespace: Option<&NamespaceSnapshot>, code: Option<ErrorCode>) {
    let counters = namespace.map_or(shared.metrics.unknown_namespace(), |namespace| {
        namespace.counters()
    });
    counters.record(Transport::Http, code);
}

fn not_ready(shared: &Shared) -> Response {
    record(shared, None, Some(ErrorCode::Unavailable));
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({"errorDetails": "the evaluator has not loaded its snapshot yet; retry"}),
    )
}

async fn evaluate_one(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let response = match prepare(&shared, &headers, &body) {
        Err(Refused::Denied(denied)) => {
            record(&shared, None, Some(ErrorCode::PermissionDenied));
            denied_response(&denied, &OfrepError::denied(&denied).body_for(&key))
        }
        Err(Refused::NotReady) => not_ready(&shared),
        Err(Refused::Bad(namespace, error)) => {
            record(&shared, namespace.as_deref(), Some(code_of(&error)));
            json_response(status_of(&error), &error.body_for(&key))
        }
        Ok(prepared) => {
            let answer = prepared.namespace.as_deref().and_then(|namespace| {
                namespace.with_flag(&key, |live| {
                    let evaluation = live.compiled().evaluate(&prepared.entity);
                    if ofrep::needs_key(&prepared.entity, &evaluation) {
                        Err(OfrepError::targeting_key_missing())
                    } else {
                        Ok(ofrep::success_body(live, &evaluation))
                    }
                })
            });
            match answer {
                Some(Ok(body)) => {
                    record(&shared, prepared.namespace.as_deref(), None);
                    json_response(StatusCode::OK, &body)
                }
                Some(Err(error)) => {
                    record(
                        &shared,
                        prepared.namespace.as_deref(),
                        Some(code_of(&error)),
                    );
                    json_response(status_of(&error), &error.body_for(&key))
                }
                None => {
                    record(
                        &shared,
                        prepared.namespace.as_deref(),
                        Some(ErrorCode::NotFound),
                    );
                    let error = OfrepError::flag_not_found(&key, &prepared.name);
                    json_response(status_of(&error), &error.body_for(&key))
                }
            }
        }
    };
    shared
        .metrics
        .record_latency(Transport::Http, started.elapsed());
    response
}

async fn evaluate_bulk(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let response = match prepare(&shared, &headers, &body) {
        Err(Refused::Denied(denied)) => {
            record(&shared, None, Some(ErrorCode::PermissionDenied));
            denied_response(&denied, &OfrepError::denied(&denied).bulk_body())
        }
        Err(Refused::NotReady) => not_ready(&shared),
        Err(Refused::Bad(namespace, error)) => {
            record(&shared, namespace.as_deref(), Some(code_of(&error)));
            json_response(status_of(&error), &error.bulk_body())
        }
        Ok(prepared) => {
            let mut flags = Vec::new();
            if let Some(namespace) = prepared.namespace.as_deref() {
                namespace.for_each_flag(|live| {
                    let evaluation = live.compiled().evaluate(&prepared.entity);
                    // a flag that needs the missing targeting key fails alone
                    flags.push(if ofrep::needs_key(&prepared.entity, &evaluation) {
                        OfrepError::targeting_key_missing().body_for(live.compiled().key())
                    } else {
                        ofrep::success_body(live, &evaluation)
                    });
                });
            }
            record(&shared, prepared.namespace.as_deref(), None);
            tagged_json(&headers, &serde_json::json!({ "flags": flags }))
        }
    };
    shared
        .metrics
        .record_latency(Transport::Http, started.elapsed());
    response
}

/// `body` as JSON with a strong `ETag` of its bytes, or `304 Not Modified` when the
/// request's `If-None-Match` names that tag.
fn tagged_json(headers: &HeaderMap, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let etag = ofrep::etag_of(&bytes);
    let unchanged = headers
        .get(IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|wanted| ofrep::etag_matches(wanted, &etag));
    let etag_value =
        HeaderValue::from_str(&etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""));
    if unchanged {
        (StatusCode::NOT_MODIFIED, [(ETAG, etag_value)]).into_response()
    } else {
        (
            StatusCode::OK,
            [
                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (ETAG, etag_value),
            ],
            bytes,
        )
            .into_response()
    }
}

/// `GET /ofrep/v1/configuration` (the OFREP extension): what a provider may expect of this
/// evaluator. It carries no flag data, so it answers without a token.
async fn configuration(headers: HeaderMap) -> Response {
    tagged_json(&headers, &ofrep::configuration())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.metrics.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading the snapshot\n").into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        StatusCode::OK,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        shared.metrics.render(&shared.served.snapshot),
    )
        .into_response()
}
