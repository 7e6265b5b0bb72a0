//! The evaluator's configuration: the shared `nats`, `redis`, `otlp` and `log` sections
//! plus `http` (OFREP and health endpoints) and `evaluator` (snapshot upkeep, outcome
//! batching, fleet liveness, concurrency), loaded by `rollout_runtime::config` from
//! defaults, an optional file and `ROLLOUT_<SECTION>__<KEY>` variables.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use rollout_runtime::config::{
    ConfigError, LogSettings, NatsSettings, OtlpSettings, RedisSettings, Secret, Validate,
};
use rollout_runtime::service::ServiceConfig;
use rollout_wire::subjects::Namespace;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::auth::{MAX_TOKEN_BYTES, MIN_TOKEN_BYTES};

/// The whole evaluator configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluatorConfig {
    /// How to reach NATS.
    pub nats: NatsSettings,
    /// How to reach Redis.
    pub redis: RedisSettings,
    /// Span export.
    pub otlp: OtlpSettings,
    /// Logging.
    pub log: LogSettings,
    /// The HTTP listener (OFREP, `/healthz`, `/readyz`, `/metrics`).
    pub http: HttpSettings,
    /// Snapshot upkeep, outcome batching, fleet and concurrency.
    pub evaluator: EvaluatorSettings,
}

impl ServiceConfig for EvaluatorConfig {
    fn log(&self) -> &LogSettings {
        &self.log
    }

    fn otlp(&self) -> &OtlpSettings {
        &self.otlp
    }

    fn probe_address(&self) -> Option<std::net::SocketAddr> {
        Some(self.http.listen)
    }
}

impl Validate for EvaluatorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.redis.validate()?;
        self.otlp.validate()?;
        self.log.validate()?;
        self.http.validate()?;
        self.evaluator.validate()
    }
}

/// Section `http` (`ROLLOUT_HTTP__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address to listen on, e.g. `0.0.0.0:8080` (port 0 picks a free port)
    pub listen: SocketAddr,
    /// Namespace of OFREP requests without an `X-Rollout-Namespace` header (when tokens
    /// are required, a request without the header gets its token's namespace instead)
    pub namespace: String,
    /// Whether OFREP requests need `Authorization: Bearer <token>` with one of `tokens`,
    /// and then only reach that token's namespace; `/healthz`, `/readyz` and `/metrics`
    /// stay open. Off by default; the deploy files turn it on
    pub require_token: bool,
    /// OFREP bearer tokens, each bound to one namespace: in a file a list of
    /// `{namespace, token}` tables, in the environment `<ns>:<token>,<ns>:<token>`
    pub tokens: BearerTokens,
    /// OFREP change push: bulk answers point at `/ofrep/v1/sse/<ns>`, which sends a
    /// `refetchEvaluation` message on every change of the namespace (on by default)
    pub sse: bool,
    /// SSE connections one evaluator holds at most; past it, 503 (default 10 000)
    pub sse_max_connections: usize,
    /// A stream that sent no message for this long is closed (the client reconnects with
    /// `Last-Event-ID`); also the `inactivityDelaySec` the bulk answer advertises (2m)
    #[serde(with = "rollout_runtime::config::duration")]
    pub sse_inactivity: Duration,
    /// After a message, changes within this window become one message at its end (50ms)
    #[serde(with = "rollout_runtime::config::duration")]
    pub sse_coalesce: Duration,
    /// The URL clients reach this evaluator at, e.g. `https://flags.example.com`, for the
    /// SSE address in bulk answers; unset, `http://<Host header>`
    pub public_url: Option<String>,
    /// Web origins whose pages may call OFREP and open its change stream (CORS), e.g.
    /// `https://shop.example.com`, or `*` for any; none by default (in the environment,
    /// comma-separated)
    #[serde(deserialize_with = "origins")]
    pub cors_origins: Vec<String>,
}

/// `http.cors_origins`: a list in a file, a comma-separated string in the environment.
fn origins<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Origins {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Origins::deserialize(deserializer)? {
        Origins::List(list) => list,
        Origins::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|origin| !origin.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl HttpSettings {
    /// Default listen address.
    pub const DEFAULT_LISTEN: &'static str = "0.0.0.0:8080";
    /// Default namespace of OFREP requests.
    pub const DEFAULT_NAMESPACE: &'static str = "default";
}

impl Default for HttpSettings {
    fn default() -> HttpSettings {
        HttpSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            namespace: HttpSettings::DEFAULT_NAMESPACE.to_owned(),
            require_token: false,
            tokens: BearerTokens::default(),
            sse: true,
            sse_max_connections: 10_000,
            sse_inactivity: Duration::from_secs(120),
            sse_coalesce: Duration::from_millis(50),
            public_url: None,
            cors_origins: Vec::new(),
        }
    }
}

impl Validate for HttpSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        Namespace::new(self.namespace.as_str())
            .map_err(|error| ConfigError::new("http.namespace", error.message()))?;
        if self.require_token && self.tokens.0.is_empty() {
            return Err(ConfigError::new(
                "http.tokens",
                "must list at least one token while http.require_token is on",
            ));
        }
        if self.sse_max_connections == 0 {
            return Err(ConfigError::new(
                "http.sse_max_connections",
                "must be at least 1 (turn SSE off with http.sse = false)",
            ));
        }
        if self.sse_inactivity < Duration::from_secs(30) {
            return Err(ConfigError::new(
                "http.sse_inactivity",
                "must be at least 30s (streams are kept alive every 15s)",
            ));
        }
        if self.sse_coalesce > Duration::from_secs(2) {
            return Err(ConfigError::new(
                "http.sse_coalesce",
                "must be at most 2s: a change reaches clients within SPEC §11.1's 2 s",
            ));
        }
        if let Some(url) = &self.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.contains(char::is_whitespace)
            {
                return Err(ConfigError::new(
                    "http.public_url",
                    "must be an http:// or https:// URL, e.g. https://flags.example.com",
                ));
            }
        }
        for (index, origin) in self.cors_origins.iter().enumerate() {
            let scheme_and_host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let valid = origin == "*"
                || scheme_and_host
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', ' ', ',', '*']));
            if !valid {
                return Err(ConfigError::new(
                    format!("http.cors_origins[{index}]"),
                    "must be an origin such as https://shop.example.com (scheme and host, no path) or *",
                ));
            }
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (index, binding) in self.tokens.0.iter().enumerate() {
            Namespace::new(binding.namespace.as_str()).map_err(|error| {
                ConfigError::new(format!("http.tokens[{index}].namespace"), error.message())
            })?;
            let setting = format!("http.tokens[{index}].token");
            // the messages never show the token: configuration errors end up in logs
            check_token(binding.token.expose()).map_err(|problem| {
                ConfigError::new(setting.clone(), format!("the token {problem}"))
            })?;
            if let Some(first) = seen.insert(binding.token.expose(), index) {
                return Err(ConfigError::new(
                    setting,
                    format!("the same token as http.tokens[{first}]: a token names one namespace"),
                ));
            }
        }
        Ok(())
    }
}

/// One OFREP bearer token and the namespace it reaches (`Debug` does not show the token).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerToken {
    /// The namespace requests with this token evaluate in
    pub namespace: String,
    /// The token, `Authorization: Bearer <token>`
    pub token: Secret,
}

/// The `http.tokens` list: from a file as a list of `{namespace, token}` tables, from the
/// environment (where a value is one string) as `<ns>:<token>,<ns>:<token>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BearerTokens(pub Vec<BearerToken>);

impl BearerTokens {
    /// The tokens.
    pub fn iter(&self) -> impl Iterator<Item = &BearerToken> {
        self.0.iter()
    }

    /// Reads `<ns>:<token>,<ns>:<token>` (blanks around entries ignored).
    pub fn parse(text: &str) -> Result<BearerTokens, String> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .enumerate()
            .map(|(index, entry)| match entry.split_once(':') {
                Some((namespace, token)) if !namespace.is_empty() && !token.is_empty() => {
                    Ok(BearerToken {
                        namespace: namespace.trim().to_owned(),
                        token: Secret::new(token.trim()),
                    })
                }
                // the entry itself is not shown: it may be a token
                _ => Err(format!(
                    "entry {index} is not <namespace>:<token> (entries are separated by commas)"
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(BearerTokens)
    }
}

impl<'de> Deserialize<'de> for BearerTokens {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<BearerTokens, D::Error> {
        struct TokensVisitor;

        impl<'de> Visitor<'de> for TokensVisitor {
            type Value = BearerTokens;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(
                    "a list of {namespace, token} tables or a string <ns>:<token>,<ns>:<token>",
                )
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<BearerTokens, E> {
                BearerTokens::parse(text).map_err(E::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<BearerTokens, A::Error> {
                let mut tokens = Vec::with_capacity(items.size_hint().unwrap_or(0).min(1024));
                while let Some(token) = items.next_element::<BearerToken>()? {
                    tokens.push(token);
                }
                Ok(BearerTokens(tokens))
            }
        }

        deserializer.deserialize_any(TokensVisitor)
    }
}

/// A usable bearer token: [`MIN_TOKEN_BYTES`] to [`MAX_TOKEN_BYTES`] characters of RFC
/// 6750's `b64token` (letters, digits, `-._~+/`, then `=` padding).
fn check_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN_BYTES {
        return Err(format!(
            "is shorter than {MIN_TOKEN_BYTES} characters: use a random one (e.g. openssl rand -hex 32)"
        ));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!("is longer than {MAX_TOKEN_BYTES} characters"));
    }
    let body = token.trim_end_matches('=');
    let valid = !body.is_empty()
        && body
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-._~+/".contains(&byte));
    if !valid {
        return Err(
            "may contain only letters, digits, '-', '.', '_', '~', '+', '/' and trailing '='"
                .to_owned(),
        );
    }
    Ok(())
}

/// Section `evaluator` (`ROLLOUT_EVALUATOR__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluatorSettings {
    /// How often every held version is compared with Redis, to catch missed events
    #[serde(with = "rollout_runtime::config::duration")]
    pub resync_interval: Duration,
    /// How often the NATS connection is checked for a reconnection (which triggers a
    /// full comparison), Redis's generation id for a data loss (which triggers a rebuild),
    /// every namespace's flag-version counter for a change whose event never arrived, and
    /// failed resyncs are retried
    #[serde(with = "rollout_runtime::config::duration")]
    pub reconnect_check_interval: Duration,
    /// Longest time reported outcomes wait in memory before one pipelined write
    #[serde(with = "rollout_runtime::config::duration")]
    pub outcome_flush_interval: Duration,
    /// Reported outcomes that trigger a write before the interval ends
    pub outcome_batch_max: usize,
    /// An agent silent this long counts as stale in stage counts; fleet calls refresh
    /// liveness well within it
    #[serde(with = "rollout_runtime::config::duration")]
    pub stale_agent_after: Duration,
    /// An agent silent this long is forgotten (its record expires; it stops counting as a
    /// stage member), so machines that left do not grow Redis forever.
    #[serde(with = "rollout_runtime::config::duration")]
    pub agent_expire_after: Duration,
    /// How long an agent's labels read from Redis are reused for `desired` (0: always read)
    #[serde(with = "rollout_runtime::config::duration")]
    pub agent_cache_ttl: Duration,
    /// Subscriptions in queue group `evaluator` on `rollout.eval.*`, each handled by its
    /// own task (evaluation is pure CPU: about one per core)
    pub eval_workers: usize,
    /// Most fleet calls handled at once (they wait on Redis)
    pub concurrency: usize,
    /// How long shutdown waits for in-flight work and the last outcome flush
    #[serde(with = "rollout_runtime::config::duration")]
    pub shutdown_grace: Duration,
}

impl Default for EvaluatorSettings {
    fn default() -> EvaluatorSettings {
        EvaluatorSettings {
            resync_interval: Duration::from_secs(30),
            reconnect_check_interval: Duration::from_secs(1),
            outcome_flush_interval: Duration::from_millis(250),
            outcome_batch_max: 10_000,
            stale_agent_after: Duration::from_secs(60),
            agent_expire_after: Duration::from_secs(7 * 24 * 3600),
            agent_cache_ttl: Duration::from_secs(2),
            eval_workers: 2,
            concurrency: 64,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

fn positive(setting: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(setting, "must be greater than zero"));
    }
    Ok(())
}

fn in_range(setting: &str, value: usize, low: usize, high: usize) -> Result<(), ConfigError> {
    if value < low || value > high {
        return Err(ConfigError::new(
            setting,
            format!("must be between {low} and {high}, not {value}"),
        ));
    }
    Ok(())
}

impl Validate for EvaluatorSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        positive("evaluator.resync_interval", self.resync_interval)?;
        positive(
            "evaluator.reconnect_check_interval",
            self.reconnect_check_interval,
        )?;
        positive(
            "evaluator.outcome_flush_interval",
            self.outcome_flush_interval,
        )?;
        in_range(
            "evaluator.outcome_batch_max",
            self.outcome_batch_max,
            1,
            10_000_000,
        )?;
        positive("evaluator.stale_agent_after", self.stale_agent_after)?;
        if self.agent_expire_after <= self.stale_agent_after {
            return Err(ConfigError::new(
                "evaluator.agent_expire_after",
                "must be longer than evaluator.stale_agent_after",
            ));
        }
        in_range("evaluator.eval_workers", self.eval_workers, 1, 256)?;
        in_range("evaluator.concurrency", self.concurrency, 1, 100_000)?;
        positive("evaluator.shutdown_grace", self.shutdown_grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_runtime::config::{load_config, MapEnv};

    #[test]
    fn defaults_validate_and_environment_overrides() {
        let config: EvaluatorConfig = load_config(None, &MapEnv::new()).expect("defaults");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.http.namespace, "default");
        assert_eq!(config.http.listen.port(), 8080);
        let env = MapEnv::new()
            .with("ROLLOUT_HTTP__LISTEN", "127.0.0.1:0")
            .with("ROLLOUT_HTTP__NAMESPACE", "prod")
            .with("ROLLOUT_EVALUATOR__RESYNC_INTERVAL", "5s")
            .with("ROLLOUT_EVALUATOR__OUTCOME_BATCH_MAX", "50");
        let config: EvaluatorConfig = load_config(None, &env).expect("loads");
        assert_eq!(config.http.listen.port(), 0);
        assert_eq!(config.http.namespace, "prod");
        assert_eq!(config.evaluator.resync_interval, Duration::from_secs(5));
        assert_eq!(config.evaluator.outcome_batch_max, 50);
    }

    #[test]
    fn bad_settings_are_named() {
        let env = MapEnv::new().with("ROLLOUT_HTTP__NAMESPACE", "not.valid");
        let config: EvaluatorConfig = load_config(None, &env).expect("loads");
        assert_eq!(
            config.validate().expect_err("invalid").setting(),
            "http.namespace"
        );
        let env = MapEnv::new().with("ROLLOUT_HTTP__LISTEN", "nowhere");
        let error = load_config::<EvaluatorConfig>(None, &env).expect_err("bad address");
        assert_eq!(error.setting(), "http.listen");
        let env = MapEnv::new().with("ROLLOUT_EVALUATOR__CONCURRENCY", "0");
        let config: EvaluatorConfig = load_config(None, &env).expect("loads");
        assert_eq!(
            config.validate().expect_err("zero").setting(),
            "evaluator.concurrency"
        );
        let env = MapEnv::new().with("ROLLOUT_EVALUATOR__UNKNOWN", "1");
        assert!(load_config::<EvaluatorConfig>(None, &env).is_err());
        for (variable, value, setting) in [
            (
                "ROLLOUT_HTTP__SSE_MAX_CONNECTIONS",
                "0",
                "http.sse_max_connections",
            ),
            ("ROLLOUT_HTTP__SSE_INACTIVITY", "5s", "http.sse_inactivity"),
            ("ROLLOUT_HTTP__SSE_COALESCE", "3s", "http.sse_coalesce"),
            (
                "ROLLOUT_HTTP__PUBLIC_URL",
                "flags.example.com",
                "http.public_url",
            ),
            (
                "ROLLOUT_HTTP__CORS_ORIGINS",
                "https://a.example.com,https://b.example.com/path",
                "http.cors_origins[1]",
            ),
        ] {
            let env = MapEnv::new().with(variable, value);
            let config: EvaluatorConfig = load_config(None, &env).expect("loads");
            assert_eq!(config.validate().expect_err(variable).setting(), setting);
        }
    }

    const PROD_TOKEN: &str = "prod-token-0123456789abcdef";
    const DEV_TOKEN: &str = "dev-token-0123456789abcdef==";

    #[test]
    fn tokens_come_from_a_file_list_or_an_environment_string() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("evaluator.toml");
        std::fs::write(
            &file,
            format!(
                "[http]\nrequire_token = true\n\n[[http.tokens]]\nnamespace = \"prod\"\ntoken = \"{PROD_TOKEN}\"\n\n[[http.tokens]]\nnamespace = \"dev\"\ntoken = \"{DEV_TOKEN}\"\n"
            ),
        )
        .expect("write");
        let config: EvaluatorConfig = load_config(Some(&file), &MapEnv::new()).expect("loads");
        assert_eq!(config.validate(), Ok(()));
        assert!(config.http.require_token);
        let bound: Vec<(&str, &str)> = config
            .http
            .tokens
            .iter()
            .map(|binding| (binding.namespace.as_str(), binding.token.expose()))
            .collect();
        assert_eq!(bound, vec![("prod", PROD_TOKEN), ("dev", DEV_TOKEN)]);
        assert!(
            !format!("{config:?}").contains(PROD_TOKEN),
            "tokens never show"
        );

        // the environment replaces the file's list
        let env = MapEnv::new().with("ROLLOUT_HTTP__TOKENS", format!(" dev:{DEV_TOKEN} ,"));
        let config: EvaluatorConfig = load_config(Some(&file), &env).expect("loads");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.http.tokens.0.len(), 1);
        assert_eq!(config.http.tokens.0[0].namespace, "dev");
        assert_eq!(config.http.tokens.0[0].token.expose(), DEV_TOKEN);
    }

    #[test]
    fn bad_tokens_are_named_without_showing_them() {
        let load = |require: &str, tokens: &str| {
            let env = MapEnv::new()
                .with("ROLLOUT_HTTP__REQUIRE_TOKEN", require)
                .with("ROLLOUT_HTTP__TOKENS", tokens);
            load_config::<EvaluatorConfig>(None, &env)
        };
        let error = load("true", "")
            .expect("loads")
            .validate()
            .expect_err("no tokens");
        assert_eq!(error.setting(), "http.tokens");
        let oversized = "x".repeat(MAX_TOKEN_BYTES + 1);
        let cases = [
            ("prod", "tiny-token", "http.tokens[0].token"),
            ("prod", oversized.as_str(), "http.tokens[0].token"),
            ("prod", "has-a-space in-it-0123", "http.tokens[0].token"),
            ("no.such", PROD_TOKEN, "http.tokens[0].namespace"),
        ];
        for (namespace, token, setting) in cases {
            let error = load("true", &format!("{namespace}:{token}"))
                .expect("loads")
                .validate()
                .expect_err(token);
            assert_eq!(error.setting(), setting, "{namespace}:{token}");
            assert!(!error.message().contains(token), "{error}");
        }
        let error = load("true", &format!("prod:{PROD_TOKEN},dev:{PROD_TOKEN}"))
            .expect("loads")
            .validate()
            .expect_err("one token, two namespaces");
        assert_eq!(error.setting(), "http.tokens[1].token");
        assert!(!error.message().contains(PROD_TOKEN), "{error}");
        let error = load("true", PROD_TOKEN).expect_err("no namespace");
        assert_eq!(error.setting(), "http.tokens");
        assert!(!error.message().contains(PROD_TOKEN), "{error}");
        // tokens may be listed before they are required (clients start sending them)
        let config = load("false", &format!("prod:{PROD_TOKEN}")).expect("loads");
        assert_eq!(config.validate(), Ok(()));
    }
}
