//! Cross-site request forgery: every dashboard POST must come from the
//! dashboard's own pages. Two checks, both required:
//! - the browser's own word: a foreign `Origin` (or `Origin: null`), or
//!   `Sec-Fetch-Site` other than `same-origin`, is refused;
//! - a per-session token in a hidden field of every form, which another
//!   site cannot read (checked in the handlers, with [`same`]).
//!
//! The session cookie is also `SameSite=Strict`, so a cross-site POST
//! normally arrives without a session at all.

use axum::http::{header, HeaderMap};

/// Compares without an early exit (the admin token's comparison).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    crate::admin::auth::same(a, b)
}

/// Whether the request's browser headers allow it as same-origin. A
/// client that sends neither header (curl, a script) passes this check
/// and still needs the session cookie and the form's token.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        // `none`: typed in the address bar or a bookmark; not a form post
        // from another page.
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let Ok(origin) = origin.to_str() else {
                return false;
            };
            let Some(host) = text("host") else {
                return false;
            };
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|o| o.eq_ignore_ascii_case(host))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn foreign_origins_and_cross_site_fetches_are_refused() {
        let host = ("host", "127.0.0.1:8025");
        assert!(same_origin(&headers(&[host])));
        assert!(same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:8025"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:8025.evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("sec-fetch-site", "same-site")
        ])));
        assert!(!same_origin(&headers(&[("origin", "http://x")])));
    }
}
