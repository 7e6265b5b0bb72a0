//! Spans leave the process: `init_telemetry` with an OTLP endpoint posts
//! protobuf span batches to `<endpoint>/v1/traces`, received here by a tiny
//! HTTP server on a loopback port.
//!
//! One test in this binary, because `init_telemetry` installs the
//! process-wide subscriber.

use std::time::Duration;

use rollout_runtime::config::{LogSettings, OtlpSettings};
use rollout_runtime::telemetry::init_telemetry;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One HTTP request as the receiver saw it.
#[derive(Debug)]
struct Received {
    method: String,
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// Accepts one connection and reads requests from it until one arrives,
/// answering each with an empty 200.
async fn receive_one(listener: TcpListener) -> Received {
    let (stream, _) = listener.accept().await.expect("accept");
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader
        .read_line(&mut request_line)
        .await
        .expect("request line");
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();

    let mut content_length = 0_usize;
    let mut content_type = None;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).await.expect("header line");
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    content_length = value.trim().parse().expect("numeric content-length");
                }
                "content-type" => content_type = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    let mut body = vec![0_u8; content_length];
    reader.read_exact(&mut body).await.expect("body");
    reader
        .get_mut()
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )
        .await
        .expect("respond");
    Received {
        method,
        path,
        content_type,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_posted_to_the_collector() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let receiver = tokio::spawn(receive_one(listener));

    let otlp = OtlpSettings {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        service_name: Some("runtime-export-test".to_owned()),
        export_timeout: Duration::from_secs(5),
        ..OtlpSettings::default()
    };
    let telemetry =
        init_telemetry("runtime-test", &LogSettings::default(), &otlp).expect("init telemetry");
    assert!(telemetry.is_exporting());

    tracing::info_span!("exported_span", rollout_id = "r-1").in_scope(|| {
        tracing::info!("inside the exported span");
    });
    // flushing blocks until the exporter has its answer
    let telemetry = tokio::task::spawn_blocking(move || {
        telemetry.flush().expect("flush");
        telemetry
    })
    .await
    .expect("flush task");

    let received = tokio::time::timeout(Duration::from_secs(10), receiver)
        .await
        .expect("a request within 10s")
        .expect("receiver task");
    assert_eq!(received.method, "POST");
    assert_eq!(received.path, "/v1/traces");
    assert_eq!(
        received.content_type.as_deref(),
        Some("application/x-protobuf")
    );
    assert!(!received.body.is_empty());
    // protobuf keeps strings verbatim: the span and service names are in it
    let body = String::from_utf8_lossy(&received.body);
    assert!(body.contains("exported_span"), "{body:?}");
    assert!(body.contains("runtime-export-test"), "{body:?}");

    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("shutdown task")
        .expect("shutdown");
}
