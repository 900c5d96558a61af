//! Who is publishing: the `Authorization: Bearer <key>` of a request against the configured
//! SHA-256 hashes of the publishers' keys.
//!
//! A key is hashed once and compared with every configured hash in constant time (no early
//! exit), so neither which key matched nor how much of it did shows in the time taken. A
//! missing, malformed, overlong or unknown key is refused the same way: the caller learns
//! nothing but "no".

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use switchyard_core::keyhash;

use super::config::PublishConfig;

/// Longest key accepted, in bytes: anything longer is refused unhashed.
const MAX_KEY_BYTES: usize = 256;

/// The configured keys, as hashes naming their publisher.
#[derive(Debug, Clone, Default)]
pub(super) struct Keys {
    hashes: Vec<([u8; 32], Arc<str>)>,
}

impl Keys {
    /// The keys of `[publish]` (checked at load: a hash that does not read is left out).
    pub(super) fn new(config: &PublishConfig) -> Self {
        let hashes = config
            .keys
            .iter()
            .filter_map(|k| {
                Some((
                    keyhash::from_hex(&k.sha256)?,
                    Arc::from(k.publisher.as_str()),
                ))
            })
            .collect();
        Self { hashes }
    }

    /// The publisher whose key the request's bearer token is, or `None`.
    pub(super) fn publisher_of(&self, headers: &HeaderMap) -> Option<Arc<str>> {
        let value = headers.get(AUTHORIZATION)?.as_bytes();
        let key = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))?;
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return None;
        }
        let given = keyhash::sha256(key);
        let mut found = None;
        for (hash, publisher) in &self.hashes {
            if keyhash::ct_eq(hash, &given) {
                found = Some(publisher.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::config::PublisherKey;

    fn headers(auth: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            axum::http::HeaderValue::from_bytes(auth).expect("a header value"),
        );
        h
    }

    #[test]
    fn only_a_configured_key_names_its_publisher() {
        let config = PublishConfig {
            keys: vec![
                PublisherKey {
                    publisher: "orders".into(),
                    sha256: keyhash::to_hex(&keyhash::sha256(b"orders-key")),
                },
                PublisherKey {
                    publisher: "billing".into(),
                    sha256: keyhash::to_hex(&keyhash::sha256(b"billing-key")),
                },
            ],
            ..PublishConfig::default()
        };
        let keys = Keys::new(&config);
        assert_eq!(keys.hashes.len(), 2);
        let who = |auth: &[u8]| keys.publisher_of(&headers(auth)).map(|p| p.to_string());
        assert_eq!(who(b"Bearer orders-key").as_deref(), Some("orders"));
        assert_eq!(who(b"Bearer billing-key").as_deref(), Some("billing"));
        for refused in [
            &b"Bearer orders-key "[..],
            b"Bearer Orders-key",
            b"Basic orders-key",
            b"orders-key",
            b"Bearer ",
            b"Bearer",
        ] {
            assert_eq!(who(refused), None, "{}", String::from_utf8_lossy(refused));
        }
        let long = [b"Bearer ".as_slice(), &[b'k'; MAX_KEY_BYTES + 1]].concat();
        assert_eq!(who(&long), None);
        assert_eq!(keys.publisher_of(&HeaderMap::new()), None);
    }
}
