//! Client authentication (`auth.mode = "jwt"`) and topic ACLs.
//!
//! A token is a JWT signed with HS256 (shared secret), RS256 or ES256 (PEM
//! public key, or a local JWKS file chosen by `kid`). `exp` is required;
//! `nbf`, `aud` and `iss` are checked when configured, with `auth.leeway` of
//! clock skew. Only the algorithms of the configured key are accepted, so
//! `alg: none` and HS256-signed-with-the-public-key tricks fail.
//!
//! The claims `subscribe` and `publish` are arrays of patterns (`+`, `#`);
//! `{sub}` in a pattern is replaced by the token's subject, for per-user
//! topics such as `users/{sub}/#`. A subscription is allowed when one
//! `subscribe` grant covers the whole pattern (every topic it can match);
//! a publish when one `publish` grant matches the topic. Grants that do not
//! parse, and `{sub}` grants whose subject contains `/`, `+`, `#`, `$` or
//! braces (which would widen the grant), are ignored.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pulsegate_proto::topic::covers;
use pulsegate_proto::Pattern;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, AuthMode, Secret};

/// Who a connection or request is, and what it may do.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The token's `sub` (or `api-key-N` for the N-th API key).
    pub subject: String,
    /// `exp` of the token, seconds since the Unix epoch (`None`: API key).
    pub expires_at: Option<u64>,
    subscribe: Vec<String>,
    publish: Vec<Pattern>,
}

impl Identity {
    /// Whether subscribing to `pattern` (already valid) is allowed.
    pub fn may_subscribe(&self, pattern: &str) -> bool {
        self.subscribe.iter().any(|g| covers(g, pattern))
    }

    /// Whether publishing to the concrete `topic` is allowed.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|g| g.matches(topic))
    }
}

/// Why a token was refused; `label` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token where one is required.
    #[error("no token: send `Authorization: Bearer <jwt>`, `?token=`, a `bearer.<jwt>` subprotocol entry, or {{\"op\":\"auth\",\"token\":…}}")]
    Missing,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Bad signature, algorithm, claims or shape.
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl AuthError {
    /// Metric label value.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
            AuthError::Invalid(_) => "invalid",
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

enum Keys {
    One(DecodingKey, Algorithm),
    /// (kid, key, algorithm); a token without `kid` is tried against every key.
    Set(Vec<(Option<String>, DecodingKey, Algorithm)>),
}

/// Verifies tokens and API keys; built once from `[auth]`.
pub struct Authenticator {
    keys: Keys,
    validation: Validation,
    api_keys: Vec<Secret>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("api_keys", &self.api_keys.len())
            .finish_non_exhaustive()
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))
}

impl Authenticator {
    /// `None` with `auth.mode = "none"`; an error naming the config key when
    /// a key file cannot be used.
    pub fn from_config(cfg: &AuthConfig) -> Result<Option<Authenticator>, String> {
        if cfg.mode == AuthMode::None {
            return Ok(None);
        }
        let keys = if let Some(secret) = &cfg.jwt_hs256_secret {
            Keys::One(
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            )
        } else if let Some(path) = &cfg.jwt_public_key_file {
            let pem = read("auth.jwt_public_key_file", path)?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                Keys::One(k, Algorithm::RS256)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                Keys::One(k, Algorithm::ES256)
            } else {
                return Err(format!(
                    "auth.jwt_public_key_file: {} is not an RSA or EC P-256 public key in PEM",
                    path.display()
                ));
            }
        } else if let Some(path) = &cfg.jwks_file {
            Keys::Set(load_jwks(path)?)
        } else {
            return Err("auth.mode is \"jwt\" but no key is configured".into());
        };
        let mut validation = Validation::new(match &keys {
            Keys::One(_, alg) => *alg,
            Keys::Set(set) => set.first().map_or(Algorithm::RS256, |k| k.2),
        });
        validation.leeway = cfg.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_aud = cfg.audience.is_some();
        if let Some(aud) = &cfg.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Some(Authenticator {
            keys,
            validation,
            api_keys: cfg.api_keys.clone(),
        }))
    }

    /// Verifies a JWT and derives the identity and its grants.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let candidates: Vec<(&DecodingKey, Algorithm)> = match &self.keys {
            Keys::One(k, alg) => vec![(k, *alg)],
            Keys::Set(set) => set
                .iter()
                .filter(|(kid, _, _)| {
                    header.kid.is_none() || kid.as_deref() == header.kid.as_deref()
                })
                .map(|(_, k, alg)| (k, *alg))
                .collect(),
        };
        if candidates.is_empty() {
            return Err(AuthError::Invalid("no key with this `kid`".into()));
        }
        let mut last = AuthError::Invalid("no key".into());
        for (key, alg) in candidates {
            if header.alg != alg {
                last = AuthError::Invalid(format!("algorithm {:?} is not accepted", header.alg));
                continue;
            }
            let mut v = self.validation.clone();
            v.algorithms = vec![alg];
            match jsonwebtoken::decode::<Claims>(token, key, &v) {
                Ok(data) => return Ok(identity(data.claims)),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::ExpiredSignature => AuthError::Expired,
                        _ => AuthError::Invalid(e.to_string()),
                    };
                }
            }
        }
        Err(last)
    }

    /// The identity of a static API key (publish anywhere), if `key` is one.
    pub fn api_key(&self, key: &str) -> Option<Identity> {
        let mut found = None;
        // Compare against every key, without stopping early.
        for (i, k) in self.api_keys.iter().enumerate() {
            if bool::from(k.expose().as_bytes().ct_eq(key.as_bytes())) {
                found = Some(i);
            }
        }
        found.map(|i| Identity {
            // Numbered, so each key has its own rate bucket; never the key itself.
            subject: format!("api-key-{}", i + 1),
            expires_at: None,
            subscribe: Vec::new(),
            publish: vec![Pattern::parse("#", 1).expect("`#` is a valid pattern")],
        })
    }
}

fn load_jwks(path: &Path) -> Result<Vec<(Option<String>, DecodingKey, Algorithm)>, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
    let text = read("auth.jwks_file", path)?;
    let set: JwkSet = serde_json::from_slice(&text)
        .map_err(|e| format!("auth.jwks_file: {} is not a JWKS: {e}", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::RS256), _) => Algorithm::RS256,
            (Some(KeyAlgorithm::ES256), _) => Algorithm::ES256,
            (Some(other), _) => {
                return Err(format!(
                    "auth.jwks_file: key {:?} uses {other:?}; RS256 and ES256 are supported",
                    jwk.common.key_id
                ))
            }
            (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (None, AlgorithmParameters::EllipticCurve(_)) => Algorithm::ES256,
            (None, _) => {
                return Err(format!(
                    "auth.jwks_file: key {:?} is neither RSA nor EC",
                    jwk.common.key_id
                ))
            }
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("auth.jwks_file: key {:?}: {e}", jwk.common.key_id))?;
        keys.push((jwk.common.key_id.clone(), key, alg));
    }
    if keys.is_empty() {
        return Err(format!("auth.jwks_file: {} has no keys", path.display()));
    }
    Ok(keys)
}

/// Whether a subject can stand inside a topic level without widening a grant.
fn safe_subject(sub: &str) -> bool {
    !sub.is_empty()
        && !sub
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#' | '$' | '{' | '}') || c.is_control())
}

fn identity(c: Claims) -> Identity {
    let subject = c.sub.unwrap_or_default();
    let expand = |grants: Vec<String>| -> Vec<Pattern> {
        grants
            .into_iter()
            .filter_map(|g| {
                let g = if g.contains("{sub}") {
                    if !safe_subject(&subject) {
                        return None;
                    }
                    g.replace("{sub}", &subject)
                } else {
                    g
                };
                Pattern::parse(&g, 65_535).ok()
            })
            .collect()
    };
    Identity {
        expires_at: Some(c.exp),
        subscribe: expand(c.subscribe)
            .into_iter()
            .map(|p| p.as_str().to_string())
            .collect(),
        publish: expand(c.publish),
        subject,
    }
}

/// The token a WebSocket upgrade carries, if any: `Authorization: Bearer`,
/// then `?token=`, then a `bearer.<jwt>` entry of `Sec-WebSocket-Protocol`.
/// A value equal to the admin token is not a JWT and is skipped.
pub fn upgrade_token(
    config: &crate::config::Config,
    authorization: Option<&str>,
    query: Option<&str>,
    protocols: &[String],
) -> Option<String> {
    let bearer = authorization
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string());
    let query = crate::admin::query_token(query);
    let proto = protocols
        .iter()
        .find_map(|p| p.strip_prefix("bearer.").map(str::to_string));
    [bearer, query, proto]
        .into_iter()
        .flatten()
        .find(|t| !t.is_empty() && !crate::admin::token_matches(config, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn auth() -> Authenticator {
        let cfg = AuthConfig {
            mode: AuthMode::Jwt,
            jwt_hs256_secret: Some(Secret::new(SECRET)),
            api_keys: vec![Secret::new("api-key-0123456789")],
            ..AuthConfig::default()
        };
        Authenticator::from_config(&cfg).unwrap().unwrap()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn grants_with_subject_placeholder() {
        let t = token(json!({"sub": "alice", "exp": now() + 60,
            "subscribe": ["users/{sub}/#", "site/+/power"], "publish": ["users/{sub}/out"]}));
        let id = auth().verify(&t).unwrap();
        assert_eq!(id.subject, "alice");
        assert!(id.may_subscribe("users/alice/#"));
        assert!(id.may_subscribe("users/alice/inbox"));
        assert!(!id.may_subscribe("users/bob/inbox"));
        assert!(!id.may_subscribe("users/+/inbox"));
        assert!(id.may_subscribe("site/a/power"));
        assert!(!id.may_subscribe("site/#"));
        assert!(id.may_publish("users/alice/out"));
        assert!(!id.may_publish("users/bob/out"));
    }

    #[test]
    fn a_subject_cannot_widen_its_grants() {
        for sub in ["+", "#", "a/b", "$sys", ""] {
            let t = token(json!({"sub": sub, "exp": now() + 60, "subscribe": ["users/{sub}/#"]}));
            let id = auth().verify(&t).unwrap();
            assert!(!id.may_subscribe("users/x/y"), "{sub}");
            assert!(!id.may_subscribe("users/+/#"), "{sub}");
        }
    }

    #[test]
    fn expired_forged_and_unsigned_tokens_are_refused() {
        let a = auth();
        let expired = token(json!({"sub": "a", "exp": now() - 120}));
        assert_eq!(a.verify(&expired), Err(AuthError::Expired));
        // Within the leeway (30 s) an just-expired token still passes.
        assert!(a
            .verify(&token(json!({"sub": "a", "exp": now() - 5})))
            .is_ok());
        let forged = encode(
            &Header::default(),
            &json!({"sub": "a", "exp": now() + 60}),
            &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!"),
        )
        .unwrap();
        assert!(matches!(a.verify(&forged), Err(AuthError::Invalid(_))));
        // alg: none — header {"alg":"none","typ":"JWT"}, empty signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(matches!(a.verify(none), Err(AuthError::Invalid(_))));
        assert!(matches!(a.verify("garbage"), Err(AuthError::Invalid(_))));
        let no_exp = token(json!({"sub": "a"}));
        assert!(matches!(a.verify(&no_exp), Err(AuthError::Invalid(_))));
        let not_yet = token(json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300}));
        assert!(matches!(a.verify(&not_yet), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn api_keys_publish_anywhere_but_subscribe_nowhere() {
        let a = auth();
        let id = a.api_key("api-key-0123456789").unwrap();
        assert!(id.may_publish("any/topic"));
        assert!(!id.may_subscribe("any/topic"));
        assert!(a.api_key("api-key-012345678X").is_none());
    }
}
