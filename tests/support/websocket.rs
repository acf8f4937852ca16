//! Just enough of WebSocket (RFC 6455) for tests: the handshake's accept key, frames read
//! and written, an echo loop for servers and the client's upgrade request.

#![allow(dead_code)]

use std::io::{Read, Write};

use base64::Engine as _;

/// The opcodes tests use.
pub const TEXT: u8 = 1;
pub const BINARY: u8 = 2;
pub const CLOSE: u8 = 8;
pub const PING: u8 = 9;
pub const PONG: u8 = 10;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// One whole frame (fragments are not used by tests): its opcode and unmasked payload.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head)?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    if len > 1 << 20 {
        return Err(std::io::Error::other(format!("a {len}-byte frame")));
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask)?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((opcode, payload))
}

/// One final frame; clients mask theirs (`mask`), servers do not.
pub fn write_frame(
    w: &mut impl Write,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> std::io::Result<()> {
    let mut out = vec![0x80 | opcode];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    w.write_all(&out)?;
    w.flush()
}

/// A server's side after its `101`: each text or binary message sent back as it came,
/// pings answered, until the client closes.
pub fn echo(mut s: impl Read + Write) {
    loop {
        let Ok((opcode, payload)) = read_frame(&mut s) else {
            return;
        };
        let answer = match opcode {
            CLOSE => {
                let _ = write_frame(&mut s, CLOSE, &payload, None);
                return;
            }
            PING => PONG,
            other => other,
        };
        if write_frame(&mut s, answer, &payload, None).is_err() {
            return;
        }
    }
}

/// The server's answer to an upgrade request with `key`.
pub fn switching_protocols(key: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        accept_key(key)
    )
}

/// A client's upgrade of `s` to WebSocket for `path` at `host`: an error unless the server
/// switched protocols with the right accept key.
pub fn client_handshake(
    s: &mut (impl Read + Write),
    host: &str,
    path: &str,
    origin: &str,
) -> std::io::Result<()> {
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
    )?;
    s.flush()?;
    // The head, a byte at a time: frames may follow it at once.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::other(format!(
                "closed during the handshake: {}",
                String::from_utf8_lossy(&head)
            )));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if !text.starts_with("http/1.1 101")
        || !text.contains(&format!(
            "sec-websocket-accept: {}",
            accept_key(key).to_ascii_lowercase()
        ))
    {
        return Err(std::io::Error::other(format!("not upgraded: {text}")));
    }
    Ok(())
}
