//! Drives the sans-I/O part of ponte's IMAP pre-auth phase
//! (`src/proto/imap/preauth.rs`, `Front`): the same `Framer::new` with the
//! same limit and byte budget, the same literal decisions, commands
//! decoded with imap-codec's `CommandCodec` and SASL continuation lines
//! with `AuthenticateDataCodec`, credentials through `sasl::credentials`
//! / `sasl::decode_plain`, `ID` fields through `id_field`. The socket,
//! deadline and TLS are left out (`Front` owns a TCP stream); the reads
//! are the fuzzer's chunks.
//!
//! Checked on every input:
//! - no panic in framing, decoding, tag guessing, SASL or ID handling;
//! - each complete message gets exactly one outcome (a reply, a SASL
//!   step, a login attempt or the end), with a tag that cannot break the
//!   reply line (no space, CR, LF);
//! - memory bounded: the framer never holds more than the budget (four
//!   times the limit) plus one read;
//! - `ID` fields kept for the backend are known names with printable,
//!   bounded values (they go into a command line);
//! - a login attempt has a non-empty user name; after it, the bytes the
//!   client pipelined (`into_rest`, what reaches the backend) are exactly
//!   the input after the login command.
//!
//! Input layout: byte 0: bit 0 a short limit (16 + byte, else ponte's
//! default 16 KiB), bit 1 STARTTLS required (LOGINDISABLED), bit 2 the
//! login succeeds (the session ends there, the rest checked); byte 1 the
//! read sizes (see `common::chunks`); the rest is the client's bytes.
#![no_main]

mod common;

use imap_codec::fragmentizer::DecodeMessageError;
use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::LiteralMode;
use imap_codec::{AuthenticateDataCodec, CommandCodec};
use libfuzzer_sys::fuzz_target;
use ponte::proto::imap::framer::{Frame, Framer};
use ponte::proto::imap::{id_field, MAX_ID_VALUE};
use ponte::proto::sasl;
use ponte::secret::Credentials;

use common::{chunks, show};

const MAX_ID_FIELDS: usize = 30;
const READ: usize = 4096;

#[derive(Debug)]
enum Outcome {
    Reply,
    /// A SASL challenge went out; the next line is the response.
    Sasl,
    Login,
    End,
}

enum Sasl {
    None,
    Plain,
    LoginUser,
    LoginPass(Vec<u8>),
}

fuzz_target!(|data: &[u8]| {
    let [cfg, seed, input @ ..] = data else {
        return;
    };
    let max = if cfg & 1 != 0 {
        16 + u32::from(*cfg)
    } else {
        16 * 1024
    };
    let login_disabled = cfg & 2 != 0;
    let logins_succeed = cfg & 4 != 0;
    let mut framer = Framer::new(max);
    // Fed the same bytes: its `message()` is what imap-codec framed, which
    // the raw copy must match (it is what reaches the backend later).
    let mut shadow = Framer::streaming(max);
    let mut budget = max as usize * 4;
    let mut sasl = Sasl::None;
    let mut reads = chunks(*seed, input);
    let mut pushed = 0;
    let mut consumed = 0;
    loop {
        let frame = framer.next_frame();
        assert_eq!(frame, shadow.next_frame());
        if frame == Some(Frame::Message) && !framer.is_too_long() {
            assert_eq!(
                framer.message(),
                shadow.message(),
                "the raw copy is out of step with the framing"
            );
        }
        let outcome = match frame {
            None => {
                // Front::fill
                if framer.pending() > budget {
                    return;
                }
                let Some(part) = reads.next() else { return };
                framer.push(part);
                shadow.push(part);
                pushed += part.len();
                budget = budget.saturating_sub(part.len());
                assert!(
                    framer.pending() <= max as usize * 4 + READ,
                    "{} bytes buffered",
                    framer.pending()
                );
                if budget == 0 {
                    return;
                }
                continue;
            }
            Some(Frame::Literal { mode, length }) => {
                if let Sasl::None = sasl {
                    // Front::on_literal
                    if framer.is_too_long() {
                        return;
                    }
                    if length <= framer.max() {
                        continue;
                    }
                    if mode == LiteralMode::NonSync {
                        return;
                    }
                    check_tag(framer.tag());
                    let before = framer.pending();
                    framer.skip_message();
                    shadow.skip_message();
                    consumed += before - framer.pending();
                    Outcome::Reply
                } else {
                    // Front::read_sasl_line: over the limit the session
                    // ends; a SASL response has no literal.
                    if framer.is_too_long() {
                        return;
                    }
                    if mode == LiteralMode::NonSync {
                        continue;
                    }
                    let before = framer.pending();
                    framer.skip_message();
                    shadow.skip_message();
                    consumed += before - framer.pending();
                    sasl = Sasl::None;
                    Outcome::Reply
                }
            }
            Some(Frame::Message) => {
                consumed += framer.message().len();
                match std::mem::replace(&mut sasl, Sasl::None) {
                    Sasl::None => command(&framer, login_disabled, &mut sasl),
                    _ if framer.is_too_long() => return,
                    step => sasl_response(&framer, step, &mut sasl),
                }
            }
        };
        assert_eq!(consumed + framer.pending(), pushed, "bytes lost");
        match outcome {
            Outcome::End => return,
            Outcome::Login if logins_succeed => break,
            Outcome::Login | Outcome::Reply | Outcome::Sasl => {}
        }
    }
    let rest = framer.into_rest();
    assert_eq!(
        rest,
        &input[consumed..pushed],
        "pipelined bytes after the login are not the input's tail"
    );
});

/// Front::handle_message.
fn command(framer: &Framer, login_disabled: bool, sasl: &mut Sasl) -> Outcome {
    if framer.is_too_long() {
        return Outcome::End;
    }
    let (tag, body) = match framer.decode(&CommandCodec::default()) {
        Ok(cmd) => (cmd.tag.as_ref().to_string(), cmd.body),
        Err(DecodeMessageError::DecodingRemainder { message, .. }) => {
            check_tag(Some(message.tag.as_ref().to_string()));
            return Outcome::Reply;
        }
        Err(_) => {
            check_tag(framer.tag());
            return Outcome::Reply;
        }
    };
    check_tag(Some(tag.clone()));
    match body {
        CommandBody::Logout => Outcome::End,
        CommandBody::Id { parameters } => {
            let fields: Vec<(String, String)> = parameters
                .unwrap_or_default()
                .iter()
                .take(MAX_ID_FIELDS)
                .filter_map(|(k, v)| id_field(k.as_ref(), v.0.as_ref().map(|v| v.as_ref())))
                .collect();
            for (k, v) in &fields {
                assert!(k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
                assert!(v.len() <= MAX_ID_VALUE);
                assert!(
                    v.bytes().all(|b| (0x20..0x7f).contains(&b)),
                    "ID value {v:?} kept"
                );
            }
            Outcome::Reply
        }
        CommandBody::Login { username, password } if !login_disabled => {
            let creds = sasl::credentials(username.as_ref(), password.declassify().as_ref());
            attempt(creds)
        }
        CommandBody::Authenticate {
            mechanism,
            initial_response,
        } => {
            let ir = initial_response.map(|s| s.declassify().to_vec());
            match mechanism {
                AuthMechanism::Plain | AuthMechanism::Login if login_disabled => Outcome::Reply,
                AuthMechanism::Plain => match ir {
                    Some(d) => attempt(sasl::decode_plain(&d)),
                    None => {
                        *sasl = Sasl::Plain;
                        Outcome::Sasl
                    }
                },
                AuthMechanism::Login => {
                    *sasl = match ir {
                        Some(user) => Sasl::LoginPass(user),
                        None => Sasl::LoginUser,
                    };
                    Outcome::Sasl
                }
                _ => Outcome::Reply,
            }
        }
        _ => Outcome::Reply,
    }
}

/// Front::sasl_step after read_sasl_line returned a message.
fn sasl_response(framer: &Framer, step: Sasl, sasl: &mut Sasl) -> Outcome {
    let data = match framer.decode(&AuthenticateDataCodec::default()) {
        Ok(AuthenticateData::Continue(data)) => {
            let data = data.declassify().to_vec();
            assert!(data.len() <= framer.message().len());
            data
        }
        // Cancelled or not base64: `BAD Authentication canceled`.
        Ok(AuthenticateData::Cancel) | Err(_) => return Outcome::Reply,
    };
    match step {
        Sasl::None => unreachable!(),
        Sasl::Plain => attempt(sasl::decode_plain(&data)),
        Sasl::LoginUser => {
            *sasl = Sasl::LoginPass(data);
            Outcome::Sasl
        }
        Sasl::LoginPass(user) => attempt(sasl::credentials(&user, &data)),
    }
}

fn attempt(creds: Result<Credentials, sasl::SaslError>) -> Outcome {
    match creds {
        Ok(c) => {
            assert!(!c.user.is_empty() && c.authzid.is_none());
            Outcome::Login
        }
        Err(_) => Outcome::Reply,
    }
}

fn check_tag(tag: Option<String>) {
    if let Some(tag) = tag {
        assert!(
            !tag.is_empty() && !tag.bytes().any(|b| b == b' ' || b == b'\r' || b == b'\n'),
            "tag {} would break the reply line",
            show(tag.as_bytes())
        );
    }
}
