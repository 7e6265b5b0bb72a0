//! W3C trace context (`traceparent`, `tracestate`) across NATS messages and
//! through Redis: the sender injects the current span's context into the
//! message headers, the receiver makes it the parent of its handling span.
//!
//! A rollout also stores the `traceparent` of the command that created it,
//! so the ticker's spans, hours later, can link back to that command
//! ([`traceparent_of_current_span`], [`link_to_traceparent`]).
//!
//! The helpers use their own [`TraceContextPropagator`] rather than the
//! global one, so they work the same whether or not anything set it.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Header carrying the W3C trace parent (`00-<trace id>-<span id>-<flags>`).
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Header carrying vendor-specific W3C trace state.
pub const TRACESTATE_HEADER: &str = "tracestate";

struct HeaderInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

struct HeaderExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Writes the current span's trace context into `headers` as `traceparent`
/// (and `tracestate` when there is one).
///
/// Writes nothing when the current span is not traced (no OpenTelemetry
/// layer installed, or the span is disabled).
pub fn inject_trace_context(headers: &mut async_nats::HeaderMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// The trace context a message's headers carry, or an empty context when
/// there are no headers or no valid `traceparent` among them.
pub fn extract_trace_context(headers: Option<&async_nats::HeaderMap>) -> Context {
    match headers {
        Some(headers) => TraceContextPropagator::new().extract(&HeaderExtractor(headers)),
        None => Context::new(),
    }
}

/// Makes the trace context carried by `headers` the parent of `span`, when
/// they carry a valid one; returns whether it did.
///
/// Call it right after creating the handling span, before entering it: a
/// span's parent cannot change once it has started.
pub fn set_remote_parent(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) -> bool {
    let context = extract_trace_context(headers);
    if !context.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(context).is_ok()
}

/// The current span's `traceparent`, for storing beside the state it
/// created; `None` when the current span is not traced.
pub fn traceparent_of_current_span() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT_HEADER)
}

/// The remote context a stored `traceparent` names; an empty context when
/// the text is not a valid `traceparent`.
pub fn context_from_traceparent(traceparent: &str) -> Context {
    let carrier = HashMap::from([(TRACEPARENT_HEADER.to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// Adds a link from `span` to the span a stored `traceparent` names (a link,
/// not a parent: the later work is its own trace); returns whether the
/// `traceparent` was valid.
pub fn link_to_traceparent(span: &tracing::Span, traceparent: &str) -> bool {
    let context = context_from_traceparent(traceparent);
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return false;
    }
    span.add_link(span_context);
    true
}

/// The trace id inside a W3C traceparent (`00-<trace id>-<span id>-<flags>`), as audit
/// entries and events record it; `None` when the text is not one.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let trace_id = parts.next()?;
    (trace_id.len() == 32 && trace_id.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .then(|| trace_id.to_owned())
}

/// A fresh W3C `traceparent` (sampled) for an operation that arrived without one, so that
/// its audit entries and events carry a trace id whether or not spans are exported
/// (SPEC §7).
pub fn new_traceparent() -> String {
    use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
    let ids = RandomIdGenerator::default();
    format!("00-{}-{}-01", ids.new_trace_id(), ids.new_span_id())
}

/// A fresh W3C trace id (32 lowercase hex digits).
pub fn new_trace_id() -> String {
    use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
    RandomIdGenerator::default().new_trace_id().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn trace_ids_come_out_of_traceparents() {
        assert_eq!(
            trace_id_of(TRACEPARENT).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("00-short-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id_of(""), None);
    }

    #[test]
    fn a_traceparent_round_trips_through_headers() {
        let context = context_from_traceparent(TRACEPARENT);
        assert!(context.span().span_context().is_valid());
        let mut headers = async_nats::HeaderMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut headers));
        assert_eq!(
            headers.get(TRACEPARENT_HEADER).map(|value| value.as_str()),
            Some(TRACEPARENT)
        );
        let extracted = extract_trace_context(Some(&headers));
        assert_eq!(
            extracted.span().span_context().trace_id(),
            context.span().span_context().trace_id()
        );
    }

    #[test]
    fn garbage_gives_an_empty_context() {
        assert!(!context_from_traceparent("banana")
            .span()
            .span_context()
            .is_valid());
        assert!(!extract_trace_context(None).span().span_context().is_valid());
        let headers = async_nats::HeaderMap::new();
        assert!(!extract_trace_context(Some(&headers))
            .span()
            .span_context()
            .is_valid());
    }

    #[test]
    fn no_tracer_means_nothing_injected() {
        let mut headers = async_nats::HeaderMap::new();
        inject_trace_context(&mut headers);
        assert!(headers.get(TRACEPARENT_HEADER).is_none());
        assert_eq!(traceparent_of_current_span(), None);
    }
}
