//! Streaming split of a `POST /images` body, so an image is never held whole in memory.
//!
//! The body is an `imageMessage` object whose `params.base64ImgString` carries the image,
//! possibly as a data URL (`data:image/png;base64,...`). [`Splitter`] lexes the body chunk by
//! chunk and diverts the content of that one string (unescaped) to the caller, keeping the
//! rest — the *skeleton*, with the string left as `""` — in a small bounded buffer, which is
//! then parsed and validated as ordinary JSON. The splitter only diverts a string found where a
//! value of `params.base64ImgString` stands and puts `""` in its place, so the skeleton is
//! valid JSON exactly when the body is.
//!
//! It does not judge the diverted text: [`crate::base64_check`] does, as it streams.
//!
//! Why ~520 lines: one streaming state machine (~320 lines) and its unit and property tests
//! (~200).

/// Why a body was refused while streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Everything but the image is larger than allowed.
    SkeletonTooLarge,
    /// Objects or arrays nested too deep.
    TooDeep,
    /// `params.base64ImgString` appears more than once.
    DuplicatePayload,
}

const MAX_DEPTH: usize = 32;
/// Keys are compared raw; longer ones are never the ones we look for.
const KEY_MAX: usize = 16;
const PARAMS: &[u8] = b"params";
const PAYLOAD: &[u8] = b"base64ImgString";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjState {
    Key,
    Colon,
    Value,
    Comma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Params,
    Payload,
    Other,
}

#[derive(Debug, Clone, Copy)]
enum Ctx {
    Obj {
        state: ObjState,
        key: KeyKind,
        is_params: bool,
    },
    Arr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Str {
    Key,
    Value,
    Payload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    Unicode { digits: u8, value: u32 },
}

/// Splits an image JSON body into its skeleton and the `base64ImgString` text.
pub struct Splitter {
    stack: Vec<Ctx>,
    string: Option<Str>,
    esc: Esc,
    key: [u8; KEY_MAX],
    key_len: usize,
    key_long: bool,
    skeleton: Vec<u8>,
    skeleton_max: usize,
    extracted: u32,
}

/// Byte the unescaper emits for escapes that cannot be base64 (so the check rejects them).
const NOT_BASE64: u8 = 0xff;

impl Splitter {
    pub fn new(skeleton_max: usize) -> Splitter {
        Splitter {
            stack: Vec::with_capacity(8),
            string: None,
            esc: Esc::None,
            key: [0; KEY_MAX],
            key_len: 0,
            key_long: false,
            skeleton: Vec::with_capacity(1024),
            skeleton_max,
            extracted: 0,
        }
    }

    /// Lex `chunk`: skeleton bytes are kept, payload bytes appended (unescaped) to `payload`.
    pub fn feed(&mut self, chunk: &[u8], payload: &mut Vec<u8>) -> Result<(), BodyError> {
        let mut i = 0;
        while i < chunk.len() {
            if self.string == Some(Str::Payload) {
                // Fast path: copy the run of plain characters at once.
                if self.esc == Esc::None {
                    let run = chunk[i..]
                        .iter()
                        .position(|b| *b == b'"' || *b == b'\\')
                        .unwrap_or(chunk.len() - i);
                    payload.extend_from_slice(&chunk[i..i + run]);
                    i += run;
                    if i == chunk.len() {
                        break;
                    }
                }
                self.payload_byte(chunk[i], payload)?;
            } else {
                self.byte(chunk[i])?;
            }
            i += 1;
        }
        Ok(())
    }

    /// The skeleton, once the whole body was fed, and whether the payload was found.
    pub fn finish(self) -> (Vec<u8>, bool) {
        (self.skeleton, self.extracted > 0)
    }

    fn push(&mut self, b: u8) -> Result<(), BodyError> {
        if self.skeleton.len() >= self.skeleton_max {
            return Err(BodyError::SkeletonTooLarge);
        }
        self.skeleton.push(b);
        Ok(())
    }

    fn payload_byte(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), BodyError> {
        match self.esc {
            Esc::None => match b {
                b'\\' => self.esc = Esc::Backslash,
                b'"' => {
                    self.string = None;
                    self.extracted += 1;
                    if self.extracted > 1 {
                        return Err(BodyError::DuplicatePayload);
                    }
                    self.push(b'"')?;
                    self.value_done();
                }
                _ => out.push(b),
            },
            Esc::Backslash => {
                self.esc = Esc::None;
                match b {
                    b'/' | b'\\' | b'"' => out.push(b),
                    b'u' => {
                        self.esc = Esc::Unicode {
                            digits: 0,
                            value: 0,
                        }
                    }
                    _ => out.push(NOT_BASE64),
                }
            }
            Esc::Unicode { digits, value } => {
                let Some(d) = char::from(b).to_digit(16) else {
                    // Not JSON; the rest of the string is lexed as usual and the check fails.
                    self.esc = Esc::None;
                    out.push(NOT_BASE64);
                    return self.payload_byte(b, out);
                };
                let value = value * 16 + d;
                if digits == 3 {
                    self.esc = Esc::None;
                    out.push(
                        u8::try_from(value)
                            .ok()
                            .filter(u8::is_ascii)
                            .unwrap_or(NOT_BASE64),
                    );
                } else {
                    self.esc = Esc::Unicode {
                        digits: digits + 1,
                        value,
                    };
                }
            }
        }
        Ok(())
    }

    fn byte(&mut self, b: u8) -> Result<(), BodyError> {
        if let Some(kind) = self.string {
            self.push(b)?;
            if self.esc != Esc::None {
                self.esc = Esc::None;
            } else if b == b'\\' {
                self.esc = Esc::Backslash;
            } else if b == b'"' {
                self.string = None;
                match kind {
                    Str::Key => self.key_done(),
                    _ => self.value_done(),
                }
                return Ok(());
            }
            if kind == Str::Key {
                if self.key_len < KEY_MAX {
                    self.key[self.key_len] = b;
                    self.key_len += 1;
                } else {
                    self.key_long = true;
                }
            }
            return Ok(());
        }
        match b {
            b'"' => {
                let role = match self.stack.last() {
                    Some(Ctx::Obj {
                        state: ObjState::Key,
                        ..
                    }) => Str::Key,
                    Some(Ctx::Obj {
                        state: ObjState::Value,
                        key: KeyKind::Payload,
                        is_params: true,
                    }) => Str::Payload,
                    _ => Str::Value,
                };
                self.push(b)?;
                if role == Str::Key {
                    self.key_len = 0;
                    self.key_long = false;
                }
                self.string = Some(role);
            }
            b'{' => {
                self.push(b)?;
                if self.stack.len() >= MAX_DEPTH {
                    return Err(BodyError::TooDeep);
                }
                let is_params = self.stack.len() == 1
                    && matches!(
                        self.stack.last(),
                        Some(Ctx::Obj {
                            state: ObjState::Value,
                            key: KeyKind::Params,
                            ..
                        })
                    );
                self.stack.push(Ctx::Obj {
                    state: ObjState::Key,
                    key: KeyKind::Other,
                    is_params,
                });
            }
            b'[' => {
                self.push(b)?;
                if self.stack.len() >= MAX_DEPTH {
                    return Err(BodyError::TooDeep);
                }
                self.stack.push(Ctx::Arr);
            }
            b'}' | b']' => {
                self.push(b)?;
                self.stack.pop();
                self.value_done();
            }
            b':' => {
                self.push(b)?;
                if let Some(Ctx::Obj { state, .. }) = self.stack.last_mut() {
                    if *state == ObjState::Colon {
                        *state = ObjState::Value;
                    }
                }
            }
            b',' => {
                self.push(b)?;
                if let Some(Ctx::Obj { state, .. }) = self.stack.last_mut() {
                    *state = ObjState::Key;
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => self.push(b)?,
            _ => {
                // Numbers and literals.
                self.push(b)?;
                self.value_done();
            }
        }
        Ok(())
    }

    fn key_done(&mut self) {
        let key = &self.key[..self.key_len];
        let kind = if self.key_long {
            KeyKind::Other
        } else if key == PARAMS {
            KeyKind::Params
        } else if key == PAYLOAD {
            KeyKind::Payload
        } else {
            KeyKind::Other
        };
        if let Some(Ctx::Obj { state, key, .. }) = self.stack.last_mut() {
            *state = ObjState::Colon;
            *key = kind;
        }
    }

    fn value_done(&mut self) {
        if let Some(Ctx::Obj { state, .. }) = self.stack.last_mut() {
            if *state == ObjState::Value {
                *state = ObjState::Comma;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Feed `body` in chunks of `step` bytes.
    fn split(body: &[u8], step: usize) -> Result<(Value, Vec<u8>, bool), BodyError> {
        let mut s = Splitter::new(4096);
        let mut payload = Vec::new();
        for c in body.chunks(step.max(1)) {
            s.feed(c, &mut payload)?;
        }
        let (skel, found) = s.finish();
        let v = serde_json::from_slice(&skel).unwrap_or(Value::Null);
        Ok((v, payload, found))
    }

    #[test]
    fn diverts_only_params_payload() {
        let body = br#"{"jsonrpc":"2.0","method":"imageMessage","base64ImgString":"top","params":{"x":{"base64ImgString":"nested"},"a":["base64ImgString","}{]["],"base64ImgString":"QUJD\/+==","uuid":"u \"q\" \\"},"id":7}"#;
        for step in [1, 2, 3, 7, 1000] {
            let (v, payload, found) = split(body, step).unwrap();
            assert!(found);
            assert_eq!(payload, b"QUJD/+==", "step {step}");
            assert_eq!(v["params"]["base64ImgString"], json!(""));
            assert_eq!(v["params"]["x"]["base64ImgString"], json!("nested"));
            assert_eq!(v["base64ImgString"], json!("top"));
            assert_eq!(v["params"]["uuid"], json!("u \"q\" \\"));
            assert_eq!(v["id"], json!(7));
        }
    }

    #[test]
    fn payload_first_and_unicode_escapes() {
        let body = br#" { "params" : { "base64ImgString" : "QU\u004aD" , "k" : 1 } } "#;
        let (v, payload, found) = split(body, 5).unwrap();
        assert!(found);
        assert_eq!(payload, b"QUJD");
        assert_eq!(v["params"]["k"], json!(1));
    }

    #[test]
    fn non_string_payload_stays_in_skeleton() {
        let (v, payload, found) = split(br#"{"params":{"base64ImgString":12}}"#, 3).unwrap();
        assert!(!found);
        assert!(payload.is_empty());
        assert_eq!(v["params"]["base64ImgString"], json!(12));
    }

    #[test]
    fn malformed_bodies_give_malformed_skeletons() {
        for body in [
            &br#"{"params":{"base64ImgString" "QUJD"}}"#[..],
            br#"{"params":{"base64ImgString":"QUJD"}"#,
            br#"{"params":{"base64ImgString":"QUJD}}"#,
            b"not json",
        ] {
            let (v, _, _) = split(body, 4).unwrap();
            assert_eq!(v, Value::Null, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn limits() {
        let body = br#"{"params":{"base64ImgString":"QQ==","base64ImgString":"QQ=="}}"#;
        assert_eq!(split(body, 100).unwrap_err(), BodyError::DuplicatePayload);
        let deep = "[".repeat(100);
        assert_eq!(split(deep.as_bytes(), 100).unwrap_err(), BodyError::TooDeep);
        let mut s = Splitter::new(10);
        let big = format!(
            r#"{{"params":{{"base64ImgString":"{}","x":"0123456789"}}}}"#,
            "Q".repeat(1000)
        );
        assert_eq!(
            s.feed(big.as_bytes(), &mut Vec::new()),
            Err(BodyError::SkeletonTooLarge)
        );
    }
}

/// Property tests: whatever bytes arrive, in whatever chunks, the splitter never panics,
/// refuses only with its documented errors and only when their conditions hold, and the
/// chunking never changes the outcome; a well-formed message always splits exactly.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    const SKELETON_MAX: usize = 512;

    /// What feeding `body` in pieces cut at `cuts` gives: the error, or the skeleton, the
    /// payload and whether it was found.
    fn outcome(body: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, Vec<u8>, bool), BodyError> {
        let mut s = Splitter::new(SKELETON_MAX);
        let mut payload = Vec::new();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.push(0);
        points.push(body.len());
        points.sort_unstable();
        for w in points.windows(2) {
            s.feed(&body[w[0]..w[1]], &mut payload)?;
        }
        let (skeleton, found) = s.finish();
        Ok((skeleton, payload, found))
    }

    fn occurrences(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).filter(|w| *w == needle).count()
    }

    /// Bytes that look like JSON often enough to reach every state.
    fn jsonish() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            Just(b"{".to_vec()),
            Just(b"}".to_vec()),
            Just(b"[".to_vec()),
            Just(b"]".to_vec()),
            Just(b":".to_vec()),
            Just(b",".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"\\".to_vec()),
            Just(b"\\u00".to_vec()),
            Just(b"\"params\"".to_vec()),
            Just(b"\"base64ImgString\"".to_vec()),
            Just(b"QUJD".to_vec()),
            Just(b" ".to_vec()),
            prop::collection::vec(any::<u8>(), 0..8),
        ];
        prop::collection::vec(token, 0..80).prop_map(|t| t.concat())
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_outcome(
            body in prop_oneof![prop::collection::vec(any::<u8>(), 0..1500), jsonish()],
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let whole = outcome(&body, &[]);
            prop_assert_eq!(&outcome(&body, &cuts), &whole);
            match whole {
                Err(BodyError::SkeletonTooLarge) => prop_assert!(body.len() > SKELETON_MAX),
                Err(BodyError::TooDeep) => {
                    let openers = body.iter().filter(|b| matches!(b, 0x7b | 0x5b)).count();
                    prop_assert!(openers > MAX_DEPTH, "{} openers", openers);
                }
                Err(BodyError::DuplicatePayload) => {
                    prop_assert!(occurrences(&body, PAYLOAD) >= 2)
                }
                Ok((skeleton, payload, found)) => {
                    prop_assert!(skeleton.len() <= SKELETON_MAX);
                    prop_assert!(skeleton.len() + payload.len() <= body.len());
                    if found {
                        prop_assert!(occurrences(&body, PAYLOAD) >= 1);
                    }
                }
            }
        }

        #[test]
        fn well_formed_messages_split_exactly(
            extra in prop::collection::btree_map("[a-zA-Z]{1,20}", ".{0,20}", 0..5),
            payload in "[A-Za-z0-9+/=]{0,300}",
            escape_slashes in any::<bool>(),
            payload_first in any::<bool>(),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut params: Map<String, Value> = extra
                .into_iter()
                .filter(|(k, _)| k != PARAMS_KEY && k != PAYLOAD_KEY)
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let rest = Value::Object(params.clone()).to_string();
            let mut text = serde_json::to_string(&payload).unwrap_or_default();
            if escape_slashes {
                text = text.replace('/', "\\/");
            }
            let inner = rest.trim_start_matches('{').trim_end_matches('}');
            let sep = if inner.is_empty() { "" } else { "," };
            let params_text = if payload_first {
                format!("{{\"base64ImgString\":{text}{sep}{inner}}}")
            } else {
                format!("{{{inner}{sep}\"base64ImgString\":{text}}}")
            };
            let body = format!("{{\"jsonrpc\":\"2.0\",\"params\":{params_text},\"id\":7}}");
            let (skeleton, got, found) = outcome(body.as_bytes(), &cuts)
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert!(found);
            prop_assert_eq!(got, payload.as_bytes());
            let v: Value = serde_json::from_slice(&skeleton)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            params.insert(PAYLOAD_KEY.into(), json!(""));
            prop_assert_eq!(&v["params"], &Value::Object(params));
            prop_assert_eq!(&v["id"], &json!(7));
        }
    }

    const PARAMS_KEY: &str = "params";
    const PAYLOAD_KEY: &str = "base64ImgString";
}
