//! Where a token travels on an HTTP request: `Authorization: Bearer <jwt>`, or
//! `?token=<jwt>` (browsers: the WebSocket API and `<img src>` cannot set headers).

/// The token of an `Authorization: Bearer <jwt>` header (scheme case-insensitive).
pub fn bearer_token(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// The `token` parameter of a query string, percent-decoded.
pub fn query_token(query: Option<&str>) -> Option<String> {
    query_param(query, "token")
}

/// The value of the first query parameter called `name`, percent-decoded
/// (`application/x-www-form-urlencoded`: `+` is a space; an escape that is not valid UTF-8
/// reads as U+FFFD); `None` when there is none or its value is empty.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn bearer() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer abc.def.ghi"),
        );
        assert_eq!(bearer_token(&h).as_deref(), Some("abc.def.ghi"));
        h.insert("authorization", HeaderValue::from_static("bearer  x.y.z "));
        assert_eq!(bearer_token(&h).as_deref(), Some("x.y.z"));
        h.insert(
            "authorization",
            HeaderValue::from_static("Basic dXNlcjpwdw=="),
        );
        assert_eq!(bearer_token(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }

    #[test]
    fn query() {
        assert_eq!(query_token(None), None);
        assert_eq!(query_token(Some("a=1")), None);
        assert_eq!(query_token(Some("token=")), None);
        assert_eq!(
            query_token(Some("a=1&token=x.y.z")).as_deref(),
            Some("x.y.z")
        );
        assert_eq!(
            query_token(Some("token=a%2Eb%2Ec")).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            query_param(Some("a=1&userName=Ann%20B"), "userName").as_deref(),
            Some("Ann B")
        );
        assert_eq!(
            query_param(Some("userName=A+B"), "userName").as_deref(),
            Some("A B")
        );
        assert_eq!(query_param(Some("x=1"), "userName"), None);
        assert_eq!(query_param(None, "userName"), None);
        // Only the first occurrence counts, even when it is empty.
        assert_eq!(
            query_param(Some("userName=&userName=Ann"), "userName"),
            None
        );
    }
}
