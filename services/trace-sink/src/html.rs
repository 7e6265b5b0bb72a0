//! The two HTML pages: the newest traces, and one trace's spans as an indented tree with
//! a timeline bar each. Self-contained (inline CSS, no script, nothing fetched), and every
//! piece of span data is escaped with [`escape`].

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::Arc;

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::store::{StoredSpan, TraceSummary};

/// Deepest indentation drawn; deeper spans are still listed, just not further right.
const MAX_INDENT: usize = 32;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.3em}code{font-size:.95em}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #ddd;vertical-align:top}\
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
tr.error td{background:#fff0f0}.muted{color:#777}.timeline{width:30%;min-width:8em}\
.bar{height:.8em;background:#4a7fd0;min-width:1px;margin-top:.3em}tr.error .bar{background:#d04a4a}\
details summary{cursor:pointer}dl{margin:.3em 0 .3em 1em;font-size:.9em}dt{font-weight:600}dd{margin:0 0 .2em 1em;word-break:break-all}";

/// `text` safe to place in HTML text and in quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// An HTML response: no caching, and a policy that allows no script and no fetch.
pub(crate) fn page(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    response
}

/// The page around `body`; `title` is plain text.
fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · trace-sink</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n",
        escape(title)
    )
}

/// A page saying one thing (not found, bad id).
pub(crate) fn message_page(title: &str, message: &str) -> String {
    document(
        title,
        &format!(
            "<p><a href=\"/\">← recent traces</a></p>\n<h1>{}</h1>\n<p>{}</p>",
            escape(title),
            escape(message)
        ),
    )
}

/// The front page: the newest traces.
pub(crate) fn front_page(traces: &[TraceSummary], kept: usize, keep: usize) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Recent traces</h1>\n<p class=\"muted\">{kept} spans kept of at most {keep}, in memory \
         only: the oldest are dropped first and a restart forgets them all. \
         JSON: <a href=\"/api/services\">/api/services</a>, <a href=\"/api/spans\">/api/spans</a>.</p>\n"
    );
    if traces.is_empty() {
        body.push_str("<p>No spans received yet. Services export to <code>POST /v1/traces</code> on the OTLP port (4318).</p>");
        return document("Recent traces", &body);
    }
    body.push_str(
        "<table>\n<thead><tr><th>started (UTC)</th><th>root span</th><th>services</th>\
         <th>spans</th><th>duration (ms)</th><th>trace id</th></tr></thead>\n<tbody>\n",
    );
    for trace in traces {
        let root = match &trace.root_name {
            Some(name) => escape(name),
            None => format!(
                "{} <span class=\"muted\">(root span not received)</span>",
                escape(&trace.first_name)
            ),
        };
        let services: Vec<&str> = trace.services.iter().map(String::as_str).collect();
        let link = format!("/trace/{}", escape(&trace.trace_id));
        let _ = writeln!(
            body,
            "<tr{}><td class=\"num\">{}</td><td><a href=\"{link}\">{root}</a></td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td><a href=\"{link}\"><code>{}</code></a></td></tr>",
            if trace.has_error { " class=\"error\"" } else { "" },
            timestamp(trace.start_unix_nano),
            escape(&services.join(", ")),
            trace.spans,
            milliseconds(trace.end_unix_nano.saturating_sub(trace.start_unix_nano)),
            escape(&trace.trace_id),
        );
    }
    body.push_str("</tbody></table>");
    document("Recent traces", &body)
}

/// One trace: its spans (sorted by start) as a tree, children under their parent.
pub(crate) fn trace_page(trace_id: &str, spans: &[Arc<StoredSpan>]) -> String {
    let start = spans
        .iter()
        .map(|span| span.start_unix_nano)
        .min()
        .unwrap_or_default();
    let end = spans
        .iter()
        .map(|span| span.end_unix_nano)
        .max()
        .unwrap_or_default();
    let total = end.saturating_sub(start).max(1);
    let mut services: Vec<&str> = spans.iter().map(|span| span.service.as_str()).collect();
    services.sort_unstable();
    services.dedup();

    let mut body = String::new();
    let _ = write!(
        body,
        "<p><a href=\"/\">← recent traces</a></p>\n<h1>Trace <code>{}</code></h1>\n\
         <p>{} spans · {} · started {} UTC · {} ms · <a href=\"/api/traces/{}\">JSON</a></p>\n\
         <table>\n<thead><tr><th>span</th><th>service</th><th>kind</th><th>start (ms)</th>\
         <th>duration (ms)</th><th class=\"timeline\">timeline</th><th>status</th></tr></thead>\n<tbody>\n",
        escape(trace_id),
        spans.len(),
        escape(&services.join(", ")),
        timestamp(start),
        milliseconds(total),
        escape(trace_id),
    );
    for (span, depth) in tree_order(spans) {
        let offset = span.start_unix_nano.saturating_sub(start);
        let mut name = escape(&span.name);
        if let Some(parent) = &span.parent_span_id {
            if depth == 0 {
                let _ = write!(
                    name,
                    " <span class=\"muted\">(parent {} not received)</span>",
                    escape(parent)
                );
            }
        }
        let mut attributes = String::new();
        for (key, value) in &span.attributes {
            let _ = write!(
                attributes,
                "<dt>{}</dt><dd>{}</dd>",
                escape(key),
                escape(value)
            );
        }
        let status = match span.status.code {
            "error" if span.status.message.is_empty() => "error".to_owned(),
            "error" => format!("error: {}", escape(&span.status.message)),
            code => code.to_owned(),
        };
        let _ = writeln!(
            body,
            "<tr{}><td style=\"padding-left:{:.2}em\"><details><summary>{name}</summary>\
             <dl><dt>span id</dt><dd><code>{}</code></dd>{attributes}</dl></details></td>\
             <td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"timeline\"><div class=\"bar\" style=\"margin-left:{:.2}%;width:{:.2}%\"></div></td>\
             <td>{status}</td></tr>",
            if span.status.code == "error" { " class=\"error\"" } else { "" },
            0.5 + 1.25 * depth.min(MAX_INDENT) as f64,
            escape(&span.span_id),
            escape(&span.service),
            span.kind,
            milliseconds(offset),
            milliseconds(span.duration_nano),
            percent(offset, total),
            percent(span.duration_nano, total).min(100.0 - percent(offset, total)),
        );
    }
    body.push_str("</tbody></table>");
    document(&format!("Trace {trace_id}"), &body)
}

/// `spans` (sorted by start) in depth-first order with their depth: each span under its
/// parent, children by start. Spans whose parent is not kept are roots; spans on a parent
/// cycle (only a broken exporter makes one) are listed once each, after the rest.
fn tree_order(spans: &[Arc<StoredSpan>]) -> Vec<(&StoredSpan, usize)> {
    let ids: HashSet<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (index, span) in spans.iter().enumerate() {
        match span.parent_span_id.as_deref() {
            Some(parent) if ids.contains(parent) && parent != span.span_id => {
                children.entry(parent).or_default().push(index);
            }
            _ => roots.push(index),
        }
    }
    let mut listed = vec![false; spans.len()];
    let mut ordered = Vec::with_capacity(spans.len());
    // whatever no root reaches sits on a parent cycle
    for root in roots.into_iter().chain(0..spans.len()) {
        // an explicit stack: a chain of thousands of spans must not overflow the real one
        let mut stack = vec![(root, 0_usize)];
        while let Some((index, depth)) = stack.pop() {
            if std::mem::replace(&mut listed[index], true) {
                continue;
            }
            let span = spans[index].as_ref();
            ordered.push((span, depth));
            if let Some(kids) = children.get(span.span_id.as_str()) {
                // reversed so the earliest child is popped first
                stack.extend(kids.iter().rev().map(|kid| (*kid, depth + 1)));
            }
        }
    }
    ordered
}

/// `nanos` as milliseconds with three decimals.
fn milliseconds(nanos: u64) -> String {
    format!("{}.{:03}", nanos / 1_000_000, (nanos % 1_000_000) / 1_000)
}

#[allow(clippy::cast_precision_loss)]
fn percent(part: u64, total: u64) -> f64 {
    (part as f64 / total as f64 * 100.0).clamp(0.0, 100.0)
}

fn timestamp(unix_nano: u64) -> String {
    let nanos = i64::try_from(unix_nano).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_nanos(nanos)
        .format("%Y-%m-%d %H:%M:%S%.3f")
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::SpanStatus;

    fn span(id: &str, parent: Option<&str>, start: u64) -> Arc<StoredSpan> {
        Arc::new(StoredSpan {
            trace_id: "1".repeat(32),
            span_id: id.to_owned(),
            parent_span_id: parent.map(str::to_owned),
            name: format!("span {id}"),
            service: "svc".to_owned(),
            kind: "internal",
            start_unix_nano: start,
            end_unix_nano: start + 10,
            duration_nano: 10,
            attributes: BTreeMap::new(),
            status: SpanStatus {
                code: "unset",
                message: String::new(),
            },
        })
    }

    fn order(spans: &[Arc<StoredSpan>]) -> Vec<(String, usize)> {
        tree_order(spans)
            .into_iter()
            .map(|(span, depth)| (span.span_id.clone(), depth))
            .collect()
    }

    #[test]
    fn children_follow_their_parent_by_start() {
        let spans = [
            span("a", None, 1),
            span("b", Some("a"), 2),
            span("d", Some("z"), 3),
            span("c", Some("b"), 4),
            span("e", Some("a"), 5),
        ];
        assert_eq!(
            order(&spans),
            [("a", 0), ("b", 1), ("c", 2), ("e", 1), ("d", 0)]
                .map(|(id, depth)| (id.to_owned(), depth))
        );
    }

    #[test]
    fn parent_cycles_list_every_span_once() {
        let spans = [
            span("a", Some("b"), 1),
            span("b", Some("a"), 2),
            span("s", Some("s"), 3),
        ];
        let listed = order(&spans);
        assert_eq!(listed.len(), 3, "{listed:?}");
    }

    #[test]
    fn long_chains_do_not_overflow() {
        let mut spans = vec![span("0", None, 0)];
        for index in 1..50_000_u64 {
            spans.push(span(
                &index.to_string(),
                Some(&(index - 1).to_string()),
                index,
            ));
        }
        let listed = order(&spans);
        assert_eq!(listed.len(), 50_000);
        assert_eq!(listed.last().map(|(_, depth)| *depth), Some(49_999));
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn milliseconds_have_three_decimals() {
        assert_eq!(milliseconds(1_234_567), "1.234");
        assert_eq!(milliseconds(5_000), "0.005");
    }
}
