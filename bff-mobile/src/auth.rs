//! Who is on a mobile connection: the user named by the token of its `auth` message, checked by
//! the core's JWT verifier ([`switchyard_core::auth`]: HS256 and RS256, `exp` required, `iss` and
//! `aud` when configured; keys from a JWKS endpoint when configured). A verified token also says
//! until when it is valid, so that the socket can close when it expires. This module does not
//! know the protocol: the socket layer turns a refusal into close 4401 with the reason given here.

use demo_api::UserId;
use switchyard_core::auth::{self, AuthError, Verified};

pub use switchyard_core::auth::AuthConfig;

/// Checks tokens.
#[derive(Debug, Clone)]
pub(crate) struct Authenticator(auth::Verifier);

impl Authenticator {
    /// Builds a verifier; fails, naming the setting, when the RSA key is not valid PEM.
    pub(crate) fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        auth::Verifier::new(config).map(Self)
    }

    /// The user of an HTTP request's `Authorization: Bearer` header: `Ok(None)` without one; a
    /// header that is present but wrong is an error (never a downgrade to anonymous).
    pub(crate) fn user_of_headers(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<Option<UserId>, AuthError> {
        self.0.from_headers(headers, |sub| UserId::parse(sub).ok())
    }

    /// Checks a token and names its user and its expiry; the error is a message for the close
    /// reason (it never carries key material or the token). Waits (bounded) for a JWKS refresh
    /// when the token names an unknown key.
    pub(crate) async fn verify(&self, token: &str) -> Result<Verified<UserId>, &'static str> {
        self.0
            .verify_async(token, |sub| UserId::parse(sub).ok())
            .await
            .map_err(|e| match e {
                AuthError::MissingToken => "missing token",
                AuthError::InvalidToken(why) => why,
                AuthError::ExpiredToken => "the token has expired",
                AuthError::AuthDisabled => "authentication is not configured on this server",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";

    fn verifier() -> Authenticator {
        Authenticator::new(&AuthConfig {
            hs256_secret: SECRET.into(),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs(claims: &serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_good_token_names_its_user_and_its_expiry() {
        let t = hs(&json!({"sub": "alice", "exp": now() + 60}), SECRET);
        let v = verifier().verify(&t).await.unwrap();
        assert_eq!(v.subject.as_str(), "alice");
        let exp = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now() + 60);
        assert!(v.expires_at <= exp && v.expires_at + std::time::Duration::from_secs(2) >= exp);
        assert_eq!(
            v.valid_until,
            v.expires_at + std::time::Duration::from_secs(30)
        );
    }

    #[tokio::test]
    async fn bad_tokens_are_refused_with_a_reason() {
        let v = verifier();
        let cases = [
            (
                hs(&json!({"sub": "alice"}), SECRET),
                "the token has no `exp` claim",
            ),
            (
                hs(
                    &json!({"sub": "alice", "exp": now() + 60}),
                    "another-secret-of-32-bytes-or-more!",
                ),
                "bad signature",
            ),
            (
                hs(&json!({"sub": "alice", "exp": now() - 3600}), SECRET),
                "the token has expired",
            ),
            (
                hs(&json!({"exp": now() + 60}), SECRET),
                "the token has no `sub` claim",
            ),
            (
                hs(&json!({"sub": "not a user id!", "exp": now() + 60}), SECRET),
                "the `sub` claim is not a valid user id",
            ),
            (String::new(), "missing token"),
            ("x".repeat(9 * 1024), "the token is too long"),
        ];
        for (t, why) in cases {
            assert_eq!(v.verify(&t).await.map(|v| v.subject), Err(why), "{t}");
        }
        // alg none, unsigned.
        assert!(
            v.verify("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn without_keys_every_token_is_refused() {
        let v = Authenticator::new(&AuthConfig::default()).unwrap();
        let t = hs(&json!({"sub": "alice", "exp": now() + 60}), SECRET);
        assert_eq!(
            v.verify(&t).await.map(|v| v.subject),
            Err("authentication is not configured on this server")
        );
    }
}
