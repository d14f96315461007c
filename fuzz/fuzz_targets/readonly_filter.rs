//! Drives ponte's read-only IMAP command filter the way the read-only
//! session (`src/proto/imap/view.rs`) does: bytes arrive in chunks into a
//! streaming `Framer`; after each chunk every frame is handled, literal
//! announcements with `Filter::on_literal` (a refused synchronizing
//! literal skips the message, as it is never invited) and complete
//! messages with `Filter::judge`.
//!
//! Checked on every input:
//! - no panic anywhere in framing, judging or re-encoding;
//! - every `Verdict::Forward` is exactly one complete command that
//!   imap-codec decodes with nothing left over, named in the filter's
//!   READ_COMMANDS (`DONE` only while an IDLE is in progress, and nothing
//!   else then), never SELECT (it must go out as EXAMINE) nor CAPABILITY
//!   (answered by the view itself), and never a command that writes;
//! - FETCH items never set `\Seen`: no `BODY[…]` without `.PEEK`, no
//!   `RFC822` / `RFC822.TEXT`, no `BINARY[…]` without `.PEEK`;
//! - ENABLE only turns on extensions that keep the session read-only;
//! - every line the filter answers itself is tagged (or `*` / `+`) and
//!   ends in its own CRLF: client bytes can never inject a response line;
//! - each command gets at most one tagged answer from the filter, and
//!   none if it was forwarded (the backend answers it).
//!
//! Input layout: byte 0 picks the command size limit (ponte's 64 KiB, or
//! a small one so that the over-limit paths are reached), byte 1 the chunk
//! size the bytes arrive in; the rest is the client's byte stream.
#![no_main]

use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::LiteralMode;
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName};
use imap_codec::CommandCodec;
use libfuzzer_sys::fuzz_target;
use ponte::proto::imap::framer::{Frame, Framer};
use ponte::proto::imap::readonly::{Filter, LiteralVerdict, Verdict, READ_COMMANDS};
use ponte::proto::imap::MAX_COMMAND;

/// Of those, what may actually reach the backend.
fn forwardable(name: &str) -> bool {
    READ_COMMANDS.contains(&name) && name != "SELECT" && name != "CAPABILITY"
}

/// Commands that change the store or the session's reach; none may ever
/// be forwarded (a second, explicit net under `forwardable`).
const WRITES: &[&str] = &[
    "SELECT",
    "STORE",
    "APPEND",
    "COPY",
    "MOVE",
    "EXPUNGE",
    "CREATE",
    "DELETE",
    "RENAME",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "SETQUOTA",
    "SETMETADATA",
    "GETMETADATA",
    "COMPRESS",
    "AUTHENTICATE",
    "LOGIN",
    "STARTTLS",
];

/// What a backend of the view typically offers (Dovecot 2.3 and more).
const BACKEND_CAPS: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT \
    SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND \
    URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 \
    CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY \
    MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ NOTIFY \
    METADATA COMPRESS=DEFLATE X-GM-EXT-1 APPENDLIMIT=1000";

#[derive(Default)]
struct Session {
    /// An IDLE went to the backend and no DONE yet.
    idling: bool,
}

fuzz_target!(|data: &[u8]| {
    let (max, chunk, input) = match data {
        [m, c, rest @ ..] => {
            let max = if m & 1 == 0 {
                MAX_COMMAND
            } else {
                16 + u32::from(*m)
            };
            (max, 1 + usize::from(*c), rest)
        }
        _ => return,
    };
    let caps: Vec<String> = BACKEND_CAPS.split_whitespace().map(String::from).collect();
    let mut filter = Filter::new(&caps);
    check_capabilities(filter.capabilities());
    let mut framer = Framer::streaming(max);
    let mut session = Session::default();
    // Tagged lines the filter answered for the message in progress.
    let mut answered = 0;
    for part in input.chunks(chunk) {
        framer.push(part);
        while let Some(frame) = framer.next_frame() {
            match frame {
                Frame::Literal { mode, length } => {
                    match filter.on_literal(framer.message(), mode, length, max) {
                        LiteralVerdict::Accept => {}
                        LiteralVerdict::Refuse(reply) => {
                            answered += check_reply(&reply);
                            assert!(
                                answered <= 1,
                                "a second answer to one command: {:?}",
                                String::from_utf8_lossy(&reply)
                            );
                            if mode == LiteralMode::Sync {
                                // Not invited, so never sent: the message ends here.
                                framer.skip_message();
                                answered = 0;
                            }
                        }
                    }
                }
                Frame::Message => {
                    match filter.judge(&framer) {
                        Verdict::Forward(bytes) => {
                            assert_eq!(answered, 0, "refused, then forwarded anyway");
                            check_forward(&bytes, &mut session);
                        }
                        Verdict::Reply(reply) => {
                            answered += check_reply(&reply);
                            assert!(
                                answered <= 1,
                                "a second answer to one command: {:?}",
                                String::from_utf8_lossy(&reply)
                            );
                        }
                        Verdict::Drop => {}
                    }
                    answered = 0;
                }
            }
        }
    }
});

fn check_capabilities(caps: &str) {
    for cap in caps.split(' ') {
        let upper = cap.to_ascii_uppercase();
        for hidden in [
            "MOVE",
            "UIDPLUS",
            "COMPRESS",
            "METADATA",
            "MULTIAPPEND",
            "CATENATE",
            "NOTIFY",
            "X-GM-EXT",
            "APPENDLIMIT",
            "URL-PARTIAL",
        ] {
            assert!(
                !upper.starts_with(hidden),
                "capability {cap} offered: {caps}"
            );
        }
    }
}

fn check_forward(bytes: &[u8], session: &mut Session) {
    if session.idling {
        assert_eq!(
            bytes,
            b"DONE\r\n",
            "only DONE may follow IDLE, got {:?}",
            String::from_utf8_lossy(bytes)
        );
        session.idling = false;
        return;
    }
    let (rest, cmd) = match CommandCodec::default().decode(bytes) {
        Ok(ok) => ok,
        Err(e) => panic!(
            "forwarded bytes are not one command ({e:?}): {:?}",
            String::from_utf8_lossy(bytes)
        ),
    };
    assert!(
        rest.is_empty(),
        "more than one command forwarded at once: {:?}",
        String::from_utf8_lossy(bytes)
    );
    let name = cmd.body.name();
    assert!(
        forwardable(name) && !WRITES.contains(&name),
        "{name} forwarded: {:?}",
        String::from_utf8_lossy(bytes)
    );
    check_command(&cmd, bytes);
    if let CommandBody::Idle = cmd.body {
        session.idling = true;
    }
}

fn check_command(cmd: &Command<'_>, bytes: &[u8]) {
    let show = || String::from_utf8_lossy(bytes).into_owned();
    match &cmd.body {
        CommandBody::Fetch {
            macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(items),
            ..
        } => {
            for item in items {
                let sets_seen = match item {
                    MessageDataItemName::BodyExt { peek, .. }
                    | MessageDataItemName::Binary { peek, .. } => !peek,
                    MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => true,
                    _ => false,
                };
                assert!(!sets_seen, "FETCH item {item:?} sets \\Seen: {}", show());
            }
        }
        // ALL, FAST and FULL name no body section.
        CommandBody::Fetch { .. } => {}
        CommandBody::Enable { capabilities } => {
            for c in capabilities.as_ref() {
                let ok = match c {
                    CapabilityEnable::CondStore | CapabilityEnable::Utf8(_) => true,
                    other => ["QRESYNC", "IMAP4REV2"]
                        .contains(&other.to_string().to_ascii_uppercase().as_str()),
                };
                assert!(ok, "ENABLE {c:?} forwarded: {}", show());
            }
        }
        _ => {}
    }
}

/// The filter's own answer: whole response lines, each tagged or
/// untagged, none split or joined by client bytes. Returns how many are
/// tagged (command completions).
fn check_reply(reply: &[u8]) -> usize {
    let show = || String::from_utf8_lossy(reply).into_owned();
    if reply.is_empty() {
        return 0;
    }
    assert!(
        reply.ends_with(b"\r\n"),
        "reply not CRLF-terminated: {:?}",
        show()
    );
    let mut tagged = 0;
    for line in reply[..reply.len() - 2].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            !line.contains(&b'\r') && !line.contains(&b'\n'),
            "bare CR or LF in a reply: {:?}",
            show()
        );
        let mut words = line.split(|&b| b == b' ');
        let first = words.next().unwrap_or_default();
        let status = words.next().unwrap_or_default();
        // The tag echoes the client's: printable, one word. (It is not
        // held to RFC 9051's `tag` grammar: a client that sends `(` as a
        // tag gets `( NO …` back, its own garbage, where Dovecot answers
        // `* BAD`.)
        assert!(
            !first.is_empty() && first.iter().all(u8::is_ascii_graphic),
            "reply line without a proper tag: {:?}",
            show()
        );
        assert!(
            first == b"+" || [&b"OK"[..], b"NO", b"BAD", b"CAPABILITY"].contains(&status),
            "reply line with no status: {:?}",
            show()
        );
        if first != b"*" && first != b"+" {
            tagged += 1;
        }
    }
    tagged
}
