//! Connections to NATS and Redis from their settings: authentication, TLS,
//! retrying the first connection until `connect_timeout`, reconnecting
//! forever afterwards, and errors that say what could not be reached
//! (`redis at redis://127.0.0.1:6379: no connection after 10s: connection
//! refused`), with passwords taken out of every URL they show.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::IntoConnectionInfo;
use tokio::time::Instant;

use crate::config::{NatsSettings, RedisSettings};

/// First pause between connection attempts at start-up; doubles each time.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
/// Longest pause between connection attempts at start-up.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest pause between NATS reconnection attempts once running.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// How many times the Redis connection manager retries, with backoff, each
/// time it re-establishes a lost connection; a request still failing after
/// that gets the error, and the next request starts over.
const MANAGER_RECONNECT_RETRIES: usize = 3;
/// Longest a single connection attempt may take.
const MAX_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one NATS reconnection attempt may take once running. A node whose host was
/// lost (no reset, no answer) holds an attempt for this long before the next node is
/// tried, while the client's subscriptions reach no one; a NATS handshake takes
/// milliseconds. With the default 2 s ping interval a client is back on a live node
/// within about 7 s of losing its own (two unanswered pings, then at most one attempt at
/// the lost node): within the SDK's patience for "no responders".
const MAX_RECONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// The server a [`ConnectError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A NATS server.
    Nats,
    /// A Redis server.
    Redis,
}

impl fmt::Display for Backend {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Backend::Nats => "nats",
            Backend::Redis => "redis",
        })
    }
}

/// Why a connection could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectErrorKind {
    /// The server did not answer before `connect_timeout` (down, wrong
    /// address, firewalled).
    Unreachable,
    /// The server answered and refused us (credentials, permissions, TLS),
    /// which retrying would not change.
    Rejected,
    /// The settings cannot describe a connection (bad URL, unreadable
    /// credentials file).
    InvalidSettings,
}

/// A connection that could not be made: `<backend> at <url>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{backend} at {url}: {message}")]
pub struct ConnectError {
    backend: Backend,
    url: String,
    kind: ConnectErrorKind,
    message: String,
}

impl ConnectError {
    fn new(backend: Backend, url: &str, kind: ConnectErrorKind, message: String) -> ConnectError {
        ConnectError {
            backend,
            url: redact_url(url),
            kind,
            message,
        }
    }

    /// Which server could not be reached.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The server URL, with any password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Why the connection failed.
    pub fn kind(&self) -> ConnectErrorKind {
        self.kind
    }

    /// What went wrong, in words.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Connects to NATS, retrying until `settings.connect_timeout` while the
/// server cannot be reached.
///
/// Applies the connection name (`settings.name`, else `client_name`),
/// user/password, token or credentials file, TLS (trusted CAs, client
/// certificate, `tls_required`) and the inbox prefix replies come back
/// under. Once connected, the client reconnects without limit, backing off
/// up to 2 s between attempts, each attempt given at most 1 s, and logs
/// disconnections and reconnections.
/// Authentication and TLS failures are returned at once, without retrying.
pub async fn connect_nats(
    settings: &NatsSettings,
    client_name: &str,
) -> Result<async_nats::Client, ConnectError> {
    connect_nats_observed(settings, client_name, Arc::default()).await
}

/// Connection events a service acts on, counted by the client's event callback.
#[derive(Debug, Default)]
pub struct NatsEvents {
    slow_consumers: AtomicU64,
}

impl NatsEvents {
    /// How often the client dropped messages of a subscription that did not keep up.
    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }
}

/// [`connect_nats`], counting connection events into `events` (a subscriber that must
/// not miss messages learns of drops there).
pub async fn connect_nats_observed(
    settings: &NatsSettings,
    client_name: &str,
    events: Arc<NatsEvents>,
) -> Result<async_nats::Client, ConnectError> {
    let name = settings
        .name
        .clone()
        .unwrap_or_else(|| client_name.to_owned());
    let invalid = |message: String| {
        ConnectError::new(
            Backend::Nats,
            &settings.url,
            ConnectErrorKind::InvalidSettings,
            message,
        )
    };
    let addresses = settings
        .urls()
        .into_iter()
        .map(|url| {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|error| invalid(format!("invalid server url: {error}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addresses.is_empty() {
        return Err(invalid("no server url".to_owned()));
    }

    let connected = retry_until_deadline(
        Backend::Nats,
        &settings.url,
        settings.connect_timeout,
        |_attempt_timeout| async {
            let options = match nats_options(settings, &name, events.clone()).await {
                Ok(options) => options,
                Err(message) => return Attempt::Fatal(ConnectErrorKind::InvalidSettings, message),
            };
            match options.connect(addresses.clone()).await {
                Ok(client) => Attempt::Connected(client),
                Err(error) => match nats_fatal_kind(error.kind()) {
                    Some(kind) => Attempt::Fatal(kind, error.to_string()),
                    None => Attempt::Transient(nats_error_message(&error)),
                },
            }
        },
    )
    .await?;
    tracing::info!(
        url = %redact_url(&settings.url),
        client = %name,
        attempts = connected.attempts,
        "connected to nats"
    );
    Ok(connected.value)
}

/// What one start-up connection attempt ended with.
enum Attempt<T> {
    /// Connected.
    Connected(T),
    /// Refused in a way retrying would not change.
    Fatal(ConnectErrorKind, String),
    /// Not reachable (yet): worth another attempt.
    Transient(String),
}

/// A connection and how many attempts it took.
struct Connected<T> {
    value: T,
    attempts: u32,
}

/// Runs `attempt` (given the time it may take) until it connects, fails fatally, or
/// `connect_timeout` would pass before the next try; pauses between attempts double from
/// [`FIRST_RETRY_DELAY`] up to [`MAX_RETRY_DELAY`].
async fn retry_until_deadline<T, F, Fut>(
    backend: Backend,
    url: &str,
    connect_timeout: Duration,
    mut attempt: F,
) -> Result<Connected<T>, ConnectError>
where
    F: FnMut(Duration) -> Fut,
    Fut: std::future::Future<Output = Attempt<T>>,
{
    let deadline = Instant::now() + connect_timeout;
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempts = 0_u32;
    loop {
        attempts += 1;
        let attempt_timeout = attempt_timeout(deadline);
        let last_error = match tokio::time::timeout(attempt_timeout, attempt(attempt_timeout)).await
        {
            Ok(Attempt::Connected(value)) => return Ok(Connected { value, attempts }),
            Ok(Attempt::Fatal(kind, message)) => {
                return Err(ConnectError::new(backend, url, kind, message))
            }
            Ok(Attempt::Transient(message)) => message,
            Err(_elapsed) => "connection attempt timed out".to_owned(),
        };
        if Instant::now() + delay >= deadline {
            return Err(ConnectError::new(
                backend,
                url,
                ConnectErrorKind::Unreachable,
                gave_up(connect_timeout, attempts, &last_error),
            ));
        }
        tracing::warn!(
            url = %redact_url(url),
            %backend,
            attempts,
            error = %last_error,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "{backend} not reachable yet, retrying until the connect timeout"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

async fn nats_options(
    settings: &NatsSettings,
    name: &str,
    events: Arc<NatsEvents>,
) -> Result<async_nats::ConnectOptions, String> {
    // the client keeps this for every reconnection, so it is not the time
    // left before the start-up deadline (the caller bounds that attempt)
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(settings.connect_timeout.min(MAX_RECONNECT_ATTEMPT_TIMEOUT))
        .subscription_capacity(settings.subscription_capacity)
        .ping_interval(settings.ping_interval)
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(on_nats_event(name.to_owned(), events));
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &settings.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(path) = &settings.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|error| format!("nats.credentials_file {}: {error}", path.display()))?;
    }
    if let Some(ca) = &settings.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if settings.tls_required {
        options = options.require_tls(true);
    }
    if let Some(prefix) = &settings.inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    Ok(options)
}

/// Pause before the `attempts`-th reconnection: none for the first, then
/// doubling from 10 ms up to [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    (Duration::from_millis(10) * 2_u32.pow(doublings)).min(MAX_RECONNECT_DELAY)
}

/// Logs every connection event and counts those in [`NatsEvents`].
fn on_nats_event(
    client: String,
    events: Arc<NatsEvents>,
) -> impl Fn(async_nats::Event) -> std::future::Ready<()> + Send + Sync + 'static {
    move |event| {
        match &event {
            async_nats::Event::Connected => {
                tracing::info!(client = %client, "nats connection established")
            }
            async_nats::Event::Disconnected => {
                tracing::warn!(client = %client, "nats disconnected, reconnecting")
            }
            async_nats::Event::LameDuckMode => {
                tracing::warn!(client = %client, "nats server entered lame duck mode")
            }
            async_nats::Event::Draining => tracing::info!(client = %client, "nats draining"),
            async_nats::Event::Closed => tracing::info!(client = %client, "nats connection closed"),
            async_nats::Event::SlowConsumer(subscription) => {
                events.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(client = %client, subscription, "nats slow consumer, messages dropped")
            }
            async_nats::Event::ServerError(error) => {
                tracing::warn!(client = %client, error = %error, "nats server error")
            }
            async_nats::Event::ClientError(error) => {
                tracing::warn!(client = %client, error = %error, "nats client error")
            }
        }
        std::future::ready(())
    }
}

/// The words of a NATS connection error; for an IO error just the IO error
/// ("connection refused (os error 111)"), not the client's "IO error:" label.
fn nats_error_message(error: &async_nats::ConnectError) -> String {
    match (error.kind(), std::error::Error::source(error)) {
        (async_nats::ConnectErrorKind::Io, Some(source)) => source.to_string(),
        _ => error.to_string(),
    }
}

/// The kind to fail with at once, or `None` when the error may go away by
/// retrying (the server is down or restarting).
fn nats_fatal_kind(kind: async_nats::ConnectErrorKind) -> Option<ConnectErrorKind> {
    use async_nats::ConnectErrorKind as Nats;
    match kind {
        Nats::Io | Nats::TimedOut | Nats::Dns | Nats::MaxReconnects => None,
        Nats::Authentication | Nats::AuthorizationViolation | Nats::Tls => {
            Some(ConnectErrorKind::Rejected)
        }
        Nats::ServerParse => Some(ConnectErrorKind::InvalidSettings),
    }
}

/// A Redis client for `settings` with `user`/`password` applied over the
/// URL's; it does no IO. Use it for dedicated connections (blocking
/// commands, pub/sub) beside the shared [`ConnectionManager`].
///
/// Connections do not send `CLIENT SETINFO`: the services' ACL users are
/// not allowed `CLIENT` (`deploy/redis/users.acl`), and Redis 7.2 would
/// log a refusal for every connection, burying real ones in `ACL LOG`.
pub fn redis_client(settings: &RedisSettings) -> Result<redis::Client, ConnectError> {
    let invalid = |error| invalid_redis_settings(settings, error);
    let info = settings
        .url
        .as_str()
        .into_connection_info()
        .map_err(invalid)?;
    let mut handshake = info.redis_settings().clone().set_skip_set_lib_name();
    if let Some(user) = &settings.user {
        handshake = handshake.set_username(user);
    }
    if let Some(password) = &settings.password {
        handshake = handshake.set_password(password.expose());
    }
    redis::Client::open(info.set_redis_settings(handshake)).map_err(invalid)
}

/// Connects to Redis, retrying until `settings.connect_timeout` while it cannot be
/// reached, and checking the connection with a `PING`: a single server through a
/// [`ConnectionManager`] (one multiplexed connection, re-established on failure), or a
/// Redis Cluster ([`RedisSettings::is_cluster`]) through the client's cluster connection,
/// which learns the slots from the seeds, routes every command by its key and follows
/// fail-overs.
pub async fn connect_redis(
    settings: &RedisSettings,
) -> Result<rollout_store::Connection, ConnectError> {
    let connection: rollout_store::Connection = if settings.is_cluster() {
        connect_redis_cluster(settings).await?.into()
    } else {
        let client = redis_client(settings)?;
        connect_redis_with(&client, settings).await?.into()
    };
    Ok(connection.waiting_for_replicas(settings.wait_replicas, settings.wait_timeout))
}

/// The error for Redis settings the client refuses (a bad URL, a node that is not one).
fn invalid_redis_settings(settings: &RedisSettings, error: redis::RedisError) -> ConnectError {
    ConnectError::new(
        Backend::Redis,
        &settings.url,
        ConnectErrorKind::InvalidSettings,
        error.to_string(),
    )
}

/// [`connect_redis`] for a Redis Cluster.
async fn connect_redis_cluster(
    settings: &RedisSettings,
) -> Result<redis::cluster_async::ClusterConnection, ConnectError> {
    let invalid = |error| invalid_redis_settings(settings, error);
    let mut seeds = Vec::new();
    for node in settings.nodes() {
        let info = node.into_connection_info().map_err(invalid)?;
        let handshake = info.redis_settings().clone().set_skip_set_lib_name();
        seeds.push(info.set_redis_settings(handshake));
    }
    let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
        .connection_timeout(per_connection_timeout(settings.connect_timeout))
        .response_timeout(settings.response_timeout)
        .retries(CLUSTER_RETRIES);
    if let Some(user) = &settings.user {
        builder = builder.username(user);
    }
    if let Some(password) = &settings.password {
        builder = builder.password(password.expose());
    }
    let client = builder.build().map_err(invalid)?;
    let connected = retry_until_deadline(
        Backend::Redis,
        &settings.url,
        settings.connect_timeout,
        |_attempt_timeout| {
            let client = client.clone();
            async move {
                let attempt = async {
                    let mut connection = client.get_async_connection().await?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await?;
                    Ok::<_, redis::RedisError>(connection)
                };
                redis_attempt(attempt.await)
            }
        },
    )
    .await?;
    tracing::info!(url = %redact_url(&settings.url), attempts = connected.attempts, "connected to the redis cluster");
    Ok(connected.value)
}

/// [`connect_redis`] with a client made by [`redis_client`], for callers
/// that keep the client too.
pub async fn connect_redis_with(
    client: &redis::Client,
    settings: &RedisSettings,
) -> Result<ConnectionManager, ConnectError> {
    let connected = retry_until_deadline(
        Backend::Redis,
        &settings.url,
        settings.connect_timeout,
        |attempt_timeout| async move {
            let attempt = async {
                // a plain connection first: the manager retries internally and
                // would hide "connection refused" behind a timeout
                let probe_config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(attempt_timeout))
                    .set_response_timeout(Some(settings.response_timeout));
                let mut probe = client
                    .get_multiplexed_async_connection_with_config(&probe_config)
                    .await?;
                redis::cmd("PING").query_async::<String>(&mut probe).await?;
                drop(probe);
                // kept for every reconnection, like the NATS connection timeout
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(per_connection_timeout(settings.connect_timeout)))
                    .set_response_timeout(Some(settings.response_timeout))
                    .set_number_of_retries(MANAGER_RECONNECT_RETRIES)
                    .set_max_delay(MAX_RETRY_DELAY);
                ConnectionManager::new_with_config(client.clone(), manager_config).await
            };
            redis_attempt(attempt.await)
        },
    )
    .await?;
    tracing::info!(url = %redact_url(&settings.url), attempts = connected.attempts, "connected to redis");
    Ok(connected.value)
}

/// What one Redis connection attempt came to: connected, worth another try, or refused.
fn redis_attempt<T>(result: redis::RedisResult<T>) -> Attempt<T> {
    match result {
        Ok(connection) => Attempt::Connected(connection),
        Err(error) if redis_error_is_transient(&error) => Attempt::Transient(error.to_string()),
        Err(error) => Attempt::Fatal(ConnectErrorKind::Rejected, error.to_string()),
    }
}

fn redis_error_is_transient(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    error.is_timeout()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || matches!(
            error.kind(),
            ErrorKind::Io
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ClusterDown
                )
        )
}

/// How many times the cluster connection retries a request that met a moved slot, a
/// fail-over or a dropped node before failing it.
const CLUSTER_RETRIES: u32 = 8;

/// How long one connection attempt may take once running: the start-up
/// deadline, capped at [`MAX_ATTEMPT_TIMEOUT`].
fn per_connection_timeout(connect_timeout: Duration) -> Duration {
    connect_timeout.min(MAX_ATTEMPT_TIMEOUT)
}

/// How long the next start-up attempt may take: the time left before
/// `deadline`, between 10 ms and [`MAX_ATTEMPT_TIMEOUT`].
fn attempt_timeout(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(10), MAX_ATTEMPT_TIMEOUT)
}

fn gave_up(timeout: Duration, attempts: u32, last_error: &str) -> String {
    format!(
        "no connection after {} ({attempts} attempts): {}",
        humantime::format_duration(timeout),
        lowercase_first(last_error)
    )
}

/// `text` with a capitalised first word lowercased ("Connection refused" →
/// "connection refused"), leaving acronyms ("IO error") as they are.
fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_uppercase() && !second.is_uppercase() => {
            first.to_lowercase().chain(text.chars().skip(1)).collect()
        }
        _ => text.to_owned(),
    }
}

/// `url` with the password of every `user:password@` replaced by `***`; a
/// comma-separated list of URLs keeps its shape.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(redact_one_url)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(index) => url.split_at(index + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = authority.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}{user}:***{host}{path}"),
        // a lone user part may be a token (nats://token@host)
        None if scheme.starts_with("nats") || scheme.starts_with("tls") => {
            format!("{scheme}***{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("redis://app:hunter2@host"),
            "redis://app:***@host"
        );
        assert_eq!(
            redact_url("nats://a:pw@h1:4222, nats://h2:4222"),
            "nats://a:***@h1:4222, nats://h2:4222"
        );
        assert_eq!(redact_url("nats://s3cr3t-token@h1"), "nats://***@h1");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn only_capitalised_words_are_lowercased() {
        assert_eq!(lowercase_first("Connection refused"), "connection refused");
        assert_eq!(lowercase_first("IO error"), "IO error");
        assert_eq!(lowercase_first(""), "");
    }

    #[test]
    fn reconnect_delay_backs_off_to_a_cap() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(10));
        assert_eq!(reconnect_delay(3), Duration::from_millis(20));
        assert_eq!(reconnect_delay(100), MAX_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(usize::MAX), MAX_RECONNECT_DELAY);
    }

    #[test]
    fn error_names_backend_and_url_without_password() {
        let error = ConnectError::new(
            Backend::Redis,
            "redis://:pw@127.0.0.1:1",
            ConnectErrorKind::Unreachable,
            "connection refused".to_owned(),
        );
        assert_eq!(
            error.to_string(),
            "redis at redis://:***@127.0.0.1:1: connection refused"
        );
    }

    #[test]
    fn redis_client_applies_separate_credentials() {
        let settings = RedisSettings {
            url: "redis://127.0.0.1:6379".to_owned(),
            user: Some("ticker".to_owned()),
            password: Some(crate::config::Secret::new("pw")),
            ..RedisSettings::default()
        };
        let client = redis_client(&settings).expect("a valid url");
        let handshake = client.get_connection_info().redis_settings();
        assert_eq!(handshake.username(), Some("ticker"));
        assert_eq!(handshake.password(), Some("pw"));
        assert!(handshake.skip_set_lib_name(), "no CLIENT SETINFO");
    }
}
