//! The query listener (`--http-listen`, port 16686, where the console's trace links point):
//! a small JSON API and two HTML pages over the kept spans.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | HTML: the newest 100 traces |
//! | `GET /trace/{trace_id}` | HTML: one trace's spans, indented by parent |
//! | `GET /api/spans?service=&name=&trace_id=&limit=` | `{"spans": [...]}`, newest first; `name` matches exactly, or as a prefix when it ends with `*`; `limit` defaults to 100 |
//! | `GET /api/services` | `{"services": [{"service", "spans"}]}`, by name |
//! | `GET /api/traces/{trace_id}` | `{"trace_id", "spans": [...]}` by start time; 404 when no span of it is kept |
//! | `GET /healthz` | `ok` |
//! | `GET /metrics` | Prometheus text |
//!
//! Errors are JSON `{"error": {"code", "message"}}`: 400 `invalid_argument` for a trace id
//! that is not 32 hex digits or a bad `limit`, 404 `not_found`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::store::{normalize_trace_id, SpanFilter, StoredSpan};
use crate::{healthz, html, json_error, json_response, Shared};

/// Spans `/api/spans` returns when no `limit` is given.
pub const DEFAULT_LIMIT: usize = 100;

/// Traces the front page lists.
pub const FRONT_PAGE_TRACES: usize = 100;

/// The query listener's routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(front_page))
        .route("/trace/{trace_id}", get(trace_page))
        .route("/api/spans", get(spans))
        .route("/api/services", get(services))
        .route("/api/traces/{trace_id}", get(trace))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(shared)
}

/// The parameters of `/api/spans`, all optional.
#[derive(Debug, Deserialize)]
struct SpansParams {
    service: Option<String>,
    name: Option<String>,
    trace_id: Option<String>,
    limit: Option<String>,
}

async fn spans(State(shared): State<Arc<Shared>>, Query(params): Query<SpansParams>) -> Response {
    let limit = match params.limit.as_deref().map(str::trim) {
        None | Some("") => DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) => limit,
            Err(_) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_argument",
                    &format!("limit {text:?} is not a whole number"),
                )
            }
        },
    };
    let trace_id = match params.trace_id.as_deref().filter(|text| !text.is_empty()) {
        None => None,
        Some(text) => match normalize_trace_id(text) {
            Some(trace_id) => Some(trace_id),
            None => return invalid_trace_id(text),
        },
    };
    let filter = SpanFilter {
        service: params.service.filter(|text| !text.is_empty()),
        name: params.name.filter(|text| !text.is_empty()),
        trace_id,
    };
    let spans = shared.store.query(&filter, limit);
    json_response(
        StatusCode::OK,
        &SpansBody {
            trace_id: None,
            spans: plain(&spans),
        },
    )
}

async fn services(State(shared): State<Arc<Shared>>) -> Response {
    let services: Vec<_> = shared
        .store
        .services()
        .into_iter()
        .map(|(service, spans)| json!({ "service": service, "spans": spans }))
        .collect();
    json_response(StatusCode::OK, &json!({ "services": services }))
}

async fn trace(State(shared): State<Arc<Shared>>, Path(trace_id): Path<String>) -> Response {
    let Some(id) = normalize_trace_id(&trace_id) else {
        return invalid_trace_id(&trace_id);
    };
    let spans = shared.store.trace(&id);
    if spans.is_empty() {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!(
                "no span of trace {id} is kept (only the newest {} spans are, in memory)",
                shared.store.keep()
            ),
        );
    }
    json_response(
        StatusCode::OK,
        &SpansBody {
            trace_id: Some(&id),
            spans: plain(&spans),
        },
    )
}

async fn front_page(State(shared): State<Arc<Shared>>) -> Response {
    let traces = shared.store.recent_traces(FRONT_PAGE_TRACES);
    html::page(
        StatusCode::OK,
        html::front_page(&traces, shared.store.len(), shared.store.keep()),
    )
}

async fn trace_page(State(shared): State<Arc<Shared>>, Path(trace_id): Path<String>) -> Response {
    let Some(id) = normalize_trace_id(&trace_id) else {
        return html::page(
            StatusCode::BAD_REQUEST,
            html::message_page(
                "Not a trace id",
                &format!("{trace_id:?} is not a trace id: 32 hex digits are expected."),
            ),
        );
    };
    let spans = shared.store.trace(&id);
    if spans.is_empty() {
        return html::page(
            StatusCode::NOT_FOUND,
            html::message_page(
                "Trace not found",
                &format!(
                    "No span of trace {id} is kept. trace-sink keeps only the newest {} spans, \
                     in memory: older traces are gone, and so is everything after a restart.",
                    shared.store.keep()
                ),
            ),
        );
    }
    html::page(StatusCode::OK, html::trace_page(&id, &spans))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut response = shared.metrics.render(&shared.store).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `{"spans": [...]}`, with the trace id for `/api/traces/{trace_id}`.
#[derive(Debug, Serialize)]
struct SpansBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    spans: Vec<&'a StoredSpan>,
}

/// The spans as references, which serialize (`Arc` does not without serde's `rc`).
fn plain(spans: &[Arc<StoredSpan>]) -> Vec<&StoredSpan> {
    spans.iter().map(AsRef::as_ref).collect()
}

fn invalid_trace_id(text: &str) -> Response {
    json_error(
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        &format!("{text:?} is not a trace id: 32 hex digits are expected"),
    )
}

async fn not_found() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such page: see / for recent traces, /api/spans, /api/services, /api/traces/{trace_id}",
    )
}
