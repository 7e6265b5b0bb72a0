//! A tiny HTTP/1.1 client for evaluator endpoints (`/readyz`, OFREP): one request per
//! connection, `Connection: close`, chunked bodies decoded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response: status, headers (names lowercased) and body.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names, lowercased, to their values.
    pub headers: BTreeMap<String, String>,
    /// The body, dechunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request; `None` when the server cannot be reached or answers nothing
/// within `timeout`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Option<Response> {
    tokio::time::timeout(timeout, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.ok()?;
        stream.write_all(body).await.ok()?;
        // read until the response is whole: some servers (chromedriver) keep the
        // connection open despite `Connection: close`
        let mut raw = Vec::new();
        let mut chunk = [0_u8; 16 * 1024];
        loop {
            let read = stream.read(&mut chunk).await.ok()?;
            if read == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..read]);
            if is_complete(&raw) {
                break;
            }
        }
        parse(&raw)
    })
    .await
    .ok()
    .flatten()
}

/// Whether `raw` holds a whole response: its head and the body its `Content-Length` or
/// final chunk announces.
fn is_complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|window| window == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    for line in head.lines() {
        if let Some(length) = line.strip_prefix("content-length:") {
            return length
                .trim()
                .parse::<usize>()
                .is_ok_and(|length| body.len() >= length);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return body.ends_with(b"0\r\n\r\n");
        }
    }
    false
}

fn parse(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|value| value.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body);
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|window| window == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..line_end]).trim(), 16)
            .unwrap_or(0);
        let start = line_end + 2;
        if size == 0 || raw.len() < start + size {
            break;
        }
        body.extend_from_slice(&raw[start..start + size]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    body
}

/// Whether the evaluator at `addr` answers `/readyz` with 200.
pub async fn ready(addr: SocketAddr) -> bool {
    request(addr, "GET", "/readyz", &[], b"", Duration::from_secs(2))
        .await
        .is_some_and(|response| response.status == 200)
}

/// POSTs `body` as JSON to `path` on the evaluator at `addr`, for `namespace` (the
/// `X-Rollout-Namespace` header); `None` when it cannot be reached or answers nothing within
/// 2 s.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    namespace: &str,
    body: &serde_json::Value,
) -> Option<Response> {
    post_json_as(addr, None, path, namespace, body).await
}

/// [`post_json`] with `Authorization: Bearer <token>` when a token is given.
pub async fn post_json_as(
    addr: SocketAddr,
    token: Option<&str>,
    path: &str,
    namespace: &str,
    body: &serde_json::Value,
) -> Option<Response> {
    let bytes = serde_json::to_vec(body).expect("json");
    let authorization = token.map(|token| format!("Bearer {token}"));
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("X-Rollout-Namespace", namespace),
    ];
    if let Some(authorization) = &authorization {
        headers.push(("Authorization", authorization));
    }
    request(addr, "POST", path, &headers, &bytes, Duration::from_secs(2)).await
}

/// Every flag of `namespace` the evaluator at `addr` serves, with its served version, from
/// one OFREP bulk evaluation; `None` when it does not answer.
pub async fn served_versions(addr: SocketAddr, namespace: &str) -> Option<BTreeMap<String, u64>> {
    served_versions_as(addr, None, namespace).await
}

/// [`served_versions`] with a bearer token when one is given.
pub async fn served_versions_as(
    addr: SocketAddr,
    token: Option<&str>,
    namespace: &str,
) -> Option<BTreeMap<String, u64>> {
    let response = post_json_as(
        addr,
        token,
        "/ofrep/v1/evaluate/flags",
        namespace,
        &serde_json::json!({"context": {"targetingKey": "monitor"}}),
    )
    .await?;
    if response.status != 200 {
        return None;
    }
    let json = response.json();
    let mut versions = BTreeMap::new();
    for flag in json["flags"].as_array()? {
        let (Some(key), Some(version)) =
            (flag["key"].as_str(), flag["metadata"]["version"].as_u64())
        else {
            continue;
        };
        versions.insert(key.to_owned(), version);
    }
    Some(versions)
}
