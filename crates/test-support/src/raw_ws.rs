//! A raw WebSocket client for hostile-input tests: it completes the HTTP upgrade by hand and
//! then writes whatever frames a test asks for — invalid UTF-8, reserved bits, fragmented
//! control frames, huge declared lengths — which a real client library would refuse to send.
//! It reads the server's frames just far enough to find the close code.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upgraded connection speaking raw frames.
pub struct RawSocket {
    stream: TcpStream,
    /// Bytes read past the upgrade answer.
    buffer: Vec<u8>,
}

/// How a raw connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The server sent a close frame with this code (None: a close frame without a code).
    Close(Option<u16>),
    /// The connection ended without a close frame.
    Eof,
    /// Nothing within the time allowed.
    Timeout,
}

impl RawSocket {
    /// Opens `ws://{addr}{path}` offering `subprotocol`, with extra `headers` (`Name: value`).
    /// Panics unless the server answers 101.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        subprotocol: &str,
        headers: &[&str],
    ) -> Self {
        let (status, socket) = Self::try_connect(addr, path, subprotocol, headers).await;
        assert_eq!(status, 101, "the upgrade was refused");
        socket
    }

    /// Opens the connection and returns the upgrade's status code with it.
    pub async fn try_connect(
        addr: SocketAddr,
        path: &str,
        subprotocol: &str,
        headers: &[&str],
    ) -> (u16, Self) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {subprotocol}\r\n"
        );
        if !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("host:"))
        {
            request.push_str(&format!("Host: {addr}\r\n"));
        }
        for h in headers {
            request.push_str(h);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut buffer = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("an answer within 5 s")
                .expect("read");
            assert!(n > 0, "the server closed during the upgrade");
            buffer.extend_from_slice(&chunk[..n]);
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let rest = buffer.split_off(head_end);
        (
            status,
            Self {
                stream,
                buffer: rest,
            },
        )
    }

    /// Writes one frame, masked as a client must (unless `masked` is false), with the given
    /// first byte (FIN, RSV bits, opcode) and payload.
    pub async fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut frame = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(mask_bit | n as u8),
            n if n <= 0xFFFF => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = [0x12u8, 0x34, 0x56, 0x78];
        if masked {
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        // The server may close before reading everything: a failed write is not an error here.
        let _ = self.stream.write_all(&frame).await;
    }

    /// Writes raw bytes (a frame header that lies about its length, say).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// A masked text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(0x81, text.as_bytes(), true).await;
    }

    /// Reads frames until a close frame or the end of the connection, within `within`.
    pub async fn ending(&mut self, within: Duration) -> Ending {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(ending) = self.parse_close() {
                return ending;
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Ending::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return self.parse_close().unwrap_or(Ending::Eof);
                }
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Drops whole frames from the buffer until a close frame; `None` when more bytes are
    /// needed.
    fn parse_close(&mut self) -> Option<Ending> {
        loop {
            let b = &self.buffer;
            if b.len() < 2 {
                return None;
            }
            let opcode = b[0] & 0x0F;
            let (len, header) = match b[1] & 0x7F {
                126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(n), 10)
                }
                126 | 127 => return None,
                n => (u64::from(n), 2),
            };
            let end = header + usize::try_from(len).ok()?;
            if b.len() < end {
                return None;
            }
            if opcode == 0x8 {
                let payload = &b[header..end];
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                return Some(Ending::Close(code));
            }
            self.buffer.drain(..end);
        }
    }
}
