//! Bearer-token (JWT) verification for the `auth` message: HS256 and RS256, `exp` required, the
//! `sub` claim naming the user.
//!
//! FIXME(duplication): this repeats a small part of `bff_web::auth::Verifier` (issuer, audience
//! and the HTTP header parsing are left out); the verifier belongs in the shared core, and this
//! module goes away once it is there. It does not parse headers or know the protocol: the socket
//! layer turns a refusal into close 4401.

use std::fmt;

use demo_api::UserId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

/// Longest token accepted, in bytes; longer ones are refused before they are decoded.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// JWT verification keys.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens, as its raw UTF-8 bytes (32 bytes or more recommended).
    /// Empty: HS256 tokens are refused.
    pub hs256_secret: String,
    /// PEM text of the RSA public key that checks RS256 tokens. Empty: RS256 tokens are refused.
    pub rs256_public_key_pem: String,
    /// Clock skew tolerated when checking `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hs256_secret: String::new(),
            rs256_public_key_pem: String::new(),
            leeway_s: 30,
        }
    }
}

/// Written by hand so that the secret never reaches a log line.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secret",
                &(!self.hs256_secret.is_empty()).then_some("<set>"),
            )
            .field(
                "rs256_public_key_pem",
                &(!self.rs256_public_key_pem.trim().is_empty()).then_some("<set>"),
            )
            .field("leeway_s", &self.leeway_s)
            .finish()
    }
}

/// Checks tokens.
pub(crate) struct Verifier {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    hs_validation: Validation,
    rs_validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
}

impl Verifier {
    /// Builds a verifier; fails, naming the setting, when the RSA key is not valid PEM.
    pub(crate) fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        let hs256 = (!config.hs256_secret.is_empty())
            .then(|| DecodingKey::from_secret(config.hs256_secret.as_bytes()));
        let rs256 = if config.rs256_public_key_pem.trim().is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_rsa_pem(config.rs256_public_key_pem.as_bytes()).map_err(|e| {
                    anyhow::anyhow!("auth.rs256_public_key_pem is not an RSA public key: {e}")
                })?,
            )
        };
        Ok(Self {
            hs256,
            rs256,
            hs_validation: validation(Algorithm::HS256, config.leeway_s),
            rs_validation: validation(Algorithm::RS256, config.leeway_s),
        })
    }

    /// Checks a token and names its user; the error is a message for the close reason.
    pub(crate) fn verify(&self, token: &str) -> Result<UserId, &'static str> {
        if self.hs256.is_none() && self.rs256.is_none() {
            return Err("authentication is not configured on this server");
        }
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err("malformed token");
        }
        // The key is chosen by the algorithms we accept, never by what the token claims alone.
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        let (key, validation) = match header.alg {
            Algorithm::HS256 => (self.hs256.as_ref(), &self.hs_validation),
            Algorithm::RS256 => (self.rs256.as_ref(), &self.rs_validation),
            _ => (None, &self.hs_validation),
        };
        let key = key.ok_or("the token's algorithm is not accepted")?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::MissingRequiredClaim(_) => "the token has no `exp` claim",
                ErrorKind::ImmatureSignature => "the token is not valid yet",
                _ => "malformed token",
            })?;
        let sub = data.claims.sub.ok_or("the token has no `sub` claim")?;
        UserId::parse(&sub).map_err(|_| "the `sub` claim is not a valid user id")
    }
}

fn validation(alg: Algorithm, leeway_s: u64) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = leeway_s;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp"]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";

    fn verifier() -> Verifier {
        Verifier::new(&AuthConfig {
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

    #[test]
    fn a_good_token_names_its_user() {
        let t = hs(&json!({"sub": "alice", "exp": now() + 60}), SECRET);
        assert_eq!(verifier().verify(&t).unwrap().as_str(), "alice");
    }

    #[test]
    fn bad_tokens_are_refused() {
        let v = verifier();
        let cases = [
            hs(&json!({"sub": "alice"}), SECRET),
            hs(
                &json!({"sub": "alice", "exp": now() + 60}),
                "another-secret-of-32-bytes-or-more!",
            ),
            hs(&json!({"sub": "alice", "exp": now() - 3600}), SECRET),
            hs(&json!({"exp": now() + 60}), SECRET),
            hs(&json!({"sub": "not a user id!", "exp": now() + 60}), SECRET),
            // alg none, unsigned.
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.".to_owned(),
            String::new(),
            "x".repeat(MAX_TOKEN_BYTES + 1),
        ];
        for t in cases {
            assert!(v.verify(&t).is_err(), "accepted {t}");
        }
    }

    #[test]
    fn without_keys_every_token_is_refused_and_a_bad_pem_fails_at_start() {
        let v = Verifier::new(&AuthConfig::default()).unwrap();
        let t = hs(&json!({"sub": "alice", "exp": now() + 60}), SECRET);
        assert!(v.verify(&t).is_err());
        assert!(
            Verifier::new(&AuthConfig {
                rs256_public_key_pem: "not pem".into(),
                ..AuthConfig::default()
            })
            .is_err()
        );
        // The secret never reaches a log line.
        let debug = format!(
            "{:?}",
            AuthConfig {
                hs256_secret: SECRET.into(),
                ..AuthConfig::default()
            }
        );
        assert!(!debug.contains(SECRET));
    }
}
