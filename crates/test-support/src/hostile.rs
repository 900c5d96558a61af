//! Hostile inputs shared by the gateways' hostile-input suites: forged bearer tokens of every
//! kind a verifier must refuse (and the good tokens every suite signs in with), and the process measurements (peak RSS from /proc) that show a
//! gateway stayed bounded while it was attacked.
//!
//! The tokens are built here by hand where a library would refuse to build them (`alg: none`,
//! HS256 signed with an RSA public key); each comes with the name of the attack it stands for.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The RSA private key (PKCS#8 PEM) the suites sign good RS256 tokens with.
pub const RS256_PRIVATE_PEM: &str = include_str!("../../../shared/tests/keys/rs256-private.pem");
/// Its public key (PEM), configured on the gateways under attack.
pub const RS256_PUBLIC_PEM: &str = include_str!("../../../shared/tests/keys/rs256-public.pem");

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("encode")
}

/// A good HS256 token for `user`, valid for an hour.
pub fn good_hs256(secret: &str, user: &str) -> String {
    hs256_token(secret, user, 3600)
}

/// An HS256 token for `user` signed with `secret`, expiring `ttl_s` seconds from now (negative:
/// already expired).
pub fn hs256_token(secret: &str, user: &str, ttl_s: i64) -> String {
    let now = now_s();
    hs256(
        secret.as_bytes(),
        &json!({"sub": user, "iat": now, "exp": now + ttl_s}),
    )
}

/// An HS256 token for `user` signed with `secret`, valid for an hour, carrying the extra claims
/// of `extra` (a JSON map: `{"roles": ["ops"]}`) beside `sub`, `iat` and `exp`, for the channel
/// catalog's claim rules.
pub fn hs256_token_with_claims(secret: &str, user: &str, extra: &Value) -> String {
    let now = now_s();
    let mut claims = json!({"sub": user, "iat": now, "exp": now + 3600});
    if let (Some(all), Some(more)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            all.insert(k.clone(), v.clone());
        }
    }
    hs256(secret.as_bytes(), &claims)
}

/// A good RS256 token for `user`, signed with [`RS256_PRIVATE_PEM`].
pub fn good_rs256(user: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": user, "iat": now_s(), "exp": now_s() + 3600}),
        &EncodingKey::from_rsa_pem(RS256_PRIVATE_PEM.as_bytes()).expect("test key"),
    )
    .expect("encode")
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Every forged token a gateway configured with `secret` (HS256) and [`RS256_PUBLIC_PEM`] must
/// refuse, named by the attack.
pub fn forged_tokens(secret: &str, user: &str) -> Vec<(&'static str, String)> {
    let now = now_s();
    let claims = json!({"sub": user, "iat": now, "exp": now + 3600});
    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            b64url(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        )
    };
    let good = good_hs256(secret, user);
    let (head, rest) = good.split_once('.').expect("a JWT");
    let (_, signature) = rest.split_once('.').expect("a JWT");
    let tampered_claims = format!(
        "{head}.{}.{signature}",
        b64url(
            json!({"sub": "admin", "iat": now, "exp": now + 3600})
                .to_string()
                .as_bytes()
        )
    );
    vec![
        ("alg none", unsigned("none")),
        ("alg None", unsigned("None")),
        (
            "wrong key",
            hs256(b"not-the-secret-not-the-secret-00", &claims),
        ),
        // HS/RS confusion: an HS256 token keyed with the public RSA key, which anybody has.
        (
            "hs256 keyed with the rsa public key",
            hs256(RS256_PUBLIC_PEM.as_bytes(), &claims),
        ),
        (
            "expired",
            hs256(
                secret.as_bytes(),
                &json!({"sub": user, "iat": now - 7200, "exp": now - 3600}),
            ),
        ),
        (
            "not yet valid",
            hs256(
                secret.as_bytes(),
                &json!({"sub": user, "iat": now, "nbf": now + 3600, "exp": now + 7200}),
            ),
        ),
        ("no exp", hs256(secret.as_bytes(), &json!({"sub": user}))),
        (
            "no sub",
            hs256(secret.as_bytes(), &json!({"exp": now + 3600})),
        ),
        (
            "sub not a user id",
            hs256(
                secret.as_bytes(),
                &json!({"sub": "alice/../bob\u{0000}", "exp": now + 3600}),
            ),
        ),
        ("tampered claims", tampered_claims),
        ("oversized", format!("{good}{}", "A".repeat(64 * 1024))),
        ("garbage", "not.a.token".to_owned()),
        ("empty segments", "..".to_owned()),
    ]
}

/// The process's peak resident set (VmHWM), in KiB, from /proc.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// The process's resident set now (VmRSS), in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a VmHWM/VmRSS line")
}

/// The end of every hostile-input suite: the gateway's peak resident memory over the whole
/// attack stayed under `bound_kib`, and it still exits 0 on SIGTERM within 15 s.
pub fn assert_bounded_and_stops(gw: &mut crate::process::Spawned, bound_kib: u64) {
    let peak = peak_rss_kib(gw.pid());
    assert!(peak < bound_kib, "peak RSS {peak} KiB");
    let status = gw.stop_with("-TERM", std::time::Duration::from_secs(15));
    assert!(status.success(), "{status}");
}
