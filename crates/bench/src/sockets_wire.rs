//! The `sockets` benchmark's own minimal WebSocket client, so that an idle client socket costs
//! the load generator a tokio task and its `TcpStream` and nothing else: no read or write buffer
//! is kept per socket (tokio-tungstenite keeps its read buffer — and on the client side the
//! handshake's 4 KiB read chunk — for the socket's life).
//!
//! It speaks just what the benchmark needs: the HTTP/1.1 upgrade offering
//! `switchyard-mobile.v1.cbor` (a `101` with that subprotocol is required), masked binary frames
//! from the client, and unmasked, unfragmented frames from the server (text, binary, ping, pong,
//! close); anything else is an error. Idle sockets read into one buffer per thread; a frame
//! split across reads is kept in the socket's own `pending` bytes until it is whole.

use std::cell::RefCell;

use anyhow::{anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest server frame accepted (the benchmark's messages are a few hundred bytes).
const MAX_FRAME: usize = 64 * 1024;

/// A WebSocket frame from the server.
pub(crate) struct Frame {
    pub(crate) opcode: u8,
    pub(crate) payload: Vec<u8>,
}

pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xa;

/// Upgrades `tcp` to a WebSocket at `path` on `host` offering `subprotocol`; returns the bytes
/// read past the response (the start of the first frames, if any).
pub(crate) async fn handshake(
    tcp: &mut TcpStream,
    host: &str,
    path: &str,
    subprotocol: &str,
) -> anyhow::Result<Vec<u8>> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut response = Vec::with_capacity(512);
    let end = loop {
        if let Some(i) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if response.len() > 8 * 1024 {
            bail!("no end of the upgrade response within 8 KiB");
        }
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection during the upgrade");
        }
        response.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 101") {
        let line = head.lines().next().unwrap_or_default().to_owned();
        bail!("the upgrade was refused: {line}");
    }
    if !head.contains(&format!("sec-websocket-protocol: {subprotocol}")) {
        bail!("the server did not accept the subprotocol {subprotocol}");
    }
    Ok(response[end..].to_vec())
}

/// A masked binary frame carrying `payload`.
pub(crate) fn client_frame(payload: &[u8]) -> Vec<u8> {
    masked(OP_BINARY, payload)
}

/// A masked frame (the mask is fixed: the benchmark does not need unpredictable masks, and the
/// server unmasks whatever the key).
pub(crate) fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

/// Takes one whole frame off the front of `buf`, if `buf` holds one.
pub(crate) fn take_frame(buf: &mut Vec<u8>) -> anyhow::Result<Option<Frame>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x80 == 0 || b0 & 0x70 != 0 {
        bail!("a fragmented frame or reserved bits from the server ({b0:#04x})");
    }
    if b1 & 0x80 != 0 {
        bail!("a masked frame from the server");
    }
    let (len, header) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (
                usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX),
                10,
            )
        }
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    if len > MAX_FRAME {
        bail!("a server frame of {len} bytes");
    }
    if buf.len() < header + len {
        return Ok(None);
    }
    let payload = buf[header..header + len].to_vec();
    buf.drain(..header + len);
    Ok(Some(Frame {
        opcode: b0 & 0x0f,
        payload,
    }))
}

/// Reads until `pending` holds a whole frame and returns it (the handshake and the sign-in).
pub(crate) async fn read_frame(
    tcp: &mut TcpStream,
    pending: &mut Vec<u8>,
) -> anyhow::Result<Frame> {
    loop {
        if let Some(frame) = take_frame(pending)? {
            return Ok(frame);
        }
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(anyhow!("the server closed the connection"));
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

thread_local! {
    /// What idle sockets read into: one buffer per thread, none per socket.
    static READ: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// Waits until `tcp` is readable and appends what it holds to `pending` (through the thread's
/// buffer, so `pending` stays unallocated while frames arrive whole). `Ok(false)`: end of
/// stream.
pub(crate) async fn read_more(tcp: &TcpStream, pending: &mut Vec<u8>) -> anyhow::Result<bool> {
    loop {
        tcp.readable().await?;
        let read = READ.with(|buf| {
            let mut buf = buf.borrow_mut();
            match tcp.try_read(&mut buf) {
                Ok(0) => Ok(Some(false)),
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    Ok(Some(true))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        if let Some(more) = read {
            return Ok(more);
        }
    }
}
