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
//! gets `304 Not Modified`. It also carries `refreshConnections`, the address of
//! `GET /ofrep/v1/sse/<ns>` ([`crate::push`]): there the token may come as `?token=`, since
//! a browser's `EventSource` cannot send headers. Pages of the origins in
//! `http.cors_origins` may call all of it (CORS, preflights answered here).
//!
//! [`auth`]: crate::auth

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::header::{
    AUTHORIZATION, CONTENT_TYPE, ETAG, HOST, IF_NONE_MATCH, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rollout_wire::codec::{self, CodecErrorKind, Encoding, DEFAULT_MAX_BYTES};
use rollout_wire::envelope::ErrorCode;
use rollout_wire::subjects::Namespace;
use serde::Serialize;
use serde_json::Value;

use crate::auth::{bearer_token, Denied};
use crate::metrics::Transport;
use crate::ofrep::{self, OfrepError, OfrepRequest};
use crate::push::{self, StreamRefused};
use crate::snapshot::NamespaceSnapshot;
use crate::Shared;

/// Header naming the namespace of an OFREP request.
pub const NAMESPACE_HEADER: &str = "x-rollout-namespace";

/// The evaluator's routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let cors = Arc::new(Cors::new(&shared.access.cors_origins));
    Router::new()
        .route("/ofrep/v1/evaluate/flags/{key}", post(evaluate_one))
        .route("/ofrep/v1/evaluate/flags", post(evaluate_bulk))
        .route("/ofrep/v1/configuration", get(configuration))
        .route("/ofrep/v1/sse/{namespace}", get(stream))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(DEFAULT_MAX_BYTES))
        .layer(axum::middleware::from_fn_with_state(cors, cors_layer))
        .with_state(shared)
}

/// Which web origins may call this evaluator from a page (`http.cors_origins`).
#[derive(Debug)]
struct Cors {
    any: bool,
    origins: Vec<String>,
}

impl Cors {
    fn new(origins: &[String]) -> Cors {
        Cors {
            any: origins.iter().any(|origin| origin == "*"),
            origins: origins.to_vec(),
        }
    }

    fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.iter().any(|allowed| allowed == origin)
    }
}

/// CORS for browser apps (the OpenFeature web SDK's OFREP provider, an `EventSource`): an
/// allowed `Origin` gets `Access-Control-Allow-Origin` (and may read the `ETag`); its
/// preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered here with the
/// methods and headers OFREP uses. Other origins get no CORS headers, so browsers refuse
/// their pages the answer; requests without `Origin` (servers, SDKs) are untouched.
async fn cors_layer(
    State(cors): State<Arc<Cors>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::http::header::{
        ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
        ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD,
        ORIGIN, VARY,
    };
    let origin = request
        .headers()
        .get(ORIGIN)
        .and_then(|value| value.to_str().ok())
        .filter(|origin| cors.allows(origin))
        .and_then(|origin| HeaderValue::from_str(origin).ok());
    let Some(origin) = origin else {
        return next.run(request).await;
    };
    let preflight = request.method() == axum::http::Method::OPTIONS
        && request
            .headers()
            .contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "authorization, content-type, if-none-match, last-event-id, x-rollout-namespace",
            ),
        );
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("etag"),
    );
    headers.append(VARY, HeaderValue::from_static("origin"));
    response
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    json_bytes_response(status, serde_json::to_vec(body).unwrap_or_default())
}

/// A JSON answer already serialized.
fn json_bytes_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        bytes,
    )
        .into_response()
}

/// A refusal of the request's credentials: 401 with its `WWW-Authenticate` challenge, or
/// 403, with the OFREP error `body`.
fn denied_response(denied: &Denied, body: &impl Serialize) -> Response {
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

/// The namespace a request names (`what`: where it named it), checked: a valid name (else
/// 400) and, when the token is bound to a namespace, that one (else 403).
fn requested_namespace(
    bound: Option<&str>,
    requested: &str,
    what: &str,
) -> Result<String, Refused> {
    let namespace = Namespace::new(requested).map_err(|error| {
        Refused::Bad(
            None,
            OfrepError::general(format!("{what}: {}", error.message())),
        )
    })?;
    match bound {
        Some(bound) if bound != namespace.as_str() => {
            Err(Refused::Denied(Denied::OtherNamespace {
                bound: bound.to_owned(),
                requested: namespace.into(),
            }))
        }
        _ => Ok(namespace.into()),
    }
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
            requested_namespace(bound, value.to_str().unwrap_or_default(), NAMESPACE_HEADER)?
        }
    };
    let namespace = shared.served.snapshot.namespace(&name);
    if namespace.is_none() && headers.contains_key(NAMESPACE_HEADER) {
        // a typo must not look like a namespace without flags
        return Err(Refused::Bad(None, OfrepError::namespace_not_found(&name)));
    }
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        OfrepRequest::default()
    } else if body.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        // serde would read a struct from an array too: `[]` is no request
        return Err(Refused::Bad(
            namespace,
            OfrepError::parse("the body must be a JSON object such as {\"context\": {...}}"),
        ));
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
            denied_response(&denied, &OfrepError::denied(&denied).body(Some(&key)))
        }
        Err(Refused::NotReady) => not_ready(&shared),
        Err(Refused::Bad(namespace, error)) => {
            record(&shared, namespace.as_deref(), Some(code_of(&error)));
            json_response(status_of(&error), &error.body(Some(&key)))
        }
        Ok(prepared) => {
            let answer = prepared.namespace.as_deref().and_then(|namespace| {
                namespace.with_flag(&key, |live| {
                    let evaluation = live.compiled().evaluate(&prepared.entity);
                    if ofrep::needs_key(&prepared.entity, &evaluation) {
                        Err(OfrepError::targeting_key_missing())
                    } else {
                        Ok(serde_json::to_vec(&ofrep::success_body(live, &evaluation))
                            .unwrap_or_default())
                    }
                })
            });
            match answer {
                Some(Ok(body)) => {
                    record(&shared, prepared.namespace.as_deref(), None);
                    json_bytes_response(StatusCode::OK, body)
                }
                Some(Err(error)) => {
                    record(
                        &shared,
                        prepared.namespace.as_deref(),
                        Some(code_of(&error)),
                    );
                    json_response(status_of(&error), &error.body(Some(&key)))
                }
                None => {
                    record(
                        &shared,
                        prepared.namespace.as_deref(),
                        Some(ErrorCode::NotFound),
                    );
                    let error = OfrepError::flag_not_found(&key, &prepared.name);
                    json_response(status_of(&error), &error.body(Some(&key)))
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
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let response = match prepare(&shared, &headers, &body) {
        Err(Refused::Denied(denied)) => {
            record(&shared, None, Some(ErrorCode::PermissionDenied));
            denied_response(&denied, &OfrepError::denied(&denied).body(None))
        }
        Err(Refused::NotReady) => not_ready(&shared),
        Err(Refused::Bad(namespace, error)) => {
            record(&shared, namespace.as_deref(), Some(code_of(&error)));
            json_response(status_of(&error), &error.body(None))
        }
        Ok(prepared) => {
            let mut answer = ofrep::BulkWriter::new();
            let mut connections = None;
            if let Some(namespace) = prepared.namespace.as_deref() {
                // a re-fetch told of a change (`sseEtag`) sees it even on a replica that
                // has not applied it yet
                let wanted = push::query_params(query.as_deref())
                    .get("sseEtag")
                    .and_then(|etag| push::parse_etag(etag));
                if let Some(wanted) = wanted {
                    push::Push::catch_up(namespace, wanted).await;
                }
                // read before evaluating: a change landing in between is announced again
                let state = push::state_of(namespace);
                namespace.for_each_flag(|live| {
                    let evaluation = live.compiled().evaluate(&prepared.entity);
                    // a flag that needs the missing targeting key fails alone
                    if ofrep::needs_key(&prepared.entity, &evaluation) {
                        answer.error(live.compiled().key(), &OfrepError::targeting_key_missing());
                    } else {
                        answer.flag(&ofrep::success_body(live, &evaluation));
                    }
                });
                let host = headers.get(HOST).and_then(|value| value.to_str().ok());
                let token = if shared.access.tokens.required() {
                    headers
                        .get(AUTHORIZATION)
                        .and_then(|value| bearer_token(value).ok())
                } else {
                    None
                };
                connections = shared
                    .push
                    .refresh_connections(namespace.name(), state, host, token);
            }
            record(&shared, prepared.namespace.as_deref(), None);
            tagged_bytes(&headers, answer.finish(connections.as_ref()))
        }
    };
    shared
        .metrics
        .record_latency(Transport::Http, started.elapsed());
    response
}

/// `GET /ofrep/v1/sse/<ns>`: the namespace's change stream ([`crate::push`]). The token
/// comes as `Authorization: Bearer` or `?token=`; the state the client last saw as
/// `Last-Event-ID` or `?since=`.
async fn stream(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let params = push::query_params(query.as_deref());
    let authorization = headers.get(AUTHORIZATION).cloned().or_else(|| {
        params
            .get("token")
            .and_then(|token| HeaderValue::from_str(&format!("Bearer {token}")).ok())
    });
    let bound = match shared.access.tokens.authorize(authorization.as_ref()) {
        Ok(bound) => bound,
        Err(denied) => return denied_response(&denied, &OfrepError::denied(&denied).body(None)),
    };
    if !shared.metrics.is_ready() {
        return not_ready(&shared);
    }
    let name = match requested_namespace(bound, &name, "namespace") {
        Ok(name) => name,
        Err(Refused::Denied(denied)) => {
            return denied_response(&denied, &OfrepError::denied(&denied).body(None))
        }
        Err(Refused::Bad(_, error)) => return json_response(status_of(&error), &error.body(None)),
        Err(Refused::NotReady) => return not_ready(&shared),
    };
    let Some(namespace) = shared.served.snapshot.namespace(&name) else {
        let error = OfrepError::namespace_not_found(&name);
        return json_response(status_of(&error), &error.body(None));
    };
    let last_seen = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .or(params.get("since").map(String::as_str))
        .and_then(|seen| seen.trim().parse().ok());
    match shared.push.open(&namespace, last_seen) {
        Ok(stream) => stream.into_response(),
        Err(StreamRefused::Disabled) => json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"errorCode": "GENERAL", "errorDetails": "change push (SSE) is off on this evaluator (http.sse); poll the bulk evaluation instead"}),
        ),
        Err(StreamRefused::Full(limit)) => {
            let mut response = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"errorCode": "GENERAL", "errorDetails": format!("this evaluator holds its limit of {limit} change streams (http.sse_max_connections); retry later or poll the bulk evaluation")}),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
    }
}

/// `body` as JSON with a strong `ETag` of its bytes, or `304 Not Modified` when the
/// request's `If-None-Match` names that tag.
fn tagged_json(headers: &HeaderMap, body: &Value) -> Response {
    tagged_bytes(headers, serde_json::to_vec(body).unwrap_or_default())
}

/// [`tagged_json`] for a body already serialized.
fn tagged_bytes(headers: &HeaderMap, bytes: Vec<u8>) -> Response {
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
async fn configuration(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    tagged_json(&headers, &ofrep::configuration(&shared.push))
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
        shared.metrics.render(&shared.served.snapshot) + &push_metrics(&shared.push),
    )
        .into_response()
}

/// The change push's gauges and counters in the Prometheus text format.
fn push_metrics(push: &push::Push) -> String {
    let (open, messages, refused) = push.counts();
    let mut text = rollout_runtime::probes::PromText::new();
    text.single(
        "rollout_evaluator_sse_connections",
        "gauge",
        "open OFREP change streams",
        open,
    );
    text.single(
        "rollout_evaluator_sse_messages_total",
        "counter",
        "refetchEvaluation messages sent",
        messages,
    );
    text.single(
        "rollout_evaluator_sse_refused_total",
        "counter",
        "change streams refused at http.sse_max_connections",
        refused,
    );
    text.finish()
}
