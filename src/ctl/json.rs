//! `--json` output: the API's body re-indented (two spaces per level, like
//! `serde_json::to_string_pretty`) with its keys and values left exactly as
//! the API sent them, in its order. A body that is not JSON is shown as is.

use std::iter::Peekable;
use std::str::Chars;

/// `text` pretty-printed if it is JSON, else unchanged.
pub fn pretty(text: &str) -> String {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0;
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => copy_string(&mut chars, &mut out),
            '{' | '[' => open(c, &mut chars, &mut out, &mut depth),
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// Copies a string literal whose opening quote was just read.
fn copy_string(chars: &mut Peekable<Chars<'_>>, out: &mut String) {
    out.push('"');
    let mut escaped = false;
    for c in chars.by_ref() {
        out.push(c);
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return,
            _ => {}
        }
    }
}

/// An opening bracket: `{}` / `[]` stay on one line, others indent.
fn open(c: char, chars: &mut Peekable<Chars<'_>>, out: &mut String, depth: &mut usize) {
    out.push(c);
    while chars.next_if(|c| c.is_whitespace()).is_some() {}
    if let Some(close) = chars.next_if(|&n| n == '}' || n == ']') {
        out.push(close);
        return;
    }
    *depth += 1;
    newline(out, *depth);
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    out.extend(std::iter::repeat_n("  ", depth));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_keeps_the_order_and_matches_serde_json_layout() {
        let body = r#"{"z":1,"a":[{"k":"v, {x}: \"y\""},[],{}],"n":null,"e":[ ]}"#;
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        let mine = pretty(body);
        assert!(mine.find("\"z\"").unwrap() < mine.find("\"a\"").unwrap());
        let reparsed: serde_json::Value = serde_json::from_str(&mine).unwrap();
        assert_eq!(reparsed, value);
        let expected = "{\n  \"z\": 1,\n  \"a\": [\n    {\n      \"k\": \"v, {x}: \\\"y\\\"\"\n    },\n    [],\n    {}\n  ],\n  \"n\": null,\n  \"e\": []\n}";
        assert_eq!(mine, expected);
    }

    #[test]
    fn not_json_is_left_alone() {
        assert_eq!(pretty("Bad Gateway\n"), "Bad Gateway\n");
        assert_eq!(pretty("{\"a\":"), "{\"a\":");
    }
}
