//! The SASL mechanisms a proxy can pass on (the secret must reach the
//! backend as the client gave it): PLAIN (RFC 4616) and LOGIN (what older
//! Outlook uses) with a password, XOAUTH2 and OAUTHBEARER (RFC 7628) with
//! an OAuth 2.0 bearer token that the backend checks with its identity
//! provider. Challenge mechanisms such as CRAM-MD5 or SCRAM cannot be
//! proxied and are never offered.

use crate::secret::{Credentials, Secret, SecretKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    XOAuth2,
    OAuthBearer,
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
    #[error("malformed OAuth response")]
    MalformedOAuth,
}

/// The longest bearer token taken (JWTs from Entra ID run to a few KB).
const MAX_TOKEN: usize = 16 * 1024;

/// XOAUTH2: `user=<user>^Aauth=Bearer <token>^A^A`.
pub fn decode_xoauth2(data: &[u8]) -> Result<Credentials, SaslError> {
    let mut user = None;
    let mut token = None;
    for field in data.split(|&b| b == 1).filter(|f| !f.is_empty()) {
        if let Some(u) = field.strip_prefix(b"user=") {
            user = Some(u);
        } else if let Some(t) = bearer(field) {
            token = Some(t);
        }
    }
    oauth_credentials(user, token, SecretKind::XOAuth2)
}

/// OAUTHBEARER (RFC 7628 §3.1): a GS2 header `n,a=<user>,` then
/// `^A`-separated `key=value` pairs, one of them `auth=Bearer <token>`.
/// The user must be in the header: ponte routes by it.
pub fn decode_oauthbearer(data: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = data.splitn(2, |&b| b == 1);
    let gs2 = parts.next().unwrap_or_default();
    let rest = parts.next().ok_or(SaslError::MalformedOAuth)?;
    // "n,a=user," or "y,a=user,": channel binding flag, authzid, nothing else.
    let gs2 = std::str::from_utf8(gs2).map_err(|_| SaslError::NotUtf8)?;
    let mut fields = gs2.split(',');
    let (Some(flag), Some(authz)) = (fields.next(), fields.next()) else {
        return Err(SaslError::MalformedOAuth);
    };
    if !matches!(flag, "n" | "y") {
        return Err(SaslError::MalformedOAuth);
    }
    // RFC 5801 §4: `=2C` and `=3D` stand for `,` and `=` in the name.
    let user = authz
        .strip_prefix("a=")
        .map(|u| u.replace("=2C", ",").replace("=3D", "="));
    let token = rest.split(|&b| b == 1).find_map(bearer);
    oauth_credentials(
        user.as_deref().map(str::as_bytes),
        token,
        SecretKind::OAuthBearer,
    )
}

fn bearer(field: &[u8]) -> Option<&[u8]> {
    let value = field.strip_prefix(b"auth=")?;
    (value.len() > 7 && value[..7].eq_ignore_ascii_case(b"Bearer ")).then(|| &value[7..])
}

fn oauth_credentials(
    user: Option<&[u8]>,
    token: Option<&[u8]>,
    kind: SecretKind,
) -> Result<Credentials, SaslError> {
    let (Some(user), Some(token)) = (user, token) else {
        return Err(SaslError::MalformedOAuth);
    };
    // The token is forwarded inside a SASL message: no separators in it.
    if token.is_empty()
        || token.len() > MAX_TOKEN
        || token.iter().any(|b| !(0x20..=0x7e).contains(b))
    {
        return Err(SaslError::MalformedOAuth);
    }
    let mut creds = credentials(user, token)?;
    creds.kind = kind;
    Ok(creds)
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
        kind: SecretKind::Password,
    })
}

/// The mechanism and initial response ponte sends a backend for `creds`:
/// PLAIN for a password, the client's own OAuth mechanism for a token.
pub fn initial_response(creds: &Credentials) -> (&'static str, Secret<Vec<u8>>) {
    match creds.kind {
        SecretKind::Password => ("PLAIN", encode_plain(creds)),
        SecretKind::XOAuth2 => {
            let mut v = format!("user={}\x01auth=Bearer ", creds.user).into_bytes();
            v.extend_from_slice(creds.password.expose());
            v.extend_from_slice(b"\x01\x01");
            ("XOAUTH2", Secret::new(v))
        }
        SecretKind::OAuthBearer => {
            let user = creds.user.replace('=', "=3D").replace(',', "=2C");
            let mut v = format!("n,a={user},\x01auth=Bearer ").into_bytes();
            v.extend_from_slice(creds.password.expose());
            v.extend_from_slice(b"\x01\x01");
            ("OAUTHBEARER", Secret::new(v))
        }
    }
}

/// What a client answers to an OAuth failure challenge (the server's JSON
/// error) to get the final failure: `^A` for OAUTHBEARER (RFC 7628 §3.2.3),
/// an empty response for XOAUTH2.
pub fn oauth_abort(kind: SecretKind) -> &'static [u8] {
    match kind {
        SecretKind::OAuthBearer => b"\x01",
        _ => b"",
    }
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
    fn oauth_responses_round_trip_and_malformed_ones_are_refused() {
        let x = decode_xoauth2(b"user=alice@pec.example\x01auth=Bearer ya29.tok\x01\x01").unwrap();
        assert_eq!(
            (x.user.as_str(), x.kind),
            ("alice@pec.example", SecretKind::XOAuth2)
        );
        assert_eq!(x.password.expose(), b"ya29.tok");
        let (mech, ir) = initial_response(&x);
        assert_eq!(mech, "XOAUTH2");
        assert_eq!(
            decode_xoauth2(ir.expose()).unwrap().password.expose(),
            b"ya29.tok"
        );

        let o = decode_oauthbearer(
            b"n,a=bob=2Cx@pec.example,\x01host=imap\x01port=993\x01auth=Bearer eyJ.a.b\x01\x01",
        )
        .unwrap();
        assert_eq!(
            (o.user.as_str(), o.kind),
            ("bob,x@pec.example", SecretKind::OAuthBearer)
        );
        let (mech, ir) = initial_response(&o);
        assert_eq!(mech, "OAUTHBEARER");
        let back = decode_oauthbearer(ir.expose()).unwrap();
        assert_eq!(
            (back.user, back.password.expose().clone()),
            (o.user.clone(), b"eyJ.a.b".to_vec())
        );

        assert!(decode_xoauth2(b"auth=Bearer t\x01\x01").is_err(), "no user");
        assert!(decode_xoauth2(b"user=a@b\x01\x01").is_err(), "no token");
        assert!(decode_xoauth2(b"user=a@b\x01auth=Bearer t\r\nA1 LOGOUT\x01\x01").is_err());
        assert!(
            decode_oauthbearer(b"n,,\x01auth=Bearer t\x01\x01").is_err(),
            "no user to route by"
        );
        assert!(decode_oauthbearer(b"p=tls-unique,a=a@b,\x01auth=Bearer t\x01\x01").is_err());
    }

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
