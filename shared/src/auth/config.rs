//! The `[auth]` section: the keys tokens are checked with (an HS256 secret, an RSA public key, a
//! JWKS URL), the claims required, and the JWKS cache's timings. Its `Debug` never prints the
//! secret.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Bearer-token authentication.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens, used as its raw UTF-8 bytes; at least 32 bytes is
    /// recommended. Empty: HS256 tokens are refused.
    pub hs256_secret: String,
    /// PEM text of the RSA public key that checks RS256 tokens (`-----BEGIN PUBLIC KEY-----` or
    /// `-----BEGIN RSA PUBLIC KEY-----`). Empty: RS256 tokens are refused.
    pub rs256_public_key_pem: String,
    /// The `iss` claim every token must carry; unset: `iss` is not checked.
    pub issuer: Option<String>,
    /// The `aud` claim every token must carry (or include); unset: `aud` is not checked.
    pub audience: Option<String>,
    /// Clock skew tolerated when checking `exp` and `nbf`, in seconds. A socket stays open until
    /// its token's `exp` plus this leeway.
    pub leeway_s: u64,
    /// URL of a JWKS document (`{"keys": [...]}`) publishing the verification keys of
    /// `jwks_algorithm`, picked by the token's `kid`. Empty: no JWKS.
    pub jwks_url: String,
    /// The algorithm of the JWKS keys: `"RS256"` or `"ES256"`. Tokens must name it in their `alg`.
    pub jwks_algorithm: String,
    /// Age after which the cached JWKS is fetched again (in the background, at the next
    /// verification), in milliseconds.
    pub jwks_refresh_ms: u64,
    /// Shortest time between two JWKS fetches, in milliseconds: tokens naming unknown `kid`s
    /// cause at most one fetch per interval.
    pub jwks_min_refresh_ms: u64,
    /// Longest a JWKS fetch may take, and longest a verification waits for one, in milliseconds.
    pub jwks_timeout_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hs256_secret: String::new(),
            rs256_public_key_pem: String::new(),
            issuer: None,
            audience: None,
            leeway_s: 30,
            jwks_url: String::new(),
            jwks_algorithm: "RS256".to_owned(),
            jwks_refresh_ms: 300_000,
            jwks_min_refresh_ms: 30_000,
            jwks_timeout_ms: 2_000,
        }
    }
}

/// Written by hand so that the secret never reaches a log line.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = if self.hs256_secret.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("AuthConfig")
            .field("hs256_secret", &secret)
            .field("rs256_public_key_pem", &self.rs256_public_key_pem)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_s", &self.leeway_s)
            .field("jwks_url", &self.jwks_url)
            .field("jwks_algorithm", &self.jwks_algorithm)
            .field("jwks_refresh_ms", &self.jwks_refresh_ms)
            .field("jwks_min_refresh_ms", &self.jwks_min_refresh_ms)
            .field("jwks_timeout_ms", &self.jwks_timeout_ms)
            .finish()
    }
}
