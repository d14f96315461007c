//! HTML building blocks: escaping (everything shown may come from admins,
//! CSV files or mail envelopes), number and time formats, and the page
//! shell with the embedded stylesheet and script.

use std::fmt::Write as _;

/// Text or attribute value, escaped for HTML.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string value, percent-encoded.
pub fn query(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `1234567` → `1,234,567`.
pub fn number(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds as `2 d 3 h`, `3 h 12 min`, `5 min`, `40 s`.
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) => format!("{d} d"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// A Unix time as RFC 3339 (UTC), in a `<time>` element.
pub fn time(unix: i64) -> String {
    let t = crate::route::rfc3339(unix);
    format!(
        "<time datetime=\"{t}\">{}</time>",
        esc(&t.replace('T', " "))
    )
}

/// A table cell with its column's name, which narrow screens show beside
/// the value (see the stylesheet).
pub fn td(out: &mut String, label: &str, html: &str) {
    let _ = write!(
        out,
        "<td role=\"cell\" data-label=\"{}\">{html}</td>",
        esc(label)
    );
}

/// A body row's start. Tables carry their ARIA roles explicitly: on a
/// phone the stylesheet shows them as cards (`display: block`), which
/// makes WebKit's screen reader drop the implicit table semantics.
pub const ROW: &str = "<tr role=\"row\">";

/// A table's opening and header row.
pub fn thead(out: &mut String, caption: &str, columns: &[&str]) {
    let _ = write!(
        out,
        "<div class=\"scroll\"><table role=\"table\"><caption>{}</caption><thead role=\"rowgroup\">{ROW}",
        esc(caption)
    );
    for c in columns {
        let _ = write!(
            out,
            "<th role=\"columnheader\" scope=\"col\">{}</th>",
            esc(c)
        );
    }
    out.push_str("</tr></thead><tbody role=\"rowgroup\">");
}

pub fn tfoot(out: &mut String) {
    out.push_str("</tbody></table></div>");
}

/// The hidden field with the session's CSRF token.
pub fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token)
    )
}

/// A whole page. `user`: the signed-in token name and CSRF token (for the
/// sign-out button); `None` on the login page.
pub fn page(title: &str, user: Option<(&str, &str)>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · ponte</title>\
         <link rel=\"stylesheet\" href=\"/dashboard/assets/dashboard.css\">\
         <script src=\"/dashboard/assets/dashboard.js\" defer></script></head><body>\
         <header><a class=\"brand\" href=\"/dashboard\">ponte</a>",
        esc(title)
    );
    if let Some((name, csrf)) = user {
        let _ = write!(
            out,
            "<span class=\"who\">signed in as <strong>{}</strong></span>\
             <form method=\"post\" action=\"/dashboard/logout\" class=\"inline\">{}\
             <button type=\"submit\">Sign out</button></form>",
            esc(name),
            csrf_field(csrf)
        );
    }
    let _ = write!(
        out,
        "</header><main id=\"main\"><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_formats() {
        assert_eq!(
            esc("<a href='x'>\"&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&quot;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(number(0), "0");
        assert_eq!(number(1234), "1,234");
        assert_eq!(number(1234567), "1,234,567");
        assert_eq!(duration(40), "40 s");
        assert_eq!(duration(3600 * 3 + 720), "3 h 12 min");
        assert_eq!(duration(86_400 * 2 + 3 * 3600), "2 d 3 h");
        assert_eq!(query("a b&c@d"), "a+b%26c%40d");
        let p = page("T<", Some(("ops", "tok")), "<p>x</p>");
        assert!(p.contains("<title>T&lt; · ponte</title>"));
        assert!(p.contains("value=\"tok\""));
    }
}
