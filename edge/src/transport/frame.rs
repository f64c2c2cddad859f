//! WebSocket frames as bytes (RFC 6455 §5), both directions, with no I/O.
//!
//! - **Out:** a server frame is never masked, so a frame's bytes are the same for every
//!   socket. A room encodes each message once ([`text`]) and every member's socket writes
//!   that one shared buffer: no per-member copy or allocation.
//! - **In:** [`parse`] reads one client frame from the front of a buffer: the header, the
//!   mask (required from clients), the length checked against the limit *before* any
//!   payload is buffered, and the payload unmasked in place.
//!
//! fastwebsockets still does the upgrade handshake; after it the edge owns the socket and
//! these functions are its whole framing (the crate's read half allocates 8 KiB per socket
//! up front, which an idle connection should not pay for; see [`super::read`]).

use bytes::{BufMut, Bytes, BytesMut};

/// A frame's opcode (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(b: u8) -> Option<OpCode> {
        Some(match b {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// An unmasked, final server frame carrying `payload`.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(len + 10);
    out.put_u8(0x80 | opcode.bits());
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.extend_from_slice(payload);
    out.freeze()
}

/// A text frame (the payload must be UTF-8: every caller passes JSON it encoded).
pub fn text(json: &[u8]) -> Bytes {
    encode(OpCode::Text, json)
}

/// A close frame with its status code and reason (truncated to fit a control frame).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len().min(123));
    payload.extend_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Close, &payload)
}

/// A frame read from a client.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientFrame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: Vec<u8>,
}

/// Why a client frame is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The payload is longer than the limit (nothing of it was buffered).
    TooLarge,
    /// Not a valid client frame: reserved bits, an unknown opcode, no mask, a fragmented or
    /// oversized control frame.
    Protocol,
}

/// What the front of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole frame, `used` bytes long.
    Frame { frame: ClientFrame, used: usize },
    /// Not a whole frame yet: at least `need` bytes are required in all.
    Incomplete { need: usize },
}

/// How many bytes the frame at the front of `buf` takes in all, as far as its header tells
/// (2 before the header's first two bytes are there). Saturates on absurd lengths; [`parse`]
/// refuses those.
pub fn wanted(buf: &[u8]) -> usize {
    if buf.len() < 2 {
        return 2;
    }
    let len = match buf[1] & 0x7F {
        126 if buf.len() < 4 => return 4,
        126 => u16::from_be_bytes([buf[2], buf[3]]) as u64 + 4,
        127 if buf.len() < 10 => return 10,
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            u64::from_be_bytes(b).saturating_add(10)
        }
        n => n as u64 + 2,
    };
    let mask = if buf[1] & 0x80 != 0 { 4 } else { 0 };
    usize::try_from(len.saturating_add(mask)).unwrap_or(usize::MAX)
}

/// Read one client frame from the front of `buf` (unmasking its payload in place), refusing
/// payloads over `max_payload` as soon as the header says so.
pub fn parse(buf: &mut [u8], max_payload: usize) -> Result<Parsed, FrameError> {
    if buf.len() < 2 {
        return Ok(Parsed::Incomplete { need: 2 });
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol); // no extension was negotiated
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol)?;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol); // clients must mask (§5.1)
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(Parsed::Incomplete { need: 4 });
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(Parsed::Incomplete { need: 10 });
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n as u64, 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(FrameError::Protocol);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge);
    }
    let len = len as usize;
    let need = at + 4 + len;
    if buf.len() < need {
        return Ok(Parsed::Incomplete { need });
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    let payload = &mut buf[at..need];
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Parsed::Frame {
        frame: ClientFrame {
            fin,
            opcode,
            payload: payload.to_vec(),
        },
        used: need,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | op];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn whole(buf: &mut [u8], max: usize) -> (ClientFrame, usize) {
        match parse(buf, max) {
            Ok(Parsed::Frame { frame, used }) => (frame, used),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn reads_each_length_form_and_unmasks() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut bytes = client(true, 0x1, &payload, [1, 2, 3, 4]);
            bytes.extend_from_slice(b"next");
            let total = bytes.len();
            let (f, used) = whole(&mut bytes, 1 << 20);
            assert_eq!(f.payload, payload, "len {len}");
            assert!(f.fin);
            assert_eq!(f.opcode, OpCode::Text);
            assert_eq!(used, total - 4);
        }
    }

    #[test]
    fn asks_for_more_at_every_cut() {
        let bytes = client(true, 0x2, &[9u8; 300], [7, 7, 7, 7]);
        for cut in 0..bytes.len() {
            let mut part = bytes[..cut].to_vec();
            match parse(&mut part, 1 << 20) {
                Ok(Parsed::Incomplete { need }) => {
                    assert!(need > cut && need <= bytes.len());
                    assert!(wanted(&part) > cut && wanted(&part) <= bytes.len());
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_oversized_before_the_payload_arrives() {
        let bytes = client(true, 0x1, &[b'a'; 2000], [0, 0, 0, 0]);
        let mut header_only = bytes[..8].to_vec();
        assert_eq!(parse(&mut header_only, 1000), Err(FrameError::TooLarge));
    }

    #[test]
    fn refuses_what_a_client_may_not_send() {
        let mut unmasked = vec![0x81, 0x02, b'h', b'i'];
        assert_eq!(parse(&mut unmasked, 100), Err(FrameError::Protocol));
        let mut rsv = client(true, 0x1, b"x", [1, 1, 1, 1]);
        rsv[0] |= 0x40;
        assert_eq!(parse(&mut rsv, 100), Err(FrameError::Protocol));
        let mut op = client(true, 0x3, b"x", [1, 1, 1, 1]);
        assert_eq!(parse(&mut op, 100), Err(FrameError::Protocol));
        let mut frag_ping = client(false, 0x9, b"x", [1, 1, 1, 1]);
        assert_eq!(parse(&mut frag_ping, 100), Err(FrameError::Protocol));
        let mut big_ping = client(true, 0x9, &[0u8; 126], [1, 1, 1, 1]);
        assert_eq!(parse(&mut big_ping, 1000), Err(FrameError::Protocol));
    }

    #[test]
    fn server_frames_have_the_right_header() {
        assert_eq!(&text(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let mid = text(&[b'a'; 300]);
        assert_eq!(&mid[..4], &[0x81, 126, 1, 44]);
        assert_eq!(mid.len(), 304);
        let big = text(&vec![b'a'; 70_000]);
        assert_eq!(&big[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(big[2..10].try_into().unwrap()), 70_000);
        let c = close(1013, "too slow");
        assert_eq!(&c[..4], &[0x88, 10, 0x03, 0xF5]);
        assert_eq!(&c[4..], b"too slow");
        let long = "é".repeat(100);
        assert!(close(1000, &long).len() <= 127);
    }
}
