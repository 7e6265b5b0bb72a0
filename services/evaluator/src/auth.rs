//! Who may evaluate which namespace over OFREP (SPEC §11.1, least privilege): bearer
//! tokens, each bound to one namespace, looked up in a table built at start. With tokens
//! required, a request costs one header parse and one hash lookup and allocates nothing;
//! without, the `Authorization` header is not read at all.

use std::collections::HashMap;
use std::fmt;

use axum::http::HeaderValue;

use crate::config::HttpSettings;

/// Tokens shorter than this are refused at start: a bearer token is a random secret.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Longest token accepted, in configuration and in requests.
pub const MAX_TOKEN_BYTES: usize = 256;

/// Why a request's credentials were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `Bearer <token>` in visible ASCII.
    Malformed,
    /// A token longer than [`MAX_TOKEN_BYTES`] (its length).
    Oversized(usize),
    /// A token no configured binding has.
    Unknown,
    /// A valid token asking for a namespace other than its own.
    OtherNamespace {
        /// The token's namespace.
        bound: String,
        /// The namespace the request named.
        requested: String,
    },
}

impl Denied {
    /// 401 for missing or bad credentials, 403 for good ones asking too much.
    pub fn status(&self) -> u16 {
        match self {
            Denied::OtherNamespace { .. } => 403,
            _ => 401,
        }
    }

    /// The `WWW-Authenticate` challenge of a 401 (RFC 6750 §3); none for a 403.
    pub fn challenge(&self) -> Option<&'static str> {
        match self {
            Denied::Missing => Some("Bearer realm=\"rollout\""),
            Denied::Malformed => Some("Bearer realm=\"rollout\", error=\"invalid_request\""),
            Denied::Oversized(_) | Denied::Unknown => {
                Some("Bearer realm=\"rollout\", error=\"invalid_token\"")
            }
            Denied::OtherNamespace { .. } => None,
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::Missing => formatter
                .write_str("this evaluator needs a token: send Authorization: Bearer <token>"),
            Denied::Malformed => formatter.write_str(
                "malformed Authorization header: expected Bearer <token> in visible ASCII",
            ),
            Denied::Oversized(length) => write!(
                formatter,
                "the bearer token is {length} bytes long; tokens are at most {MAX_TOKEN_BYTES}"
            ),
            Denied::Unknown => formatter.write_str("unknown bearer token"),
            Denied::OtherNamespace { bound, requested } => write!(
                formatter,
                "the bearer token is for namespace {bound}, not {requested}"
            ),
        }
    }
}

/// The tokens OFREP accepts and the namespace each reaches. `Debug` shows no token.
#[derive(Default)]
pub struct TokenTable {
    required: bool,
    namespaces: HashMap<Box<str>, Box<str>>,
}

impl fmt::Debug for TokenTable {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("TokenTable")
            .field("required", &self.required)
            .field("tokens", &self.namespaces.len())
            .finish()
    }
}

impl TokenTable {
    /// The table of `settings.tokens` (validated), enforced when `settings.require_token`.
    pub fn new(settings: &HttpSettings) -> TokenTable {
        TokenTable {
            required: settings.require_token,
            namespaces: settings
                .tokens
                .iter()
                .map(|binding| {
                    (
                        Box::from(binding.token.expose()),
                        Box::from(binding.namespace.as_str()),
                    )
                })
                .collect(),
        }
    }

    /// Whether OFREP requests need a token.
    pub fn required(&self) -> bool {
        self.required
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.namespaces.len()
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// The namespace a request's `Authorization` header binds it to; `Ok(None)` when
    /// tokens are not required (the header is then not read).
    pub fn authorize(&self, authorization: Option<&HeaderValue>) -> Result<Option<&str>, Denied> {
        if !self.required {
            return Ok(None);
        }
        let token = bearer_token(authorization.ok_or(Denied::Missing)?)?;
        self.namespaces
            .get(token)
            .map(|namespace| Some(&**namespace))
            .ok_or(Denied::Unknown)
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case, RFC
/// 7235 §2.1).
pub fn bearer_token(value: &HeaderValue) -> Result<&str, Denied> {
    let text = value.to_str().map_err(|_| Denied::Malformed)?.trim();
    let (scheme, rest) = text.split_once(' ').ok_or(Denied::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Denied::Malformed);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(Denied::Malformed);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Denied::Oversized(token.len()));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BearerToken, BearerTokens};
    use rollout_runtime::config::Secret;

    const PROD: &str = "prod-token-0123456789abcdef";

    fn table(required: bool) -> TokenTable {
        TokenTable::new(&HttpSettings {
            require_token: required,
            tokens: BearerTokens(vec![BearerToken {
                namespace: "prod".to_owned(),
                token: Secret::new(PROD),
            }]),
            ..HttpSettings::default()
        })
    }

    fn header(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).expect("header value")
    }

    #[test]
    fn a_known_token_binds_its_namespace() {
        let table = table(true);
        for text in [
            format!("Bearer {PROD}"),
            format!("bearer {PROD}"),
            format!("BEARER   {PROD}"),
        ] {
            assert_eq!(table.authorize(Some(&header(&text))), Ok(Some("prod")));
        }
        assert!(!format!("{table:?}").contains(PROD));
    }

    #[test]
    fn missing_malformed_oversized_and_unknown_tokens_are_refused() {
        let table = table(true);
        assert_eq!(table.authorize(None), Err(Denied::Missing));
        for text in [
            "",
            "Bearer",
            "Bearer ",
            PROD,
            &format!("Basic {PROD}"),
            &format!("Bearer {PROD} extra"),
        ] {
            assert_eq!(
                table.authorize(Some(&header(text))),
                Err(Denied::Malformed),
                "{text:?}"
            );
        }
        let not_ascii = HeaderValue::from_bytes(b"Bearer caf\xc3\xa9-0123456789abcdef")
            .expect("obs-text is a valid header value");
        assert_eq!(table.authorize(Some(&not_ascii)), Err(Denied::Malformed));
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            table.authorize(Some(&header(&format!("Bearer {long}")))),
            Err(Denied::Oversized(MAX_TOKEN_BYTES + 1))
        );
        assert_eq!(
            table.authorize(Some(&header("Bearer someone-elses-token-0123"))),
            Err(Denied::Unknown)
        );
        assert_eq!(Denied::Unknown.status(), 401);
        assert!(Denied::Unknown.challenge().is_some());
    }

    #[test]
    fn without_required_tokens_the_header_is_not_read() {
        let table = table(false);
        assert_eq!(table.authorize(None), Ok(None));
        assert_eq!(table.authorize(Some(&header("garbage"))), Ok(None));
        assert_eq!(
            table.authorize(Some(&header(&format!("Bearer {PROD}")))),
            Ok(None)
        );
    }

    #[test]
    fn another_namespace_is_forbidden_not_unauthorized() {
        let denied = Denied::OtherNamespace {
            bound: "prod".to_owned(),
            requested: "dev".to_owned(),
        };
        assert_eq!(denied.status(), 403);
        assert_eq!(denied.challenge(), None);
        assert_eq!(
            denied.to_string(),
            "the bearer token is for namespace prod, not dev"
        );
    }
}
