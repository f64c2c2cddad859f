//! Streaming `multipart/form-data` parsing for `POST /files`, bounded in everything a client
//! controls.
//!
//! [`Parser`] is fed the body chunk by chunk and turns it into [`Event`]s: a part begins
//! (with its name, file name and type), bytes of the current part, the closing boundary.
//! Part data is handed out as slices of the chunks it arrived in (no copy, nothing
//! accumulated); what it keeps between chunks is at most a boundary's length of a possible
//! delimiter, or one part's headers, each under a limit ([`MultipartLimits`]): the preamble
//! before the first boundary, the header block of each part, and the number of parts.
//! Every byte is looked at a bounded number of times, however the body is chunked: a header
//! block is searched only from where the last search ended, part data once.
//!
//! It is not a general MIME parser: no nested multiparts, no `Content-Transfer-Encoding`
//! (browsers send neither in `multipart/form-data`), and the epilogue after the closing
//! boundary is never read. I/O, size limits of the parts' contents and what the parts mean
//! are the caller's (`upload/file.rs`).
//!
//! Why ~720 lines: a streaming multipart parser (~470 lines, one state machine) and its unit
//! and property tests (~250).

use bytes::Bytes;

/// What a multipart body may hold besides the parts' contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultipartLimits {
    /// Bytes before the first boundary (browsers send none).
    pub preamble_max: usize,
    /// Bytes of one part's header block.
    pub part_headers_max: usize,
    /// Parts in one body.
    pub parts_max: usize,
}

impl Default for MultipartLimits {
    fn default() -> Self {
        MultipartLimits {
            preamble_max: 1024,
            part_headers_max: 8 * 1024,
            parts_max: 8,
        }
    }
}

/// Why a multipart body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("no usable boundary in the Content-Type: {0}")]
    Boundary(&'static str),
    #[error("more than {0} bytes before the first boundary")]
    PreambleTooLarge(usize),
    #[error("a part's headers exceed {0} bytes")]
    HeadersTooLarge(usize),
    #[error("more than {0} parts")]
    TooManyParts(usize),
    #[error("malformed part headers: {0}")]
    BadHeaders(&'static str),
    #[error("malformed boundary line")]
    BadDelimiter,
    #[error("the body ended before the closing boundary")]
    Incomplete,
}

impl MultipartError {
    /// Whether the body broke a size or count limit (413) rather than the format (400).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            MultipartError::PreambleTooLarge(_)
                | MultipartError::HeadersTooLarge(_)
                | MultipartError::TooManyParts(_)
        )
    }
}

/// What a part's headers say about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartHead {
    /// `name` of its `Content-Disposition`.
    pub name: Option<String>,
    /// `filename*` (RFC 5987, UTF-8) or `filename` of its `Content-Disposition`.
    pub file_name: Option<String>,
    /// Its `Content-Type`.
    pub content_type: Option<String>,
}

/// One step through a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A part begins; the previous one, if any, is complete.
    Part(PartHead),
    /// Bytes of the current part.
    Data(Bytes),
    /// The closing boundary: the last part is complete and nothing more is read.
    End,
}

/// Longest boundary RFC 2046 allows.
const BOUNDARY_MAX: usize = 70;
/// Whitespace allowed after a boundary, before its line ends.
const PADDING_MAX: usize = 64;

/// The boundary of a `multipart/form-data` Content-Type.
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let mut params = content_type.split(';');
    let media = params.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return Err(MultipartError::Boundary("not multipart/form-data"));
    }
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case("boundary") {
            continue;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        if v.is_empty() || v.len() > BOUNDARY_MAX {
            return Err(MultipartError::Boundary("1 to 70 characters"));
        }
        if !v.bytes().all(|b| b.is_ascii_graphic() || b == b' ') || v.ends_with(' ') {
            return Err(MultipartError::Boundary("visible ASCII characters"));
        }
        return Ok(v.to_owned());
    }
    Err(MultipartError::Boundary("missing"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter.
    Preamble,
    /// Right after a delimiter: `--` (the end) or the end of the boundary line.
    Delimiter,
    /// A part's header block.
    Headers,
    /// A part's content.
    Body,
    /// After the closing delimiter.
    Done,
}

/// The incremental parser (see the module documentation).
pub struct Parser {
    /// `CRLF -- boundary`.
    delim: Vec<u8>,
    limits: MultipartLimits,
    state: State,
    /// Preamble and body: a possible delimiter's beginning (shorter than `delim`).
    /// Delimiter: the bytes after it so far. Headers: the header block so far.
    pending: Vec<u8>,
    /// Headers: how much of `pending` has been searched for the block's end.
    scanned: usize,
    preamble: usize,
    parts: usize,
}

impl Parser {
    pub fn new(boundary: &str, limits: MultipartLimits) -> Parser {
        let mut delim = b"\r\n--".to_vec();
        delim.extend_from_slice(boundary.as_bytes());
        Parser {
            delim,
            limits,
            state: State::Preamble,
            // The first delimiter may open the body without a CRLF before it.
            pending: b"\r\n".to_vec(),
            scanned: 0,
            preamble: 0,
            parts: 0,
        }
    }

    /// Whether the closing boundary was seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Parse `chunk`, appending what it completes to `events`.
    pub fn feed(&mut self, chunk: &Bytes, events: &mut Vec<Event>) -> Result<(), MultipartError> {
        let mut pos = 0;
        while pos < chunk.len() {
            match self.state {
                State::Done => return Ok(()),
                State::Preamble => {
                    let mut skipped = Vec::new();
                    let found = self.find_delimiter(chunk, &mut pos, &mut skipped);
                    self.preamble += skipped.iter().map(Bytes::len).sum::<usize>();
                    // The two bytes of the assumed CRLF are not the client's.
                    if self.preamble > self.limits.preamble_max + 2 {
                        return Err(MultipartError::PreambleTooLarge(self.limits.preamble_max));
                    }
                    if found {
                        self.state = State::Delimiter;
                    }
                }
                State::Body => {
                    let mut data = Vec::new();
                    let found = self.find_delimiter(chunk, &mut pos, &mut data);
                    events.extend(data.into_iter().map(Event::Data));
                    if found {
                        self.state = State::Delimiter;
                    }
                }
                State::Delimiter => {
                    pos += self.delimiter_line(&chunk[pos..], events)?;
                }
                State::Headers => {
                    pos += self.headers(&chunk[pos..], events)?;
                }
            }
        }
        Ok(())
    }

    /// The body has ended: an error unless the closing boundary was seen.
    pub fn finish(&self) -> Result<(), MultipartError> {
        if self.is_done() {
            Ok(())
        } else {
            Err(MultipartError::Incomplete)
        }
    }

    /// Look for the delimiter in `pending ++ chunk[pos..]`. The bytes before it go to `out`
    /// (slices of `chunk` where possible). Found: `pos` moves past it, `true`. Not found:
    /// the chunk is consumed and a possible beginning of a delimiter is kept in `pending`.
    fn find_delimiter(&mut self, chunk: &Bytes, pos: &mut usize, out: &mut Vec<Bytes>) -> bool {
        let d = self.delim.len();
        let rest = &chunk[*pos..];
        if !self.pending.is_empty() {
            // Only a delimiter starting inside `pending` needs the copy.
            let take = rest.len().min(d);
            let mut window = std::mem::take(&mut self.pending);
            let carried = window.len();
            window.extend_from_slice(&rest[..take]);
            for p in 0..carried {
                let m = (window.len() - p).min(d);
                if window[p..p + m] != self.delim[..m] {
                    continue;
                }
                if p > 0 {
                    out.push(Bytes::copy_from_slice(&window[..p]));
                }
                if m == d {
                    *pos += p + d - carried;
                    return true;
                }
                // A longer beginning of a delimiter, ending with the chunk.
                self.pending = window[p..].to_vec();
                *pos = chunk.len();
                return false;
            }
            out.push(Bytes::copy_from_slice(&window[..carried]));
        }
        if let Some(i) = memchr::memmem::find(rest, &self.delim) {
            if i > 0 {
                out.push(chunk.slice(*pos..*pos + i));
            }
            *pos += i + d;
            return true;
        }
        // Keep the longest end of the chunk that could begin a delimiter.
        let from = rest.len().saturating_sub(d - 1);
        let keep = (from..rest.len())
            .find(|&p| rest[p] == b'\r' && self.delim.starts_with(&rest[p..]))
            .unwrap_or(rest.len());
        if keep > 0 {
            out.push(chunk.slice(*pos..*pos + keep));
        }
        self.pending = rest[keep..].to_vec();
        *pos = chunk.len();
        false
    }

    /// After a delimiter: `--` ends the body; otherwise optional whitespace and CRLF begin
    /// a part. Returns how much of `rest` was used.
    fn delimiter_line(
        &mut self,
        rest: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<usize, MultipartError> {
        for (i, &b) in rest.iter().enumerate() {
            self.pending.push(b);
            let p = &self.pending[..];
            if p == b"--" {
                self.state = State::Done;
                self.pending = Vec::new();
                events.push(Event::End);
                return Ok(i + 1);
            }
            if p.ends_with(b"\r\n") {
                if !p[..p.len() - 2].iter().all(|c| *c == b' ' || *c == b'\t') {
                    return Err(MultipartError::BadDelimiter);
                }
                self.parts += 1;
                if self.parts > self.limits.parts_max {
                    return Err(MultipartError::TooManyParts(self.limits.parts_max));
                }
                self.state = State::Headers;
                // The CRLF ending the boundary line also opens the header block, so that
                // a part without headers (CRLF CRLF) is found like any other.
                self.pending = b"\r\n".to_vec();
                self.scanned = 0;
                return Ok(i + 1);
            }
            let padding_or_dash = p.iter().enumerate().all(|(j, c)| {
                matches!(c, b' ' | b'\t') || (*c == b'-' && j < 2 && p[0] == b'-') || *c == b'\r'
            });
            if !padding_or_dash || p.len() > PADDING_MAX {
                return Err(MultipartError::BadDelimiter);
            }
        }
        Ok(rest.len())
    }

    /// Collect a part's header block (bounded); at its end, emit the part. Returns how much
    /// of `rest` was used.
    fn headers(&mut self, rest: &[u8], events: &mut Vec<Event>) -> Result<usize, MultipartError> {
        // The block, its opening CRLF and its closing CRLF CRLF.
        let cap = self.limits.part_headers_max + 6;
        let take = rest.len().min(cap.saturating_sub(self.pending.len()));
        let before = self.pending.len();
        self.pending.extend_from_slice(&rest[..take]);
        let from = self.scanned.saturating_sub(3);
        let Some(end) = memchr::memmem::find(&self.pending[from..], b"\r\n\r\n").map(|i| i + from)
        else {
            if self.pending.len() >= cap {
                return Err(MultipartError::HeadersTooLarge(
                    self.limits.part_headers_max,
                ));
            }
            self.scanned = self.pending.len();
            return Ok(take);
        };
        let used = end + 4 - before;
        // `end` is 0 for a part without headers (its opening CRLF begins the CRLF CRLF).
        let head = parse_headers(&self.pending[end.min(2)..end])?;
        self.pending = Vec::new();
        self.scanned = 0;
        self.state = State::Body;
        events.push(Event::Part(head));
        Ok(used)
    }
}

/// A part's header block (lines without the final CRLF CRLF).
fn parse_headers(block: &[u8]) -> Result<PartHead, MultipartError> {
    let text = std::str::from_utf8(block).map_err(|_| MultipartError::BadHeaders("not UTF-8"))?;
    let mut head = PartHead::default();
    if text.is_empty() {
        return Ok(head);
    }
    for line in text.split("\r\n") {
        let (name, value) = line
            .split_once(':')
            .ok_or(MultipartError::BadHeaders("a line without a colon"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(MultipartError::BadHeaders("an invalid header name"));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(MultipartError::BadHeaders("a control character"));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-disposition") {
            let (n, f) = disposition(value)?;
            head.name = n;
            head.file_name = f;
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value.to_owned());
        }
    }
    Ok(head)
}

/// `name` and file name of a `form-data` Content-Disposition value.
fn disposition(value: &str) -> Result<(Option<String>, Option<String>), MultipartError> {
    let mut rest = value;
    let kind = take_until(&mut rest, b';');
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(MultipartError::BadHeaders(
            "Content-Disposition is not form-data",
        ));
    }
    let (mut name, mut file_name, mut file_name_ext) = (None, None, None);
    while !rest.is_empty() {
        rest = rest.trim_start_matches([';', ' ', '\t']);
        if rest.is_empty() {
            break;
        }
        let key_end = rest.find(['=', ';']).unwrap_or(rest.len());
        let key = rest[..key_end].trim().to_ascii_lowercase();
        rest = &rest[key_end..];
        let value = match rest.strip_prefix('=') {
            Some(after) => {
                let after = after.trim_start();
                match after.strip_prefix('"') {
                    Some(quoted) => {
                        let (v, tail) = quoted_string(quoted)?;
                        rest = tail;
                        v
                    }
                    None => {
                        rest = after;
                        take_until(&mut rest, b';').trim().to_owned()
                    }
                }
            }
            None => String::new(),
        };
        match key.as_str() {
            "name" => name = Some(value),
            "filename" => file_name = Some(value),
            "filename*" => file_name_ext = ext_value(&value),
            _ => {}
        }
    }
    Ok((name, file_name_ext.or(file_name)))
}

/// The text up to `stop` (excluded); `rest` keeps what follows it, `stop` included.
fn take_until<'a>(rest: &mut &'a str, stop: u8) -> &'a str {
    let i = rest.bytes().position(|b| b == stop).unwrap_or(rest.len());
    let (a, b) = rest.split_at(i);
    *rest = b;
    a
}

/// A quoted string's content (after its opening quote) and what follows its closing quote.
/// `\"` and `\\` are escapes; any other backslash is kept (browsers do not escape it).
fn quoted_string(s: &str) -> Result<(String, &str), MultipartError> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match s[i + 1..].chars().next() {
                Some(n @ ('"' | '\\')) => {
                    out.push(n);
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    Err(MultipartError::BadHeaders("an unterminated quoted string"))
}

/// An RFC 5987 `UTF-8''percent-encoded` value; `None` when it is not one.
fn ext_value(v: &str) -> Option<String> {
    let (charset, rest) = v.split_once('\'')?;
    let (_lang, encoded) = rest.split_once('\'')?;
    if !charset.eq_ignore_ascii_case("utf-8") {
        return None;
    }
    let b = encoded.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "XyZ";

    /// Each part's head and content, and whether the closing boundary was seen.
    type Parsed = (Vec<(PartHead, Vec<u8>)>, bool);

    /// Parse `body` fed in chunks of `step` bytes into (parts with their data, ended).
    fn parse(body: &[u8], step: usize, limits: MultipartLimits) -> Result<Parsed, MultipartError> {
        let mut p = Parser::new(B, limits);
        let mut events = Vec::new();
        for c in body.chunks(step.max(1)) {
            p.feed(&Bytes::copy_from_slice(c), &mut events)?;
        }
        let mut parts: Vec<(PartHead, Vec<u8>)> = Vec::new();
        let mut ended = false;
        for e in events {
            match e {
                Event::Part(h) => parts.push((h, Vec::new())),
                Event::Data(d) => parts
                    .last_mut()
                    .expect("data after a part")
                    .1
                    .extend_from_slice(&d),
                Event::End => ended = true,
            }
        }
        assert_eq!(ended, p.finish().is_ok());
        Ok((parts, ended))
    }

    fn body(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (headers, data) in parts {
            b.extend_from_slice(format!("--{B}\r\n{headers}\r\n\r\n").as_bytes());
            b.extend_from_slice(data);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(format!("--{B}--\r\nepilogue").as_bytes());
        b
    }

    #[test]
    fn parts_in_any_chunking() {
        let file = b"line\r\n--XyNot\r\n--Xy\r\r\n-- XyZ in the middle\r\n";
        let b = body(&[
            (
                "Content-Disposition: form-data; name=\"message\"",
                b"{\"a\":1}",
            ),
            (
                "Content-Disposition: form-data; name=\"files[]\"; filename=\"a \\\"b\\\".txt\"\r\nContent-Type: text/plain",
                file,
            ),
            ("Content-Disposition: form-data; name=\"empty\"", b""),
        ]);
        for step in [1, 2, 3, 5, 7, 13, 64, 10_000] {
            let (parts, ended) = parse(&b, step, MultipartLimits::default()).unwrap();
            assert!(ended, "step {step}");
            assert_eq!(parts.len(), 3, "step {step}");
            assert_eq!(parts[0].0.name.as_deref(), Some("message"));
            assert_eq!(parts[0].1, b"{\"a\":1}");
            assert_eq!(parts[1].0.name.as_deref(), Some("files[]"));
            assert_eq!(parts[1].0.file_name.as_deref(), Some("a \"b\".txt"));
            assert_eq!(parts[1].0.content_type.as_deref(), Some("text/plain"));
            assert_eq!(parts[1].1, file, "step {step}");
            assert_eq!(parts[2].1, b"");
        }
    }

    #[test]
    fn preamble_padding_headerless_parts_and_rfc5987_names() {
        let b = format!(
            "a preamble\r\n--{B}  \r\n\r\nno headers\r\n--{B}\r\nContent-Disposition: form-data; name=files; filename=plain.txt; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf\r\n\r\nx\r\n--{B}--"
        );
        let (parts, ended) = parse(b.as_bytes(), 4, MultipartLimits::default()).unwrap();
        assert!(ended);
        assert_eq!(parts[0].0, PartHead::default());
        assert_eq!(parts[0].1, b"no headers");
        assert_eq!(parts[1].0.name.as_deref(), Some("files"));
        assert_eq!(parts[1].0.file_name.as_deref(), Some("résumé.pdf"));
    }

    #[test]
    fn limits_and_malformed_bodies() {
        let small = MultipartLimits {
            preamble_max: 10,
            part_headers_max: 100,
            parts_max: 2,
        };
        let long_preamble = format!("{}\r\n--{B}--", "p".repeat(11));
        assert_eq!(
            parse(long_preamble.as_bytes(), 3, small).unwrap_err(),
            MultipartError::PreambleTooLarge(10)
        );
        let big_header = format!("X-A: {}", "h".repeat(100));
        let b = body(&[(&big_header, b"x")]);
        assert_eq!(
            parse(&b, 7, small).unwrap_err(),
            MultipartError::HeadersTooLarge(100)
        );
        let endless_header = format!("--{B}\r\nX: {}", "h".repeat(1_000_000));
        assert_eq!(
            parse(endless_header.as_bytes(), 4096, small).unwrap_err(),
            MultipartError::HeadersTooLarge(100)
        );
        let three = body(&[("", b"1"), ("", b"2"), ("", b"3")]);
        assert_eq!(
            parse(&three, 5, small).unwrap_err(),
            MultipartError::TooManyParts(2)
        );
        for bad in [
            format!("--{B}x\r\n\r\n\r\n--{B}--"),
            format!("--{B}\r\nno colon\r\n\r\n\r\n--{B}--"),
            format!("--{B}\r\nContent-Disposition: attachment\r\n\r\n\r\n--{B}--"),
            format!("--{B}\r\nContent-Disposition: form-data; name=\"x\r\n\r\n\r\n--{B}--"),
        ] {
            assert!(parse(bad.as_bytes(), 3, small).is_err(), "{bad:?}");
        }
        let (_, ended) = parse(format!("--{B}\r\n\r\nabc").as_bytes(), 2, small).unwrap();
        assert!(!ended, "no closing boundary");
    }

    #[test]
    fn boundaries() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").as_deref(),
            Ok("abc")
        );
        assert_eq!(
            boundary("Multipart/Form-Data;charset=utf-8; BOUNDARY=\"a b:c\"").as_deref(),
            Ok("a b:c")
        );
        assert!(boundary("multipart/form-data").is_err());
        assert!(boundary("multipart/form-data; boundary=").is_err());
        assert!(boundary(&format!("multipart/form-data; boundary={}", "b".repeat(71))).is_err());
        assert!(boundary("application/json; boundary=abc").is_err());
    }
}

/// Property tests: any bytes in any chunking — never a panic, the same events (data
/// re-joined) and the same error whatever the chunking, nothing kept beyond the limits;
/// generated bodies give back exactly their parts.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    const B: &str = "b0undary";
    const LIMITS: MultipartLimits = MultipartLimits {
        preamble_max: 64,
        part_headers_max: 256,
        parts_max: 4,
    };

    /// Events with adjacent data joined, or the error; cut at `cuts`.
    fn outcome(body: &[u8], cuts: &[usize]) -> Result<Vec<Event>, MultipartError> {
        let mut p = Parser::new(B, LIMITS);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.extend([0, body.len()]);
        points.sort_unstable();
        let mut events = Vec::new();
        for w in points.windows(2) {
            p.feed(&Bytes::copy_from_slice(&body[w[0]..w[1]]), &mut events)?;
            assert_bounded(p.pending.len(), LIMITS.part_headers_max + 6);
        }
        let mut joined: Vec<Event> = Vec::new();
        for e in events {
            match (joined.last_mut(), e) {
                (Some(Event::Data(prev)), Event::Data(d)) => {
                    *prev = Bytes::from([&prev[..], &d[..]].concat());
                }
                (_, e) => joined.push(e),
            }
        }
        Ok(joined)
    }

    fn assert_bounded(a: usize, b: usize) {
        assert!(a <= b, "{a} > {b}");
    }

    fn bodyish() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            Just(format!("--{B}").into_bytes()),
            Just(format!("\r\n--{B}").into_bytes()),
            Just(b"\r\n".to_vec()),
            Just(b"--".to_vec()),
            Just(b"Content-Disposition: form-data; name=\"files[]\"".to_vec()),
            Just(b"\r\n\r\n".to_vec()),
            prop::collection::vec(any::<u8>(), 0..8),
        ];
        prop::collection::vec(token, 0..60).prop_map(|t| t.concat())
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_outcome(
            body in prop_oneof![prop::collection::vec(any::<u8>(), 0..600), bodyish()],
            cuts in prop::collection::vec(any::<usize>(), 0..16),
        ) {
            prop_assert_eq!(outcome(&body, &cuts), outcome(&body, &[]));
        }

        #[test]
        fn generated_bodies_give_back_their_parts(
            parts in prop::collection::vec(
                ("[a-z\\[\\]]{1,10}", prop::collection::vec(any::<u8>(), 0..300)),
                0..4,
            ),
            cuts in prop::collection::vec(any::<usize>(), 0..16),
        ) {
            let mut body = Vec::new();
            for (name, data) in &parts {
                body.extend_from_slice(
                    format!("--{B}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                        .as_bytes(),
                );
                body.extend_from_slice(data);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(format!("--{B}--\r\n").as_bytes());
            // Content that happens to hold the delimiter is not a body we can give back.
            let delim = format!("\r\n--{B}");
            prop_assume!(parts.iter().all(|(_, d)| {
                let mut padded = d.clone();
                padded.extend_from_slice(b"\r\n--");
                memchr::memmem::find(&padded, delim.as_bytes()).is_none()
                    && memchr::memmem::find(&[b"\r\n", &d[..]].concat(), delim.as_bytes()).is_none()
            }));
            let events = outcome(&body, &cuts).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut expected = Vec::new();
            for (name, data) in &parts {
                expected.push(Event::Part(PartHead {
                    name: Some(name.clone()),
                    ..PartHead::default()
                }));
                if !data.is_empty() {
                    expected.push(Event::Data(Bytes::copy_from_slice(data)));
                }
            }
            expected.push(Event::End);
            prop_assert_eq!(events, expected);
        }
    }
}
