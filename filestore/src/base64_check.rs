//! Streaming validation of an image's base64 text (what [`crate::json_splitter`] diverts
//! from a `POST /images` body), so an image is never held whole in memory.
//!
//! [`Base64Check`] takes the text chunk by chunk: standard alphabet, padding optional, an
//! optional `data:image/...;base64,` prefix. It counts the decoded size against the limit and
//! keeps the first decoded bytes for recognising the image format. It does not store the
//! image: the caller writes the text to the store as it goes.

/// Why the image text was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base64Error {
    /// Not base64 (the message says where and why).
    Invalid(String),
    /// A data URL whose media type is not an image.
    NotImage(String),
    /// The decoded image exceeds the limit.
    TooLarge,
}

/// The longest data URL prefix (`data:<type>;base64,`) accepted.
const PREFIX_MAX: usize = 128;
/// Decoded bytes kept for recognising the format.
pub const HEAD_LEN: usize = 16;

/// Incremental validation of the image text.
pub struct Base64Check {
    max_decoded: u64,
    /// Bytes seen before deciding whether there is a data URL prefix.
    pending: Vec<u8>,
    prefix_done: bool,
    media_type: Option<String>,
    quad: [u8; 4],
    qlen: usize,
    pad: usize,
    decoded: u64,
    chars: u64,
    head: Vec<u8>,
}

/// What a valid image text turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base64Summary {
    /// The media type of a data URL prefix, if there was one.
    pub media_type: Option<String>,
    pub decoded_len: u64,
    /// The first decoded bytes.
    pub head: Vec<u8>,
}

fn sextet(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

impl Base64Check {
    pub fn new(max_decoded: u64) -> Base64Check {
        Base64Check {
            max_decoded,
            pending: Vec::new(),
            prefix_done: false,
            media_type: None,
            quad: [0; 4],
            qlen: 0,
            pad: 0,
            decoded: 0,
            chars: 0,
            head: Vec::with_capacity(HEAD_LEN),
        }
    }

    /// Check the next piece of text.
    pub fn push(&mut self, text: &[u8]) -> Result<(), Base64Error> {
        if self.prefix_done {
            return self.body(text);
        }
        self.pending.extend_from_slice(text);
        // A data URL starts with "data:" (':' is not base64, so it is unambiguous).
        let probe = self.pending.len().min(5);
        if self.pending[..probe] != b"data:"[..probe] {
            return self.end_prefix(0);
        }
        if let Some(comma) = self.pending.iter().position(|b| *b == b',') {
            let prefix = String::from_utf8_lossy(&self.pending[..comma]).into_owned();
            self.media_type = Some(parse_data_prefix(&prefix)?);
            return self.end_prefix(comma + 1);
        }
        if self.pending.len() > PREFIX_MAX {
            return Err(Base64Error::Invalid(
                "data URL prefix without a comma".into(),
            ));
        }
        Ok(())
    }

    fn end_prefix(&mut self, skip: usize) -> Result<(), Base64Error> {
        self.prefix_done = true;
        let rest = std::mem::take(&mut self.pending);
        self.body(&rest[skip.min(rest.len())..])
    }

    fn body(&mut self, text: &[u8]) -> Result<(), Base64Error> {
        for &b in text {
            self.chars += 1;
            if b == b'=' {
                self.pad += 1;
                if self.pad > 2 || self.qlen < 2 || self.qlen + self.pad > 4 {
                    return Err(self.invalid("misplaced padding"));
                }
                continue;
            }
            if self.pad > 0 {
                return Err(self.invalid("data after padding"));
            }
            let Some(v) = sextet(b) else {
                return Err(self.invalid(&format!("byte 0x{b:02x} is not in the base64 alphabet")));
            };
            self.quad[self.qlen] = v;
            self.qlen += 1;
            if self.qlen == 4 {
                self.emit(4)?;
            }
        }
        Ok(())
    }

    fn invalid(&self, why: &str) -> Base64Error {
        Base64Error::Invalid(format!("{why} (at character {})", self.chars))
    }

    /// Decode the `n` sextets in `quad` (2, 3 or 4).
    fn emit(&mut self, n: usize) -> Result<(), Base64Error> {
        let q = self.quad;
        let bytes = [
            (q[0] << 2) | (q[1] >> 4),
            (q[1] << 4) | (q[2] >> 2),
            (q[2] << 6) | q[3],
        ];
        let out = n - 1;
        self.decoded += out as u64;
        if self.decoded > self.max_decoded {
            return Err(Base64Error::TooLarge);
        }
        for b in &bytes[..out] {
            if self.head.len() < HEAD_LEN {
                self.head.push(*b);
            }
        }
        self.qlen = 0;
        self.quad = [0; 4];
        Ok(())
    }

    /// The end of the text.
    pub fn finish(mut self) -> Result<Base64Summary, Base64Error> {
        if !self.prefix_done {
            if self.pending.starts_with(b"data:") {
                return Err(Base64Error::Invalid(
                    "data URL prefix without a comma".into(),
                ));
            }
            self.end_prefix(0)?;
        }
        match (self.qlen, self.pad) {
            (0, 0) => {}
            (2, 0) | (2, 2) | (3, 0) | (3, 1) => {
                let n = self.qlen;
                self.emit(n)?;
            }
            _ => return Err(self.invalid("truncated")),
        }
        if self.decoded == 0 {
            return Err(Base64Error::Invalid("empty image".into()));
        }
        Ok(Base64Summary {
            media_type: self.media_type,
            decoded_len: self.decoded,
            head: self.head,
        })
    }
}

/// `data:<type>[;param]*;base64` → the media type (lower-case), which must be an image.
fn parse_data_prefix(prefix: &str) -> Result<String, Base64Error> {
    let rest = prefix.strip_prefix("data:").unwrap_or(prefix);
    let mut parts = rest.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    if parts.next_back().map(str::trim) != Some("base64") {
        return Err(Base64Error::Invalid(
            "a data URL must end in ;base64,".into(),
        ));
    }
    // The prefix is served back inside a JSON string: nothing that would need escaping.
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return Err(Base64Error::Invalid(
            "a data URL prefix must be visible ASCII without quotes".into(),
        ));
    }
    let safe = |c: char| c.is_ascii_alphanumeric() || "!#$&^_.+-/".contains(c);
    if !media.starts_with("image/") || !media.chars().all(safe) {
        return Err(Base64Error::NotImage(media.chars().take(64).collect()));
    }
    Ok(media)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, step: usize, max: u64) -> Result<Base64Summary, Base64Error> {
        let mut c = Base64Check::new(max);
        for part in text.as_bytes().chunks(step.max(1)) {
            c.push(part)?;
        }
        c.finish()
    }

    #[test]
    fn base64_forms() {
        use base64::Engine;
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for len in [1usize, 2, 3, 4, 5, 16, 999, 1000] {
            let padded = base64::engine::general_purpose::STANDARD.encode(&data[..len]);
            let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&data[..len]);
            for (text, step) in [(&padded, 1), (&padded, 7), (&unpadded, 3)] {
                let s = check(text, step, 10_000).unwrap();
                assert_eq!(s.decoded_len, len as u64, "{text}");
                assert_eq!(s.head, data[..len.min(HEAD_LEN)].to_vec());
                assert_eq!(s.media_type, None);
            }
        }
        let s = check("data:image/png;base64,iVBORw0KGgo=", 4, 100).unwrap();
        assert_eq!(s.media_type.as_deref(), Some("image/png"));
        assert_eq!(s.head, vec![0x89, b'P', b'N', b'G', 13, 10, 26, 10]);
        // "data" alone is valid base64.
        assert_eq!(check("data", 2, 100).unwrap().decoded_len, 3);
    }

    #[test]
    fn base64_rejections() {
        for bad in [
            "not base64!",
            "QQ=x",
            "Q",
            "QQ===",
            "QUJD\u{ff}",
            "=QQQ",
            "",
            "data:image/png;base64,",
        ] {
            assert!(
                matches!(check(bad, 2, 100), Err(Base64Error::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            check("data:text/html;base64,QQ==", 3, 100),
            Err(Base64Error::NotImage(_))
        ));
        assert!(matches!(
            check("data:image/png,QQ==", 3, 100),
            Err(Base64Error::Invalid(_))
        ));
        assert!(matches!(
            check("data:image/png;x=\"a;base64,QQ==", 3, 100),
            Err(Base64Error::Invalid(_))
        ));
        assert!(matches!(
            check(&format!("data:{}", "a".repeat(300)), 3, 100),
            Err(Base64Error::Invalid(_))
        ));
        assert_eq!(check("QUJDRA==", 3, 3), Err(Base64Error::TooLarge));
        assert_eq!(check("QUJD", 3, 3).unwrap().decoded_len, 3);
    }
}
