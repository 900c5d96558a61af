//! Verification keys from a JWKS endpoint (`auth.jwks_url`): fetched over HTTP, cached by `kid`,
//! refreshed when they grow stale and when a token names a `kid` the cache does not hold.
//!
//! Every fetch — the first, a stale refresh, an unknown-`kid` refresh — runs in its own task,
//! bounded by `auth.jwks_timeout_ms`, and at most one fetch starts per `auth.jwks_min_refresh_ms`:
//! a flood of tokens with made-up `kid`s costs the issuer at most one request per interval, and
//! each such token costs a map lookup. A verification that meets an unknown `kid` waits for the
//! fetch in flight (or the one it starts) at most `jwks_timeout_ms`; a slow issuer never holds it
//! longer. There is no timer task: a cache older than `auth.jwks_refresh_ms` is refreshed in the
//! background by the next verification that uses it (which goes on with the cached keys), so an
//! idle gateway does not poll its issuer and nothing outlives the verifier.
//!
//! Only keys of the configured algorithm's family are kept: RSA keys for RS256, P-256 keys for
//! ES256; symmetric (`oct`) keys, keys marked for encryption, keys whose own `alg` differs from the
//! configured one, and keys without a `kid` are skipped. So an HS256 token can never be checked
//! against a published key. A failed fetch keeps the keys cached before it.
//!
//! This module does not decide which algorithm a token may use, nor check claims: that is
//! [`super::Verifier`]'s job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::watch;
use tokio::time::Instant;

use super::AuthConfig;

/// Largest JWKS document read, in bytes; a bigger answer fails the fetch.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Most keys kept from one document.
const MAX_KEYS: usize = 64;

/// A cached JWKS: cheap to clone (one shared cache).
#[derive(Clone)]
pub(super) struct Jwks {
    inner: Arc<Inner>,
}

struct Inner {
    url: reqwest::Url,
    alg: Algorithm,
    client: reqwest::Client,
    refresh: Duration,
    min_refresh: Duration,
    timeout: Duration,
    state: Mutex<State>,
    fetches: AtomicU64,
}

#[derive(Default)]
struct State {
    keys: Arc<HashMap<String, DecodingKey>>,
    /// When the keys were last fetched successfully.
    fetched_at: Option<Instant>,
    /// When the last fetch started, successful or not (the rate limit).
    attempted_at: Option<Instant>,
    /// The fetch in flight: becomes `true` when it ends.
    in_flight: Option<watch::Receiver<bool>>,
}

/// What the cache knows of a `kid`.
pub(super) enum Lookup {
    /// The key with that `kid`.
    Found(DecodingKey),
    /// No such key (yet).
    Unknown,
}

impl Jwks {
    /// The cache for `config`, or `None` when `auth.jwks_url` is empty. Fails, naming the setting,
    /// on a URL that is not `http(s)://` or an algorithm other than RS256 and ES256. Starts the
    /// first fetch at once when called inside a Tokio runtime.
    pub(super) fn new(config: &AuthConfig) -> anyhow::Result<Option<Self>> {
        let url = config.jwks_url.trim();
        if url.is_empty() {
            return Ok(None);
        }
        let url = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| anyhow::anyhow!("auth.jwks_url must be an http:// or https:// URL"))?;
        let alg = match config.jwks_algorithm.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => {
                anyhow::bail!("auth.jwks_algorithm must be \"RS256\" or \"ES256\", not {other:?}")
            }
        };
        anyhow::ensure!(
            config.jwks_timeout_ms > 0,
            "auth.jwks_timeout_ms must be at least 1"
        );
        let timeout = Duration::from_millis(config.jwks_timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
        let jwks = Self {
            inner: Arc::new(Inner {
                url,
                alg,
                client,
                refresh: Duration::from_millis(config.jwks_refresh_ms.max(1)),
                min_refresh: Duration::from_millis(config.jwks_min_refresh_ms),
                timeout,
                state: Mutex::new(State::default()),
                fetches: AtomicU64::new(0),
            }),
        };
        {
            let mut state = jwks.lock();
            jwks.start_fetch(&mut state);
        }
        Ok(Some(jwks))
    }

    /// The algorithm the published keys check.
    pub(super) fn algorithm(&self) -> Algorithm {
        self.inner.alg
    }

    /// How many fetches have started (for tests and logs).
    pub(super) fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// The cached key with `kid`; starts a background refresh when the cache is stale (the cached
    /// keys are used meanwhile). Never waits.
    pub(super) fn key(&self, kid: &str) -> Lookup {
        let mut state = self.lock();
        let stale = state
            .fetched_at
            .is_none_or(|at| at.elapsed() >= self.inner.refresh);
        if stale {
            self.start_fetch(&mut state);
        }
        match state.keys.get(kid) {
            Some(key) => Lookup::Found(key.clone()),
            None => Lookup::Unknown,
        }
    }

    /// Asks for a refresh because a token named an unknown `kid`, without waiting for it.
    pub(super) fn request_refresh(&self) {
        let mut state = self.lock();
        self.start_fetch(&mut state);
    }

    /// Refreshes because a token named an unknown `kid`: joins the fetch in flight or starts one
    /// (unless one started less than `jwks_min_refresh_ms` ago), and waits for it at most
    /// `jwks_timeout_ms`.
    pub(super) async fn refresh_for_unknown_kid(&self) {
        let rx = {
            let mut state = self.lock();
            self.start_fetch(&mut state);
            state.in_flight.clone()
        };
        if let Some(mut rx) = rx {
            let _ = tokio::time::timeout(self.inner.timeout, rx.wait_for(|done| *done)).await;
        }
    }

    /// Starts a fetch unless one is in flight or the last started less than the minimum interval
    /// ago, or there is no runtime to run it on.
    fn start_fetch(&self, state: &mut State) {
        if state.in_flight.is_some()
            || state
                .attempted_at
                .is_some_and(|at| at.elapsed() < self.inner.min_refresh)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (tx, rx) = watch::channel(false);
        state.in_flight = Some(rx);
        state.attempted_at = Some(Instant::now());
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let jwks = self.clone();
        runtime.spawn(async move {
            let fetched = tokio::time::timeout(jwks.inner.timeout, jwks.fetch()).await;
            let mut state = jwks.lock();
            match fetched {
                Ok(Ok(keys)) => {
                    tracing::debug!(url = %jwks.inner.url, keys = keys.len(), "JWKS fetched");
                    state.keys = Arc::new(keys);
                    state.fetched_at = Some(Instant::now());
                }
                Ok(Err(e)) => {
                    tracing::warn!(url = %jwks.inner.url, error = %e, "JWKS fetch failed; keeping the cached keys");
                }
                Err(_) => {
                    tracing::warn!(url = %jwks.inner.url, timeout = ?jwks.inner.timeout, "JWKS fetch timed out; keeping the cached keys");
                }
            }
            state.in_flight = None;
            drop(state);
            let _ = tx.send(true);
        });
    }

    /// One fetch: the document, bounded in size, and the usable keys in it.
    async fn fetch(&self) -> anyhow::Result<HashMap<String, DecodingKey>> {
        let mut response = self
            .inner
            .client
            .get(self.inner.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "the JWKS endpoint answered {}",
            response.status()
        );
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            anyhow::ensure!(
                body.len() + chunk.len() <= MAX_JWKS_BYTES,
                "the JWKS document is larger than {MAX_JWKS_BYTES} bytes"
            );
            body.extend_from_slice(&chunk);
        }
        parse_keys(&body, self.inner.alg)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Critical sections only swap fields: a panic cannot leave torn state.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The keys of a JWKS document usable for `alg`, by `kid`.
fn parse_keys(body: &[u8], alg: Algorithm) -> anyhow::Result<HashMap<String, DecodingKey>> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(body)
        .map_err(|e| anyhow::anyhow!("the JWKS document is not {{\"keys\": [...]}}: {e}"))?;
    let mut keys = HashMap::new();
    for value in document.keys {
        // One key this library cannot read does not spoil the others.
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if let Some((kid, key)) = usable(&jwk, alg)
            && keys.len() < MAX_KEYS
        {
            keys.insert(kid, key);
        }
    }
    Ok(keys)
}

/// A key's `kid` and decoding key, when it is a signing key of `alg`'s family (never `oct`).
fn usable(jwk: &Jwk, alg: Algorithm) -> Option<(String, DecodingKey)> {
    let kid = jwk.common.key_id.clone().filter(|k| !k.is_empty())?;
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let own_alg = match alg {
        Algorithm::RS256 => KeyAlgorithm::RS256,
        Algorithm::ES256 => KeyAlgorithm::ES256,
        _ => return None,
    };
    if jwk.common.key_algorithm.is_some_and(|a| a != own_alg) {
        return None;
    }
    let family_fits = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        _ => false,
    };
    if !family_fits {
        return None;
    }
    DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RSA_PEM: &str = include_str!("../../tests/keys/rs256-private.pem");
    const EC_PEM: &str = include_str!("../../tests/keys/es256-a-private.pem");

    fn jwk(pem: &str, alg: Algorithm, kid: &str) -> serde_json::Value {
        let key = match alg {
            Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()),
            _ => jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()),
        }
        .unwrap();
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        jwk
    }

    #[test]
    fn only_signing_keys_of_the_configured_family_are_kept() {
        let mut enc = jwk(RSA_PEM, Algorithm::RS256, "enc");
        enc["use"] = json!("enc");
        let mut no_kid = jwk(RSA_PEM, Algorithm::RS256, "x");
        no_kid.as_object_mut().unwrap().remove("kid");
        let mut other_alg = jwk(RSA_PEM, Algorithm::RS256, "ps");
        other_alg["alg"] = json!("PS256");
        let doc = json!({ "keys": [
            jwk(RSA_PEM, Algorithm::RS256, "rsa"),
            jwk(EC_PEM, Algorithm::ES256, "ec"),
            { "kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA" },
            { "kty": "weird", "kid": "w" },
            enc, no_kid, other_alg,
        ]});
        let body = doc.to_string();
        let rs: Vec<_> = parse_keys(body.as_bytes(), Algorithm::RS256)
            .unwrap()
            .into_keys()
            .collect();
        assert_eq!(rs, ["rsa"]);
        let es: Vec<_> = parse_keys(body.as_bytes(), Algorithm::ES256)
            .unwrap()
            .into_keys()
            .collect();
        assert_eq!(es, ["ec"]);
    }

    #[test]
    fn a_document_without_keys_is_an_error() {
        assert!(parse_keys(b"[]", Algorithm::RS256).is_err());
        assert!(parse_keys(b"not json", Algorithm::RS256).is_err());
        assert!(
            parse_keys(br#"{"keys": []}"#, Algorithm::RS256)
                .unwrap()
                .is_empty()
        );
    }
}
