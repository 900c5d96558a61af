//! Verification keys from a JWKS endpoint, against a real JWKS server on loopback that counts
//! its fetches: RS256 and ES256 keys picked by `kid`, a key rotation followed by the on-demand
//! refresh, a burst of unknown `kid`s costing at most one fetch per minimum interval, a removed
//! key refused after a refresh, the periodic refresh, a slow issuer bounded by the timeout, and
//! the algorithm always the configuration's (no HS/RS confusion through the JWKS).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use switchyard_core::auth::{AuthConfig, AuthError, Verifier};
use test_support::TestServer;

const RS_A: &str = include_str!("keys/rs256-private.pem");
const RS_B: &str = include_str!("keys/rs256-b-private.pem");
const ES_A: &str = include_str!("keys/es256-a-private.pem");
const ES_B: &str = include_str!("keys/es256-b-private.pem");

/// A JWKS endpoint whose document the test changes, counting the fetches.
#[derive(Clone, Default)]
struct Issuer {
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    /// Milliseconds each answer is held back.
    delay_ms: Arc<AtomicU64>,
}

impl Issuer {
    fn publish(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    async fn serve(&self) -> TestServer {
        async fn jwks(State(issuer): State<Issuer>) -> axum::Json<Value> {
            issuer.fetches.fetch_add(1, Ordering::SeqCst);
            let delay = issuer.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let keys = issuer.keys.lock().unwrap().clone();
            axum::Json(json!({ "keys": keys }))
        }
        let router = Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .with_state(self.clone());
        test_support::serve(router).await
    }
}

fn encoding_key(pem: &str, alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    }
}

/// The public JWK of a private key, with `kid`.
fn jwk(pem: &str, alg: Algorithm, kid: &str) -> Value {
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&encoding_key(pem, alg), alg).unwrap())
            .unwrap();
    jwk["kid"] = json!(kid);
    jwk["use"] = json!("sig");
    jwk
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `sub` signed with `pem` under `kid` (none: no `kid` header).
fn token(pem: &str, alg: Algorithm, kid: Option<&str>, sub: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(
        &header,
        &json!({ "sub": sub, "exp": now_s() + 600 }),
        &encoding_key(pem, alg),
    )
    .unwrap()
}

fn config(server: &TestServer, alg: &str, min_refresh_ms: u64) -> AuthConfig {
    AuthConfig {
        jwks_url: format!("{}/.well-known/jwks.json", server.url()),
        jwks_algorithm: alg.to_owned(),
        jwks_min_refresh_ms: min_refresh_ms,
        jwks_timeout_ms: 2_000,
        ..AuthConfig::default()
    }
}

async fn check(v: &Verifier, token: &str) -> Result<String, AuthError> {
    v.verify_async(token, |s| Some(s.to_owned()))
        .await
        .map(|v| v.subject)
}

/// Retries `f` until it holds, for at most 5 s.
async fn eventually<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
    let until = Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(Instant::now() < until, "not within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rs256_keys_rotate_by_kid_with_an_on_demand_refresh() {
    let issuer = Issuer::default();
    issuer.publish(vec![jwk(RS_A, Algorithm::RS256, "key-a")]);
    let server = issuer.serve().await;
    let v = Verifier::new(&config(&server, "RS256", 300)).unwrap();

    // Key A: accepted.
    let by_a = token(RS_A, Algorithm::RS256, Some("key-a"), "alice");
    assert_eq!(check(&v, &by_a).await, Ok("alice".into()));
    let fetches = issuer.fetches();
    assert_eq!(fetches, 1, "one fetch serves every token of a known kid");
    assert_eq!(check(&v, &by_a).await, Ok("alice".into()));
    assert_eq!(issuer.fetches(), 1);

    // Rotation: the issuer now publishes B only and signs with it.
    issuer.publish(vec![jwk(RS_B, Algorithm::RS256, "key-b")]);
    let by_b = token(RS_B, Algorithm::RS256, Some("key-b"), "bob");
    // B is accepted once the minimum interval allows the on-demand refresh.
    let v2 = v.clone();
    eventually(|| {
        let (v, t) = (v2.clone(), by_b.clone());
        async move { check(&v, &t).await == Ok("bob".into()) }
    })
    .await;
    assert!(issuer.fetches() >= 2);
    // A was removed from the JWKS: refused after that refresh.
    assert_eq!(
        check(&v, &by_a).await,
        Err(AuthError::InvalidToken(
            "the token's `kid` names no known key"
        ))
    );
    // A token signed by A but claiming B's kid fails on the signature.
    let forged = token(RS_A, Algorithm::RS256, Some("key-b"), "mallory");
    assert_eq!(
        check(&v, &forged).await,
        Err(AuthError::InvalidToken("bad signature"))
    );
}

#[tokio::test]
async fn a_burst_of_unknown_kids_makes_at_most_one_fetch_per_interval() {
    let issuer = Issuer::default();
    issuer.publish(vec![jwk(ES_A, Algorithm::ES256, "ec-a")]);
    let server = issuer.serve().await;
    let v = Verifier::new(&config(&server, "ES256", 60_000)).unwrap();
    let good = token(ES_A, Algorithm::ES256, Some("ec-a"), "alice");
    assert_eq!(check(&v, &good).await, Ok("alice".into()));
    let after_first = issuer.fetches();
    assert_eq!(after_first, 1);

    // 200 tokens with random kids, concurrently: no fetch within the minimum interval.
    let burst = (0..200).map(|i| {
        let v = v.clone();
        let t = token(
            ES_B,
            Algorithm::ES256,
            Some(&format!("random-{i}")),
            "mallory",
        );
        tokio::spawn(async move { check(&v, &t).await })
    });
    for refused in futures::future::join_all(burst).await {
        assert_eq!(
            refused.unwrap(),
            Err(AuthError::InvalidToken(
                "the token's `kid` names no known key"
            ))
        );
    }
    assert_eq!(issuer.fetches(), after_first);
    assert_eq!(v.jwks_fetches(), 1);
    // The known key still works throughout.
    assert_eq!(check(&v, &good).await, Ok("alice".into()));
}

#[tokio::test]
async fn a_cold_burst_of_unknown_kids_shares_one_fetch() {
    let issuer = Issuer::default();
    issuer.publish(vec![jwk(ES_A, Algorithm::ES256, "ec-a")]);
    issuer.delay_ms.store(200, Ordering::SeqCst);
    let server = issuer.serve().await;
    // Built inside the runtime, the verifier starts its first fetch at once; every token of the
    // burst, known kid or not, waits for that same fetch.
    let v = Verifier::new(&config(&server, "ES256", 60_000)).unwrap();
    let burst = (0..100).map(|i| {
        let v = v.clone();
        let (pem, kid) = if i % 2 == 0 {
            (ES_A, "ec-a".to_owned())
        } else {
            (ES_B, format!("random-{i}"))
        };
        let t = token(pem, Algorithm::ES256, Some(&kid), "alice");
        tokio::spawn(async move { (i, check(&v, &t).await) })
    });
    for outcome in futures::future::join_all(burst).await {
        let (i, result) = outcome.unwrap();
        assert_eq!(result.is_ok(), i % 2 == 0, "{i}: {result:?}");
    }
    assert_eq!(issuer.fetches(), 1);
}

#[tokio::test]
async fn the_cache_is_refreshed_periodically() {
    let issuer = Issuer::default();
    issuer.publish(vec![jwk(RS_A, Algorithm::RS256, "key-a")]);
    let server = issuer.serve().await;
    let mut cfg = config(&server, "RS256", 0);
    cfg.jwks_refresh_ms = 200;
    let v = Verifier::new(&cfg).unwrap();
    let by_a = token(RS_A, Algorithm::RS256, Some("key-a"), "alice");
    assert_eq!(check(&v, &by_a).await, Ok("alice".into()));
    // The issuer drops key A; no token names an unknown kid, yet A is refused once the cache is
    // older than jwks_refresh_ms and a verification refreshed it.
    issuer.publish(vec![jwk(RS_B, Algorithm::RS256, "key-b")]);
    let v2 = v.clone();
    eventually(|| {
        let (v, t) = (v2.clone(), by_a.clone());
        async move { check(&v, &t).await.is_err() }
    })
    .await;
}

#[tokio::test]
async fn a_slow_issuer_bounds_the_wait() {
    let issuer = Issuer::default();
    issuer.publish(vec![jwk(RS_A, Algorithm::RS256, "key-a")]);
    issuer.delay_ms.store(10_000, Ordering::SeqCst);
    let server = issuer.serve().await;
    let mut cfg = config(&server, "RS256", 0);
    cfg.jwks_timeout_ms = 300;
    let v = Verifier::new(&cfg).unwrap();
    let by_a = token(RS_A, Algorithm::RS256, Some("key-a"), "alice");
    let started = Instant::now();
    assert_eq!(
        check(&v, &by_a).await,
        Err(AuthError::InvalidToken(
            "the token's `kid` names no known key"
        ))
    );
    // Bounded by the timeout (generously: the machine may be loaded), not by the 10 s issuer.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn the_algorithm_is_the_configurations_never_the_tokens() {
    let issuer = Issuer::default();
    // An `oct` key under a kid: a JWKS must never turn into an HMAC secret.
    let secret_b64 = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA";
    issuer.publish(vec![
        jwk(RS_A, Algorithm::RS256, "key-a"),
        jwk(ES_A, Algorithm::ES256, "ec-a"),
        json!({ "kty": "oct", "kid": "hmac", "k": secret_b64 }),
    ]);
    let server = issuer.serve().await;
    let v = Verifier::new(&config(&server, "RS256", 60_000)).unwrap();
    let by_a = token(RS_A, Algorithm::RS256, Some("key-a"), "alice");
    assert_eq!(check(&v, &by_a).await, Ok("alice".into()));
    let not_accepted = Err(AuthError::InvalidToken(
        "the token's algorithm is not accepted",
    ));
    // ES256 is published but not the configured algorithm.
    let es = token(ES_A, Algorithm::ES256, Some("ec-a"), "alice");
    assert_eq!(check(&v, &es).await, not_accepted);
    // HS256 with the published `oct` key, or with the RSA key's public JWK as the secret.
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some("hmac".into()),
            ..Header::new(Algorithm::HS256)
        },
        &json!({ "sub": "mallory", "exp": now_s() + 600 }),
        &EncodingKey::from_secret(b"secret-secret-secret-secret-secret"),
    )
    .unwrap();
    assert_eq!(check(&v, &hs).await, not_accepted);
    let rsa_as_secret = jwk(RS_A, Algorithm::RS256, "key-a").to_string();
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some("key-a".into()),
            ..Header::new(Algorithm::HS256)
        },
        &json!({ "sub": "mallory", "exp": now_s() + 600 }),
        &EncodingKey::from_secret(rsa_as_secret.as_bytes()),
    )
    .unwrap();
    assert_eq!(check(&v, &hs).await, not_accepted);
    // An RS256 token without a kid has no key (no static RSA key is configured).
    let no_kid = token(RS_A, Algorithm::RS256, None, "alice");
    assert_eq!(
        check(&v, &no_kid).await,
        Err(AuthError::InvalidToken("the token has no `kid`"))
    );
}

#[tokio::test]
async fn bad_settings_fail_at_startup_naming_the_key() {
    for (url, alg, needle) in [
        ("not a url", "RS256", "auth.jwks_url"),
        ("ftp://issuer.example/jwks", "RS256", "auth.jwks_url"),
        ("http://issuer.example/jwks", "HS256", "auth.jwks_algorithm"),
        ("http://issuer.example/jwks", "none", "auth.jwks_algorithm"),
    ] {
        let err = Verifier::new(&AuthConfig {
            jwks_url: url.into(),
            jwks_algorithm: alg.into(),
            ..AuthConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains(needle), "{url} {alg}: {err}");
    }
}
