//! Client file names: the name shown (last path component, no control characters), its
//! extension (checked against `--file-extensions`), and a safe `Content-Disposition` header.
//!
//! A client's file name is stored as given and never used as a path (blobs are named by
//! hex-encoded uuid). On the way out it is reduced to its last path component, stripped of
//! control characters, and sent twice (RFC 6266): an ASCII fallback in `filename="..."` and
//! the exact UTF-8 name percent-encoded in `filename*=UTF-8''...` (RFC 8187).

/// Name used when nothing usable is left.
const FALLBACK: &str = "file";
/// Longest display name, in bytes of UTF-8 (longer names are cut at a character boundary;
/// uploads refuse names over `--max-file-name-bytes` anyway).
pub const DISPLAY_MAX: usize = 255;
/// Characters kept in the ASCII fallback (conservative: no quotes, backslashes, `;`, `%`).
fn ascii_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || " !#$&'()+,-.=@[]^_`{}~".contains(c)
}

/// The display name: the last path component, without control characters, trimmed, at
/// most [`DISPLAY_MAX`] bytes.
pub fn display_name(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let mut cleaned = String::new();
    for c in last.chars().filter(|c| !c.is_control()) {
        if cleaned.len() + c.len_utf8() > DISPLAY_MAX {
            break;
        }
        cleaned.push(c);
    }
    let trimmed = cleaned.trim().trim_matches('.').trim();
    if trimmed.is_empty() {
        FALLBACK.to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// The lower-cased extension of a display name, if any.
pub fn extension(name: &str) -> Option<String> {
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty()).then(|| ext.to_ascii_lowercase())
}

/// `attachment; filename="<ascii>"; filename*=UTF-8''<percent-encoded>` for a client name.
pub fn content_disposition(raw: &str) -> String {
    let name = display_name(raw);
    let ascii: String = name
        .chars()
        .map(|c| if ascii_safe(c) { c } else { '_' })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        // RFC 8187 attr-char.
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_components_and_controls_are_dropped() {
        assert_eq!(display_name("../../etc/passwd"), "passwd");
        assert_eq!(display_name("C:\\Users\\x\\report.pdf"), "report.pdf");
        assert_eq!(display_name("a\0b\r\nc.txt"), "abc.txt");
        assert_eq!(display_name(".."), "file");
        assert_eq!(display_name("dir/"), "file");
        assert_eq!(display_name(""), "file");
        assert_eq!(display_name("  .hidden "), "hidden");
    }

    #[test]
    fn header_is_ascii_and_exact() {
        let h = content_disposition("résumé \"final\"; 1%.pdf");
        assert_eq!(
            h,
            "attachment; filename=\"r_sum_ _final__ 1_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22%3B%201%25.pdf"
        );
        assert!(axum::http::HeaderValue::from_str(&h).is_ok());
        let nasty = content_disposition("x\r\nSet-Cookie: a=b\0.txt");
        assert!(!nasty.contains('\r') && !nasty.contains('\n') && !nasty.contains('\0'));
        assert!(axum::http::HeaderValue::from_str(&nasty).is_ok());
    }

    #[test]
    fn extensions() {
        assert_eq!(extension("a.PDF").as_deref(), Some("pdf"));
        assert_eq!(extension("archive.tar.gz").as_deref(), Some("gz"));
        assert_eq!(extension("noext"), None);
        assert_eq!(extension(".bashrc"), None);
    }
}

/// Property tests: any string a client sends as a file name gives a display name without
/// separators or control characters, bounded and never empty, and a `Content-Disposition`
/// that is a valid header value of visible ASCII.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn names() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z./\\\\ \"%;:\r\n\t\u{0}\u{7f}\u{85}\u{202e}é日]{0,40}",
            ".{200,400}",
        ]
    }

    proptest! {
        #[test]
        fn names_come_out_safe(raw in names()) {
            let name = display_name(&raw);
            prop_assert!(!name.is_empty());
            prop_assert!(name.len() <= DISPLAY_MAX);
            prop_assert!(!name.contains(['/', '\\']), "{:?}", name);
            prop_assert!(!name.chars().any(char::is_control), "{:?}", name);
            let header = content_disposition(&raw);
            prop_assert!(header.len() <= 64 + 4 * DISPLAY_MAX);
            prop_assert!(
                header.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
                "{:?}",
                header
            );
            prop_assert!(axum::http::HeaderValue::from_str(&header).is_ok());
            let quoted = header
                .strip_prefix("attachment; filename=\"")
                .and_then(|h| h.split_once("\"; filename*=UTF-8''"));
            prop_assert!(quoted.is_some(), "{:?}", header);
            if let Some((ascii, encoded)) = quoted {
                prop_assert!(!ascii.contains(['"', '\\', ';', '/']));
                prop_assert!(!encoded.contains(['"', '\\', ';', '/', ' ', '\'']));
            }
        }
    }
}
