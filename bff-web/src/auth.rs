//! Who is calling bff-web: a [`Principal`] from a JWT, through the core's verifier
//! ([`switchyard_core::auth`]).
//!
//! Tokens come from the `Authorization` header of an HTTP request ([`Authenticator::from_headers`]) or
//! from the payload of a graphql-transport-ws `connection_init` message
//! ([`Authenticator::from_init_payload`]) — the part that is this gateway's own wire format. A valid
//! token names a [`Principal`]; no token at all means an anonymous caller (`Ok(None)`), and what an
//! anonymous caller may do is the schema's decision. A token that is present but wrong is always
//! an error: the gateway never silently downgrades a caller to anonymous.
//!
//! On a socket the token also sets how long the connection may live ([`Verified::valid_until`]);
//! a `ping` whose payload carries a token re-authenticates it ([`Authenticator::from_ping_payload`]).

use std::sync::Arc;

use axum::http::HeaderMap;
use demo_api::UserId;
use serde_json::{Map, Value};
use switchyard_core::auth;
pub use switchyard_core::auth::{AuthConfig, AuthError, Verified, hs256_token};
use switchyard_core::channels::Subscriber;

/// The keys of a `connection_init` payload that may carry a token, in order of precedence.
const INIT_PAYLOAD_KEYS: [&str; 3] = ["authorization", "Authorization", "token"];

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user the token was issued to (its `sub` claim).
    pub user: UserId,
    /// The token's other claims, as verified (what the channel catalog's claim rules read).
    pub claims: Arc<Map<String, Value>>,
}

impl Principal {
    /// The caller as the channel catalog judges it.
    pub fn subscriber(&self) -> Subscriber {
        Subscriber::User {
            subject: self.user.to_string(),
            claims: (*self.claims).clone(),
        }
    }
}

/// The channel catalog's view of a caller that may be anonymous.
pub fn subscriber_of(principal: Option<&Principal>) -> Subscriber {
    principal.map_or(Subscriber::Anonymous, Principal::subscriber)
}

fn user_id(sub: &str) -> Option<UserId> {
    UserId::parse(sub).ok()
}

/// A verified token's user, with its claims kept beside it.
fn with_claims(v: Verified<UserId>) -> Verified<Principal> {
    Verified {
        subject: Principal {
            user: v.subject,
            claims: v.claims.clone(),
        },
        expires_at: v.expires_at,
        valid_until: v.valid_until,
        claims: v.claims,
    }
}

/// Checks bearer tokens against the configured keys. Build once; cheap to clone.
#[derive(Debug, Clone)]
pub struct Authenticator(auth::Verifier);

impl Authenticator {
    /// Builds a verifier; fails, naming the setting, when the RSA public key is not valid PEM.
    /// With neither key configured every token is refused with [`AuthError::AuthDisabled`].
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        auth::Verifier::new(config).map(Self)
    }

    /// Whether any key is configured (otherwise every token is refused).
    pub fn is_enabled(&self) -> bool {
        self.0.is_enabled()
    }

    /// Checks a token (without its `Bearer ` prefix) and names its user and its expiry; waits
    /// (bounded) for a JWKS refresh when the token names an unknown key.
    pub async fn verify(&self, token: &str) -> Result<Verified<Principal>, AuthError> {
        self.0.verify_async(token, user_id).await.map(with_claims)
    }

    /// The caller of an HTTP request from cached keys only (never waits for a JWKS fetch): for
    /// the rate limiter, which must not make a request wait on the issuer before it is counted.
    pub fn cached_user_of_headers(&self, headers: &HeaderMap) -> Option<UserId> {
        self.0.from_headers(headers, user_id).ok().flatten()
    }

    /// The caller of an HTTP request (see [`auth::header_token`]).
    pub async fn from_headers(&self, headers: &HeaderMap) -> Result<Option<Principal>, AuthError> {
        match auth::header_token(headers)? {
            Some(token) => self.verify(token).await.map(|v| Some(v.subject)),
            None => Ok(None),
        }
    }

    /// A re-authentication carried by a graphql-transport-ws `ping`: `None` when the payload
    /// carries none of the `connection_init` token keys (a plain ping); otherwise the verified
    /// token, or why it was refused (an empty token included).
    pub async fn from_ping_payload(
        &self,
        payload: Option<&serde_json::Value>,
    ) -> Option<Result<Verified<Principal>, AuthError>> {
        let object = payload?.as_object()?;
        if !INIT_PAYLOAD_KEYS.iter().any(|k| object.contains_key(*k)) {
            return None;
        }
        Some(match self.from_init_payload(payload).await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(AuthError::MissingToken),
            Err(e) => Err(e),
        })
    }

    /// The caller of a graphql-transport-ws connection, from its `connection_init` payload:
    /// `{"authorization": "Bearer <t>"}`, `{"Authorization": "Bearer <t>"}` or `{"token": "<t>"}`
    /// (the first present in that order is used). No payload, a payload without these keys, or an
    /// empty value: anonymous, `Ok(None)`. A value that is not a string, or an `authorization`
    /// that is not `Bearer <token>`: an error.
    pub async fn from_init_payload(
        &self,
        payload: Option<&serde_json::Value>,
    ) -> Result<Option<Verified<Principal>>, AuthError> {
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
            Some(token) => self.verify(token).await.map(Some),
            None => Ok(None),
        }
    }
}

/// A `connection_init` payload's `traceparent` (a string, read strictly: anything else is
/// ignored): the socket's trace from then on, for the backend calls its operations make.
pub(crate) fn adopt_trace(payload: Option<&serde_json::Value>) {
    let trace = payload
        .and_then(|p| p.get(switchyard_core::trace::TRACEPARENT))
        .and_then(serde_json::Value::as_str)
        .and_then(|t| switchyard_core::trace::TraceContext::parse(t.as_bytes()));
    if let Some(trace) = trace {
        switchyard_core::trace::set_current(trace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";
    const HOUR: Duration = Duration::from_secs(3600);

    fn verifier(config: &AuthConfig) -> Authenticator {
        Authenticator::new(config).expect("valid config")
    }

    fn hs_config() -> AuthConfig {
        AuthConfig {
            hs256_secret: SECRET.into(),
            ..AuthConfig::default()
        }
    }

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    #[tokio::test]
    async fn sub_must_be_a_valid_user_id() {
        let v = verifier(&hs_config());
        assert_eq!(
            v.verify(&hs256_token(SECRET, "alice", HOUR))
                .await
                .map(|v| v.subject.user),
            Ok(alice())
        );
        for bad in ["not a user!", ""] {
            assert_eq!(
                v.verify(&hs256_token(SECRET, bad, HOUR))
                    .await
                    .map(|v| v.subject.user),
                Err(AuthError::InvalidToken(
                    "the `sub` claim is not a valid user id"
                ))
            );
        }
    }

    /// The principal of an init payload, without its expiry.
    async fn init(
        v: &Authenticator,
        payload: Option<&serde_json::Value>,
    ) -> Result<Option<UserId>, AuthError> {
        v.from_init_payload(payload)
            .await
            .map(|o| o.map(|v| v.subject.user))
    }

    #[tokio::test]
    async fn ping_payload_parsing() {
        let v = verifier(&hs_config());
        let token = hs256_token(SECRET, "alice", HOUR);
        assert!(v.from_ping_payload(None).await.is_none());
        assert!(v.from_ping_payload(Some(&json!("hello"))).await.is_none());
        assert!(v.from_ping_payload(Some(&json!({"t": 1}))).await.is_none());
        let ok = v.from_ping_payload(Some(&json!({ "token": token }))).await;
        assert_eq!(ok.unwrap().map(|v| v.subject.user), Ok(alice()));
        let empty = v.from_ping_payload(Some(&json!({ "token": "" }))).await;
        assert_eq!(empty.unwrap().unwrap_err(), AuthError::MissingToken);
        let junk = v.from_ping_payload(Some(&json!({ "token": "junk" }))).await;
        assert_eq!(junk.unwrap().unwrap_err().code(), "invalid_token");
    }

    #[tokio::test]
    async fn init_payload_parsing() {
        let v = verifier(&hs_config());
        let token = hs256_token(SECRET, "alice", HOUR);
        let bearer = format!("Bearer {token}");
        assert_eq!(init(&v, None).await, Ok(None));
        assert_eq!(init(&v, Some(&json!(null))).await, Ok(None));
        assert_eq!(init(&v, Some(&json!({}))).await, Ok(None));
        assert_eq!(init(&v, Some(&json!({ "other": "value" }))).await, Ok(None));
        assert_eq!(
            init(&v, Some(&json!({ "authorization": "" }))).await,
            Ok(None)
        );
        assert_eq!(
            init(&v, Some(&json!({ "authorization": bearer }))).await,
            Ok(Some(alice()))
        );
        assert_eq!(
            init(&v, Some(&json!({ "Authorization": bearer }))).await,
            Ok(Some(alice()))
        );
        assert_eq!(
            init(&v, Some(&json!({ "token": token }))).await,
            Ok(Some(alice()))
        );
        assert_eq!(init(&v, Some(&json!({ "token": "" }))).await, Ok(None));
        // `authorization` takes precedence over `token`.
        assert_eq!(
            init(
                &v,
                Some(&json!({ "authorization": bearer, "token": "junk" }))
            )
            .await,
            Ok(Some(alice()))
        );
        assert_eq!(
            init(&v, Some(&json!({ "authorization": token })))
                .await
                .unwrap_err()
                .code(),
            "invalid_token",
            "authorization without the Bearer scheme"
        );
        assert_eq!(
            init(&v, Some(&json!({ "authorization": "Bearer" }))).await,
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            init(&v, Some(&json!({ "token": 42 }))).await,
            Err(AuthError::InvalidToken(
                "the connection_init token must be a string"
            ))
        );
        assert_eq!(
            init(&v, Some(&json!({ "token": "junk" })))
                .await
                .unwrap_err()
                .code(),
            "invalid_token"
        );
        let wrong = hs256_token("wrong-secret-wrong-secret-wrong-secret", "alice", HOUR);
        assert_eq!(
            init(&v, Some(&json!({ "token": wrong }))).await,
            Err(AuthError::InvalidToken("bad signature"))
        );
    }
}
