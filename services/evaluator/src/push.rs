//! OFREP change push over Server-Sent Events (the OFREP ADR "Server-Sent Events for bulk
//! evaluation changes"): a provider that fetched the bulk evaluation of a namespace holds
//! `GET /ofrep/v1/sse/<ns>` open and re-fetches when told to, instead of polling.
//!
//! - The bulk answer carries `refreshConnections: [{type: "sse", url, inactivityDelaySec}]`
//!   ([`refresh_connections`]); the URL names this evaluator's stream for the namespace,
//!   the namespace's state the answer was computed from (`since`) and, when tokens are
//!   required, the request's token (an `EventSource` cannot send headers).
//! - Each change of the namespace becomes one message, sent at once; changes within
//!   `http.sse_coalesce` after a message become one more at the end of that window:
//!   `data: {"type":"refetchEvaluation","etag":"\"<n>\"","lastModified":<unix s>}` with
//!   event id `<n>`, where `n` is the namespace's **state number** — the sum of every flag
//!   version held, deletions included. It only rises, and replicas holding the same state
//!   have the same number, so ids are stable across replicas and a reconnect to any
//!   evaluator with `Last-Event-ID` (or the URL's `since`) that differs from the current
//!   number gets the current message at once: nothing missed, at any distance (a store
//!   reset, where numbers start again, differs too).
//! - The provider re-fetches the bulk evaluation with `?sseEtag=…&sseLastModified=…`; a
//!   replica that has not yet applied that state waits for it (at most a second) before
//!   answering, so a re-fetch landing on a lagging replica still sees the change, and
//!   `If-None-Match` still gets 304 when the entity's answers did not change.
//! - Bounded: at most `http.sse_max_connections` streams (a clear 503 past it); a stream
//!   that sent nothing for `http.sse_inactivity` is closed; keep-alive comments every 15 s.
//!   Each stream reads the namespace's latest message from a `watch` channel: the hub
//!   never waits for a client, so a slow client never slows the others (it simply skips
//!   to the newest message).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use rollout_runtime::shutdown::Shutdown;
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use crate::snapshot::{NamespaceSnapshot, Snapshot};
use crate::HttpSettings;

/// The path of a namespace's stream, below the evaluator's base URL.
pub const PATH_PREFIX: &str = "/ofrep/v1/sse/";
/// Keep-alive comments keep proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a bulk re-fetch naming a newer state waits for this replica to apply it.
const CATCH_UP: Duration = Duration::from_secs(1);

/// One `refetchEvaluation` message: the namespace's state number and when this evaluator
/// saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refetch {
    pub state: u64,
    pub last_modified: u64,
}

impl Refetch {
    fn event(&self) -> Event {
        Event::default().id(self.state.to_string()).data(
            json!({
                "type": "refetchEvaluation",
                "etag": etag(self.state),
                "lastModified": self.last_modified,
            })
            .to_string(),
        )
    }
}

/// The entity tag of namespace state `state`, as messages carry it.
pub fn etag(state: u64) -> String {
    format!("\"{state}\"")
}

/// The state number named by an `sseEtag` (quoted or not, weak or not).
pub fn parse_etag(text: &str) -> Option<u64> {
    text.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

/// A namespace's state number: the sum of every flag version it holds.
pub fn state_of(namespace: &NamespaceSnapshot) -> u64 {
    namespace.totals().1
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The one entry of a bulk answer's `refreshConnections`: this evaluator's change stream
/// for the namespace (fields in key order, as the JSON object's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefreshConnection {
    /// Seconds of silence after which the client should reconnect.
    #[serde(rename = "inactivityDelaySec")]
    pub inactivity_delay_sec: u64,
    /// Always `sse`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The stream's URL, with the state the answer was computed at.
    pub url: String,
}

/// The streams of every namespace and their bounds.
#[derive(Debug)]
pub struct Push {
    enabled: bool,
    max_connections: usize,
    inactivity: Duration,
    coalesce: Duration,
    public_url: Option<String>,
    channels: Mutex<HashMap<String, watch::Sender<Refetch>>>,
    connections: Arc<AtomicUsize>,
    messages: Arc<AtomicU64>,
    refused: AtomicU64,
    /// Streams end when the evaluator stops (its HTTP server waits for them).
    shutdown: Shutdown,
}

/// Why a stream was not opened.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamRefused {
    /// SSE is off on this evaluator.
    Disabled,
    /// `http.sse_max_connections` streams are open.
    Full(usize),
}

impl Push {
    pub fn new(settings: &HttpSettings, shutdown: Shutdown) -> Push {
        Push {
            enabled: settings.sse,
            max_connections: settings.sse_max_connections,
            inactivity: settings.sse_inactivity,
            coalesce: settings.sse_coalesce,
            public_url: settings
                .public_url
                .as_ref()
                .map(|url| url.trim_end_matches('/').to_owned()),
            channels: Mutex::new(HashMap::new()),
            connections: Arc::new(AtomicUsize::new(0)),
            messages: Arc::new(AtomicU64::new(0)),
            refused: AtomicU64::new(0),
            shutdown,
        }
    }

    /// Whether bulk answers advertise a stream.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Open streams, messages sent and streams refused, for `/metrics`.
    pub fn counts(&self) -> (usize, u64, u64) {
        (
            self.connections.load(Ordering::Relaxed),
            self.messages.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// The `refreshConnections` entry of a bulk answer for `namespace` at state `state`,
    /// asked with `host` (the request's `Host`) and `token` (its bearer token, when
    /// required); `None` when change push is off.
    pub fn refresh_connections(
        &self,
        namespace: &str,
        state: u64,
        host: Option<&str>,
        token: Option<&str>,
    ) -> Option<RefreshConnection> {
        if !self.enabled {
            return None;
        }
        let mut url = String::with_capacity(96);
        match (&self.public_url, host) {
            (Some(public), _) => url.push_str(public),
            (None, Some(host)) => {
                url.push_str("http://");
                url.push_str(host);
            }
            (None, None) => {}
        }
        let _ = write!(url, "{PATH_PREFIX}{namespace}?since={state}");
        if let Some(token) = token {
            url.push_str("&token=");
            url.push_str(&percent_encode(token));
        }
        Some(RefreshConnection {
            inactivity_delay_sec: self.inactivity.as_secs(),
            kind: "sse",
            url,
        })
    }

    /// The latest message of `namespace` (made now if it has no channel yet).
    fn channel(&self, namespace: &NamespaceSnapshot) -> watch::Receiver<Refetch> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels
            .entry(namespace.name().to_owned())
            .or_insert_with(|| {
                watch::channel(Refetch {
                    state: state_of(namespace),
                    last_modified: unix_seconds(),
                })
                .0
            })
            .subscribe()
    }

    /// Publishes the current state of every namespace that changed (once coalesced).
    fn publish(&self, snapshot: &Snapshot, changed: impl IntoIterator<Item = String>) {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        for name in changed {
            let (Some(sender), Some(namespace)) = (channels.get(&name), snapshot.namespace(&name))
            else {
                // nobody ever listened: the first stream computes the state itself
                continue;
            };
            let state = state_of(&namespace);
            sender.send_if_modified(|current| {
                if current.state == state {
                    return false;
                }
                *current = Refetch {
                    state,
                    last_modified: unix_seconds(),
                };
                true
            });
        }
    }

    /// Opens a stream of `namespace` for a client that last saw state `last_seen` (its
    /// `Last-Event-ID`, else the URL's `since`): the current message first if the state
    /// differs, then one per change, until the client leaves, `shutdown`, or
    /// `http.sse_inactivity` without a message.
    pub fn open(
        &self,
        namespace: &NamespaceSnapshot,
        last_seen: Option<u64>,
    ) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, StreamRefused> {
        if !self.enabled {
            return Err(StreamRefused::Disabled);
        }
        let held = self.connections.fetch_add(1, Ordering::SeqCst);
        let guard = ConnectionGuard(Arc::clone(&self.connections));
        if held >= self.max_connections {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(StreamRefused::Full(self.max_connections));
        }
        let mut receiver = self.channel(namespace);
        // a client that saw another state than the latest is told at once
        let current = receiver.borrow_and_update().clone();
        let first = last_seen
            .filter(|seen| *seen != current.state)
            .map(|_| current.clone());
        let state = StreamState {
            receiver,
            pending: first,
            last_sent: last_seen.unwrap_or(current.state),
            inactivity: self.inactivity,
            shutdown: self.shutdown.clone(),
            messages: Arc::clone(&self.messages),
            _guard: guard,
        };
        let stream = futures_util::stream::unfold(state, |mut state| async move {
            let message = state.next().await?;
            Some((Ok(message.event()), state))
        });
        Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
    }
}

/// Turns snapshot changes into messages until `shutdown`: the first change after a quiet
/// spell is published at once; changes in the `http.sse_coalesce` after a message wait for
/// the end of that window and go out as one — at most one message per window, however hot
/// the burst.
pub async fn run_hub(push: Arc<Push>, snapshot: Snapshot, shutdown: Shutdown) {
    if !push.enabled {
        return;
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = snapshot.changed() => {}
        }
        push.publish(&snapshot, snapshot.take_changed());
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(push.coalesce) => {}
        }
    }
}

/// Counts a stream while it is open.
struct ConnectionGuard(Arc<AtomicUsize>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One open stream.
struct StreamState {
    receiver: watch::Receiver<Refetch>,
    pending: Option<Refetch>,
    last_sent: u64,
    inactivity: Duration,
    shutdown: Shutdown,
    messages: Arc<AtomicU64>,
    _guard: ConnectionGuard,
}

impl StreamState {
    /// The next message, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Refetch> {
        let message = self.wait().await?;
        self.messages.fetch_add(1, Ordering::Relaxed);
        Some(message)
    }

    async fn wait(&mut self) -> Option<Refetch> {
        if let Some(message) = self.pending.take() {
            self.last_sent = message.state;
            return Some(message);
        }
        loop {
            let changed = tokio::select! {
                () = self.shutdown.cancelled() => return None,
                changed = tokio::time::timeout(self.inactivity, self.receiver.changed()) => changed,
            };
            match changed {
                // quiet for too long: the client reconnects with its Last-Event-ID
                Err(_) => return None,
                // the evaluator is stopping
                Ok(Err(_)) => return None,
                Ok(Ok(())) => {
                    let message = self.receiver.borrow_and_update().clone();
                    if message.state != self.last_sent {
                        self.last_sent = message.state;
                        return Some(message);
                    }
                }
            }
        }
    }
}

impl Push {
    /// Waits (at most a second) until `namespace` holds at least state `wanted`: a bulk
    /// re-fetch told of a change by another replica's message sees that change here too.
    pub async fn catch_up(namespace: &NamespaceSnapshot, wanted: u64) {
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        while state_of(namespace) < wanted && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The parameters of a URL query (`a=1&b=%22x%22`), percent-decoded; malformed escapes are
/// kept as written.
pub fn query_params(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let escaped = (byte == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (byte, escaped) {
            (_, Some(value)) => {
                decoded.push(value);
                index += 3;
            }
            (b'+', None) => {
                decoded.push(b' ');
                index += 1;
            }
            (other, None) => {
                decoded.push(other);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// `text` for a URL query value: unreserved characters as they are, the rest `%XX`.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_name_states_and_parse_back() {
        assert_eq!(etag(42), "\"42\"");
        assert_eq!(parse_etag("\"42\""), Some(42));
        assert_eq!(parse_etag("W/\"42\""), Some(42));
        assert_eq!(parse_etag("42"), Some(42));
        assert_eq!(parse_etag("\"x\""), None);
    }

    #[test]
    fn tokens_are_percent_encoded_in_the_stream_url_and_queries_decoded() {
        assert_eq!(percent_encode("abc-._~"), "abc-._~");
        assert_eq!(percent_encode("a+b/c="), "a%2Bb%2Fc%3D");
        let params = query_params(Some("sseEtag=%2242%22&token=a%2Bb&x&bad=%zz"));
        assert_eq!(params["sseEtag"], "\"42\"");
        assert_eq!(params["token"], "a+b");
        assert_eq!(params["x"], "");
        assert_eq!(params["bad"], "%zz");
        assert!(query_params(None).is_empty());
    }

    #[test]
    fn the_stream_url_uses_the_public_url_else_the_host() {
        let mut settings = HttpSettings::default();
        let push = Push::new(&settings, Shutdown::new());
        let connection = push
            .refresh_connections("prod", 7, Some("10.0.0.1:8080"), Some("t+1"))
            .expect("on by default");
        assert_eq!(
            serde_json::to_value(&connection).expect("json"),
            serde_json::json!({
                "url": "http://10.0.0.1:8080/ofrep/v1/sse/prod?since=7&token=t%2B1",
                "type": "sse",
                "inactivityDelaySec": 120,
            })
        );
        settings.public_url = Some("https://flags.example.com/".to_owned());
        let push = Push::new(&settings, Shutdown::new());
        let connection = push
            .refresh_connections("dev", 3, Some("ignored"), None)
            .expect("on");
        assert_eq!(
            connection.url,
            "https://flags.example.com/ofrep/v1/sse/dev?since=3"
        );
        settings.sse = false;
        assert!(Push::new(&settings, Shutdown::new())
            .refresh_connections("dev", 3, None, None)
            .is_none());
    }
}
