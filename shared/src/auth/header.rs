//! Where a bearer token travels in HTTP: the `Authorization` header, `Bearer <token>` (the
//! scheme case-insensitive). Tokens inside a gateway's own wire format are extracted by the
//! gateway and passed to the verifier directly.

use http::HeaderMap;
use http::header::AUTHORIZATION;

use super::AuthError;

/// The bearer token of an HTTP request's `Authorization` header: `None` without one (or with an
/// empty one); an error for another scheme, several `Authorization` headers, or a value that is
/// not text. For gateways that verify it with [`Verifier::verify_async`](super::Verifier::verify_async).
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
