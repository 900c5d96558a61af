//! Secrets kept only as their SHA-256: API keys of publishers and device credentials.
//!
//! A key given by a caller is hashed ([`sha256`]) and compared with the hashes a process keeps
//! ([`ct_eq`], in time independent of where they differ); configuration and shared records carry
//! the hash as 64 hex digits ([`to_hex`], [`from_hex`]). Nothing here decides who a key belongs
//! to or how long it may be: that is the caller's (bff-device's registry, the publish API).

use sha2::{Digest, Sha256};

/// The SHA-256 of a key.
pub fn sha256(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Whether two hashes are equal, in time independent of where they differ.
pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A hash as 64 lowercase hex digits (what `sha256sum` prints).
pub fn to_hex(hash: &[u8]) -> String {
    use std::fmt::Write as _;
    hash.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A hash from exactly 64 hex digits (either case); `None` for anything else.
pub fn from_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_through_hex_and_compare_exactly() {
        let h = sha256(b"abc");
        let hex = to_hex(&h);
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(from_hex(&hex), Some(h));
        assert_eq!(from_hex(&hex.to_ascii_uppercase()), Some(h));
        assert!(ct_eq(&h, &sha256(b"abc")));
        assert!(!ct_eq(&h, &sha256(b"abd")));
        for bad in [
            "",
            "ab",
            &hex[1..],
            &format!("{hex}0"),
            &hex.replace('a', "g"),
        ] {
            assert_eq!(from_hex(bad), None, "{bad}");
        }
        // A multi-byte character where two digits should be is refused, not a panic.
        assert_eq!(from_hex(&format!("é{}", &hex[2..])), None);
    }
}
