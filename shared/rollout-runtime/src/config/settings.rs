//! The configuration sections every service shares: `nats`, `redis`, `otlp`
//! and `log`, each with its defaults and its start-up checks.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validate};

/// A password or token: read from configuration like a string, never shown by
/// `Debug`, so settings can be logged whole.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(***)")
    }
}

/// How to reach NATS (section `nats`, variables `ROLLOUT_NATS__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    /// Server URL, or several separated by commas (`nats://a:4222,nats://b:4222`)
    pub url: String,
    /// First token of every subject this deployment uses (`rollout.cmd.…`)
    pub subject_prefix: String,
    /// Connection name shown by the server; the service's name when unset
    pub name: Option<String>,
    /// User name for user/password authentication (needs `password`)
    pub user: Option<String>,
    /// Password for user/password authentication (needs `user`)
    pub password: Option<Secret>,
    /// Token for token authentication (not combined with `user`)
    pub token: Option<Secret>,
    /// Path of a `.creds` file (JWT and NKey seed) for decentralised auth
    pub credentials_file: Option<PathBuf>,
    /// PEM file of the certificate authorities to trust for the server's TLS
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (needs `tls_key`)
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate (needs `tls_cert`)
    pub tls_key: Option<PathBuf>,
    /// Refuse to talk to a server that does not offer TLS
    pub tls_required: bool,
    /// How long start-up keeps retrying the first connection, e.g. `10s`
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: Duration,
    /// Messages one subscription buffers in the client; beyond it the client drops them
    /// (a slow consumer; evaluators then compare every flag with Redis)
    pub subscription_capacity: usize,
    /// Prefix of the subjects replies come back on (`<prefix>.<id>`); `_INBOX` when unset.
    /// A user allowed to subscribe only to its own inboxes (`_INBOX_<user>.>`, as
    /// `deploy/nats/accounts.conf` does) needs it, or no request gets its reply
    pub inbox_prefix: Option<String>,
    /// How often the client pings its server; after two unanswered pings it takes the
    /// connection for dead and reconnects to another seed. A server whose host is lost
    /// closes nothing, so this bounds how long a client keeps talking to it, e.g. `2s`
    #[serde(with = "crate::config::duration")]
    pub ping_interval: Duration,
}

impl NatsSettings {
    /// Default server URL.
    pub const DEFAULT_URL: &'static str = "nats://127.0.0.1:4222";
    /// Default subject prefix.
    pub const DEFAULT_SUBJECT_PREFIX: &'static str = "rollout";
    /// Default start-up connection deadline.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default per-subscription buffer (async-nats's own default).
    pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 65_536;
    /// Default ping interval: a lost server is left after about three of them (the
    /// client library's own default, a minute, would leave a service talking to a lost
    /// host for minutes).
    pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(2);

    /// The server URLs, split on commas and trimmed.
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .collect()
    }
}

impl Default for NatsSettings {
    fn default() -> NatsSettings {
        NatsSettings {
            url: NatsSettings::DEFAULT_URL.to_owned(),
            subject_prefix: NatsSettings::DEFAULT_SUBJECT_PREFIX.to_owned(),
            name: None,
            user: None,
            password: None,
            token: None,
            credentials_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            connect_timeout: NatsSettings::DEFAULT_CONNECT_TIMEOUT,
            subscription_capacity: NatsSettings::DEFAULT_SUBSCRIPTION_CAPACITY,
            inbox_prefix: None,
            ping_interval: NatsSettings::DEFAULT_PING_INTERVAL,
        }
    }
}

impl Validate for NatsSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let urls = self.urls();
        if urls.is_empty() {
            return Err(ConfigError::new("nats.url", "must not be empty"));
        }
        for url in urls {
            if let Err(error) = url.parse::<async_nats::ServerAddr>() {
                return Err(ConfigError::new(
                    "nats.url",
                    format!(
                        "invalid server url {:?}: {error}",
                        crate::connect::redact_url(url)
                    ),
                ));
            }
        }
        validate_subject_prefix("nats.subject_prefix", &self.subject_prefix)?;
        if let Some(prefix) = &self.inbox_prefix {
            validate_subject_prefix("nats.inbox_prefix", prefix)?;
        }
        if self.ping_interval < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "nats.ping_interval",
                "must be at least 100ms",
            ));
        }
        if self.subscription_capacity == 0 {
            return Err(ConfigError::new(
                "nats.subscription_capacity",
                "must be at least 1",
            ));
        }
        if matches!(&self.name, Some(name) if name.trim().is_empty()) {
            return Err(ConfigError::new("nats.name", "must not be empty when set"));
        }
        match (&self.user, &self.password) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "nats.password",
                    "must be set together with nats.user",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "nats.user",
                    "must be set together with nats.password",
                ))
            }
            _ => {}
        }
        if self.token.is_some() && self.user.is_some() {
            return Err(ConfigError::new(
                "nats.token",
                "cannot be combined with nats.user: choose one way to authenticate",
            ));
        }
        if self.credentials_file.is_some() && (self.token.is_some() || self.user.is_some()) {
            return Err(ConfigError::new(
                "nats.credentials_file",
                "cannot be combined with nats.user or nats.token: choose one way to authenticate",
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "nats.tls_key",
                    "must be set together with nats.tls_cert",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "nats.tls_cert",
                    "must be set together with nats.tls_key",
                ))
            }
            _ => {}
        }
        check_file("nats.credentials_file", self.credentials_file.as_deref())?;
        check_file("nats.tls_ca", self.tls_ca.as_deref())?;
        check_file("nats.tls_cert", self.tls_cert.as_deref())?;
        check_file("nats.tls_key", self.tls_key.as_deref())?;
        check_positive("nats.connect_timeout", self.connect_timeout)
    }
}

/// A subject prefix (`rollout`, `_INBOX_planner`): dot-separated tokens without
/// whitespace or wildcards.
fn validate_subject_prefix(setting: &str, prefix: &str) -> Result<(), ConfigError> {
    let problem = if prefix.is_empty() {
        Some("must not be empty")
    } else if prefix
        .chars()
        .any(|c| c.is_whitespace() || c == '*' || c == '>')
    {
        Some("must not contain whitespace or the wildcards * and >")
    } else if prefix.split('.').any(str::is_empty) {
        Some("must be dot-separated tokens without empty ones")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ConfigError::new(setting, format!("{prefix:?} {problem}"))),
        None => Ok(()),
    }
}

/// How to reach Redis (section `redis`, variables `ROLLOUT_REDIS__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Server URL, `redis://host:port/db` (credentials may also go in it); for a Redis
    /// Cluster, one or more seed nodes separated by commas
    /// (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`)
    pub url: String,
    /// Whether `url` names seeds of a Redis Cluster (implied when it names several nodes)
    pub cluster: bool,
    /// ACL user name; overrides a user given in the URL
    pub user: Option<String>,
    /// Password (for the ACL user, or `requirepass`); overrides the URL's
    pub password: Option<Secret>,
    /// How long start-up keeps retrying the first connection, e.g. `10s`
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: Duration,
    /// How long one command may wait for its reply before failing, e.g. `2s`
    #[serde(with = "crate::config::duration")]
    pub response_timeout: Duration,
    /// Replicas every commit must reach (`WAIT`) before it is reported or its events are
    /// published, so a fail-over that promotes a replica loses nothing a caller was told;
    /// 0 (the default) waits for none
    pub wait_replicas: u32,
    /// Longest wait for those replicas; a commit they did not confirm in time is reported
    /// as unavailable (retrying with the same command id is safe), e.g. `1s`
    #[serde(with = "crate::config::duration")]
    pub wait_timeout: Duration,
}

impl RedisSettings {
    /// Default server URL.
    pub const DEFAULT_URL: &'static str = "redis://127.0.0.1:6379";
    /// Default start-up connection deadline.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default reply deadline for one command.
    pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default longest wait for replicas to confirm a commit.
    pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(1);

    /// The node URLs `url` names (one for a single server).
    pub fn nodes(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|node| !node.is_empty())
            .collect()
    }

    /// Whether the services talk to a Redis Cluster: `cluster` is set, or `url` names
    /// several nodes.
    pub fn is_cluster(&self) -> bool {
        self.cluster || self.nodes().len() > 1
    }
}

impl Default for RedisSettings {
    fn default() -> RedisSettings {
        RedisSettings {
            url: RedisSettings::DEFAULT_URL.to_owned(),
            cluster: false,
            user: None,
            password: None,
            connect_timeout: RedisSettings::DEFAULT_CONNECT_TIMEOUT,
            response_timeout: RedisSettings::DEFAULT_RESPONSE_TIMEOUT,
            wait_replicas: 0,
            wait_timeout: RedisSettings::DEFAULT_WAIT_TIMEOUT,
        }
    }
}

impl Validate for RedisSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.url.trim().is_empty() {
            return Err(ConfigError::new("redis.url", "must not be empty"));
        }
        for node in self.nodes() {
            if let Err(error) = redis::IntoConnectionInfo::into_connection_info(node) {
                return Err(ConfigError::new(
                    "redis.url",
                    format!(
                        "invalid url {:?}: {error}",
                        crate::connect::redact_url(node)
                    ),
                ));
            }
        }
        if self.user.is_some() && self.password.is_none() {
            return Err(ConfigError::new(
                "redis.password",
                "must be set when redis.user is set",
            ));
        }
        check_positive("redis.connect_timeout", self.connect_timeout)?;
        check_positive("redis.wait_timeout", self.wait_timeout)?;
        if self.wait_replicas > 16 {
            return Err(ConfigError::new(
                "redis.wait_replicas",
                "must be between 0 and 16",
            ));
        }
        check_positive("redis.response_timeout", self.response_timeout)
    }
}

/// The OTLP wire protocol; only HTTP with protobuf bodies is built in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum OtlpProtocol {
    /// OTLP over HTTP with protobuf bodies (`http/protobuf`), to
    /// `<endpoint>/v1/traces`
    #[default]
    HttpProtobuf,
}

impl TryFrom<String> for OtlpProtocol {
    type Error = String;

    fn try_from(text: String) -> Result<OtlpProtocol, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            _ => Err(format!(
                "unsupported protocol {text:?}: only http/protobuf is built in"
            )),
        }
    }
}

/// Where spans go (section `otlp`, variables `ROLLOUT_OTLP__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpSettings {
    /// Collector base URL such as `http://127.0.0.1:4318`; unset: no span export
    pub endpoint: Option<String>,
    /// `service.name` of exported spans; the binary's name when unset
    pub service_name: Option<String>,
    /// Wire protocol; only `http/protobuf`
    pub protocol: OtlpProtocol,
    /// How long one export request may take, e.g. `10s`
    #[serde(with = "crate::config::duration")]
    pub export_timeout: Duration,
}

impl OtlpSettings {
    /// Default deadline of one export request.
    pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

    /// The URL spans are posted to: `<endpoint>/v1/traces`, when export is on.
    pub fn traces_url(&self) -> Option<String> {
        self.endpoint
            .as_deref()
            .map(|endpoint| format!("{}/v1/traces", endpoint.trim_end_matches('/')))
    }
}

impl Default for OtlpSettings {
    fn default() -> OtlpSettings {
        OtlpSettings {
            endpoint: None,
            service_name: None,
            protocol: OtlpProtocol::HttpProtobuf,
            export_timeout: OtlpSettings::DEFAULT_EXPORT_TIMEOUT,
        }
    }
}

impl Validate for OtlpSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(endpoint) = &self.endpoint {
            // the exporter is built without a TLS stack (it would add a C
            // build of aws-lc); a local collector or sidecar speaks http
            if endpoint.starts_with("https://") {
                return Err(ConfigError::new(
                    "otlp.endpoint",
                    format!(
                        "{endpoint:?}: https is not supported, export to a collector over http://"
                    ),
                ));
            }
            let host = endpoint.strip_prefix("http://").unwrap_or_default();
            if host.is_empty() || host.starts_with('/') || host.contains(char::is_whitespace) {
                return Err(ConfigError::new(
                    "otlp.endpoint",
                    format!("{endpoint:?}: expected a url such as http://127.0.0.1:4318"),
                ));
            }
        }
        if matches!(&self.service_name, Some(name) if name.trim().is_empty()) {
            return Err(ConfigError::new(
                "otlp.service_name",
                "must not be empty when set",
            ));
        }
        check_positive("otlp.export_timeout", self.export_timeout)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines (`text`)
    #[default]
    Text,
    /// One JSON object per line (`json`)
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(text: String) -> Result<LogFormat, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "unknown log format {text:?}: expected text or json"
            )),
        }
    }
}

/// What is logged and how (section `log`, variables `ROLLOUT_LOG__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// Level or filter directives, e.g. `info` or `info,rollout_ticker=debug`
    pub level: String,
    /// `text` or `json`
    pub format: LogFormat,
}

impl LogSettings {
    /// Default level.
    pub const DEFAULT_LEVEL: &'static str = "info";
}

impl Default for LogSettings {
    fn default() -> LogSettings {
        LogSettings {
            level: LogSettings::DEFAULT_LEVEL.to_owned(),
            format: LogFormat::Text,
        }
    }
}

const LEVEL_NAMES: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

impl Validate for LogSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        // a bare word is a valid filter directive (a target name), so "inf"
        // would silently turn logging off: bare words must be level names
        for directive in self.level.split(',').map(str::trim) {
            if directive.is_empty() || directive.contains('=') {
                continue;
            }
            if !LEVEL_NAMES.contains(&directive.to_ascii_lowercase().as_str()) {
                return Err(ConfigError::new(
                    "log.level",
                    format!(
                        "unknown level {directive:?}: expected one of trace, debug, info, warn, error, off, or target=level directives"
                    ),
                ));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map(|_| ())
            .map_err(|error| {
                ConfigError::new(
                    "log.level",
                    format!("invalid filter {:?}: {error}", self.level),
                )
            })
    }
}

fn check_file(setting: &str, path: Option<&Path>) -> Result<(), ConfigError> {
    match path {
        Some(path) if !path.is_file() => Err(ConfigError::new(
            setting,
            format!("{}: no such file", path.display()),
        )),
        _ => Ok(()),
    }
}

fn check_positive(setting: &str, duration: Duration) -> Result<(), ConfigError> {
    if duration.is_zero() {
        Err(ConfigError::new(setting, "must be longer than zero"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(NatsSettings::default().validate(), Ok(()));
        assert_eq!(RedisSettings::default().validate(), Ok(()));
        assert_eq!(OtlpSettings::default().validate(), Ok(()));
        assert_eq!(LogSettings::default().validate(), Ok(()));
    }

    #[test]
    fn bad_nats_settings_name_the_key() {
        let bad_url = NatsSettings {
            url: "nats://host:notaport".to_owned(),
            ..NatsSettings::default()
        };
        assert_eq!(
            bad_url.validate().map_err(|e| e.setting().to_owned()),
            Err("nats.url".to_owned())
        );

        let bad_prefix = NatsSettings {
            subject_prefix: "rollout.>".to_owned(),
            ..NatsSettings::default()
        };
        assert_eq!(
            bad_prefix.validate().map_err(|e| e.setting().to_owned()),
            Err("nats.subject_prefix".to_owned())
        );

        for bad in ["", "_INBOX.>", "_INBOX_a b", "_INBOX..x", "_INBOX."] {
            let bad_inbox = NatsSettings {
                inbox_prefix: Some(bad.to_owned()),
                ..NatsSettings::default()
            };
            assert_eq!(
                bad_inbox.validate().map_err(|e| e.setting().to_owned()),
                Err("nats.inbox_prefix".to_owned()),
                "{bad:?}"
            );
        }
        let own_inbox = NatsSettings {
            inbox_prefix: Some("_INBOX_sdk-prod".to_owned()),
            ..NatsSettings::default()
        };
        assert_eq!(own_inbox.validate(), Ok(()));

        let user_without_password = NatsSettings {
            user: Some("planner".to_owned()),
            ..NatsSettings::default()
        };
        assert_eq!(
            user_without_password
                .validate()
                .map_err(|e| e.setting().to_owned()),
            Err("nats.password".to_owned())
        );

        let missing_ca = NatsSettings {
            tls_ca: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..NatsSettings::default()
        };
        assert_eq!(
            missing_ca.validate().map_err(|e| e.setting().to_owned()),
            Err("nats.tls_ca".to_owned())
        );

        let hasty_pings = NatsSettings {
            ping_interval: Duration::from_millis(10),
            ..NatsSettings::default()
        };
        assert_eq!(
            hasty_pings.validate().map_err(|e| e.setting().to_owned()),
            Err("nats.ping_interval".to_owned())
        );

        let zero_timeout = NatsSettings {
            connect_timeout: Duration::ZERO,
            ..NatsSettings::default()
        };
        assert_eq!(
            zero_timeout.validate().map_err(|e| e.setting().to_owned()),
            Err("nats.connect_timeout".to_owned())
        );
    }

    #[test]
    fn several_nats_urls_are_accepted() {
        let settings = NatsSettings {
            url: "nats://a:4222, nats://b:4222".to_owned(),
            ..NatsSettings::default()
        };
        assert_eq!(settings.urls(), vec!["nats://a:4222", "nats://b:4222"]);
        assert_eq!(settings.validate(), Ok(()));
    }

    #[test]
    fn bad_redis_url_is_named_without_its_password() {
        let settings = RedisSettings {
            url: "redis://:hunter2@host:notaport".to_owned(),
            ..RedisSettings::default()
        };
        let error = settings.validate().expect_err("port is not a number");
        assert_eq!(error.setting(), "redis.url");
        assert!(!error.message().contains("hunter2"), "{error}");
    }

    #[test]
    fn several_redis_nodes_mean_a_cluster_and_each_is_checked() {
        let single = RedisSettings::default();
        assert!(!single.is_cluster());
        let seeds = RedisSettings {
            url: "redis://a:7000, redis://b:7001,".to_owned(),
            ..RedisSettings::default()
        };
        assert_eq!(seeds.nodes(), ["redis://a:7000", "redis://b:7001"]);
        assert!(seeds.is_cluster());
        assert_eq!(seeds.validate(), Ok(()));
        let one_seed = RedisSettings {
            cluster: true,
            ..RedisSettings::default()
        };
        assert!(one_seed.is_cluster());
        let bad = RedisSettings {
            url: "redis://a:7000,redis://:hunter2@b:nope".to_owned(),
            ..RedisSettings::default()
        };
        let error = bad.validate().expect_err("the second node's port");
        assert_eq!(error.setting(), "redis.url");
        assert!(!error.message().contains("hunter2"), "{error}");
        let too_many = RedisSettings {
            wait_replicas: 17,
            ..RedisSettings::default()
        };
        assert_eq!(
            too_many
                .validate()
                .map_err(|error| error.setting().to_owned()),
            Err("redis.wait_replicas".to_owned())
        );
    }

    #[test]
    fn otlp_endpoint_must_be_http() {
        let https = OtlpSettings {
            endpoint: Some("https://collector:4318".to_owned()),
            ..OtlpSettings::default()
        };
        assert_eq!(
            https.validate().map_err(|e| e.setting().to_owned()),
            Err("otlp.endpoint".to_owned())
        );
        let http = OtlpSettings {
            endpoint: Some("http://127.0.0.1:4318/".to_owned()),
            ..OtlpSettings::default()
        };
        assert_eq!(http.validate(), Ok(()));
        assert_eq!(
            http.traces_url().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
    }

    #[test]
    fn misspelt_log_level_is_refused() {
        let typo = LogSettings {
            level: "inf".to_owned(),
            ..LogSettings::default()
        };
        assert_eq!(
            typo.validate().map_err(|e| e.setting().to_owned()),
            Err("log.level".to_owned())
        );
        let directives = LogSettings {
            level: "info,rollout_ticker=debug".to_owned(),
            ..LogSettings::default()
        };
        assert_eq!(directives.validate(), Ok(()));
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let settings = RedisSettings {
            password: Some(Secret::new("hunter2")),
            ..RedisSettings::default()
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
    }
}
