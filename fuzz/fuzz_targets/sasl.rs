//! Drives ponte's SASL handling (`src/proto/sasl.rs` and the base64 steps
//! in front of it): `decode_plain`, `credentials`, `encode_plain`, the
//! submission front's `decode_response` (RFC 4954: base64, `=`, `*`), the
//! POP3 front's decoding of an `AUTH` response (standard base64 of the
//! trimmed line) and imap-codec's `AuthenticateDataCodec` as the IMAP
//! pre-auth phase uses it.
//!
//! Checked on every input:
//! - no panic;
//! - `decode_plain` accepts exactly `[authzid] NUL user NUL password`
//!   with a non-empty UTF-8 user and an authzid that is empty or the user;
//!   the credentials carry no authzid, the user no NUL, the password the
//!   rest byte for byte; `encode_plain` of them decodes to the same;
//! - `credentials(user, pass)` succeeds exactly for a non-empty UTF-8
//!   user and keeps both as given;
//! - `decode_response`: `*` cancels, `=` is empty, otherwise the data is
//!   the standard base64 decoding of the line without its CRLF (and never
//!   longer than the line);
//! - the IMAP continuation decodes (imap-codec) to data no longer than the
//!   line, and `*` to a cancel.
//!
//! Input: the bytes are used whole as a PLAIN message, as a user/password
//! pair (split at the first NUL) and as a response line.
#![no_main]

mod common;

use base64::Engine;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::auth::AuthenticateData;
use imap_codec::AuthenticateDataCodec;
use libfuzzer_sys::fuzz_target;
use ponte::proto::sasl::{credentials, decode_plain, encode_plain, SaslError};
use ponte::proto::submission::{decode_response, Sasl};

use common::show;

fuzz_target!(|data: &[u8]| {
    check_plain(data);
    let (user, pass) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    check_credentials(user, pass);
    check_response(data);
    // As a continuation line in IMAP and a response line in SMTP.
    let mut line = data.to_vec();
    line.extend_from_slice(b"\r\n");
    check_response(&line);
    check_imap(&line);
});

fn check_plain(data: &[u8]) {
    let parts: Vec<&[u8]> = data.splitn(3, |&b| b == 0).collect();
    match decode_plain(data) {
        Ok(c) => {
            assert_eq!(parts.len(), 3);
            let (authz, user, pass) = (parts[0], parts[1], parts[2]);
            assert!(authz.is_empty() || authz == user);
            assert_eq!(c.user.as_bytes(), user);
            assert!(!c.user.is_empty() && !c.user.contains('\0'));
            assert_eq!(c.password.expose().as_slice(), pass);
            assert!(c.authzid.is_none());
            let again = decode_plain(encode_plain(&c).expose()).expect("round trip");
            assert_eq!(again.user, c.user);
            assert_eq!(again.password.expose(), c.password.expose());
        }
        Err(e) => {
            let expected = if parts.len() < 3 {
                SaslError::MalformedPlain
            } else if !parts[0].is_empty() && parts[0] != parts[1] {
                SaslError::Authzid
            } else if std::str::from_utf8(parts[1]).is_err() {
                SaslError::NotUtf8
            } else {
                SaslError::EmptyUser
            };
            assert_eq!(e, expected, "{}", show(data));
        }
    }
}

fn check_credentials(user: &[u8], pass: &[u8]) {
    match credentials(user, pass) {
        Ok(c) => {
            assert_eq!(c.user.as_bytes(), user);
            assert!(!user.is_empty());
            assert_eq!(c.password.expose().as_slice(), pass);
            assert!(c.authzid.is_none());
        }
        Err(SaslError::EmptyUser) => assert!(user.is_empty()),
        Err(SaslError::NotUtf8) => assert!(std::str::from_utf8(user).is_err()),
        Err(e) => panic!("credentials: {e}"),
    }
}

fn check_response(line: &[u8]) {
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    match decode_response(line) {
        Sasl::Data(d) => {
            let d = d.expose();
            if text == b"=" {
                assert!(d.is_empty());
            } else {
                assert_eq!(
                    Some(d.as_slice()),
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .ok()
                        .as_deref(),
                    "{}",
                    show(line)
                );
                assert!(d.len() <= text.len());
            }
        }
        Sasl::Refused(reply) => {
            assert!(reply.starts_with("501 ") && reply.ends_with("\r\n"));
            assert!(
                text == b"*"
                    || base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .is_err(),
                "refused {}",
                show(line)
            );
        }
    }
}

fn check_imap(line: &[u8]) {
    if let Ok((_, data)) = AuthenticateDataCodec::default().decode(line) {
        match data {
            AuthenticateData::Continue(d) => {
                assert!(d.declassify().len() <= line.len(), "{}", show(line))
            }
            AuthenticateData::Cancel => {
                assert!(line.starts_with(b"*"), "{}", show(line))
            }
        }
    }
}
