//! A small byte scanner for the few fields the load generator measures in each incoming
//! frame (a message's `_id`, uuid and sender timestamp, an ack's id), so that a delivery is
//! never turned into a JSON tree or fully deserialized. Rare frames (errors, join results)
//! go through serde.
//!
//! A key is recognised only in key position: its opening quote follows `{` or `,` (after
//! whitespace) and its closing quote is followed by `:`. Inside a JSON string every `"` is
//! escaped, so text such as `,\"_id\":` in a message never matches. The first match at any
//! depth wins: callers look up keys that occur once in the frames they scan.

use memchr::{memchr, memmem};

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// The raw value of the first `"key":` in `frame`: a string's bytes without its quotes
/// (escapes left as they are), or a scalar's bytes (number, `true`, `null`). Objects and
/// arrays give their first byte only, which is enough to tell that the key is present.
pub fn field<'a>(frame: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut from = 0;
    while let Some(i) = memmem::find(&frame[from..], key).map(|i| i + from) {
        from = i + 1;
        if i == 0 || frame[i - 1] != b'"' {
            continue;
        }
        // Before the opening quote: `{` or `,`, after whitespace.
        let before = frame[..i - 1].iter().rev().find(|b| !is_ws(**b));
        if !matches!(before, Some(b'{') | Some(b',')) {
            continue;
        }
        let mut j = i + key.len();
        if frame.get(j) != Some(&b'"') {
            continue;
        }
        j += 1;
        while frame.get(j).is_some_and(|b| is_ws(*b)) {
            j += 1;
        }
        if frame.get(j) != Some(&b':') {
            continue;
        }
        j += 1;
        while frame.get(j).is_some_and(|b| is_ws(*b)) {
            j += 1;
        }
        return value_at(frame, j);
    }
    None
}

fn value_at(frame: &[u8], start: usize) -> Option<&[u8]> {
    match frame.get(start)? {
        b'"' => {
            let body = start + 1;
            let mut k = body;
            loop {
                let q = k + memchr(b'"', frame.get(k..)?)?;
                // A quote preceded by an odd number of backslashes is escaped.
                let slashes = frame[body..q]
                    .iter()
                    .rev()
                    .take_while(|b| **b == b'\\')
                    .count();
                if slashes % 2 == 0 {
                    return Some(&frame[body..q]);
                }
                k = q + 1;
            }
        }
        b'{' | b'[' => Some(&frame[start..start + 1]),
        _ => {
            let end = frame[start..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']') || is_ws(*b))
                .map_or(frame.len(), |p| start + p);
            Some(&frame[start..end])
        }
    }
}

/// The value of `"key":"…"` when it is a string (raw, escapes kept).
pub fn str_field<'a>(frame: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let v = field(frame, key)?;
    // `field` strips a string's quotes; a scalar never starts right after a quote.
    let start = v.as_ptr() as usize - frame.as_ptr() as usize;
    (start > 0 && frame[start - 1] == b'"').then_some(v)
}

/// The decimal number at the start of `b` (e.g. the timestamp that begins a message text).
pub fn leading_u64(b: &[u8]) -> Option<u64> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut n = 0u64;
    for c in &b[..digits] {
        n = n * 10 + u64::from(c - b'0');
    }
    Some(n)
}

/// `"key":N` as a number.
pub fn u64_field(frame: &[u8], key: &[u8]) -> Option<u64> {
    let v = field(frame, key)?;
    if str_field(frame, key).is_some() || v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    leading_u64(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELIVERY: &[u8] = br#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":"b1-r0u0","roomName":"b1-room-0","userName":"user0","text":"123456 say \"_id\":\"9\", \\","ack":true,"uuid":"b1-42","date":0,"ts":"2026-11-25T00:00:00Z"},"id":42,"_id":"1007"}"#;

    #[test]
    fn finds_the_measured_fields_of_a_delivery() {
        assert_eq!(str_field(DELIVERY, b"_id"), Some(&b"1007"[..]));
        assert_eq!(str_field(DELIVERY, b"uuid"), Some(&b"b1-42"[..]));
        assert_eq!(u64_field(DELIVERY, b"id"), Some(42));
        let text = str_field(DELIVERY, b"text").unwrap();
        assert_eq!(text, &br#"123456 say \"_id\":\"9\", \\"#[..]);
        assert_eq!(leading_u64(text), Some(123456));
    }

    #[test]
    fn escaped_quotes_in_text_never_look_like_keys() {
        // The only `_id` in the text is escaped; the frame has none of its own.
        let f = br#"{"params":{"text":"a \",\"_id\":\"5\" b","uuid":"x-1"},"id":3}"#;
        assert_eq!(field(f, b"_id"), None);
        assert_eq!(str_field(f, b"uuid"), Some(&b"x-1"[..]));
        // A text ending in an escaped backslash ends there.
        let g = br#"{"text":"c:\\","_id":"8"}"#;
        assert_eq!(str_field(g, b"text"), Some(&br"c:\\"[..]));
        assert_eq!(str_field(g, b"_id"), Some(&b"8"[..]));
    }

    #[test]
    fn keys_in_any_order_and_with_whitespace() {
        let a = br#"{"_id":"3","params":{"uuid":"r-9","text":"77 x"}}"#;
        let b = br#"{ "params" : { "text" : "77 x" , "uuid" : "r-9" } , "_id" : "3" }"#;
        for f in [&a[..], &b[..]] {
            assert_eq!(str_field(f, b"_id"), Some(&b"3"[..]));
            assert_eq!(str_field(f, b"uuid"), Some(&b"r-9"[..]));
            assert_eq!(str_field(f, b"text").and_then(leading_u64), Some(77));
        }
        // A key that is a suffix of another key is not that key.
        let c = br#"{"userId":"u","id":"join","result":"OK"}"#;
        assert_eq!(str_field(c, b"id"), Some(&b"join"[..]));
        assert_eq!(str_field(c, b"Id"), None);
    }

    #[test]
    fn a_missing_field_or_a_value_of_another_type() {
        let f = br#"{"jsonrpc":"2.0","method":"newUser","params":{"text":"x has joined"}}"#;
        assert_eq!(field(f, b"_id"), None);
        assert_eq!(u64_field(f, b"id"), None);
        // A number is not a string; a string is not a number; objects are present.
        let g = br#"{"id":7,"code":"12","error":{"code":-32010}}"#;
        assert_eq!(str_field(g, b"id"), None);
        assert_eq!(u64_field(g, b"id"), Some(7));
        assert_eq!(u64_field(g, b"code"), None);
        assert_eq!(field(g, b"error"), Some(&b"{"[..]));
        // Truncated frames give nothing rather than panicking.
        assert_eq!(str_field(br#"{"_id":"12"#, b"_id"), None);
        assert_eq!(field(br#"{"_id""#, b"_id"), None);
        assert_eq!(leading_u64(b"x1"), None);
    }
}
