//! The unit tests of token verification: every algorithm and key kind, every refusal, the JWKS
//! cache, and the header parsing.

use super::*;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use serde_json::json;

const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";
const PRIVATE_PEM: &str = include_str!("../../tests/keys/rs256-private.pem");
const PUBLIC_PEM: &str = include_str!("../../tests/keys/rs256-public.pem");
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
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
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
    let good =
        json!({ "sub": "alice", "exp": exp, "iss": "https://id.example", "aud": "switchyard-web" });
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
