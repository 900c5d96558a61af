//! Who is calling bff-web: a [`Principal`] from a JWT, through the core's verifier
//! ([`switchyard_core::auth`]).
//!
//! Tokens come from the `Authorization` header of an HTTP request ([`Verifier::from_headers`]) or
//! from the payload of a graphql-transport-ws `connection_init` message
//! ([`Verifier::from_init_payload`]) — the part that is this gateway's own wire format. A valid
//! token names a [`Principal`]; no token at all means an anonymous caller (`Ok(None)`), and what an
//! anonymous caller may do is the schema's decision. A token that is present but wrong is always
//! an error: the gateway never silently downgrades a caller to anonymous.

use axum::http::HeaderMap;
use demo_api::UserId;
use switchyard_core::auth;
pub use switchyard_core::auth::{AuthConfig, AuthError, hs256_token};

/// The keys of a `connection_init` payload that may carry a token, in order of precedence.
const INIT_PAYLOAD_KEYS: [&str; 3] = ["authorization", "Authorization", "token"];

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The user the token was issued to (its `sub` claim).
    pub user: UserId,
}

fn principal(sub: &str) -> Option<Principal> {
    UserId::parse(sub).ok().map(|user| Principal { user })
}

/// Checks bearer tokens against the configured keys. Build once; cheap to clone.
#[derive(Debug, Clone)]
pub struct Verifier(auth::Verifier);

impl Verifier {
    /// Builds a verifier; fails, naming the setting, when the RSA public key is not valid PEM.
    /// With neither key configured every token is refused with [`AuthError::AuthDisabled`].
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        auth::Verifier::new(config).map(Self)
    }

    /// Whether any key is configured (otherwise every token is refused).
    pub fn is_enabled(&self) -> bool {
        self.0.is_enabled()
    }

    /// Checks a token (without its `Bearer ` prefix) and names its user.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.0.verify(token, principal)
    }

    /// The caller of an HTTP request ([`auth::Verifier::from_headers`]).
    pub fn from_headers(&self, headers: &HeaderMap) -> Result<Option<Principal>, AuthError> {
        self.0.from_headers(headers, principal)
    }

    /// The caller of a graphql-transport-ws connection, from its `connection_init` payload:
    /// `{"authorization": "Bearer <t>"}`, `{"Authorization": "Bearer <t>"}` or `{"token": "<t>"}`
    /// (the first present in that order is used). No payload, a payload without these keys, or an
    /// empty value: anonymous, `Ok(None)`. A value that is not a string, or an `authorization`
    /// that is not `Bearer <token>`: an error.
    pub fn from_init_payload(
        &self,
        payload: Option<&serde_json::Value>,
    ) -> Result<Option<Principal>, AuthError> {
        let Some(object) = payload.and_then(serde_json::Value::as_object) else {
            return Ok(None);
        };
        let Some((key, value)) = INIT_PAYLOAD_KEYS
            .iter()
            .find_map(|key| object.get(*key).map(|value| (*key, value)))
        else {
            return Ok(None);
        };
        let value = value.as_str().ok_or(AuthError::InvalidToken(
            "the connection_init token must be a string",
        ))?;
        let token = if key == "token" {
            Some(value.trim()).filter(|t| !t.is_empty())
        } else {
            auth::bearer_token(value)?
        };
        match token {
            Some(token) => self.verify(token).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";
    const HOUR: Duration = Duration::from_secs(3600);

    fn verifier(config: &AuthConfig) -> Verifier {
        Verifier::new(config).expect("valid config")
    }

    fn hs_config() -> AuthConfig {
        AuthConfig {
            hs256_secret: SECRET.into(),
            ..AuthConfig::default()
        }
    }

    fn alice() -> Principal {
        Principal {
            user: UserId::parse("alice").unwrap(),
        }
    }

    #[test]
    fn sub_must_be_a_valid_user_id() {
        let v = verifier(&hs_config());
        assert_eq!(v.verify(&hs256_token(SECRET, "alice", HOUR)), Ok(alice()));
        for bad in ["not a user!", ""] {
            assert_eq!(
                v.verify(&hs256_token(SECRET, bad, HOUR)),
                Err(AuthError::InvalidToken(
                    "the `sub` claim is not a valid user id"
                ))
            );
        }
    }

    #[test]
    fn init_payload_parsing() {
        let v = verifier(&hs_config());
        let token = hs256_token(SECRET, "alice", HOUR);
        let bearer = format!("Bearer {token}");
        assert_eq!(v.from_init_payload(None), Ok(None));
        assert_eq!(v.from_init_payload(Some(&json!(null))), Ok(None));
        assert_eq!(v.from_init_payload(Some(&json!({}))), Ok(None));
        assert_eq!(
            v.from_init_payload(Some(&json!({ "other": "value" }))),
            Ok(None)
        );
        assert_eq!(
            v.from_init_payload(Some(&json!({ "authorization": "" }))),
            Ok(None)
        );
        assert_eq!(
            v.from_init_payload(Some(&json!({ "authorization": bearer }))),
            Ok(Some(alice()))
        );
        assert_eq!(
            v.from_init_payload(Some(&json!({ "Authorization": bearer }))),
            Ok(Some(alice()))
        );
        assert_eq!(
            v.from_init_payload(Some(&json!({ "token": token }))),
            Ok(Some(alice()))
        );
        assert_eq!(v.from_init_payload(Some(&json!({ "token": "" }))), Ok(None));
        // `authorization` takes precedence over `token`.
        assert_eq!(
            v.from_init_payload(Some(&json!({ "authorization": bearer, "token": "junk" }))),
            Ok(Some(alice()))
        );
        assert_eq!(
            v.from_init_payload(Some(&json!({ "authorization": token })))
                .unwrap_err()
                .code(),
            "invalid_token",
            "authorization without the Bearer scheme"
        );
        assert_eq!(
            v.from_init_payload(Some(&json!({ "authorization": "Bearer" }))),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            v.from_init_payload(Some(&json!({ "token": 42 }))),
            Err(AuthError::InvalidToken(
                "the connection_init token must be a string"
            ))
        );
        assert_eq!(
            v.from_init_payload(Some(&json!({ "token": "junk" })))
                .unwrap_err()
                .code(),
            "invalid_token"
        );
        let wrong = hs256_token("wrong-secret-wrong-secret-wrong-secret", "alice", HOUR);
        assert_eq!(
            v.from_init_payload(Some(&json!({ "token": wrong }))),
            Err(AuthError::InvalidToken("bad signature"))
        );
    }
}
