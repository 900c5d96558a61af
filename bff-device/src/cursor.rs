//! The poll cursor: where a device is in each of its topics, opaque to the device.
//!
//! A cursor holds the position (epoch and offset) of the last command delivered, of the
//! configuration document delivered, of the latest rate delivered per pair, and per catalog
//! channel the device follows, of the last event delivered (a stream) or the value delivered (a
//! state channel). On the wire it is the base64url (no padding) of a compact binary form:
//!
//! ```text
//! 0x01 or 0x02                          format version (0x02: with channels)
//! varint epoch, varint offset           commands
//! varint epoch, varint offset           configuration
//! u8 n (<= MAX_RATES)                   rate pairs, then n times:
//!   6 ASCII bytes BASEQUOTE, varint epoch, varint offset
//! version 0x02 only:
//! u8 m (1..=MAX_CHANNELS)               channels, then m times:
//!   8 bytes SHA-256(name)[..8], varint epoch, varint offset
//! 4 bytes                               check: SHA-256(device id, 0x00, everything above)[..4]
//! ```
//!
//! A cursor without channel positions is written as version 1, byte for byte what it was before
//! channels existed, so devices without channels (and their golden answers) see no change, and
//! every version 1 cursor still decodes. A channel is named by 8 bytes of the SHA-256 of its name,
//! so a cursor stays short (at most [`MAX_LEN`] characters) and a reordered channel list keeps
//! every position; positions of channels the device no longer follows are ignored.
//!
//! Varints are LEB128 (7 bits a byte, at most 10 bytes, no redundant trailing zero groups). Decoding
//! is strict: anything but exactly this — a wrong version, a truncated or overlong varint,
//! an unknown pair, trailing bytes, a check that fails (a corrupted cursor, or another device's)
//! — is an error, answered `400 bad_cursor`. This module knows nothing of the bus.

use base64::Engine as _;
use demo_api::Pair;
use sha2::{Digest, Sha256};
use switchyard_core::channels::ChannelName;
use switchyard_core::event::Position;

use crate::registry::DeviceId;

/// Format version of the binary form without channels.
const VERSION: u8 = 1;

/// Format version of the binary form with channels.
const VERSION_CHANNELS: u8 = 2;

/// Most rate pairs a cursor may carry.
pub const MAX_RATES: usize = 32;

/// Most channel positions a cursor may carry.
pub const MAX_CHANNELS: usize = 32;

/// Longest cursor accepted on the wire, in characters: the longest a cursor can be (every
/// position at its largest, [`MAX_RATES`] pairs and [`MAX_CHANNELS`] channels) fits.
pub const MAX_LEN: usize = 2400;

/// What names a channel in a cursor: the first 8 bytes of the SHA-256 of its name.
pub type ChannelKey = [u8; 8];

/// The cursor key of channel `name`.
pub fn channel_key(name: &ChannelName) -> ChannelKey {
    let d = Sha256::digest(name.as_str().as_bytes());
    let mut key = [0u8; 8];
    key.copy_from_slice(&d[..8]);
    key
}

/// Bytes of the check.
const CHECK: usize = 4;

/// A position no topic ever has: what a reset cursor holds for the configuration, so that the
/// next poll delivers the document again whatever its version.
pub const UNSEEN: Position = Position {
    epoch: u64::MAX,
    offset: u64::MAX,
};

/// Where a device is in its topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The last command delivered.
    pub commands: Position,
    /// The configuration document delivered (`{0, 0}`: the configured default).
    pub config: Position,
    /// The latest rate delivered, per pair.
    pub rates: Vec<(Pair, Position)>,
    /// Per channel followed: the last event delivered (stream) or the value delivered (state).
    pub channels: Vec<(ChannelKey, Position)>,
}

/// A cursor that is not exactly a cursor of this device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cursor: {0}")]
pub struct BadCursor(pub &'static str);

impl Cursor {
    /// The position of `pair`, if the cursor has one.
    pub fn rate(&self, pair: &Pair) -> Option<Position> {
        self.rates
            .iter()
            .find(|(p, _)| p == pair)
            .map(|(_, pos)| *pos)
    }

    /// The position of the channel with cursor key `key`, if the cursor has one.
    pub fn channel(&self, key: &ChannelKey) -> Option<Position> {
        self.channels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, pos)| *pos)
    }

    /// The wire form for `device`.
    pub fn encode(&self, device: &DeviceId) -> String {
        let mut b = Vec::with_capacity(32 + self.rates.len() * 16 + self.channels.len() * 24);
        let channels = &self.channels[..self.channels.len().min(MAX_CHANNELS)];
        b.push(if channels.is_empty() {
            VERSION
        } else {
            VERSION_CHANNELS
        });
        for p in [self.commands, self.config] {
            varint(&mut b, p.epoch);
            varint(&mut b, p.offset);
        }
        let rates = &self.rates[..self.rates.len().min(MAX_RATES)];
        b.push(rates.len() as u8);
        for (pair, p) in rates {
            b.extend_from_slice(pair.base.as_str().as_bytes());
            b.extend_from_slice(pair.quote.as_str().as_bytes());
            varint(&mut b, p.epoch);
            varint(&mut b, p.offset);
        }
        if !channels.is_empty() {
            b.push(channels.len() as u8);
            for (key, p) in channels {
                b.extend_from_slice(key);
                varint(&mut b, p.epoch);
                varint(&mut b, p.offset);
            }
        }
        let check = check(device, &b);
        b.extend_from_slice(&check);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    /// Decodes the wire form, checking that it is `device`'s.
    pub fn decode(s: &str, device: &DeviceId) -> Result<Self, BadCursor> {
        if s.is_empty() || s.len() > MAX_LEN {
            return Err(BadCursor("length"));
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| BadCursor("not base64url"))?;
        if bytes.len() < 1 + CHECK {
            return Err(BadCursor("too short"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECK);
        if check(device, body) != sum {
            return Err(BadCursor("check failed"));
        }
        let mut r = Reader(body);
        let version = r.byte()?;
        if version != VERSION && version != VERSION_CHANNELS {
            return Err(BadCursor("unknown version"));
        }
        let commands = r.position()?;
        let config = r.position()?;
        let n = usize::from(r.byte()?);
        if n > MAX_RATES {
            return Err(BadCursor("too many rates"));
        }
        let mut rates = Vec::with_capacity(n);
        for _ in 0..n {
            let code = r.take(6)?;
            if !code.iter().all(u8::is_ascii_uppercase) {
                return Err(BadCursor("pair"));
            }
            // Six ASCII letters: slicing at 3 is on a character boundary.
            let code = std::str::from_utf8(code).map_err(|_| BadCursor("pair"))?;
            let pair: Pair = format!("{}/{}", &code[..3], &code[3..])
                .parse()
                .map_err(|_| BadCursor("pair"))?;
            let pos = r.position()?;
            if rates.iter().any(|(p, _)| *p == pair) {
                return Err(BadCursor("duplicate pair"));
            }
            rates.push((pair, pos));
        }
        let channels = if version == VERSION_CHANNELS {
            r.channels()?
        } else {
            Vec::new()
        };
        if !r.0.is_empty() {
            return Err(BadCursor("trailing bytes"));
        }
        Ok(Self {
            commands,
            config,
            rates,
            channels,
        })
    }
}

fn check(device: &DeviceId, body: &[u8]) -> [u8; CHECK] {
    let mut h = Sha256::new();
    h.update(device.as_str().as_bytes());
    h.update([0]);
    h.update(body);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn varint(b: &mut Vec<u8>, mut v: u64) {
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            b.push(low);
            return;
        }
        b.push(low | 0x80);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, BadCursor> {
        let (&b, rest) = self.0.split_first().ok_or(BadCursor("truncated"))?;
        self.0 = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BadCursor> {
        if self.0.len() < n {
            return Err(BadCursor("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, BadCursor> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(BadCursor("varint overflow"));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && bits == 0 {
                    return Err(BadCursor("overlong varint"));
                }
                return Ok(v);
            }
        }
        Err(BadCursor("varint overflow"))
    }

    fn position(&mut self) -> Result<Position, BadCursor> {
        Ok(Position {
            epoch: self.varint()?,
            offset: self.varint()?,
        })
    }

    /// The channel positions of a version 2 cursor: at least one (a cursor without any is
    /// version 1), at most [`MAX_CHANNELS`], no key twice.
    fn channels(&mut self) -> Result<Vec<(ChannelKey, Position)>, BadCursor> {
        let m = usize::from(self.byte()?);
        if m == 0 || m > MAX_CHANNELS {
            return Err(BadCursor("channel count"));
        }
        let mut channels: Vec<(ChannelKey, Position)> = Vec::with_capacity(m);
        for _ in 0..m {
            let mut key = [0u8; 8];
            key.copy_from_slice(self.take(8)?);
            let pos = self.position()?;
            if channels.iter().any(|(k, _)| *k == key) {
                return Err(BadCursor("duplicate channel"));
            }
            channels.push((key, pos));
        }
        Ok(channels)
    }
}

#[cfg(test)]
mod tests;
