//! Bearer-token authentication shared by the gateways: who is calling, from a JWT.
//!
//! A [`Verifier`] is built once from [`AuthConfig`] and checks a token ([`Verifier::verify`]), or
//! the `Authorization` header of an HTTP request ([`Verifier::from_headers`]). A valid token names
//! its subject (the `sub` claim), which the gateway turns into its own user type with the parser
//! it passes in; a subject the parser refuses is an invalid token. No token at all means an
//! anonymous caller (`Ok(None)`), and what an anonymous caller may do is the gateway's decision,
//! not this module's. A token that is present but wrong is always an error: a gateway never
//! silently downgrades a caller to anonymous. Where a token travels inside a gateway's own wire
//! format (a graphql-transport-ws `connection_init`, a mobile `auth` message), the gateway
//! extracts it and calls [`Verifier::verify`]; [`bearer_token`] parses `Bearer <token>` values.
//!
//! Accepted: HS256 with the configured shared secret, RS256 with the configured public key, and
//! RS256 or ES256 (`auth.jwks_algorithm`) with the keys published at `auth.jwks_url`, picked by
//! the token's `kid` (see `auth/jwks.rs` for the cache and its refresh), each only when
//! configured. The algorithm is decided by configuration: every other algorithm — `none`, and
//! HS256 when only an RSA key is configured (the "algorithm confusion" attack) — is refused before
//! any signature is checked, and a published key is only ever an RSA or P-256 key. `exp` is
//! required, `nbf` is honoured, both with the configured leeway; `iss` and `aud` are required and
//! checked only when configured.
//!
//! A verification returns the token's expiry with its subject ([`Verified`]), so that a socket can
//! end when its token does. [`Verifier::verify_async`] waits (bounded) for a JWKS refresh when a
//! token names an unknown `kid`; the synchronous [`Verifier::verify`] uses the cached keys only.
//!
//! This module does not issue tokens (except [`hs256_token`], a helper for tests, benchmarks and
//! demos) or decide authorisation. Every [`AuthError`] message is safe to send to a client: it
//! names what was wrong with the token, never key material or the token itself.
//!
//! This file holds the errors and the token helpers; `config.rs` the `[auth]` section,
//! `header.rs` reading a bearer token from a header, `verify.rs` the [`Verifier`], `jwks.rs` the
//! JWKS cache, and `tests.rs` the unit tests.

mod config;
mod header;
mod jwks;
mod verify;

#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

pub use self::config::AuthConfig;
pub use self::header::{bearer_token, header_token};
pub use self::verify::{Verified, Verifier};

/// Longest token accepted, in bytes; longer ones are refused before they are decoded.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Shortest HS256 secret that does not draw a warning (RFC 7518 §3.2: at least 256 bits).
const MIN_HS256_SECRET_BYTES: usize = 32;

/// Why a token was refused. Messages are safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A token was announced (`Bearer` with nothing after it) but not given.
    #[error("missing bearer token")]
    MissingToken,
    /// The token is malformed, badly signed, uses a refused algorithm, or its claims do not
    /// match; the reason says which.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// The token's `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    ExpiredToken,
    /// A token was given but this gateway has no key to check it with.
    #[error("this gateway does not accept tokens: authentication is not configured")]
    AuthDisabled,
}

impl AuthError {
    /// Stable error code: `missing_token`, `invalid_token`, `expired_token` or `auth_disabled`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken(_) => "invalid_token",
            Self::ExpiredToken => "expired_token",
            Self::AuthDisabled => "auth_disabled",
        }
    }
}

/// Seconds since the Unix epoch.
fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An HS256 token for `user` (its `sub`), valid for `ttl` from now (`iat` and `exp` set).
///
/// A helper for tests, benchmarks and demos, where the gateway is configured with the same
/// `hs256_secret`; real tokens come from an identity provider.
pub fn hs256_token(secret: &str, user: &str, ttl: Duration) -> String {
    let now = now_s();
    let claims = serde_json::json!({
        "sub": user,
        "iat": now,
        "exp": now.saturating_add(ttl.as_secs()),
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing of JSON claims cannot fail")
}
