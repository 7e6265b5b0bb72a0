//! The bounded, in-memory span store: every received span, flattened into a
//! [`StoredSpan`], in a ring buffer that drops the oldest spans beyond `--keep`.
//!
//! Nothing is indexed: at the default bound of 20 000 spans a scan takes well under a
//! millisecond, and a scan cannot disagree with the buffer.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde::Serialize;
use serde_json::Value;

/// `service.name` of spans whose resource has none (the OpenTelemetry default).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// One received span, as the API and the pages show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id, `None` for a root span.
    pub parent_span_id: Option<String>,
    /// The span's name.
    pub name: String,
    /// `service.name` of the span's resource ([`UNKNOWN_SERVICE`] when it has none).
    pub service: String,
    /// `internal`, `server`, `client`, `producer`, `consumer` or `unspecified`.
    pub kind: &'static str,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// End, in nanoseconds since the Unix epoch.
    pub end_unix_nano: u64,
    /// End minus start (0 if the span ends before it starts).
    pub duration_nano: u64,
    /// The span's attributes, every value flattened to a string (arrays and maps as JSON).
    pub attributes: BTreeMap<String, String>,
    /// The span's status.
    pub status: SpanStatus,
}

impl StoredSpan {
    /// The duration in milliseconds.
    pub fn duration_ms(&self) -> f64 {
        // precision loss only beyond 2^53 ns (104 days)
        #[allow(clippy::cast_precision_loss)]
        let nanos = self.duration_nano as f64;
        nanos / 1_000_000.0
    }

    /// Whether the span's name matches `pattern`: equal, or starting with the pattern's
    /// text before a final `*`.
    pub fn name_matches(&self, pattern: &str) -> bool {
        match pattern.strip_suffix('*') {
            Some(prefix) => self.name.starts_with(prefix),
            None => self.name == pattern,
        }
    }
}

/// A span's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpanStatus {
    /// `unset`, `ok` or `error`.
    pub code: &'static str,
    /// The status message (only meaningful for `error`).
    pub message: String,
}

/// What the spans of one export request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accepted {
    /// Spans kept.
    pub spans: u64,
    /// Spans refused for an invalid trace or span id.
    pub rejected: u64,
}

/// Which spans [`SpanStore::query`] returns; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct SpanFilter {
    /// `service.name`, exactly.
    pub service: Option<String>,
    /// The span name, exactly, or as a prefix when it ends with `*`.
    pub name: Option<String>,
    /// The trace id, lowercase hex.
    pub trace_id: Option<String>,
}

impl SpanFilter {
    fn matches(&self, span: &StoredSpan) -> bool {
        self.service
            .as_deref()
            .is_none_or(|service| span.service == service)
            && self
                .name
                .as_deref()
                .is_none_or(|pattern| span.name_matches(pattern))
            && self
                .trace_id
                .as_deref()
                .is_none_or(|trace_id| span.trace_id == trace_id)
    }
}

/// One trace as the front page lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSummary {
    /// The trace id.
    pub trace_id: String,
    /// The root span's name, `None` when the root span was not received (or was dropped).
    pub root_name: Option<String>,
    /// The name of the trace's earliest span, shown when the root is missing.
    pub first_name: String,
    /// The services the kept spans come from.
    pub services: BTreeSet<String>,
    /// How many of its spans are kept.
    pub spans: usize,
    /// The earliest start of its kept spans.
    pub start_unix_nano: u64,
    /// The latest end of its kept spans.
    pub end_unix_nano: u64,
    /// Whether any kept span has status `error`.
    pub has_error: bool,
    /// Position of its most recently received span (higher is newer).
    last_received: usize,
}

/// The ring buffer of received spans, shared by both listeners.
#[derive(Debug)]
pub struct SpanStore {
    keep: usize,
    spans: Mutex<VecDeque<Arc<StoredSpan>>>,
    evicted: AtomicU64,
}

impl SpanStore {
    /// An empty store keeping at most `keep` spans (at least one).
    pub fn new(keep: usize) -> SpanStore {
        let keep = keep.max(1);
        SpanStore {
            keep,
            spans: Mutex::new(VecDeque::with_capacity(keep.min(64 * 1024))),
            evicted: AtomicU64::new(0),
        }
    }

    /// The bound.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// How many spans are kept now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no span is kept.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// How many spans were dropped to stay within the bound, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Stores every valid span of `request`, dropping the oldest beyond the bound.
    pub fn ingest(&self, request: ExportTraceServiceRequest) -> Accepted {
        let mut accepted = Accepted::default();
        let mut batch = Vec::new();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| string_attribute(&resource.attributes, "service.name"))
                .unwrap_or(UNKNOWN_SERVICE)
                .to_owned();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    match flatten_span(span, &service) {
                        Some(stored) => {
                            accepted.spans += 1;
                            batch.push(Arc::new(stored));
                        }
                        None => accepted.rejected += 1,
                    }
                }
            }
        }
        self.insert(batch);
        accepted
    }

    /// Appends `batch` (oldest first), dropping the oldest spans beyond the bound.
    pub fn insert(&self, batch: Vec<Arc<StoredSpan>>) {
        let mut spans = self.lock();
        let mut evicted = 0_u64;
        for span in batch {
            if spans.len() == self.keep {
                spans.pop_front();
                evicted += 1;
            }
            spans.push_back(span);
        }
        drop(spans);
        if evicted > 0 {
            self.evicted.fetch_add(evicted, Ordering::Relaxed);
        }
    }

    /// The spans matching `filter`, newest (last received) first, at most `limit`.
    pub fn query(&self, filter: &SpanFilter, limit: usize) -> Vec<Arc<StoredSpan>> {
        self.lock()
            .iter()
            .rev()
            .filter(|span| filter.matches(span))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The kept spans of the trace `trace_id` (lowercase hex), by start time (then by
    /// arrival); empty when none is kept.
    pub fn trace(&self, trace_id: &str) -> Vec<Arc<StoredSpan>> {
        let mut spans: Vec<Arc<StoredSpan>> = self
            .lock()
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .cloned()
            .collect();
        // stable: spans starting at the same nanosecond stay in arrival order
        spans.sort_by_key(|span| span.start_unix_nano);
        spans
    }

    /// Every service with kept spans and how many, by name.
    pub fn services(&self) -> BTreeMap<String, usize> {
        let mut services = BTreeMap::new();
        for span in self.lock().iter() {
            *services.entry(span.service.clone()).or_default() += 1;
        }
        services
    }

    /// The `count` traces with the most recently received spans, newest first.
    pub fn recent_traces(&self, count: usize) -> Vec<TraceSummary> {
        let spans = self.lock();
        let mut traces: HashMap<&str, TraceSummary> = HashMap::new();
        for (position, span) in spans.iter().enumerate() {
            let summary = traces
                .entry(span.trace_id.as_str())
                .or_insert_with(|| TraceSummary {
                    trace_id: span.trace_id.clone(),
                    root_name: None,
                    first_name: span.name.clone(),
                    services: BTreeSet::new(),
                    spans: 0,
                    start_unix_nano: span.start_unix_nano,
                    end_unix_nano: span.end_unix_nano,
                    has_error: false,
                    last_received: position,
                });
            summary.spans += 1;
            summary.last_received = position;
            if !summary.services.contains(&span.service) {
                summary.services.insert(span.service.clone());
            }
            if span.start_unix_nano < summary.start_unix_nano {
                summary.start_unix_nano = span.start_unix_nano;
                summary.first_name.clone_from(&span.name);
            }
            summary.end_unix_nano = summary.end_unix_nano.max(span.end_unix_nano);
            summary.has_error |= span.status.code == "error";
            if span.parent_span_id.is_none() && summary.root_name.is_none() {
                summary.root_name = Some(span.name.clone());
            }
        }
        let mut traces: Vec<TraceSummary> = traces.into_values().collect();
        drop(spans);
        traces.sort_by_key(|trace| std::cmp::Reverse(trace.last_received));
        traces.truncate(count);
        traces
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<StoredSpan>>> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// `text` as a trace id: 32 hex digits, lowercased; `None` otherwise.
pub fn normalize_trace_id(text: &str) -> Option<String> {
    let text = text.trim();
    (text.len() == 32 && text.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

/// `span` flattened, or `None` when its trace or span id is not valid (OTLP requires a
/// non-zero 16-byte trace id and 8-byte span id).
fn flatten_span(span: Span, service: &str) -> Option<StoredSpan> {
    if !valid_id(&span.trace_id, 16) || !valid_id(&span.span_id, 8) {
        return None;
    }
    let parent_span_id = valid_id(&span.parent_span_id, 8).then(|| hex(&span.parent_span_id));
    let kind = match span.kind() {
        SpanKind::Unspecified => "unspecified",
        SpanKind::Internal => "internal",
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
    };
    let status = match &span.status {
        Some(status) => SpanStatus {
            code: match status.code() {
                StatusCode::Unset => "unset",
                StatusCode::Ok => "ok",
                StatusCode::Error => "error",
            },
            message: status.message.clone(),
        },
        None => SpanStatus {
            code: "unset",
            message: String::new(),
        },
    };
    let attributes = span
        .attributes
        .iter()
        .map(|attribute| {
            (
                attribute.key.clone(),
                flatten_value(attribute.value.as_ref()),
            )
        })
        .collect();
    Some(StoredSpan {
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id,
        service: service.to_owned(),
        kind,
        start_unix_nano: span.start_time_unix_nano,
        end_unix_nano: span.end_time_unix_nano,
        duration_nano: span
            .end_time_unix_nano
            .saturating_sub(span.start_time_unix_nano),
        attributes,
        status,
        name: span.name,
    })
}

fn valid_id(id: &[u8], length: usize) -> bool {
    id.len() == length && id.iter().any(|byte| *byte != 0)
}

fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .rev()
        .find(|attribute| attribute.key == key)
        .and_then(
            |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(text) => Some(text.as_str()),
                _ => None,
            },
        )
}

/// An attribute value as one string: scalars as they print, bytes as hex, arrays and
/// maps as JSON.
fn flatten_value(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(any_value::Value::BytesValue(bytes)) => hex(bytes),
        Some(
            any_value::Value::ArrayValue(_)
            | any_value::Value::KvlistValue(_)
            | any_value::Value::StringValueStrindex(_),
        )
        | None => json_value(value).to_string(),
    }
}

fn json_value(value: Option<&AnyValue>) -> Value {
    match value.and_then(|value| value.value.as_ref()) {
        None => Value::Null,
        Some(any_value::Value::StringValue(text)) => Value::from(text.as_str()),
        Some(any_value::Value::BoolValue(flag)) => Value::from(*flag),
        Some(any_value::Value::IntValue(number)) => Value::from(*number),
        Some(any_value::Value::DoubleValue(number)) => Value::from(*number),
        Some(any_value::Value::BytesValue(bytes)) => Value::from(hex(bytes)),
        Some(any_value::Value::ArrayValue(array)) => Value::Array(
            array
                .values
                .iter()
                .map(|item| json_value(Some(item)))
                .collect(),
        ),
        Some(any_value::Value::KvlistValue(list)) => Value::Object(
            list.values
                .iter()
                .map(|entry| (entry.key.clone(), json_value(entry.value.as_ref())))
                .collect(),
        ),
        // a profiles-only string-table reference: meaningless in a trace
        Some(any_value::Value::StringValueStrindex(_)) => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn value(value: any_value::Value) -> AnyValue {
        AnyValue { value: Some(value) }
    }

    #[test]
    fn attribute_values_flatten_to_strings() {
        let text = |v| flatten_value(Some(&value(v)));
        assert_eq!(text(any_value::Value::StringValue("a b".into())), "a b");
        assert_eq!(text(any_value::Value::IntValue(-3)), "-3");
        assert_eq!(text(any_value::Value::BoolValue(true)), "true");
        assert_eq!(text(any_value::Value::DoubleValue(0.5)), "0.5");
        assert_eq!(text(any_value::Value::BytesValue(vec![0, 255])), "00ff");
        assert_eq!(
            text(any_value::Value::ArrayValue(ArrayValue {
                values: vec![
                    value(any_value::Value::IntValue(1)),
                    value(any_value::Value::StringValue("x".into())),
                ],
            })),
            r#"[1,"x"]"#
        );
        assert_eq!(
            text(any_value::Value::KvlistValue(KeyValueList {
                values: vec![KeyValue {
                    key: "k".into(),
                    value: Some(value(any_value::Value::BoolValue(false))),
                    ..KeyValue::default()
                }],
            })),
            r#"{"k":false}"#
        );
        assert_eq!(flatten_value(None), "null");
    }

    #[test]
    fn trace_ids_are_normalized() {
        assert_eq!(
            normalize_trace_id(" 0123456789ABCDEF0123456789abcdef ").as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(normalize_trace_id("0123"), None);
        assert_eq!(normalize_trace_id("g123456789abcdef0123456789abcdef"), None);
    }

    #[test]
    fn spans_with_invalid_ids_are_refused() {
        let span = |trace_id: Vec<u8>, span_id: Vec<u8>| Span {
            trace_id,
            span_id,
            name: "s".into(),
            ..Span::default()
        };
        assert!(flatten_span(span(vec![1; 16], vec![1; 8]), "svc").is_some());
        assert!(flatten_span(span(vec![0; 16], vec![1; 8]), "svc").is_none());
        assert!(flatten_span(span(vec![1; 15], vec![1; 8]), "svc").is_none());
        assert!(flatten_span(span(vec![1; 16], vec![]), "svc").is_none());
        // an all-zero parent is no parent
        let mut child = span(vec![1; 16], vec![1; 8]);
        child.parent_span_id = vec![0; 8];
        let stored = flatten_span(child, "svc").expect("valid");
        assert_eq!(stored.parent_span_id, None);
    }

    #[test]
    fn names_match_exactly_or_by_prefix() {
        let stored = flatten_span(
            Span {
                trace_id: vec![1; 16],
                span_id: vec![1; 8],
                name: "planner.tick".into(),
                ..Span::default()
            },
            "svc",
        )
        .expect("valid");
        assert!(stored.name_matches("planner.tick"));
        assert!(stored.name_matches("planner.*"));
        assert!(stored.name_matches("*"));
        assert!(!stored.name_matches("planner"));
        assert!(!stored.name_matches("ticker*"));
    }
}
