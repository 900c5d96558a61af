//! The `[publish]` section: where the publish API listens, the publishers' keys (as SHA-256
//! only) and its request limits — checked when the configuration is read, so a bad address, a
//! bad hash or a bad publisher name fails the load naming the key.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use switchyard_core::channels::is_publisher_name;
use switchyard_core::keyhash;

/// The publish API of backends: an internal listener, never the clients' port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, try_from = "PublishFields")]
pub struct PublishConfig {
    /// Address of the publish API's own listener (`127.0.0.1:8090`; port 0 picks a free port,
    /// logged as `publish_addr`). Empty, the default of a gateway, serves no publish API.
    pub listen: String,
    /// The publishers' API keys, as the SHA-256 of each key (a key itself is never configured).
    /// A publisher may have several keys (to rotate them); a key names one publisher.
    pub keys: Vec<PublisherKey>,
    /// Largest request body accepted, in bytes; larger bodies get 413 `payload_too_large`.
    pub max_body_bytes: usize,
    /// Most events in one batch request; more get 413 `payload_too_large`.
    pub max_batch: usize,
}

/// One publisher's API key, as its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublisherKey {
    /// The publisher the key names, as catalog entries' `publishers` list it: 1 to 64 of
    /// `A-Z a-z 0-9 - _ .`.
    pub publisher: String,
    /// The SHA-256 of the key, 64 hex digits (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            keys: Vec::new(),
            max_body_bytes: 1024 * 1024,
            max_batch: 100,
        }
    }
}

impl PublishConfig {
    /// The address to listen on; `None` when no publish API is served.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        // Checked at load: a non-empty `listen` is an address.
        self.listen.parse().ok()
    }

    /// Checks what deserialisation cannot; the error names the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        if !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            return Err(format!(
                "listen: `{}` is not an address such as 127.0.0.1:8090 (empty: no publish API)",
                self.listen
            ));
        }
        let mut seen: Vec<[u8; 32]> = Vec::with_capacity(self.keys.len());
        for (i, key) in self.keys.iter().enumerate() {
            if !is_publisher_name(&key.publisher) {
                return Err(format!(
                    "keys[{i}].publisher: `{}` must be 1 to 64 of A-Z a-z 0-9 - _ .",
                    key.publisher
                ));
            }
            let Some(hash) = keyhash::from_hex(&key.sha256) else {
                return Err(format!(
                    "keys[{i}].sha256: must be the 64 hex digits of the key's SHA-256 \
                     (printf %s \"$KEY\" | sha256sum), not the key"
                ));
            };
            if let Some(j) = seen.iter().position(|h| *h == hash) {
                return Err(format!("keys[{i}].sha256: the same key as keys[{j}]"));
            }
            seen.push(hash);
        }
        if self.max_body_bytes == 0 {
            return Err("max_body_bytes: must be above zero".into());
        }
        if self.max_batch == 0 {
            return Err("max_batch: must be above zero".into());
        }
        Ok(())
    }
}

/// [`PublishConfig`] as written, before [`PublishConfig::validate`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PublishFields {
    listen: String,
    keys: Vec<PublisherKey>,
    max_body_bytes: usize,
    max_batch: usize,
}

impl Default for PublishFields {
    fn default() -> Self {
        let PublishConfig {
            listen,
            keys,
            max_body_bytes,
            max_batch,
        } = PublishConfig::default();
        Self {
            listen,
            keys,
            max_body_bytes,
            max_batch,
        }
    }
}

impl TryFrom<PublishFields> for PublishConfig {
    type Error = String;

    fn try_from(f: PublishFields) -> Result<Self, String> {
        let config = Self {
            listen: f.listen,
            keys: f.keys,
            max_body_bytes: f.max_body_bytes,
            max_batch: f.max_batch,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<PublishConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    const HASH: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn the_defaults_serve_nothing_and_read_back() {
        let c = load("").expect("defaults");
        assert_eq!(c, PublishConfig::default());
        assert_eq!(c.listen_addr(), None);
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.max_batch, 100);
        let text = toml::to_string(&c).expect("render");
        assert_eq!(load(&text).expect("reads back"), c);
    }

    #[test]
    fn a_good_section_loads() {
        let c = load(&format!(
            "listen = \"127.0.0.1:0\"\nkeys = [{{ publisher = \"orders\", sha256 = \"{HASH}\" }}]"
        ))
        .expect("loads");
        assert_eq!(c.listen_addr(), Some(SocketAddr::from(([127, 0, 0, 1], 0))));
        assert_eq!(c.keys[0].publisher, "orders");
    }

    #[test]
    fn every_bad_value_is_refused_naming_its_key() {
        let key = |publisher: &str, sha: &str| {
            format!("keys = [{{ publisher = \"{publisher}\", sha256 = \"{sha}\" }}]")
        };
        for (text, names) in [
            ("listen = \"localhost\"".to_owned(), "listen"),
            (key("orders", "secret-key"), "keys[0].sha256"),
            (key("orders", &HASH[1..]), "keys[0].sha256"),
            (key("", HASH), "keys[0].publisher"),
            (key("or ders", HASH), "keys[0].publisher"),
            (key(&"a".repeat(65), HASH), "keys[0].publisher"),
            (
                format!(
                    "keys = [{{ publisher = \"a\", sha256 = \"{HASH}\" }}, \
                     {{ publisher = \"b\", sha256 = \"{}\" }}]",
                    HASH.to_ascii_uppercase()
                ),
                "keys[1].sha256",
            ),
            ("max_body_bytes = 0".to_owned(), "max_body_bytes"),
            ("max_batch = 0".to_owned(), "max_batch"),
            ("listne = \"\"".to_owned(), "listne"),
            (
                format!("keys = [{{ publisher = \"a\", sha256 = \"{HASH}\", key = \"x\" }}]"),
                "key",
            ),
        ] {
            let err = load(&text).expect_err(&text);
            assert!(err.contains(names), "{text}: {err}");
        }
    }
}
