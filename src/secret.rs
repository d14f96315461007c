//! A wrapper for credentials: its `Debug` and `Display` never show the value,
//! so a password cannot reach a log by accident.

use std::fmt;

/// A value that must never be printed (passwords, SASL responses).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The value itself, for the one place that must send it on.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A password kept in a file of its own (one line; a trailing newline is
/// not part of it), so that it is in neither the configuration nor a URL.
/// `key` names the setting in errors.
pub fn read_password_file(
    path: &std::path::Path,
    key: &str,
) -> Result<Secret<Vec<u8>>, crate::error::ConfigError> {
    let invalid = |reason: String| crate::error::ConfigError::invalid(key.to_string(), reason);
    let mut text = std::fs::read(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    while text.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        text.pop();
    }
    if text.is_empty() {
        return Err(invalid(format!("{}: the file is empty", path.display())));
    }
    Ok(Secret::new(text))
}

/// A login as the client gave it: the user name and its password.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub user: String,
    pub password: Secret<Vec<u8>>,
    /// Log in as `user` but act as this mailbox (SASL PLAIN's
    /// authorization identity, RFC 4616): ponte's own master-user login.
    /// Always `None` for a client's login.
    pub authzid: Option<String>,
    /// What `password` is: a password, or an OAuth 2.0 bearer token the
    /// backend checks with its identity provider (passed on as given).
    pub kind: SecretKind,
}

/// The kind of secret a login carries, and so the SASL mechanism ponte
/// uses towards the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SecretKind {
    #[default]
    Password,
    /// Google's and Microsoft's XOAUTH2.
    XOAuth2,
    /// RFC 7628 OAUTHBEARER.
    OAuthBearer,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let c = Credentials {
            user: "alice@pec.example".into(),
            password: Secret::new(b"hunter2".to_vec()),
            authzid: None,
            kind: SecretKind::Password,
        };
        let shown = format!("{c:?} {}", c.password);
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("alice@pec.example"));
    }
}
