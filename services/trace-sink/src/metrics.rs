//! The sink's Prometheus counters (`GET /metrics` on the query listener).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::SpanStore;

/// Why an export request was refused: the `reason` label of
/// `trace_sink_requests_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The body is not a valid `ExportTraceServiceRequest` (400).
    Malformed,
    /// Not `application/x-protobuf`, e.g. OTLP/JSON (415).
    UnsupportedMediaType,
    /// A compressed body (415).
    UnsupportedEncoding,
    /// Larger than the body limit (413).
    TooLarge,
}

impl Rejection {
    const ALL: [Rejection; 4] = [
        Rejection::Malformed,
        Rejection::UnsupportedMediaType,
        Rejection::UnsupportedEncoding,
        Rejection::TooLarge,
    ];

    /// The label value, also the `code` of the JSON error.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed_request",
            Rejection::UnsupportedMediaType => "unsupported_media_type",
            Rejection::UnsupportedEncoding => "unsupported_encoding",
            Rejection::TooLarge => "payload_too_large",
        }
    }

    fn index(self) -> usize {
        match self {
            Rejection::Malformed => 0,
            Rejection::UnsupportedMediaType => 1,
            Rejection::UnsupportedEncoding => 2,
            Rejection::TooLarge => 3,
        }
    }
}

/// Counters shared by both listeners.
#[derive(Debug, Default)]
pub struct Metrics {
    export_requests: AtomicU64,
    spans_received: AtomicU64,
    spans_rejected: AtomicU64,
    rejected: [AtomicU64; 4],
}

impl Metrics {
    /// One export request accepted, with `spans` kept and `rejected` spans refused for
    /// invalid ids.
    pub fn exported(&self, spans: u64, rejected: u64) {
        self.export_requests.fetch_add(1, Ordering::Relaxed);
        self.spans_received.fetch_add(spans, Ordering::Relaxed);
        self.spans_rejected.fetch_add(rejected, Ordering::Relaxed);
    }

    /// One export request refused.
    pub fn rejected(&self, why: Rejection) {
        self.rejected[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with the store's gauges.
    pub fn render(&self, store: &SpanStore) -> String {
        let mut text = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = write!(
                text,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            );
        };
        counter(
            "trace_sink_export_requests_total",
            "OTLP export requests accepted.",
            self.export_requests.load(Ordering::Relaxed),
        );
        counter(
            "trace_sink_spans_received_total",
            "Spans received and stored.",
            self.spans_received.load(Ordering::Relaxed),
        );
        counter(
            "trace_sink_spans_rejected_total",
            "Spans of accepted requests refused for an invalid trace or span id.",
            self.spans_rejected.load(Ordering::Relaxed),
        );
        counter(
            "trace_sink_spans_evicted_total",
            "Spans dropped, oldest first, to stay within --keep.",
            store.evicted(),
        );
        text.push_str("# HELP trace_sink_requests_rejected_total OTLP export requests refused, by reason.\n# TYPE trace_sink_requests_rejected_total counter\n");
        for why in Rejection::ALL {
            let _ = writeln!(
                text,
                "trace_sink_requests_rejected_total{{reason=\"{}\"}} {}",
                why.code(),
                self.rejected[why.index()].load(Ordering::Relaxed)
            );
        }
        let _ = write!(
            text,
            "# HELP trace_sink_spans_kept Spans in memory now.\n# TYPE trace_sink_spans_kept gauge\ntrace_sink_spans_kept {}\n\
             # HELP trace_sink_spans_capacity The --keep bound.\n# TYPE trace_sink_spans_capacity gauge\ntrace_sink_spans_capacity {}\n",
            store.len(),
            store.keep()
        );
        text
    }
}
