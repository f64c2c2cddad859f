//! A lean WebSocket client for load: its own handshake and frame codec over one
//! `TcpStream`, no reader task and no channel. The owner calls [`Conn::next`] (cancel-safe:
//! all state lives in the connection, the only await is a socket read, so it can sit in a
//! `select!`) and looks at the text frame in place with [`Conn::text`]; no copy, no JSON
//! tree. Pings are answered with pongs written without awaiting (whatever does not fit is
//! flushed later). Client frames are masked, as RFC 6455 requires.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Frames larger than this close the connection (the edge's limit is far below it).
const MAX_FRAME: usize = 16 << 20;

#[derive(Debug)]
pub enum ConnError {
    Url(String),
    Io(std::io::Error),
    Handshake(String),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Url(u) => write!(f, "bad WebSocket URL {u}"),
            ConnError::Io(e) => write!(f, "{e}"),
            ConnError::Handshake(s) => write!(f, "WebSocket handshake: {s}"),
        }
    }
}

impl std::error::Error for ConnError {}

impl From<std::io::Error> for ConnError {
    fn from(e: std::io::Error) -> Self {
        ConnError::Io(e)
    }
}

/// What [`Conn::next`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A text frame: read it with [`Conn::text`] (valid until the next call to `next`).
    Text,
    /// The connection ended (the close code, 1006 when it just broke).
    Closed(u16),
}

pub struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Bytes at the front of `rbuf` that belong to the frame returned last.
    consumed: usize,
    /// Where the current text frame's payload is in `rbuf` (or in `frag` when assembled).
    cur: (usize, usize),
    cur_in_frag: bool,
    frag: Vec<u8>,
    /// Control frames (pongs) not yet written.
    ctrl: Vec<u8>,
    wbuf: Vec<u8>,
    mask: u32,
    closed: Option<u16>,
}

impl Conn {
    /// Connect to `ws://ip:port/path?query`, optionally from a given local address.
    pub async fn connect(url: &str, local: Option<IpAddr>) -> Result<Conn, ConnError> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| ConnError::Url(url.into()))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = host.parse().map_err(|_| ConnError::Url(url.into()))?;
        let stream = match local {
            Some(ip) => {
                let sock = if addr.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                sock.bind(SocketAddr::new(ip, 0))?;
                sock.connect(addr).await?
            }
            None => TcpStream::connect(addr).await?,
        };
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            consumed: 0,
            cur: (0, 0),
            cur_in_frag: false,
            frag: Vec::new(),
            ctrl: Vec::new(),
            wbuf: Vec::with_capacity(512),
            // Any non-constant key will do for a load generator; servers only unmask.
            mask: ((addr.port() as u32) << 16) ^ std::process::id() ^ 0x9e37_79b9,
            closed: None,
        };
        // The key is fixed: servers check its form, not its freshness.
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        conn.stream.write_all(req.as_bytes()).await?;
        loop {
            if let Some(end) = memchr::memmem::find(&conn.rbuf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&conn.rbuf[..end]).into_owned();
                let status = head.lines().next().unwrap_or("");
                if status.split_whitespace().nth(1) != Some("101") {
                    return Err(ConnError::Handshake(status.to_string()));
                }
                conn.rbuf.advance(end + 4);
                return Ok(conn);
            }
            if conn.rbuf.len() > 16 * 1024 {
                return Err(ConnError::Handshake("response head too long".into()));
            }
            if conn.stream.read_buf(&mut conn.rbuf).await? == 0 {
                return Err(ConnError::Handshake("closed during the handshake".into()));
            }
        }
    }

    /// The current text frame's payload (after [`Event::Text`]).
    pub fn text(&self) -> &[u8] {
        if self.cur_in_frag {
            &self.frag
        } else {
            &self.rbuf[self.cur.0..self.cur.1]
        }
    }

    /// The next text frame or the end of the connection. Cancel-safe.
    pub async fn next(&mut self) -> Event {
        loop {
            if let Some(code) = self.closed {
                return Event::Closed(code);
            }
            if self.consumed > 0 {
                self.rbuf.advance(self.consumed);
                self.consumed = 0;
            }
            if self.cur_in_frag {
                self.frag.clear();
                self.cur_in_frag = false;
            }
            if self.parse_one() {
                return Event::Text;
            }
            if self.closed.is_some() {
                continue;
            }
            if !self.ctrl.is_empty() && !self.try_flush_ctrl() {
                self.closed = Some(1006);
                continue;
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => self.closed = Some(1006),
                Ok(_) => {}
            }
        }
    }

    /// Take complete frames off the front of `rbuf` until a text frame is ready (true) or
    /// more bytes are needed (false).
    fn parse_one(&mut self) -> bool {
        loop {
            let b = &self.rbuf[..];
            if b.len() < 2 {
                return false;
            }
            let fin = b[0] & 0x80 != 0;
            let opcode = b[0] & 0x0f;
            let masked = b[1] & 0x80 != 0;
            let (len, mut hdr) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                126 | 127 => return false,
                n => (n as usize, 2),
            };
            if len > MAX_FRAME {
                self.closed = Some(1009);
                return false;
            }
            let key = if masked {
                if b.len() < hdr + 4 {
                    return false;
                }
                let k = [b[hdr], b[hdr + 1], b[hdr + 2], b[hdr + 3]];
                hdr += 4;
                Some(k)
            } else {
                None
            };
            if b.len() < hdr + len {
                self.rbuf.reserve(hdr + len - b.len());
                return false;
            }
            if let Some(k) = key {
                for (i, c) in self.rbuf[hdr..hdr + len].iter_mut().enumerate() {
                    *c ^= k[i & 3];
                }
            }
            let (start, end) = (hdr, hdr + len);
            match opcode {
                0x1 if fin => {
                    self.cur = (start, end);
                    self.consumed = end;
                    return true;
                }
                0x1 | 0x0 => {
                    self.frag.extend_from_slice(&self.rbuf[start..end]);
                    self.rbuf.advance(end);
                    if fin {
                        self.cur_in_frag = true;
                        return true;
                    }
                }
                0x8 => {
                    let p = &self.rbuf[start..end];
                    self.closed = Some(if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    });
                    self.rbuf.advance(end);
                    return false;
                }
                0x9 => {
                    let payload = self.rbuf[start..end].to_vec();
                    let mut frame = Vec::with_capacity(payload.len() + 6);
                    self.mask = encode(&mut frame, 0xA, &payload, self.mask);
                    self.ctrl.extend_from_slice(&frame);
                    self.rbuf.advance(end);
                    if !self.try_flush_ctrl() {
                        self.closed = Some(1006);
                        return false;
                    }
                }
                // Pongs and binary frames: nothing to do.
                _ => self.rbuf.advance(end),
            }
        }
    }

    /// Write pending control frames without awaiting; false when the socket broke.
    fn try_flush_ctrl(&mut self) -> bool {
        while !self.ctrl.is_empty() {
            match self.stream.try_write(&self.ctrl) {
                Ok(n) => {
                    self.ctrl.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }

    /// Send one text frame. Not cancel-safe: do not race it.
    pub async fn send(&mut self, text: &[u8]) -> bool {
        if !self.ctrl.is_empty() {
            let ctrl = std::mem::take(&mut self.ctrl);
            if self.stream.write_all(&ctrl).await.is_err() {
                return false;
            }
        }
        self.wbuf.clear();
        self.mask = encode(&mut self.wbuf, 0x1, text, self.mask);
        self.stream.write_all(&self.wbuf).await.is_ok()
    }

    pub async fn close(&mut self) {
        self.wbuf.clear();
        self.mask = encode(
            &mut self.wbuf,
            0x8,
            &[0x03, 0xe8, b'b', b'y', b'e'],
            self.mask,
        );
        let _ = self.stream.write_all(&self.wbuf).await;
        let _ = self.stream.shutdown().await;
    }
}

/// Append one masked client frame; returns the next masking key.
fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: u32) -> u32 {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let key = mask.to_be_bytes();
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
    // xorshift32: a different key per frame.
    let mut x = mask | 1;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (unmasked).
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        if payload.len() < 126 {
            f.push(payload.len() as u8);
        } else {
            f.push(126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn handshake_text_fragments_pings_and_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                head.push(b[0]);
            }
            let head = String::from_utf8(head).unwrap();
            assert!(head.starts_with("GET /chat?x=1 HTTP/1.1\r\n"), "{head}");
            // The 101 and the first frames in one write: the client keeps what follows the
            // head. A long frame split over two writes, a ping between fragments.
            let mut out =
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
            out.extend(server_frame(true, 0x1, br#"{"_id":"1"}"#));
            let long = vec![b'y'; 300];
            let lf = server_frame(true, 0x1, &long);
            out.extend_from_slice(&lf[..100]);
            s.write_all(&out).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let mut rest = lf[100..].to_vec();
            rest.extend(server_frame(false, 0x1, b"ab"));
            rest.extend(server_frame(true, 0x9, b"p1"));
            rest.extend(server_frame(true, 0x0, b"cd"));
            rest.extend(server_frame(true, 0x8, &[0x03, 0xe9]));
            s.write_all(&rest).await.unwrap();
            // The client's pong: masked, payload "p1".
            let mut pong = [0u8; 8];
            s.read_exact(&mut pong).await.unwrap();
            assert_eq!(&pong[..2], &[0x8a, 0x82]);
            let key = [pong[2], pong[3], pong[4], pong[5]];
            assert_eq!([pong[6] ^ key[0], pong[7] ^ key[1]], *b"p1");
        });
        let url = format!("ws://{addr}/chat?x=1");
        let mut c = Conn::connect(&url, None).await.unwrap();
        assert_eq!(c.next().await, Event::Text);
        assert_eq!(c.text(), br#"{"_id":"1"}"#);
        assert_eq!(c.next().await, Event::Text);
        assert_eq!(c.text(), &[b'y'; 300][..]);
        assert_eq!(c.next().await, Event::Text);
        assert_eq!(c.text(), b"abcd");
        assert_eq!(c.next().await, Event::Closed(1001));
        server.await.unwrap();
    }

    #[test]
    fn frames_are_masked_and_length_encoded() {
        let mut out = Vec::new();
        let next = encode(&mut out, 0x1, b"hello", 0x0102_0304);
        assert_ne!(next, 0x0102_0304);
        assert_eq!(&out[..2], &[0x81, 0x85]);
        assert_eq!(&out[2..6], &[1, 2, 3, 4]);
        let clear: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ out[2 + (i & 3)])
            .collect();
        assert_eq!(clear, b"hello");
        let mut big = Vec::new();
        encode(&mut big, 0x1, &[b'x'; 300], 7);
        assert_eq!(&big[..4], &[0x81, 0x80 | 126, 1, 44]);
        assert_eq!(big.len(), 4 + 4 + 300);
    }
}
