//! Token verification: the algorithm is chosen by what is configured, never by the token; the
//! signature, `exp`/`nbf` (with leeway), `iss` and `aud` are checked by `jsonwebtoken`; the
//! subject is read by the gateway's parser, and the expiry comes back with it ([`Verified`]).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::jwks::{Jwks, Lookup};
use super::{AuthConfig, AuthError, MAX_TOKEN_BYTES, MIN_HS256_SECRET_BYTES, header_token};

/// One accepted algorithm: its key and the claim checks that go with it.
#[derive(Clone)]
struct Accepted {
    key: DecodingKey,
    validation: Validation,
}

/// Checks bearer tokens against the configured keys. Build once; cheap to clone (clones share
/// the JWKS cache).
#[derive(Clone)]
pub struct Verifier {
    hs256: Option<Accepted>,
    rs256: Option<Accepted>,
    /// The JWKS cache and the claim checks of its algorithm.
    jwks: Option<(Jwks, Validation)>,
    leeway: Duration,
}

/// A verified token: its subject, as the gateway's parser read it, and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<T> {
    /// The subject (`sub`), parsed.
    pub subject: T,
    /// The token's `exp` claim.
    pub expires_at: SystemTime,
    /// `exp` plus the configured leeway: from then on the token is refused, and a socket
    /// authenticated with it must end (or have re-authenticated).
    pub valid_until: SystemTime,
    /// The token's other claims (all but `sub` and `exp`), as signed: what the channel catalog's
    /// claim rules read (`channels::Subscriber::User`). Bounded by the token's size.
    pub claims: std::sync::Arc<serde_json::Map<String, serde_json::Value>>,
}

impl<T> Verified<T> {
    /// [`Self::valid_until`] on Tokio's monotonic clock (capped at a year from now), for a socket's
    /// `sleep_until`.
    pub fn deadline(&self) -> tokio::time::Instant {
        const CAP: Duration = Duration::from_secs(365 * 24 * 3600);
        let left = self
            .valid_until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::time::Instant::now() + left.min(CAP)
    }
}

/// Why the synchronous check did not settle a token.
enum Check {
    /// Refused for good.
    Refused(AuthError),
    /// Its `kid` is not in the JWKS cache (yet).
    UnknownKid,
}

impl From<AuthError> for Check {
    fn from(e: AuthError) -> Self {
        Self::Refused(e)
    }
}

/// Written by hand: `DecodingKey`'s own `Debug` prints the secret.
impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("jwks", &self.jwks.as_ref().map(|(j, _)| j.algorithm()))
            .finish()
    }
}

/// The claims this module reads; `exp`, `nbf`, `iss` and `aud` are checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    /// Read as a number of either kind; `jsonwebtoken` has already checked it.
    #[serde(default)]
    exp: Option<f64>,
    /// Every other claim, for the channel catalog's claim rules.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl Verifier {
    /// Builds a verifier; fails, naming the setting, when the RSA public key is not valid PEM.
    /// With neither key configured every token is refused with [`AuthError::AuthDisabled`].
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        let hs256 = if config.hs256_secret.is_empty() {
            None
        } else {
            if config.hs256_secret.len() < MIN_HS256_SECRET_BYTES {
                tracing::warn!(
                    bytes = config.hs256_secret.len(),
                    "auth.hs256_secret is shorter than {MIN_HS256_SECRET_BYTES} bytes; \
                     use a longer random secret"
                );
            }
            Some(Accepted {
                key: DecodingKey::from_secret(config.hs256_secret.as_bytes()),
                validation: validation(Algorithm::HS256, config),
            })
        };
        let rs256 = if config.rs256_public_key_pem.trim().is_empty() {
            None
        } else {
            Some(Accepted {
                key: rsa_public_key(&config.rs256_public_key_pem)?,
                validation: validation(Algorithm::RS256, config),
            })
        };
        let jwks = Jwks::new(config)?.map(|j| {
            let v = validation(j.algorithm(), config);
            (j, v)
        });
        Ok(Self {
            hs256,
            rs256,
            jwks,
            leeway: Duration::from_secs(config.leeway_s),
        })
    }

    /// Whether any key is configured (otherwise every token is refused).
    pub fn is_enabled(&self) -> bool {
        self.hs256.is_some() || self.rs256.is_some() || self.jwks.is_some()
    }

    /// How many JWKS fetches have started (0 without `auth.jwks_url`).
    pub fn jwks_fetches(&self) -> u64 {
        self.jwks.as_ref().map_or(0, |(j, _)| j.fetches())
    }

    /// Checks a token (without its `Bearer ` prefix) and returns its subject as `parse` reads
    /// it; a subject `parse` refuses (`None`) makes the token invalid. Uses the cached JWKS keys
    /// only ([`Self::verify_async`] waits for a refresh on an unknown `kid`).
    pub fn verify<T>(
        &self,
        token: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, AuthError> {
        self.verify_claims(token, parse).map(|v| v.subject)
    }

    /// [`Self::verify`], with the token's expiry. A `kid` not in the JWKS cache asks for a
    /// refresh in the background (rate-limited) and is refused now.
    pub fn verify_claims<T>(
        &self,
        token: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Verified<T>, AuthError> {
        match self.check_token(token) {
            Ok(claims) => self.finish(claims, parse),
            Err(Check::Refused(e)) => Err(e),
            Err(Check::UnknownKid) => {
                if let Some((jwks, _)) = &self.jwks {
                    jwks.request_refresh();
                }
                Err(unknown_kid())
            }
        }
    }

    /// [`Self::verify_claims`], except that a `kid` not in the JWKS cache waits for a refresh
    /// (one fetch per `auth.jwks_min_refresh_ms` at most, waited for at most
    /// `auth.jwks_timeout_ms`) before the token is checked again.
    pub async fn verify_async<T>(
        &self,
        token: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Verified<T>, AuthError> {
        let checked = match self.check_token(token) {
            Err(Check::UnknownKid) => {
                if let Some((jwks, _)) = &self.jwks {
                    jwks.refresh_for_unknown_kid().await;
                }
                self.check_token(token)
            }
            other => other,
        };
        match checked {
            Ok(claims) => self.finish(claims, parse),
            Err(Check::Refused(e)) => Err(e),
            Err(Check::UnknownKid) => Err(unknown_kid()),
        }
    }

    /// The signature and claim checks, up to the parsed claims.
    fn check_token(&self, token: &str) -> Result<Claims, Check> {
        if !self.is_enabled() {
            return Err(AuthError::AuthDisabled.into());
        }
        if token.is_empty() {
            return Err(AuthError::MissingToken.into());
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken("the token is too long").into());
        }
        // The header is read first so that the key is chosen by the algorithm we accept, never
        // by whatever the token claims: an HS256 token is never checked against the RSA key.
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            AuthError::InvalidToken("malformed token, or an algorithm that is not accepted")
        })?;
        // A token of the JWKS's algorithm that names a `kid` is checked with the published key
        // of that `kid`; otherwise with the configured static key of its algorithm.
        let published = self
            .jwks
            .as_ref()
            .filter(|(jwks, _)| jwks.algorithm() == header.alg)
            .zip(header.kid.as_deref());
        let data = if let Some(((jwks, validation), kid)) = published {
            let Lookup::Found(key) = jwks.key(kid) else {
                return Err(Check::UnknownKid);
            };
            jsonwebtoken::decode::<Claims>(token, &key, validation)
        } else {
            let accepted = match header.alg {
                Algorithm::HS256 => self.hs256.as_ref(),
                Algorithm::RS256 => self.rs256.as_ref(),
                _ => None,
            }
            .ok_or(match &self.jwks {
                Some((jwks, _)) if jwks.algorithm() == header.alg => {
                    AuthError::InvalidToken("the token has no `kid`")
                }
                _ => AuthError::InvalidToken("the token's algorithm is not accepted"),
            })?;
            jsonwebtoken::decode::<Claims>(token, &accepted.key, &accepted.validation)
        };
        Ok(data.map_err(|e| refusal(e.kind()))?.claims)
    }

    /// The subject and expiry of checked claims.
    fn finish<T>(
        &self,
        claims: Claims,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Verified<T>, AuthError> {
        let sub = claims
            .sub
            .ok_or(AuthError::InvalidToken("the token has no `sub` claim"))?;
        let subject = parse(&sub).ok_or(AuthError::InvalidToken(
            "the `sub` claim is not a valid user id",
        ))?;
        // `exp` is required and was checked; clamp it to a time the platform can represent.
        const MAX_EXP_S: f64 = 253_402_300_799.0; // 9999-12-31T23:59:59Z
        let exp = claims.exp.unwrap_or(0.0).clamp(0.0, MAX_EXP_S);
        let expires_at = UNIX_EPOCH + Duration::from_secs_f64(exp);
        Ok(Verified {
            subject,
            expires_at,
            valid_until: expires_at + self.leeway.min(Duration::from_secs(86_400 * 365)),
            claims: std::sync::Arc::new(claims.other),
        })
    }

    /// The caller of an HTTP request, its subject read by `parse`. No `Authorization` header (or
    /// an empty one): anonymous, `Ok(None)`. `Bearer <token>` (scheme case-insensitive): the
    /// token is verified. Any other scheme, several `Authorization` headers, or a value that is
    /// not text: an error.
    pub fn from_headers<T>(
        &self,
        headers: &HeaderMap,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, AuthError> {
        match header_token(headers)? {
            Some(token) => self.verify(token, parse).map(Some),
            None => Ok(None),
        }
    }
}

/// The refusal of a `kid` the JWKS does not publish, after any refresh.
fn unknown_kid() -> AuthError {
    AuthError::InvalidToken("the token's `kid` names no known key")
}

/// The claim checks for one algorithm.
fn validation(alg: Algorithm, config: &AuthConfig) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.leeway_s;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(issuer) = &config.issuer {
        v.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &config.audience {
        Some(audience) => {
            v.set_audience(&[audience]);
            required.push("aud");
        }
        // "Checked only when configured": jsonwebtoken would otherwise refuse every token that
        // carries an `aud`, which most identity providers' tokens do.
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

/// Parses and checks the RSA public key now, so that a bad key fails at startup rather than on
/// every request.
fn rsa_public_key(pem: &str) -> anyhow::Result<DecodingKey> {
    const EXPECTED: &str = "auth.rs256_public_key_pem must be the PEM text of an RSA public key \
                            (-----BEGIN PUBLIC KEY----- or -----BEGIN RSA PUBLIC KEY-----)";
    let key = DecodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("{EXPECTED}: {e}"))?;
    // `from_rsa_pem` only unwraps the PEM; turning the key into a JWK parses the RSA key itself
    // (a private key pasted by mistake fails here).
    jsonwebtoken::jwk::Jwk::from_decoding_key(&key, Some(Algorithm::RS256))
        .map_err(|e| anyhow::anyhow!("{EXPECTED}: {e}"))?;
    Ok(key)
}

/// Maps a `jsonwebtoken` failure to what the client is told.
fn refusal(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::ExpiredToken,
        ErrorKind::InvalidSignature => AuthError::InvalidToken("bad signature"),
        ErrorKind::ImmatureSignature => AuthError::InvalidToken("the token is not valid yet"),
        ErrorKind::InvalidIssuer => AuthError::InvalidToken("the issuer is not accepted"),
        ErrorKind::InvalidAudience => AuthError::InvalidToken("the audience is not accepted"),
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => AuthError::InvalidToken("the token has no `exp` claim"),
            "iss" => AuthError::InvalidToken("the token has no `iss` claim"),
            "aud" => AuthError::InvalidToken("the token has no `aud` claim"),
            _ => AuthError::InvalidToken("the token lacks a required claim"),
        },
        ErrorKind::InvalidClaimFormat(_) => AuthError::InvalidToken("malformed claims"),
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            AuthError::InvalidToken("the token's algorithm is not accepted")
        }
        _ => AuthError::InvalidToken("malformed token"),
    }
}
