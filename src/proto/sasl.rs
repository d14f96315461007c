//! The two SASL mechanisms a proxy can pass on (the password must reach
//! the backend): PLAIN (RFC 4616) and LOGIN (what Outlook uses). Challenge
//! mechanisms such as CRAM-MD5 cannot be proxied and are never offered.

use crate::secret::{Credentials, Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("malformed PLAIN response")]
    MalformedPlain,
    #[error("authorization identity differs from the login")]
    Authzid,
    #[error("user name is not UTF-8")]
    NotUtf8,
    #[error("empty user name")]
    EmptyUser,
}

/// `[authzid] NUL authcid NUL passwd`. An authorization identity other
/// than the login itself (proxy authorization) is refused: the backend
/// would have to trust ponte as a master user.
pub fn decode_plain(data: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = data.splitn(3, |&b| b == 0);
    let (Some(authz), Some(user), Some(pass)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SaslError::MalformedPlain);
    };
    if !authz.is_empty() && authz != user {
        return Err(SaslError::Authzid);
    }
    credentials(user, pass)
}

/// Builds credentials from a user name and password as sent.
pub fn credentials(user: &[u8], pass: &[u8]) -> Result<Credentials, SaslError> {
    let user = std::str::from_utf8(user).map_err(|_| SaslError::NotUtf8)?;
    if user.is_empty() {
        return Err(SaslError::EmptyUser);
    }
    Ok(Credentials {
        user: user.to_string(),
        password: Secret::new(pass.to_vec()),
        authzid: None,
    })
}

/// The PLAIN response ponte sends a backend.
pub fn encode_plain(creds: &Credentials) -> Secret<Vec<u8>> {
    let authzid = creds.authzid.as_deref().unwrap_or_default();
    let mut v =
        Vec::with_capacity(authzid.len() + creds.user.len() + creds.password.expose().len() + 2);
    v.extend_from_slice(authzid.as_bytes());
    v.push(0);
    v.extend_from_slice(creds.user.as_bytes());
    v.push(0);
    v.extend_from_slice(creds.password.expose());
    Secret::new(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_round_trip_and_authzid_rules() {
        let c = decode_plain(b"\0alice@pec.example\0s3cret").unwrap();
        assert_eq!(c.user, "alice@pec.example");
        assert_eq!(c.password.expose(), b"s3cret");
        assert_eq!(encode_plain(&c).expose(), b"\0alice@pec.example\0s3cret");
        assert!(decode_plain(b"alice\0alice\0pw").is_ok());
        assert_eq!(
            decode_plain(b"admin\0alice\0pw").unwrap_err(),
            SaslError::Authzid
        );
        assert_eq!(
            decode_plain(b"alice\0pw").unwrap_err(),
            SaslError::MalformedPlain
        );
        assert_eq!(decode_plain(b"\0\0pw").unwrap_err(), SaslError::EmptyUser);
        // A NUL inside the password is kept (splitn stops after two).
        assert_eq!(
            decode_plain(b"\0a\0p\0w").unwrap().password.expose(),
            b"p\0w"
        );
    }
}
