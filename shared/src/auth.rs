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
//! the token's `kid` (see [`jwks`](self::jwks) for the cache and its refresh), each only when
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

mod jwks;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use self::jwks::{Jwks, Lookup};

use http::HeaderMap;
use http::header::AUTHORIZATION;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest token accepted, in bytes; longer ones are refused before they are decoded.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Shortest HS256 secret that does not draw a warning (RFC 7518 §3.2: at least 256 bits).
const MIN_HS256_SECRET_BYTES: usize = 32;

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

/// The bearer token of an HTTP request's `Authorization` header: `None` without one (or with an
/// empty one); an error for another scheme, several `Authorization` headers, or a value that is
/// not text. For gateways that verify it with [`Verifier::verify_async`].
pub fn header_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::InvalidToken(
            "more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::InvalidToken("the Authorization header is not printable ASCII"))?;
    bearer_token(value)
}

/// The refusal of a `kid` the JWKS does not publish, after any refresh.
fn unknown_kid() -> AuthError {
    AuthError::InvalidToken("the token's `kid` names no known key")
}

/// The token of an `Authorization` value: `None` when the value is empty, an error when the scheme
/// is not `Bearer` or no token follows it.
pub fn bearer_token(value: &str) -> Result<Option<&str>, AuthError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let (scheme, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::InvalidToken(
            "the authorization must be `Bearer <token>`",
        ));
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    Ok(Some(token))
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";
    const PRIVATE_PEM: &str = include_str!("../tests/keys/rs256-private.pem");
    const PUBLIC_PEM: &str = include_str!("../tests/keys/rs256-public.pem");
    /// The public half of a key pair unrelated to the test keys.
    const OTHER_PUBLIC_PKCS1_PEM: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAz9k3aDLg8BNZSfKSfYoxlx/q58mtHK8RegEr8un+taDFH1RRnT8E
U5Lfb4wX1E1b5x1/5UmjN47py7fEZXxiMzG9RN3voVKt8cJYlFg0N7tvB+9PbCb9
YOB7UJ1oij0DqEpXiwZTEwU/bY8y4IwHnZgRzQtXdYwALbgGCn0dtZ4Ks4UGrHiv
gG782exTX/MvQwetrj8TbQsUlvxP1R3tEkh+QKA9byYJERGIaDNsBHxgdaxVHcZH
Sr+5GYGNisJBKiKlAMZtY+LbDzsBy2EE5Wu/KFKedHsyAhi6SExwEBYEBW3iZtpn
K+DBMQUpjp3OYaxFnbgRs1DUvjAua0b56wIDAQAB
-----END RSA PUBLIC KEY-----
";
    const HOUR: Duration = Duration::from_secs(3600);

    fn hs_config() -> AuthConfig {
        AuthConfig {
            hs256_secret: SECRET.into(),
            ..AuthConfig::default()
        }
    }

    fn rs_config() -> AuthConfig {
        AuthConfig {
            rs256_public_key_pem: PUBLIC_PEM.into(),
            ..AuthConfig::default()
        }
    }

    fn verifier(config: &AuthConfig) -> Verifier {
        Verifier::new(config).expect("valid config")
    }

    fn alice() -> String {
        "alice".to_owned()
    }

    /// The subject parser the tests use: any non-empty subject without spaces.
    fn user(sub: &str) -> Option<String> {
        (!sub.is_empty() && !sub.contains(' ')).then(|| sub.to_owned())
    }

    impl Verifier {
        fn check(&self, token: &str) -> Result<String, AuthError> {
            self.verify(token, user)
        }

        fn header(&self, headers: &HeaderMap) -> Result<Option<String>, AuthError> {
            self.from_headers(headers, user)
        }
    }

    fn valid_claims() -> serde_json::Value {
        json!({ "sub": "alice", "exp": now_s() + 3600 })
    }

    fn hs_token(secret: &str, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn rs_token(private_pem: &str, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            claims,
            &EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    /// A token with any header, signed with nothing (base64url, no padding).
    fn unsigned_token(header: &serde_json::Value, claims: &serde_json::Value) -> String {
        format!(
            "{}.{}.",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        )
    }

    fn b64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    fn invalid(err: Result<String, AuthError>) -> &'static str {
        match err {
            Err(AuthError::InvalidToken(reason)) => reason,
            other => panic!("expected invalid_token, got {other:?}"),
        }
    }

    #[test]
    fn hs256_token_is_accepted() {
        let v = verifier(&hs_config());
        assert_eq!(v.check(&hs256_token(SECRET, "alice", HOUR)), Ok(alice()));
    }

    #[test]
    fn rs256_token_is_accepted() {
        let v = verifier(&rs_config());
        assert_eq!(
            v.check(&rs_token(PRIVATE_PEM, &valid_claims())),
            Ok(alice())
        );
    }

    #[test]
    fn both_algorithms_are_accepted_when_both_keys_are_configured() {
        let v = verifier(&AuthConfig {
            hs256_secret: SECRET.into(),
            ..rs_config()
        });
        assert_eq!(v.check(&hs256_token(SECRET, "alice", HOUR)), Ok(alice()));
        assert_eq!(
            v.check(&rs_token(PRIVATE_PEM, &valid_claims())),
            Ok(alice())
        );
    }

    #[test]
    fn a_verified_token_carries_its_expiry_and_the_leeway() {
        let v = verifier(&hs_config());
        let exp = now_s() + 120;
        let token = hs_token(SECRET, &json!({ "sub": "alice", "exp": exp }));
        let verified = v.verify_claims(&token, user).unwrap();
        assert_eq!(verified.subject, "alice");
        assert_eq!(verified.expires_at, UNIX_EPOCH + Duration::from_secs(exp));
        assert_eq!(
            verified.valid_until,
            verified.expires_at + Duration::from_secs(30)
        );
        // An absurd `exp` is clamped, never an overflow.
        let far = hs_token(SECRET, &json!({ "sub": "alice", "exp": 1e300 }));
        if let Ok(v) = v.verify_claims(&far, user) {
            assert!(v.expires_at > SystemTime::now());
        }
    }

    #[test]
    fn wrong_secret_is_refused() {
        let v = verifier(&hs_config());
        let token = hs256_token("another-secret-that-is-also-long-enough", "alice", HOUR);
        assert_eq!(invalid(v.check(&token)), "bad signature");
    }

    #[test]
    fn tampered_claims_are_refused() {
        let v = verifier(&rs_config());
        let token = rs_token(PRIVATE_PEM, &valid_claims());
        let forged_claims = b64url(
            json!({ "sub": "mallory", "exp": now_s() + 3600 })
                .to_string()
                .as_bytes(),
        );
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(invalid(v.check(&forged)), "bad signature");
    }

    #[test]
    fn token_signed_by_another_rsa_key_is_refused() {
        // The verifier trusts an unrelated key pair's public key (PKCS#1 form, so that format is
        // covered too); the token is signed with the test key.
        let v = verifier(&AuthConfig {
            rs256_public_key_pem: OTHER_PUBLIC_PKCS1_PEM.into(),
            ..AuthConfig::default()
        });
        let token = rs_token(PRIVATE_PEM, &valid_claims());
        assert_eq!(invalid(v.check(&token)), "bad signature");
    }

    #[test]
    fn expired_token_is_refused_beyond_the_leeway() {
        let v = verifier(&hs_config());
        let claims = json!({ "sub": "alice", "exp": now_s() - 120 });
        assert_eq!(
            v.check(&hs_token(SECRET, &claims)),
            Err(AuthError::ExpiredToken)
        );
        // Within the 30 s leeway it still passes.
        let claims = json!({ "sub": "alice", "exp": now_s() - 5 });
        assert_eq!(v.check(&hs_token(SECRET, &claims)), Ok(alice()));
    }

    #[test]
    fn exp_is_required_and_nbf_is_honoured() {
        let v = verifier(&hs_config());
        let no_exp = json!({ "sub": "alice" });
        assert_eq!(
            invalid(v.check(&hs_token(SECRET, &no_exp))),
            "the token has no `exp` claim"
        );
        let not_yet = json!({ "sub": "alice", "exp": now_s() + 7200, "nbf": now_s() + 3600 });
        assert_eq!(
            invalid(v.check(&hs_token(SECRET, &not_yet))),
            "the token is not valid yet"
        );
        let started = json!({ "sub": "alice", "exp": now_s() + 7200, "nbf": now_s() - 10 });
        assert_eq!(v.check(&hs_token(SECRET, &started)), Ok(alice()));
    }

    #[test]
    fn alg_none_is_refused() {
        let v = verifier(&hs_config());
        let token = unsigned_token(&json!({ "alg": "none", "typ": "JWT" }), &valid_claims());
        assert_eq!(v.check(&token).unwrap_err().code(), "invalid_token");
        let token = unsigned_token(&json!({ "alg": "None" }), &valid_claims());
        assert_eq!(v.check(&token).unwrap_err().code(), "invalid_token");
    }

    #[test]
    fn other_algorithms_are_refused() {
        let v = verifier(&hs_config());
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &valid_claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            invalid(v.check(&token)),
            "the token's algorithm is not accepted"
        );
    }

    #[test]
    fn hs256_token_is_refused_when_only_rs256_is_configured() {
        // Algorithm confusion: an attacker signs HS256 with the (public) RSA key as the secret.
        let v = verifier(&rs_config());
        let token = hs_token(PUBLIC_PEM, &valid_claims());
        assert_eq!(
            invalid(v.check(&token)),
            "the token's algorithm is not accepted"
        );
        // And the other way round.
        let v = verifier(&hs_config());
        let token = rs_token(PRIVATE_PEM, &valid_claims());
        assert_eq!(
            invalid(v.check(&token)),
            "the token's algorithm is not accepted"
        );
    }

    #[test]
    fn sub_must_pass_the_gateways_parser() {
        let v = verifier(&hs_config());
        assert_eq!(
            invalid(v.check(&hs256_token(SECRET, "not a user!", HOUR))),
            "the `sub` claim is not a valid user id"
        );
        assert_eq!(
            invalid(v.check(&hs256_token(SECRET, "", HOUR))),
            "the `sub` claim is not a valid user id"
        );
        let no_sub = json!({ "exp": now_s() + 3600 });
        assert_eq!(
            invalid(v.check(&hs_token(SECRET, &no_sub))),
            "the token has no `sub` claim"
        );
        let numeric_sub = json!({ "sub": 42, "exp": now_s() + 3600 });
        assert_eq!(
            v.check(&hs_token(SECRET, &numeric_sub)).unwrap_err().code(),
            "invalid_token"
        );
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let v = verifier(&AuthConfig {
            issuer: Some("https://id.example".into()),
            audience: Some("switchyard-web".into()),
            ..hs_config()
        });
        let exp = now_s() + 3600;
        let good = json!({ "sub": "alice", "exp": exp, "iss": "https://id.example", "aud": "switchyard-web" });
        assert_eq!(v.check(&hs_token(SECRET, &good)), Ok(alice()));
        let aud_list = json!({ "sub": "alice", "exp": exp, "iss": "https://id.example", "aud": ["other", "switchyard-web"] });
        assert_eq!(v.check(&hs_token(SECRET, &aud_list)), Ok(alice()));

        let bad_iss = json!({ "sub": "alice", "exp": exp, "iss": "https://evil.example", "aud": "switchyard-web" });
        assert_eq!(
            invalid(v.check(&hs_token(SECRET, &bad_iss))),
            "the issuer is not accepted"
        );
        let bad_aud =
            json!({ "sub": "alice", "exp": exp, "iss": "https://id.example", "aud": "other" });
        assert_eq!(
            invalid(v.check(&hs_token(SECRET, &bad_aud))),
            "the audience is not accepted"
        );
        // Configured claims are required, not only checked when present.
        let no_iss = json!({ "sub": "alice", "exp": exp, "aud": "switchyard-web" });
        assert_eq!(
            invalid(v.check(&hs_token(SECRET, &no_iss))),
            "the token has no `iss` claim"
        );
        let no_aud = json!({ "sub": "alice", "exp": exp, "iss": "https://id.example" });
        assert_eq!(
            invalid(v.check(&hs_token(SECRET, &no_aud))),
            "the token has no `aud` claim"
        );
    }

    #[test]
    fn issuer_and_audience_are_ignored_when_not_configured() {
        let v = verifier(&hs_config());
        let claims =
            json!({ "sub": "alice", "exp": now_s() + 3600, "iss": "anyone", "aud": "anything" });
        assert_eq!(v.check(&hs_token(SECRET, &claims)), Ok(alice()));
    }

    #[test]
    fn garbage_and_oversized_tokens_are_refused() {
        let v = verifier(&hs_config());
        for token in ["x", "a.b.c", "not a token", "..."] {
            assert_eq!(
                v.check(token).unwrap_err().code(),
                "invalid_token",
                "{token}"
            );
        }
        assert_eq!(v.check(""), Err(AuthError::MissingToken));
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(invalid(v.check(&huge)), "the token is too long");
    }

    #[test]
    fn without_keys_tokens_are_refused_and_anonymous_is_allowed() {
        let v = verifier(&AuthConfig::default());
        assert!(!v.is_enabled());
        let token = hs256_token(SECRET, "alice", HOUR);
        assert_eq!(v.check(&token), Err(AuthError::AuthDisabled));
        assert_eq!(v.header(&HeaderMap::new()), Ok(None));
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        assert_eq!(v.header(&headers), Err(AuthError::AuthDisabled));
    }

    #[test]
    fn malformed_pem_fails_with_a_clear_message() {
        for pem in [
            "not a pem",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            // A private key where the public one belongs.
            PRIVATE_PEM,
        ] {
            let err = Verifier::new(&AuthConfig {
                rs256_public_key_pem: pem.into(),
                ..AuthConfig::default()
            })
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("auth.rs256_public_key_pem must be the PEM text of an RSA public key"),
                "{err}"
            );
            assert!(!err.contains("MII"), "no key material in the error: {err}");
        }
    }

    #[test]
    fn error_codes_are_stable_and_messages_carry_no_secrets() {
        let v = verifier(&hs_config());
        let token = hs256_token("wrong-secret-wrong-secret-wrong-secret", "alice", HOUR);
        let err = v.check(&token).unwrap_err();
        assert!(!err.to_string().contains(SECRET));
        assert!(!err.to_string().contains(&token));
        assert_eq!(AuthError::MissingToken.code(), "missing_token");
        assert_eq!(AuthError::InvalidToken("x").code(), "invalid_token");
        assert_eq!(AuthError::ExpiredToken.code(), "expired_token");
        assert_eq!(AuthError::AuthDisabled.code(), "auth_disabled");
        assert!(!format!("{:?}", hs_config()).contains(SECRET));
        assert!(!format!("{v:?}").contains(SECRET));
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn header_parsing() {
        let v = verifier(&hs_config());
        let token = hs256_token(SECRET, "alice", HOUR);
        assert_eq!(v.header(&HeaderMap::new()), Ok(None));
        assert_eq!(v.header(&headers(&[""])), Ok(None));
        assert_eq!(
            v.header(&headers(&[&format!("Bearer {token}")])),
            Ok(Some(alice()))
        );
        assert_eq!(
            v.header(&headers(&[&format!("bearer   {token}")])),
            Ok(Some(alice()))
        );
        assert_eq!(
            v.header(&headers(&["Bearer"])),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            v.header(&headers(&["Bearer   "])),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            v.header(&headers(&["Basic YWxpY2U6cGFzc3dvcmQ="])),
            Err(AuthError::InvalidToken(
                "the authorization must be `Bearer <token>`"
            ))
        );
        assert_eq!(
            v.header(&headers(&[&token])).unwrap_err().code(),
            "invalid_token",
            "a bare token without the scheme"
        );
        assert_eq!(
            v.header(&headers(&["Bearer not-a-jwt"]))
                .unwrap_err()
                .code(),
            "invalid_token"
        );
        assert_eq!(
            v.header(&headers(&[&format!("Bearer {token} extra")]))
                .unwrap_err()
                .code(),
            "invalid_token"
        );
        assert_eq!(
            v.header(&headers(&[
                &format!("Bearer {token}"),
                &format!("Bearer {token}")
            ])),
            Err(AuthError::InvalidToken(
                "more than one Authorization header"
            ))
        );
        let mut non_ascii = HeaderMap::new();
        non_ascii.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        );
        assert_eq!(v.header(&non_ascii).unwrap_err().code(), "invalid_token");
        let expired = hs_token(SECRET, &json!({ "sub": "alice", "exp": now_s() - 600 }));
        assert_eq!(
            v.header(&headers(&[&format!("Bearer {expired}")])),
            Err(AuthError::ExpiredToken)
        );
    }

    #[test]
    fn config_round_trips_and_refuses_unknown_keys() {
        let config = AuthConfig {
            issuer: Some("https://id.example".into()),
            ..hs_config()
        };
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<AuthConfig>(&text).unwrap(), config);
        assert_eq!(
            serde_json::from_str::<AuthConfig>("{}").unwrap(),
            AuthConfig::default()
        );
        assert_eq!(AuthConfig::default().leeway_s, 30);
        assert!(serde_json::from_str::<AuthConfig>(r#"{"secret": "x"}"#).is_err());
    }
}
