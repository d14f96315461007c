//! Bearer tokens for the admin API, from the token file: lines
//! `name:token` (the name goes to the audit log) or one bare token (named
//! `admin`); blank lines and `#` comments are ignored.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AdminState, ApiError};
use crate::error::ConfigError;
use crate::secret::Secret;

/// One accepted token and the name it acts under.
#[derive(Debug, Clone)]
pub struct Token {
    pub name: String,
    pub secret: Secret<String>,
}

/// Who made a request: the token's name.
#[derive(Debug, Clone)]
pub struct Who(pub String);

const MIN_TOKEN_LEN: usize = 16;

pub fn load_tokens(path: &Path) -> Result<Vec<Token>, ConfigError> {
    let key = "admin.token_file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))?;
    let tokens = parse_tokens(&text)
        .map_err(|reason| ConfigError::invalid(key, format!("{}: {reason}", path.display())))?;
    Ok(tokens)
}

pub fn parse_tokens(text: &str) -> Result<Vec<Token>, String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut tokens = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let (name, secret) = match line.split_once(':') {
            Some((n, s)) => (n.trim(), s.trim()),
            None if lines.len() == 1 => ("admin", *line),
            None => return Err(format!("entry {}: expected name:token", i + 1)),
        };
        // The name goes to the audit log and `set_by`: it may not pass for
        // the configuration file, the seed or the scheduler.
        let reserved = ["config", "seed"].contains(&name) || name.starts_with("schedule");
        let plain = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if reserved || !plain {
            return Err(format!(
                "entry {}: token name {name:?} is reserved or not [A-Za-z0-9._-]",
                i + 1
            ));
        }
        if name.is_empty() || secret.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "entry {}: a name and a token of at least {MIN_TOKEN_LEN} characters",
                i + 1
            ));
        }
        tokens.push(Token {
            name: name.to_string(),
            secret: Secret::new(secret.to_string()),
        });
    }
    if tokens.is_empty() {
        return Err("no token".into());
    }
    Ok(tokens)
}

/// Compares without an early exit, so timing does not tell how much of a
/// guessed token was right.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token `presented` is, if any (the dashboard's login form uses it too).
pub(crate) fn find<'a>(tokens: &'a [Token], presented: &str) -> Option<&'a Token> {
    tokens
        .iter()
        .find(|t| same(t.secret.expose().as_bytes(), presented.as_bytes()))
}

/// Lets a request through with a valid bearer token, recording who it is.
pub async fn require_token(
    State(state): State<Arc<AdminState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let who = presented.and_then(|p| find(&state.tokens, p));
    match who {
        Some(t) => {
            req.extensions_mut().insert(Who(t.name.clone()));
            next.run(req).await
        }
        None => ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid bearer token")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_forms() {
        let t = parse_tokens("# ops team\nops:0123456789abcdef0123\n\nnoc: fedcba9876543210fedc\n")
            .unwrap();
        assert_eq!((t[0].name.as_str(), t[1].name.as_str()), ("ops", "noc"));
        assert_eq!(t[1].secret.expose(), "fedcba9876543210fedc");
        assert_eq!(
            parse_tokens("0123456789abcdef0123\n").unwrap()[0].name,
            "admin"
        );
        assert!(parse_tokens("short").is_err());
        assert!(parse_tokens("a0123456789abcdef0123\nb0123456789abcdef0123").is_err());
        assert!(parse_tokens("# nothing\n").is_err());
        assert!(parse_tokens("config:0123456789abcdef0123").is_err());
        assert!(parse_tokens("schedule 1 by ops:0123456789abcdef0123").is_err());
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
