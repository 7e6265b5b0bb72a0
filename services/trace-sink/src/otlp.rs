//! The OTLP listener (`--otlp-listen`, port 4318): `POST /v1/traces` with an
//! `ExportTraceServiceRequest` in protobuf, as the services' `http/protobuf` exporter sends
//! it, and `GET /healthz`.
//!
//! | answer | when |
//! |---|---|
//! | 200, empty protobuf `ExportTraceServiceResponse` | stored (with `partial_success` when some spans had invalid ids) |
//! | 400 JSON error `malformed_request` | the body is not a valid request |
//! | 413 JSON error `payload_too_large` | over [`MAX_BODY_BYTES`] |
//! | 415 JSON error `unsupported_media_type` / `unsupported_encoding` | OTLP/JSON, another content type, or a compressed body |
//!
//! The OTLP exporters treat 400, 413 and 415 as permanent: the batch is dropped, not
//! retried. OTLP/JSON would need the proto crate's serde support, which brings a crate the
//! workspace does not otherwise build; every service here exports protobuf.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use crate::metrics::Rejection;
use crate::{healthz, json_error, Shared};

/// Largest export request accepted. The batch exporter sends at most 512 spans a request.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The protobuf content type of OTLP/HTTP.
pub const PROTOBUF: &str = "application/x-protobuf";

/// The OTLP listener's routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/traces", post(export))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

async fn export(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match accept(&shared, &headers, body) {
        Ok(response) => {
            let mut response = (StatusCode::OK, response.encode_to_vec()).into_response();
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
            response
        }
        Err((why, message)) => {
            shared.metrics.rejected(why);
            tracing::warn!(reason = why.code(), %message, "export request refused");
            let status = match why {
                Rejection::Malformed => StatusCode::BAD_REQUEST,
                Rejection::UnsupportedMediaType | Rejection::UnsupportedEncoding => {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                }
                Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            };
            json_error(status, why.code(), &message)
        }
    }
}

fn accept(
    shared: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<ExportTraceServiceResponse, (Rejection, String)> {
    check_content_type(headers)?;
    if let Some(encoding) = headers.get(CONTENT_ENCODING) {
        let encoding = String::from_utf8_lossy(encoding.as_bytes())
            .trim()
            .to_owned();
        if !encoding.eq_ignore_ascii_case("identity") {
            return Err((
                Rejection::UnsupportedEncoding,
                format!(
                    "content-encoding {encoding:?} is not supported: send uncompressed protobuf"
                ),
            ));
        }
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            (
                Rejection::TooLarge,
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            )
        } else {
            (Rejection::Malformed, rejection.body_text())
        }
    })?;
    let request = ExportTraceServiceRequest::decode(body).map_err(|error| {
        (
            Rejection::Malformed,
            format!("the body is not an OTLP ExportTraceServiceRequest in protobuf: {error}"),
        )
    })?;
    let accepted = shared.store.ingest(request);
    shared.metrics.exported(accepted.spans, accepted.rejected);
    tracing::debug!(
        spans = accepted.spans,
        rejected = accepted.rejected,
        "export request stored"
    );
    let partial_success = (accepted.rejected > 0).then(|| ExportTracePartialSuccess {
        rejected_spans: i64::try_from(accepted.rejected).unwrap_or(i64::MAX),
        error_message: "spans need a non-zero 16-byte trace id and 8-byte span id".to_owned(),
    });
    Ok(ExportTraceServiceResponse { partial_success })
}

/// Protobuf, or no content type at all; anything else is refused with a hint.
fn check_content_type(headers: &HeaderMap) -> Result<(), (Rejection, String)> {
    let Some(content_type) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let content_type = String::from_utf8_lossy(content_type.as_bytes()).into_owned();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        PROTOBUF | "application/protobuf" => Ok(()),
        "application/json" => Err((
            Rejection::UnsupportedMediaType,
            "OTLP/JSON is not supported: export with protocol http/protobuf \
             (content-type application/x-protobuf)"
                .to_owned(),
        )),
        _ => Err((
            Rejection::UnsupportedMediaType,
            format!("content-type {content_type:?} is not supported: send application/x-protobuf"),
        )),
    }
}

async fn not_found() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "this is the OTLP listener of trace-sink: it receives traces only, at POST /v1/traces",
    )
}
