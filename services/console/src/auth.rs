//! Who is asking: operator accounts signed in with a password (argon2id hashes from the
//! configuration), or scripts with a bearer token (its SHA-256 in the configuration).
//!
//! A sign-in is a cookie the console signs with HMAC-SHA256 (name and expiry, no server-side
//! store), so it outlives a console restart when `console.session_key` is set, and it ends
//! at its expiry. The role is read from the configuration on every request, so removing an
//! account or making it a viewer takes effect at the next restart, not at the cookie's
//! expiry. Every state-changing request signed in by cookie must carry the session's CSRF
//! token in `X-CSRF-Token` (derived from the cookie with the same key); bearer requests
//! carry no cookie and need none.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ConsoleSettings;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "rollout_console";
/// Header carrying the CSRF token of a cookie session.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What an account may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees everything and acts: creates, pauses, rolls back.
    Operator,
    /// Sees everything and acts on nothing; the server refuses its actions.
    Viewer,
}

impl Role {
    /// Reads `operator` or `viewer`.
    pub fn parse(text: &str) -> Result<Role, String> {
        match text {
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!("has role {other:?}: expected operator or viewer")),
        }
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

/// How a request proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The signed session cookie (state changes need the CSRF token).
    Cookie,
    /// `Authorization: Bearer`.
    Bearer,
}

/// The signed-in account of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    /// Account name: the actor of its commands.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Cookie or token.
    pub credential: Credential,
    /// When a cookie session ends (seconds since the epoch); `None` for tokens.
    pub expires_at: Option<u64>,
}

/// Checks that `phc` is an argon2id PHC string this console can verify against.
pub fn check_password_hash(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|error| {
        format!("is not a PHC hash string ({error}); make one with console-hash-password")
    })?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "uses {}: only argon2id hashes are accepted (console-hash-password makes one)",
            hash.algorithm
        ));
    }
    Ok(())
}

/// Hashes `password` into an argon2id PHC string with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0_u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|error| error.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| error.to_string())
}

/// The SHA-256 of a bearer token, in lowercase hexadecimal (what `console.tokens` holds).
pub fn token_digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[derive(Serialize, Deserialize)]
struct SessionClaims {
    /// Account name.
    n: String,
    /// Expiry, seconds since the epoch.
    e: u64,
}

type HmacSha256 = Hmac<Sha256>;

/// The accounts, tokens and session key of one console process.
pub struct Authority {
    users: HashMap<String, (Role, String)>,
    tokens: HashMap<String, (String, Role)>,
    key: Vec<u8>,
    ttl: Duration,
    /// A valid hash of nothing anyone knows: unknown names are checked against it, so a
    /// wrong name costs as long as a wrong password.
    decoy: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Authority")
            .field("users", &self.users.len())
            .field("tokens", &self.tokens.len())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// The authority of validated `settings`; a random session key when none is set.
    pub fn new(settings: &ConsoleSettings) -> Authority {
        let key = match &settings.session_key {
            Some(key) => key.expose().as_bytes().to_vec(),
            None => {
                let mut key = vec![0_u8; 32];
                rand::rng().fill_bytes(&mut key);
                key
            }
        };
        let mut random = [0_u8; 24];
        rand::rng().fill_bytes(&mut random);
        Authority {
            users: settings
                .users
                .0
                .iter()
                .map(|account| {
                    (
                        account.name.clone(),
                        (account.role, account.password_hash.expose().to_owned()),
                    )
                })
                .collect(),
            tokens: settings
                .tokens
                .0
                .iter()
                .map(|token| {
                    (
                        token.sha256.expose().to_ascii_lowercase(),
                        (token.name.clone(), token.role),
                    )
                })
                .collect(),
            key,
            ttl: settings.session_ttl,
            decoy: hash_password(&URL_SAFE_NO_PAD.encode(random)).unwrap_or_default(),
        }
    }

    /// How long a sign-in lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Checks a name and password; the signed-in operator, or `None` for a wrong pair (the
    /// same answer for an unknown name).
    pub fn sign_in(
        &self,
        name: &str,
        password: &str,
        now: SystemTime,
    ) -> Option<(Operator, String)> {
        let (role, phc) = match self.users.get(name) {
            Some((role, phc)) => (Some(*role), phc.as_str()),
            None => (None, self.decoy.as_str()),
        };
        let verified = PasswordHash::new(phc).is_ok_and(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        });
        let role = role.filter(|_| verified)?;
        let expires_at = seconds(now) + self.ttl.as_secs();
        let claims = SessionClaims {
            n: name.to_owned(),
            e: expires_at,
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).ok()?);
        let cookie = format!(
            "{payload}.{}",
            URL_SAFE_NO_PAD.encode(self.mac(&[b"session:", payload.as_bytes()]))
        );
        Some((
            Operator {
                name: name.to_owned(),
                role,
                credential: Credential::Cookie,
                expires_at: Some(expires_at),
            },
            cookie,
        ))
    }

    /// The operator of a session cookie value: signed by this key, not expired, and naming
    /// an account that still exists.
    pub fn session(&self, cookie: &str, now: SystemTime) -> Option<Operator> {
        let (payload, signature) = cookie.split_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = self.keyed();
        mac.update(b"session:");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).ok()?;
        let claims: SessionClaims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        if claims.e <= seconds(now) {
            return None;
        }
        let (role, _) = self.users.get(&claims.n)?;
        Some(Operator {
            name: claims.n,
            role: *role,
            credential: Credential::Cookie,
            expires_at: Some(claims.e),
        })
    }

    /// The operator of a bearer token.
    pub fn bearer(&self, token: &str) -> Option<Operator> {
        let (name, role) = self.tokens.get(&token_digest(token))?;
        Some(Operator {
            name: name.clone(),
            role: *role,
            credential: Credential::Bearer,
            expires_at: None,
        })
    }

    /// The CSRF token of a session cookie value.
    pub fn csrf_token(&self, cookie: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(&[b"csrf:", cookie.as_bytes()]))
    }

    /// Whether `presented` is the CSRF token of `cookie` (compared in constant time).
    pub fn csrf_matches(&self, cookie: &str, presented: &str) -> bool {
        let Ok(presented) = URL_SAFE_NO_PAD.decode(presented) else {
            return false;
        };
        let mut mac = self.keyed();
        mac.update(b"csrf:");
        mac.update(cookie.as_bytes());
        mac.verify_slice(&presented).is_ok()
    }

    fn keyed(&self) -> HmacSha256 {
        // HMAC takes keys of any length
        #[allow(clippy::expect_used)]
        HmacSha256::new_from_slice(&self.key).expect("hmac accepts any key length")
    }

    fn mac(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = self.keyed();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
}

fn seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Account, Listed, TokenAccount};
    use rollout_runtime::config::Secret;

    fn authority() -> Authority {
        let settings = ConsoleSettings {
            users: Listed(vec![
                Account {
                    name: "alice".to_owned(),
                    role: Role::Operator,
                    password_hash: Secret::new(hash_password("wonderland").expect("hash")),
                },
                Account {
                    name: "bob".to_owned(),
                    role: Role::Viewer,
                    password_hash: Secret::new(hash_password("builder").expect("hash")),
                },
            ]),
            tokens: Listed(vec![TokenAccount {
                name: "ci".to_owned(),
                role: Role::Operator,
                sha256: Secret::new(token_digest("s3cret-token")),
            }]),
            session_key: Some(Secret::new("k".repeat(32))),
            ..ConsoleSettings::default()
        };
        Authority::new(&settings)
    }

    #[test]
    fn a_password_signs_in_only_its_own_account() {
        let authority = authority();
        let now = SystemTime::now();
        let (alice, cookie) = authority
            .sign_in("alice", "wonderland", now)
            .expect("signs in");
        assert_eq!((alice.name.as_str(), alice.role), ("alice", Role::Operator));
        assert_eq!(authority.session(&cookie, now), Some(alice));
        assert!(authority.sign_in("alice", "builder", now).is_none());
        assert!(authority.sign_in("mallory", "wonderland", now).is_none());
        let (bob, _) = authority
            .sign_in("bob", "builder", now)
            .expect("viewer signs in");
        assert_eq!(bob.role, Role::Viewer);
    }

    #[test]
    fn a_session_ends_at_its_expiry_and_cannot_be_forged() {
        let authority = authority();
        let now = SystemTime::now();
        let (_, cookie) = authority.sign_in("bob", "builder", now).expect("signs in");
        let later = now + authority.ttl() + Duration::from_secs(1);
        assert!(authority.session(&cookie, later).is_none(), "expired");
        // a viewer turning its own cookie into alice's: the signature no longer matches
        let (_, signature) = cookie.split_once('.').expect("signed");
        let forged = URL_SAFE_NO_PAD.encode(br#"{"n":"alice","e":99999999999}"#);
        assert!(authority
            .session(&format!("{forged}.{signature}"), now)
            .is_none());
        // another console's key does not sign for this one
        let other = Authority::new(&ConsoleSettings {
            session_key: Some(Secret::new("x".repeat(32))),
            users: Listed(vec![Account {
                name: "bob".to_owned(),
                role: Role::Viewer,
                password_hash: Secret::new(hash_password("builder").expect("hash")),
            }]),
            ..ConsoleSettings::default()
        });
        assert!(other.session(&cookie, now).is_none());
    }

    #[test]
    fn the_csrf_token_belongs_to_its_session() {
        let authority = authority();
        let now = SystemTime::now();
        let (_, alice) = authority
            .sign_in("alice", "wonderland", now)
            .expect("alice");
        let (_, bob) = authority.sign_in("bob", "builder", now).expect("bob");
        let token = authority.csrf_token(&alice);
        assert!(authority.csrf_matches(&alice, &token));
        assert!(!authority.csrf_matches(&bob, &token));
        assert!(!authority.csrf_matches(&alice, "not-a-token"));
    }

    #[test]
    fn tokens_are_matched_by_digest() {
        let authority = authority();
        let ci = authority.bearer("s3cret-token").expect("known token");
        assert_eq!(
            (ci.name.as_str(), ci.credential),
            ("ci", Credential::Bearer)
        );
        assert!(authority.bearer("guess").is_none());
    }

    #[test]
    fn only_argon2id_hashes_are_accepted() {
        assert!(check_password_hash(&hash_password("x").expect("hash")).is_ok());
        assert!(check_password_hash("plain-text-password").is_err());
        assert!(check_password_hash("$argon2i$v=19$m=16,t=2,p=1$c29tZXNhbHQ$aGFzaA").is_err());
    }
}
