//! The admin token file: `name:token` lines or one bare token line; blank
//! lines and `#` comments are ignored. The client sends the first token.
//! Errors name the line, never the token.

use crate::secret::Secret;

/// The first token in a token file's text.
pub fn parse_token(text: &str) -> Result<Secret<String>, String> {
    let (number, line) = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .find(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| "no token in the file".to_string())?;
    let token = match line.split_once(':') {
        Some((_name, token)) => token.trim(),
        None => line,
    };
    if token.is_empty() {
        return Err(format!("line {number}: empty token"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "line {number}: the token has characters an HTTP header cannot carry"
        ));
    }
    Ok(Secret::new(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> String {
        parse_token(text).unwrap().expose().clone()
    }

    #[test]
    fn a_bare_token() {
        assert_eq!(token("s3cret\n"), "s3cret");
        assert_eq!(token("  s3cret  \r\n"), "s3cret");
    }

    #[test]
    fn named_tokens_give_the_first_token() {
        assert_eq!(token("ops:abc123\nbackup:def456\n"), "abc123");
        assert_eq!(token("ops: abc123\n"), "abc123");
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let text = "# admin tokens\n\n   \n  # ops team\r\nops:abc\n";
        assert_eq!(token(text), "abc");
    }

    #[test]
    fn empty_files_and_tokens_are_refused() {
        assert_eq!(parse_token("").unwrap_err(), "no token in the file");
        assert_eq!(
            parse_token("# only\n\n").unwrap_err(),
            "no token in the file"
        );
        assert_eq!(parse_token("\nops:\n").unwrap_err(), "line 2: empty token");
    }

    #[test]
    fn errors_never_show_the_token() {
        let err = parse_token("ops:abc def\n").unwrap_err();
        assert!(err.starts_with("line 1:"), "{err}");
        assert!(!err.contains("abc"), "{err}");
        let shown = format!("{:?}", parse_token("ops:abc").unwrap());
        assert!(!shown.contains("abc"));
    }
}
