//! The console's configuration: the shared `nats`, `otlp` and `log` sections, `http` (the
//! listener) and `console` (namespaces shown, accounts, tokens, sessions, trace links),
//! loaded by `rollout_runtime::config` from defaults, an optional file and
//! `ROLLOUT_<SECTION>__<KEY>` variables.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use rollout_runtime::config::{
    ConfigError, LogSettings, NatsSettings, OtlpSettings, Secret, Validate,
};
use rollout_runtime::service::ServiceConfig;
use rollout_wire::subjects::Namespace;
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::auth::Role;

/// The whole console configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// How to reach NATS.
    pub nats: NatsSettings,
    /// Span export.
    pub otlp: OtlpSettings,
    /// Logging.
    pub log: LogSettings,
    /// The HTTP listener.
    pub http: HttpSettings,
    /// What the console shows and who may use it.
    pub console: ConsoleSettings,
}

impl ServiceConfig for ConsoleConfig {
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

impl Validate for ConsoleConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.otlp.validate()?;
        self.log.validate()?;
        self.console.validate()
    }
}

/// Section `http` (`ROLLOUT_HTTP__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address to listen on, e.g. `0.0.0.0:8090` (port 0 picks a free port)
    pub listen: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> HttpSettings {
        HttpSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8090)),
        }
    }
}

/// Section `console` (`ROLLOUT_CONSOLE__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Namespaces the console shows, first one preselected: a list, or in the environment
    /// `prod,staging`
    pub namespaces: Listed<String>,
    /// Operator accounts: in a file a list of `{name, role, password_hash}` tables, in the
    /// environment `name:role:hash;name:role:hash`. `role` is `operator` (may act) or
    /// `viewer` (sees everything, acts on nothing); `password_hash` is an argon2id PHC
    /// string from `console-hash-password`
    pub users: Listed<Account>,
    /// API bearer tokens: in a file a list of `{name, role, sha256}` tables (the token's
    /// SHA-256 in hex), in the environment `name:role:sha256;...`
    pub tokens: Listed<TokenAccount>,
    /// How long a sign-in lasts, e.g. `8h`
    #[serde(with = "rollout_runtime::config::duration")]
    pub session_ttl: Duration,
    /// Key that signs session cookies (at least 32 bytes). Unset: a random key per process,
    /// so a console restart signs everyone out, and replicas do not share sign-ins
    pub session_key: Option<Secret>,
    /// Mark cookies `Secure` (only sent over HTTPS): turn on behind a TLS proxy
    pub secure_cookies: bool,
    /// Link for a trace id, with `{trace_id}` in it, e.g.
    /// `http://localhost:16686/trace/{trace_id}` for Jaeger; unset shows ids as text
    pub trace_url: Option<String>,
    /// How long a planner query or command may take before the console reports it
    #[serde(with = "rollout_runtime::config::duration")]
    pub request_timeout: Duration,
}

impl ConsoleSettings {
    /// Default sign-in lifetime.
    pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
    /// Shortest session key accepted, in bytes.
    pub const MIN_SESSION_KEY_BYTES: usize = 32;
}

impl Default for ConsoleSettings {
    fn default() -> ConsoleSettings {
        ConsoleSettings {
            namespaces: Listed(vec!["default".to_owned()]),
            users: Listed::default(),
            tokens: Listed::default(),
            session_ttl: ConsoleSettings::DEFAULT_SESSION_TTL,
            session_key: None,
            secure_cookies: false,
            trace_url: None,
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl Validate for ConsoleSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.namespaces.0.is_empty() {
            return Err(ConfigError::new(
                "console.namespaces",
                "must name at least one namespace",
            ));
        }
        for (index, namespace) in self.namespaces.0.iter().enumerate() {
            Namespace::new(namespace.as_str()).map_err(|error| {
                ConfigError::new(format!("console.namespaces[{index}]"), error.message())
            })?;
        }
        if self.users.0.is_empty() && self.tokens.0.is_empty() {
            return Err(ConfigError::new(
                "console.users",
                "no account can sign in: list at least one user (or token); hash a password with console-hash-password",
            ));
        }
        let mut names = HashSet::new();
        for (index, account) in self.users.0.iter().enumerate() {
            let setting = format!("console.users[{index}]");
            check_name(&account.name)
                .map_err(|problem| ConfigError::new(format!("{setting}.name"), problem))?;
            if !names.insert(account.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{setting}.name"),
                    format!("{:?} is listed twice", account.name),
                ));
            }
            crate::auth::check_password_hash(account.password_hash.expose())
                .map_err(|problem| ConfigError::new(format!("{setting}.password_hash"), problem))?;
        }
        for (index, token) in self.tokens.0.iter().enumerate() {
            let setting = format!("console.tokens[{index}]");
            check_name(&token.name)
                .map_err(|problem| ConfigError::new(format!("{setting}.name"), problem))?;
            let digest = token.sha256.expose();
            if digest.len() != 64 || !digest.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                return Err(ConfigError::new(
                    format!("{setting}.sha256"),
                    "must be the token's SHA-256 as 64 hexadecimal digits (sha256sum prints it)",
                ));
            }
        }
        if let Some(key) = &self.session_key {
            if key.expose().len() < ConsoleSettings::MIN_SESSION_KEY_BYTES {
                return Err(ConfigError::new(
                    "console.session_key",
                    format!(
                        "must be at least {} bytes long",
                        ConsoleSettings::MIN_SESSION_KEY_BYTES
                    ),
                ));
            }
        }
        if self.session_ttl < Duration::from_secs(60) {
            return Err(ConfigError::new(
                "console.session_ttl",
                "must be at least 1m",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError::new(
                "console.request_timeout",
                "must be more than zero",
            ));
        }
        if let Some(url) = &self.trace_url {
            if !url.contains("{trace_id}") {
                return Err(ConfigError::new(
                    "console.trace_url",
                    "must contain {trace_id}, where the trace id goes",
                ));
            }
        }
        Ok(())
    }
}

/// An account name: what the audit records as the actor.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".to_owned());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return Err(format!(
            "{name:?}: use letters, digits, '-', '_', '.' and '@'"
        ));
    }
    Ok(())
}

/// An operator account (`Debug` does not show the hash).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Sign-in name, recorded as the actor of what the operator does
    pub name: String,
    /// What the account may do
    pub role: Role,
    /// argon2id PHC string
    pub password_hash: Secret,
}

/// A bearer token for scripts (`Debug` does not show the digest).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenAccount {
    /// Name recorded as the actor
    pub name: String,
    /// What the token may do
    pub role: Role,
    /// SHA-256 of the token, hexadecimal
    pub sha256: Secret,
}

/// Reads one entry of the environment form (`name:role:secret`).
pub trait FromEntry: Sized {
    /// Parses `text`; the error must not repeat the text (it may hold a secret).
    fn from_entry(text: &str) -> Result<Self, String>;
    /// The separator between entries.
    const SEPARATOR: char;
}

impl FromEntry for String {
    const SEPARATOR: char = ',';
    fn from_entry(text: &str) -> Result<String, String> {
        Ok(text.to_owned())
    }
}

fn name_role_secret(text: &str) -> Result<(String, Role, Secret), String> {
    let mut parts = text.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(role), Some(secret)) if !name.is_empty() && !secret.is_empty() => {
            let role = Role::parse(role.trim())?;
            Ok((name.trim().to_owned(), role, Secret::new(secret.trim())))
        }
        _ => Err("is not <name>:<role>:<secret>".to_owned()),
    }
}

impl FromEntry for Account {
    const SEPARATOR: char = ';';
    fn from_entry(text: &str) -> Result<Account, String> {
        let (name, role, password_hash) = name_role_secret(text)?;
        Ok(Account {
            name,
            role,
            password_hash,
        })
    }
}

impl FromEntry for TokenAccount {
    const SEPARATOR: char = ';';
    fn from_entry(text: &str) -> Result<TokenAccount, String> {
        let (name, role, sha256) = name_role_secret(text)?;
        Ok(TokenAccount { name, role, sha256 })
    }
}

/// A list setting: a list in a file, one string of separated entries in the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed<T>(pub Vec<T>);

impl<T> Default for Listed<T> {
    fn default() -> Listed<T> {
        Listed(Vec::new())
    }
}

impl<T: FromEntry> Listed<T> {
    /// Reads the environment form; a bad entry is named by its index, never shown.
    pub fn parse(text: &str) -> Result<Listed<T>, String> {
        text.split(T::SEPARATOR)
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .enumerate()
            .map(|(index, entry)| {
                T::from_entry(entry).map_err(|problem| format!("entry {index} {problem}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Listed)
    }
}

impl<'de, T: FromEntry + DeserializeOwned> Deserialize<'de> for Listed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Listed<T>, D::Error> {
        struct ListVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: FromEntry + DeserializeOwned> Visitor<'de> for ListVisitor<T> {
            type Value = Listed<T>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    formatter,
                    "a list, or a string of entries separated by {:?}",
                    T::SEPARATOR
                )
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Listed<T>, E> {
                Listed::parse(text).map_err(E::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Listed<T>, A::Error> {
                let mut list = Vec::new();
                while let Some(item) = items.next_element::<T>()? {
                    list.push(item);
                }
                Ok(Listed(list))
            }
        }

        deserializer.deserialize_any(ListVisitor(std::marker::PhantomData))
    }
}
