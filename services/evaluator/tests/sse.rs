//! OFREP change push over SSE, as a provider following the OFREP ADR sees it: the bulk
//! answer points at a stream; each committed change arrives as one `refetchEvaluation`
//! message; the re-fetch with `sseEtag` serves the change (and 304 when the entity's
//! answers did not change); a reconnect with `Last-Event-ID` (or the URL's `since`) gets
//! what it missed at once; streams are bounded, token-checked and can be turned off.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{checkout_flag, http, start, Servers, NS, PATIENCE};
use rollout_core::Flag;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const PROD_TOKEN: &str = "prod-ofrep-token-0123456789";
const DEV_TOKEN: &str = "dev-ofrep-token-0123456789";

/// `checkout` serving `variation` to everyone.
fn serving(variation: &str, description: &str) -> Flag {
    let mut flag = checkout_flag("checkout");
    flag.default =
        serde_json::from_value(serde_json::json!({"variation": variation})).expect("serve");
    flag.rules.clear();
    flag.description = Some(description.to_owned());
    flag
}

/// One SSE message.
#[derive(Debug)]
struct Message {
    id: String,
    data: Value,
}

/// A minimal SSE client over HTTP/1.1 (chunked transfer), as an `EventSource` reads.
struct SseClient {
    status: u16,
    headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    /// Decoded body text not yet parsed into messages.
    text: String,
    /// The body of a refused stream.
    body: String,
}

impl SseClient {
    async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut head =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.expect("request");
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await.expect("status");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status code");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let mut client = SseClient {
            status,
            headers,
            reader,
            text: String::new(),
            body: String::new(),
        };
        if status != 200 {
            let length: usize = client
                .header("content-length")
                .and_then(|length| length.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0_u8; length];
            client.reader.read_exact(&mut body).await.expect("body");
            client.body = String::from_utf8_lossy(&body).into_owned();
        }
        client
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    /// Reads one chunk of the chunked body into `text`; `false` at the end.
    async fn fill(&mut self) -> bool {
        let mut size_line = String::new();
        if self.reader.read_line(&mut size_line).await.unwrap_or(0) == 0 {
            return false;
        }
        let size = usize::from_str_radix(size_line.trim(), 16).expect("chunk size");
        if size == 0 {
            return false;
        }
        let mut chunk = vec![0_u8; size + 2];
        self.reader.read_exact(&mut chunk).await.expect("chunk");
        self.text.push_str(&String::from_utf8_lossy(&chunk[..size]));
        true
    }

    /// The next message (keep-alive comments skipped); `None` if the stream ended.
    async fn next(&mut self) -> Option<Message> {
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(end) = self.text.find("\n\n") {
                    let block: String = self.text.drain(..end + 2).collect();
                    let mut id = String::new();
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(value) = line.strip_prefix("id:") {
                            id = value.trim().to_owned();
                        } else if let Some(value) = line.strip_prefix("data:") {
                            data.push_str(value.trim());
                        }
                    }
                    if data.is_empty() {
                        continue; // a comment
                    }
                    return Some(Message {
                        id,
                        data: serde_json::from_str(&data).expect("json data"),
                    });
                }
                if !self.fill().await {
                    return None;
                }
            }
        })
        .await
        .expect("a message within the test's patience")
    }
}

/// A bulk evaluation of `namespace`'s flags for user `u-1`.
async fn bulk(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> common::HttpResponse {
    http(
        addr,
        "POST",
        &format!("/ofrep/v1/evaluate/flags{query}"),
        &[&[("Content-Type", "application/json")], headers].concat(),
        br#"{"context": {"targetingKey": "u-1"}}"#,
    )
    .await
}

/// The path and query of the stream a bulk answer points at, checking it names `addr`.
fn stream_path(answer: &Value, addr: SocketAddr) -> String {
    let connection = &answer["refreshConnections"][0];
    assert_eq!(connection["type"], "sse", "{answer}");
    assert_eq!(connection["inactivityDelaySec"], 120);
    let url = connection["url"].as_str().expect("url");
    url.strip_prefix(&format!("http://{addr}"))
        .unwrap_or_else(|| panic!("{url} names this evaluator"))
        .to_owned()
}

fn checkout_value(answer: &Value) -> Value {
    answer["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .find(|flag| flag["key"] == "checkout")
        .map(|flag| flag["value"].clone())
        .expect("checkout in the bulk answer")
}

/// The namespace's state number as the evaluator announces it: the sum of flag versions.
fn state(versions: &[u64]) -> String {
    format!("\"{}\"", versions.iter().sum::<u64>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_pushed_once_and_the_refetch_serves_it() {
    let servers = Servers::start();
    let store = servers.store().await;
    let other = store.create_flag(NS, checkout_flag("other")).await;
    store.create_flag(NS, serving("off", "first")).await;
    let replica = start(servers.config()).await;
    let addr = replica.http_addr();

    let first = bulk(addr, "", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(checkout_value(&first.json()), false);
    let first_tag = first.headers.get("etag").expect("etag").clone();
    let path = stream_path(&first.json(), addr);
    assert!(path.starts_with("/ofrep/v1/sse/prod?since="), "{path}");
    let mut client = SseClient::connect(addr, &path, &[]).await;
    assert_eq!(client.status, 200);
    assert!(client
        .header("content-type")
        .is_some_and(|kind| kind.starts_with("text/event-stream")));

    let version = store.update_flag(NS, serving("on", "second")).await;
    let message = client.next().await.expect("a message");
    assert_eq!(message.data["type"], "refetchEvaluation");
    let etag = message.data["etag"].as_str().expect("etag").to_owned();
    assert_eq!(etag, state(&[other, version]));
    assert_eq!(message.id, etag.trim_matches('"'));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let modified = message.data["lastModified"].as_u64().expect("seconds");
    assert!(
        modified <= now && now - modified < 60,
        "{modified} vs {now}"
    );

    // the re-fetch the ADR's provider makes: the change is served
    let refetch = bulk(
        addr,
        &format!(
            "?sseEtag={}&sseLastModified={modified}",
            etag.replace('"', "%22")
        ),
        &[("If-None-Match", &first_tag)],
    )
    .await;
    assert_eq!(refetch.status, 200);
    assert_eq!(checkout_value(&refetch.json()), true);
    // and asked again with what it now holds: nothing changed, 304
    let new_tag = refetch.headers.get("etag").expect("etag").clone();
    let again = bulk(
        addr,
        &format!("?sseEtag={}", etag.replace('"', "%22")),
        &[("If-None-Match", &new_tag)],
    )
    .await;
    assert_eq!(again.status, 304);
    let metrics = http(addr, "GET", "/metrics", &[], b"").await.text();
    assert!(
        metrics.contains("rollout_evaluator_sse_connections 1"),
        "{metrics}"
    );
    assert!(metrics.contains("rollout_evaluator_sse_messages_total 1"));
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_coalesced_and_ends_at_the_latest_state() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, serving("off", "v1")).await;
    let mut config = servers.config();
    // the longest window allowed: the burst below lands well inside it
    config.http.sse_coalesce = Duration::from_secs(2);
    let replica = start(config).await;
    let addr = replica.http_addr();
    let path = stream_path(&bulk(addr, "", &[]).await.json(), addr);
    let mut client = SseClient::connect(addr, &path, &[]).await;

    let mut version = 1;
    for index in 0..20 {
        let variation = if index % 2 == 0 { "on" } else { "off" };
        version = store
            .update_flag(NS, serving(variation, &format!("burst {index}")))
            .await;
    }
    let last = state(&[version]);
    let mut messages = Vec::new();
    while messages
        .last()
        .map(|message: &Message| message.data["etag"].clone())
        != Some(Value::from(last.clone()))
    {
        messages.push(client.next().await.expect("a message"));
    }
    assert!(
        messages.len() < 20,
        "20 changes within the window became {} messages",
        messages.len()
    );
    let ids: Vec<u64> = messages
        .iter()
        .map(|message| message.id.parse().expect("numeric id"))
        .collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_gets_what_it_missed_and_nothing_twice() {
    let servers = Servers::start();
    let store = servers.store().await;
    let first_version = store.create_flag(NS, serving("off", "v1")).await;
    let replica = start(servers.config()).await;
    let addr = replica.http_addr();
    let path = stream_path(&bulk(addr, "", &[]).await.json(), addr);

    // a change between the bulk answer and the connect: `since` catches it
    let missed = store.update_flag(NS, serving("on", "v2")).await;
    let mut client = SseClient::connect(addr, &path, &[]).await;
    let message = client.next().await.expect("the missed change at once");
    assert_eq!(message.data["etag"], state(&[missed]));
    drop(client);

    // gone while three changes are made: Last-Event-ID gets the latest at once
    let mut latest = missed;
    for index in 0..3 {
        latest = store
            .update_flag(NS, serving("off", &format!("while away {index}")))
            .await;
    }
    let old_id = state(&[missed]).trim_matches('"').to_owned();
    let mut client = SseClient::connect(
        addr,
        "/ofrep/v1/sse/prod",
        &[("Last-Event-ID", old_id.as_str())],
    )
    .await;
    let message = client.next().await.expect("the latest state at once");
    assert_eq!(message.data["etag"], state(&[latest]));
    drop(client);

    // up to date: the first message is the next change, not a replay
    let current_id = state(&[latest]).trim_matches('"').to_owned();
    let mut client = SseClient::connect(
        addr,
        "/ofrep/v1/sse/prod",
        &[("Last-Event-ID", current_id.as_str())],
    )
    .await;
    let next = store.update_flag(NS, serving("on", "after")).await;
    let message = client.next().await.expect("the next change");
    assert_eq!(message.data["etag"], state(&[next]));
    assert!(first_version < next);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_token_checked_and_bounded() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, serving("off", "v1")).await;
    store.create_flag("dev", serving("off", "v1")).await;
    let mut config = servers.config();
    config.http.require_token = true;
    config.http.tokens =
        evaluator::config::BearerTokens::parse(&format!("prod:{PROD_TOKEN},dev:{DEV_TOKEN}"))
            .expect("tokens");
    config.http.sse_max_connections = 2;
    let replica = start(config).await;
    let addr = replica.http_addr();

    // the bulk answer's stream carries the token: an EventSource cannot send headers
    let answer = bulk(
        addr,
        "",
        &[("Authorization", &format!("Bearer {PROD_TOKEN}"))],
    )
    .await;
    let path = stream_path(&answer.json(), addr);
    assert!(path.ends_with(&format!("&token={PROD_TOKEN}")), "{path}");

    let none = SseClient::connect(addr, "/ofrep/v1/sse/prod", &[]).await;
    assert_eq!(none.status, 401, "{}", none.body);
    let other =
        SseClient::connect(addr, &format!("/ofrep/v1/sse/prod?token={DEV_TOKEN}"), &[]).await;
    assert_eq!(other.status, 403, "{}", other.body);
    let unknown = SseClient::connect(
        addr,
        &format!("/ofrep/v1/sse/nowhere?token={PROD_TOKEN}"),
        &[],
    )
    .await;
    assert_eq!(unknown.status, 403, "a token reaches its namespace only");

    let by_query = SseClient::connect(addr, &path, &[]).await;
    assert_eq!(by_query.status, 200);
    let by_header = SseClient::connect(
        addr,
        "/ofrep/v1/sse/prod",
        &[("Authorization", &format!("Bearer {PROD_TOKEN}"))],
    )
    .await;
    assert_eq!(by_header.status, 200);
    let third = SseClient::connect(addr, &path, &[]).await;
    assert_eq!(third.status, 503, "{}", third.body);
    assert_eq!(third.header("retry-after"), Some("5"));
    let refused: Value = serde_json::from_str(&third.body).expect("json");
    assert!(refused["errorDetails"]
        .as_str()
        .is_some_and(|details| details.contains("limit of 2")));

    // a client that leaves frees its place (noticed when its stream is next written to)
    drop(by_query);
    let mut index = 0;
    let mut reopened = SseClient::connect(addr, &path, &[]).await;
    while reopened.status != 200 {
        index += 1;
        assert!(index < 200, "the place of a closed stream was never freed");
        store
            .update_flag(NS, serving("on", &format!("nudge {index}")))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        reopened = SseClient::connect(addr, &path, &[]).await;
    }
    let metrics = http(addr, "GET", "/metrics", &[], b"").await.text();
    assert!(
        metrics.contains("rollout_evaluator_sse_refused_total"),
        "{metrics}"
    );
    drop((by_header, reopened));
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sse_off_nothing_points_at_a_stream() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, serving("off", "v1")).await;
    let mut config = servers.config();
    config.http.sse = false;
    let replica = start(config).await;
    let addr = replica.http_addr();
    let answer = bulk(addr, "", &[]).await.json();
    assert!(answer.get("refreshConnections").is_none(), "{answer}");
    let configuration = http(addr, "GET", "/ofrep/v1/configuration", &[], b"")
        .await
        .json();
    assert_eq!(
        configuration["capabilities"]["cacheInvalidation"]["sse"]["enabled"],
        false
    );
    let refused = SseClient::connect(addr, "/ofrep/v1/sse/prod", &[]).await;
    assert_eq!(refused.status, 404);
    assert!(refused.body.contains("http.sse"), "{}", refused.body);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_allowed_origins_may_call_and_listen_and_others_may_not() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, serving("off", "v1")).await;
    let mut config = servers.config();
    config.http.cors_origins = vec!["https://shop.example.com".to_owned()];
    let replica = start(config).await;
    let addr = replica.http_addr();
    let shop = ("Origin", "https://shop.example.com");

    // the browser's preflight of a JSON POST with a token
    let preflight = http(
        addr,
        "OPTIONS",
        "/ofrep/v1/evaluate/flags",
        &[
            shop,
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
        b"",
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight
            .headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://shop.example.com")
    );
    let allowed = preflight
        .headers
        .get("access-control-allow-headers")
        .expect("allowed headers");
    for header in [
        "authorization",
        "content-type",
        "if-none-match",
        "last-event-id",
    ] {
        assert!(allowed.contains(header), "{allowed}");
    }
    // the answer itself, whose ETag the page may read
    let answer = bulk(addr, "", &[shop]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer
            .headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://shop.example.com")
    );
    assert_eq!(
        answer
            .headers
            .get("access-control-expose-headers")
            .map(String::as_str),
        Some("etag")
    );
    // its change stream
    let stream = SseClient::connect(addr, "/ofrep/v1/sse/prod", &[shop]).await;
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.header("access-control-allow-origin"),
        Some("https://shop.example.com")
    );
    // another origin gets the answer without CORS headers: its page may not read it
    let evil = bulk(addr, "", &[("Origin", "https://evil.example.com")]).await;
    assert_eq!(evil.status, 200);
    assert!(!evil.headers.contains_key("access-control-allow-origin"));
    drop(stream);
    replica.stop().await;
}
