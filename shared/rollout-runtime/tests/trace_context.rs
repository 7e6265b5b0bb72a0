//! Trace context across a NATS message: the sender's span and the
//! receiver's span end up in one trace, parent and child; and a stored
//! `traceparent` links later work back to the command that caused it.

use opentelemetry::trace::{SpanId, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use rollout_runtime::telemetry::{
    context_from_traceparent, extract_trace_context, inject_trace_context, link_to_traceparent,
    set_remote_parent, traceparent_of_current_span, TRACEPARENT_HEADER,
};
use tracing_subscriber::layer::SubscriberExt;

fn tracing_with_memory_exporter() -> (
    impl tracing::Subscriber + Send + Sync,
    SdkTracerProvider,
    InMemorySpanExporter,
) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = provider.tracer("trace-context-test");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    (subscriber, provider, exporter)
}

fn span_named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| panic!("no span named {name} among {spans:?}"))
}

#[test]
fn context_injected_by_the_sender_parents_the_receiver_span() {
    let (subscriber, provider, exporter) = tracing_with_memory_exporter();
    tracing::subscriber::with_default(subscriber, || {
        let mut headers = async_nats::HeaderMap::new();
        tracing::info_span!("send_command").in_scope(|| {
            inject_trace_context(&mut headers);
        });
        let traceparent = headers
            .get(TRACEPARENT_HEADER)
            .map(|value| value.as_str().to_owned())
            .expect("traceparent header written");
        assert!(traceparent.starts_with("00-"), "{traceparent}");

        // the other side of the wire
        let extracted = extract_trace_context(Some(&headers));
        assert!(extracted.span().span_context().is_remote());
        let handling = tracing::info_span!("handle_command");
        assert!(set_remote_parent(&handling, Some(&headers)));
        handling.in_scope(|| tracing::info!("handled"));
        drop(handling);
    });
    provider.force_flush().expect("flush");

    let spans = exporter.get_finished_spans().expect("finished spans");
    let sent = span_named(&spans, "send_command");
    let handled = span_named(&spans, "handle_command");
    assert_eq!(
        handled.span_context.trace_id(),
        sent.span_context.trace_id(),
        "one trace across the message"
    );
    assert_eq!(handled.parent_span_id, sent.span_context.span_id());
    assert!(handled.parent_span_is_remote);
}

#[test]
fn a_stored_traceparent_links_later_work_to_its_command() {
    let (subscriber, provider, exporter) = tracing_with_memory_exporter();
    tracing::subscriber::with_default(subscriber, || {
        let stored = tracing::info_span!("create_rollout")
            .in_scope(traceparent_of_current_span)
            .expect("a traced span has a traceparent");

        let restored = context_from_traceparent(&stored);
        assert!(restored.span().span_context().is_valid());

        let tick = tracing::info_span!(parent: None, "advance_step");
        assert!(link_to_traceparent(&tick, &stored));
        tick.in_scope(|| tracing::info!("advanced"));
        drop(tick);

        let unlinked = tracing::info_span!(parent: None, "other");
        assert!(!link_to_traceparent(&unlinked, "not-a-traceparent"));
    });
    provider.force_flush().expect("flush");

    let spans = exporter.get_finished_spans().expect("finished spans");
    let created = span_named(&spans, "create_rollout");
    let advanced = span_named(&spans, "advance_step");
    assert_ne!(
        advanced.span_context.trace_id(),
        created.span_context.trace_id(),
        "later work is its own trace"
    );
    assert_eq!(advanced.parent_span_id, SpanId::INVALID);
    let links: Vec<_> = advanced
        .links
        .iter()
        .map(|link| link.span_context.clone())
        .collect();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].trace_id(), created.span_context.trace_id());
    assert_eq!(links[0].span_id(), created.span_context.span_id());
}

#[test]
fn messages_without_headers_leave_the_span_alone() {
    let (subscriber, _provider, _exporter) = tracing_with_memory_exporter();
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("handle_plain_message");
        assert!(!set_remote_parent(&span, None));
        let empty = async_nats::HeaderMap::new();
        assert!(!set_remote_parent(&span, Some(&empty)));
    });
}
