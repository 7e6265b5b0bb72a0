//! The sink as a user meets it: spans POSTed to the OTLP listener as protobuf (built with
//! the OTLP types, and through the exporter the services use), then read back through the
//! JSON API, the HTML pages and `/metrics`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use serde_json::Value;
use trace_sink::{Settings, TraceSink};

const PROTOBUF: &str = "application/x-protobuf";
const TRACE_ID: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];
const TRACE_HEX: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const ROOT_ID: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
const ROOT_HEX: &str = "00f067aa0ba902b7";
const CHILD_ID: [u8; 8] = [0x53, 0x99, 0x5c, 0x3f, 0x42, 0xcd, 0x8a, 0xd8];
const CHILD_HEX: &str = "53995c3f42cd8ad8";
const ROOT_NAME: &str = "plan <script>alert('x')</script>";
/// 2024-01-01T00:00:00Z
const T0: u64 = 1_704_067_200_000_000_000;

// ---- building requests ----

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn text(value: &str) -> any_value::Value {
    any_value::Value::StringValue(value.to_owned())
}

fn resource_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![attribute("service.name", text(service))],
            ..Resource::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..ScopeSpans::default()
        }],
        ..ResourceSpans::default()
    }
}

fn span(trace_id: &[u8], span_id: &[u8], parent: Option<&[u8]>, name: &str, start: u64) -> Span {
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        parent_span_id: parent.map(<[u8]>::to_vec).unwrap_or_default(),
        name: name.to_owned(),
        start_time_unix_nano: start,
        end_time_unix_nano: start + 2_000_000,
        ..Span::default()
    }
}

/// A planner root span and an evaluator child span of it. The child comes first in the
/// request, so arrival order and start order differ.
fn two_service_request() -> ExportTraceServiceRequest {
    let mut root = span(&TRACE_ID, &ROOT_ID, None, ROOT_NAME, T0);
    root.end_time_unix_nano = T0 + 5_000_000;
    root.kind = SpanKind::Server as i32;
    root.attributes = vec![
        attribute("rollout.id", text("r-1")),
        attribute("rollout.step", any_value::Value::IntValue(3)),
    ];
    root.status = Some(Status {
        code: StatusCode::Ok as i32,
        message: String::new(),
    });
    let mut child = span(
        &TRACE_ID,
        &CHILD_ID,
        Some(&ROOT_ID),
        "evaluate",
        T0 + 1_000_000,
    );
    child.status = Some(Status {
        code: StatusCode::Error as i32,
        message: "flag <missing>".to_owned(),
    });
    ExportTraceServiceRequest {
        resource_spans: vec![
            resource_spans("evaluator", vec![child]),
            resource_spans("planner", vec![root]),
        ],
    }
}

// ---- talking HTTP ----

#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.text()))
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.bytes().await.expect("body").to_vec();
    Reply {
        status,
        content_type,
        body,
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    let response = client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("GET");
    reply(response).await
}

async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    let mut request = client().post(format!("http://{addr}/v1/traces")).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    reply(request.send().await.expect("POST")).await
}

async fn export(sink: &TraceSink, request: &ExportTraceServiceRequest) -> Reply {
    post(
        sink.otlp_addr(),
        &[("content-type", PROTOBUF)],
        request.encode_to_vec(),
    )
    .await
}

async fn start(keep: usize) -> TraceSink {
    TraceSink::bind(&Settings::local(keep))
        .await
        .expect("sink starts")
}

fn names(reply: &Reply) -> Vec<String> {
    reply.json()["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .map(|span| span["name"].as_str().expect("name").to_owned())
        .collect()
}

fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

// ---- tests ----

#[tokio::test]
async fn exported_spans_are_queryable_and_shown() {
    let sink = start(100).await;

    let answer = export(&sink, &two_service_request()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.content_type, PROTOBUF);
    let response = ExportTraceServiceResponse::decode(answer.body.as_slice()).expect("protobuf");
    assert_eq!(response.partial_success, None);

    let http = sink.http_addr();
    // newest first: the root arrived after the child
    let all = get(http, "/api/spans").await;
    assert_eq!(all.status, 200);
    assert!(all.content_type.starts_with("application/json"));
    assert_eq!(names(&all), [ROOT_NAME, "evaluate"]);
    let spans = all.json();
    let root = &spans["spans"][0];
    assert_eq!(root["trace_id"], TRACE_HEX);
    assert_eq!(root["span_id"], ROOT_HEX);
    assert_eq!(root["parent_span_id"], Value::Null);
    assert_eq!(root["service"], "planner");
    assert_eq!(root["kind"], "server");
    assert_eq!(root["start_unix_nano"], T0);
    assert_eq!(root["end_unix_nano"], T0 + 5_000_000);
    assert_eq!(root["duration_nano"], 5_000_000);
    assert_eq!(root["attributes"]["rollout.id"], "r-1");
    assert_eq!(root["attributes"]["rollout.step"], "3");
    assert_eq!(root["status"]["code"], "ok");
    let child = &spans["spans"][1];
    assert_eq!(child["span_id"], CHILD_HEX);
    assert_eq!(child["parent_span_id"], ROOT_HEX);
    assert_eq!(child["service"], "evaluator");
    assert_eq!(child["status"]["code"], "error");
    assert_eq!(child["status"]["message"], "flag <missing>");

    // filters
    assert_eq!(
        names(&get(http, "/api/spans?service=evaluator").await),
        ["evaluate"]
    );
    assert_eq!(
        names(&get(http, "/api/spans?name=plan*").await),
        [ROOT_NAME]
    );
    assert!(names(&get(http, "/api/spans?name=plan").await).is_empty());
    assert_eq!(
        names(&get(http, "/api/spans?name=evaluate&service=evaluator").await),
        ["evaluate"]
    );
    assert!(names(&get(http, "/api/spans?name=evaluate&service=planner").await).is_empty());
    let upper = format!("/api/spans?trace_id={}", TRACE_HEX.to_uppercase());
    assert_eq!(names(&get(http, &upper).await).len(), 2);
    let other = format!("/api/spans?trace_id={}", "0".repeat(31) + "1");
    assert!(names(&get(http, &other).await).is_empty());
    assert_eq!(names(&get(http, "/api/spans?limit=1").await), [ROOT_NAME]);
    assert_eq!(get(http, "/api/spans?limit=many").await.status, 400);
    assert_eq!(get(http, "/api/spans?trace_id=xyz").await.status, 400);

    // services with counts
    let services = get(http, "/api/services").await.json();
    assert_eq!(
        services,
        serde_json::json!({ "services": [
            { "service": "evaluator", "spans": 1 },
            { "service": "planner", "spans": 1 },
        ]})
    );

    // one trace, by start time
    let trace = get(http, &format!("/api/traces/{TRACE_HEX}")).await;
    assert_eq!(trace.status, 200);
    assert_eq!(trace.json()["trace_id"], TRACE_HEX);
    assert_eq!(names(&trace), [ROOT_NAME, "evaluate"]);
    let unknown = get(http, &format!("/api/traces/{}", "ab".repeat(16))).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "not_found");
    assert_eq!(get(http, "/api/traces/nope").await.status, 400);

    // the trace page: names escaped, the child under the root
    let page = get(http, &format!("/trace/{TRACE_HEX}")).await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    let html = page.text();
    assert!(
        html.contains("plan &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script"), "{html}");
    assert!(html.contains("flag &lt;missing&gt;"), "{html}");
    assert!(html.contains("planner") && html.contains("evaluator"));
    let root_at = html.find("plan &lt;script").expect("root listed");
    let child_at = html.find(">evaluate<").expect("child listed");
    assert!(root_at < child_at, "the child is listed after its parent");
    assert!(html.contains("rollout.step"), "attributes are shown");
    assert_eq!(
        get(http, &format!("/trace/{}", "cd".repeat(16)))
            .await
            .status,
        404
    );

    // the front page links the trace
    let front = get(http, "/").await;
    assert_eq!(front.status, 200);
    let html = front.text();
    assert!(
        html.contains(&format!("href=\"/trace/{TRACE_HEX}\"")),
        "{html}"
    );
    assert!(html.contains("evaluator, planner"), "{html}");
    assert!(!html.contains("<script"), "{html}");

    let metrics = get(http, "/metrics").await.text();
    assert_eq!(metric(&metrics, "trace_sink_spans_received_total"), Some(2));
    assert_eq!(metric(&metrics, "trace_sink_spans_kept"), Some(2));
    assert_eq!(
        metric(&metrics, "trace_sink_export_requests_total"),
        Some(1)
    );

    sink.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_refused_without_harm() {
    let sink = start(100).await;
    let (otlp, http) = (sink.otlp_addr(), sink.http_addr());

    for addr in [otlp, http] {
        let health = get(addr, "/healthz").await;
        assert_eq!((health.status, health.text().as_str()), (200, "ok"));
    }

    let garbage = post(
        otlp,
        &[("content-type", PROTOBUF)],
        b"this is not protobuf".to_vec(),
    )
    .await;
    assert_eq!(garbage.status, 400, "{}", garbage.text());
    assert_eq!(garbage.json()["error"]["code"], "malformed_request");
    let truncated = post(otlp, &[("content-type", PROTOBUF)], vec![0x0a, 0xff, 0xff]).await;
    assert_eq!(truncated.status, 400, "{}", truncated.text());

    let json = post(
        otlp,
        &[("content-type", "application/json")],
        br#"{"resourceSpans":[]}"#.to_vec(),
    )
    .await;
    assert_eq!(json.status, 415);
    let message = json.json()["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(message.contains("http/protobuf"), "{message}");

    let gzip = post(
        otlp,
        &[("content-type", PROTOBUF), ("content-encoding", "gzip")],
        two_service_request().encode_to_vec(),
    )
    .await;
    assert_eq!(gzip.status, 415);
    assert_eq!(gzip.json()["error"]["code"], "unsupported_encoding");

    // spans with invalid ids are refused one by one, as a partial success
    let mut request = two_service_request();
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![0; 16];
    let partial = export(&sink, &request).await;
    assert_eq!(partial.status, 200);
    let response = ExportTraceServiceResponse::decode(partial.body.as_slice()).expect("protobuf");
    assert_eq!(
        response
            .partial_success
            .map(|partial| partial.rejected_spans),
        Some(1)
    );

    let not_here = get(otlp, "/v1/metrics").await;
    assert_eq!(not_here.status, 404);
    assert_eq!(not_here.json()["error"]["code"], "not_found");

    let metrics = get(http, "/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "trace_sink_requests_rejected_total{reason=\"malformed_request\"}"
        ),
        Some(2)
    );
    assert_eq!(
        metric(
            &metrics,
            "trace_sink_requests_rejected_total{reason=\"unsupported_media_type\"}"
        ),
        Some(1)
    );
    assert_eq!(metric(&metrics, "trace_sink_spans_rejected_total"), Some(1));
    assert_eq!(metric(&metrics, "trace_sink_spans_kept"), Some(1));

    // after a graceful shutdown nothing listens any more
    sink.shutdown().await;
    for addr in [otlp, http] {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr} still accepts connections"
        );
    }
}

#[tokio::test]
async fn only_the_newest_spans_are_kept() {
    let sink = start(3).await;
    let trace_of = |index: u8| [index + 1; 16];
    for index in 0..5_u8 {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![resource_spans(
                "ticker",
                vec![span(
                    &trace_of(index),
                    &[index + 1; 8],
                    None,
                    &format!("tick {index}"),
                    T0 + u64::from(index),
                )],
            )],
        };
        assert_eq!(export(&sink, &request).await.status, 200);
    }
    let http = sink.http_addr();
    assert_eq!(
        names(&get(http, "/api/spans").await),
        ["tick 4", "tick 3", "tick 2"]
    );
    let dropped = get(http, &format!("/api/traces/{}", "01".repeat(16))).await;
    assert_eq!(dropped.status, 404);
    assert_eq!(
        get(http, &format!("/api/traces/{}", "05".repeat(16)))
            .await
            .status,
        200
    );
    let metrics = get(http, "/metrics").await.text();
    assert_eq!(metric(&metrics, "trace_sink_spans_kept"), Some(3));
    assert_eq!(metric(&metrics, "trace_sink_spans_evicted_total"), Some(2));
    assert_eq!(metric(&metrics, "trace_sink_spans_received_total"), Some(5));

    // one request larger than the bound keeps its newest spans
    let many: Vec<Span> = (10..15_u8)
        .map(|index| {
            span(
                &[index; 16],
                &[index; 8],
                None,
                &format!("burst {index}"),
                T0,
            )
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans("ticker", many)],
    };
    assert_eq!(export(&sink, &request).await.status, 200);
    assert_eq!(
        names(&get(http, "/api/spans").await),
        ["burst 14", "burst 13", "burst 12"]
    );
    sink.shutdown().await;
}

/// The exporter the services build (`rollout_runtime::telemetry::span_provider`:
/// OTLP/HTTP protobuf over the blocking reqwest client, batch processor) pointed at the
/// sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_from_the_services_exporter_arrive() {
    use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};
    use rollout_runtime::config::OtlpSettings;

    let sink = start(100).await;
    let otlp = OtlpSettings {
        endpoint: Some(format!("http://{}", sink.otlp_addr())),
        export_timeout: Duration::from_secs(5),
        ..OtlpSettings::default()
    };
    let url = otlp.traces_url().expect("endpoint set");
    // the blocking client owns a runtime of its own: build, use and drop it off this one
    tokio::task::spawn_blocking(move || {
        let provider = rollout_runtime::telemetry::span_provider("exporter-test", &url, &otlp)
            .expect("exporter");
        let tracer = provider.tracer("trace-sink-test");
        tracer.in_span("rollout.advance", |context| {
            context
                .span()
                .set_attribute(opentelemetry::KeyValue::new("rollout.id", "r-42"));
            let mut inner = tracer.start("evaluate <flag>");
            inner.set_attribute(opentelemetry::KeyValue::new("flag.key", "checkout"));
            inner.end();
        });
        provider.force_flush().expect("flush");
        provider.shutdown().expect("shutdown");
    })
    .await
    .expect("exporter thread");

    let http = sink.http_addr();
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let reply = get(http, "/api/spans?service=exporter-test").await;
        let spans = reply.json()["spans"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if spans.len() >= 2 || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(spans.len(), 2, "{spans:?}");
    // the outer span ends last, so it arrives last: newest first
    let (outer, inner) = (&spans[0], &spans[1]);
    assert_eq!(outer["name"], "rollout.advance");
    assert_eq!(outer["parent_span_id"], Value::Null);
    assert_eq!(outer["attributes"]["rollout.id"], "r-42");
    assert_eq!(inner["name"], "evaluate <flag>");
    assert_eq!(inner["parent_span_id"], outer["span_id"]);
    assert_eq!(inner["trace_id"], outer["trace_id"]);
    assert_eq!(inner["attributes"]["flag.key"], "checkout");

    let trace_id = outer["trace_id"].as_str().expect("trace id");
    let page = get(http, &format!("/trace/{trace_id}")).await.text();
    assert!(page.contains("rollout.advance") && page.contains("evaluate &lt;flag&gt;"));
    sink.shutdown().await;
}
