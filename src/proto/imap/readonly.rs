//! The read-only view's command filter, default-deny and sans-I/O: every
//! client command after login is framed and parsed with imap-codec, and
//! only commands that read reach the backend, re-encoded from the parsed
//! form (so nothing the parser did not understand slips through). SELECT
//! goes out as EXAMINE and FETCH body items as their `.PEEK` forms, so
//! not even `\Seen` changes. Everything else gets `NO [NOPERM]` (RFC 5530)
//! and the session goes on.

use imap_codec::encode::{Encoder, Fragment};
use imap_codec::fragmentizer::DecodeMessageError;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::LiteralMode;
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName, Section};
use imap_codec::{CommandCodec, IdleDoneCodec};

use super::framer::Framer;

/// What to do with one complete client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send these bytes to the backend.
    Forward(Vec<u8>),
    /// Answer the client with these bytes; the backend sees nothing.
    Reply(Vec<u8>),
    /// Already answered (refused at its literal): nothing more to do.
    Drop,
}

/// What to do when the client announces a literal inside a command.
#[derive(Debug, PartialEq, Eq)]
pub enum LiteralVerdict {
    /// Send `+` (synchronizing) or just read on (non-synchronizing).
    Accept,
    /// Refuse the command now: reply, and for a synchronizing literal
    /// skip the message (the client will not send the literal).
    Refuse(Vec<u8>),
}

/// Capabilities a client of the view may see: only what the view lets
/// through (no MOVE, UIDPLUS, COMPRESS, METADATA, APPEND extensions, …)
/// and what the parser understands: a command the view cannot parse is
/// refused, so extensions whose syntax imap-codec lacks (LIST-EXTENDED
/// return options, ESEARCH/SEARCHRES/ESORT `RETURN`, PREVIEW, SNIPPET,
/// SAVEDATE search keys) are not advertised.
const KEPT_CAPABILITIES: &[&str] = &[
    "IMAP4REV1",
    "IMAP4REV2",
    "LITERAL+",
    "LITERAL-",
    "ID",
    "ENABLE",
    "IDLE",
    "NAMESPACE",
    "CHILDREN",
    "UNSELECT",
    "SORT",
    "SORT=DISPLAY",
    "WITHIN",
    "CONDSTORE",
    "QRESYNC",
    "SPECIAL-USE",
    "BINARY",
    "STATUS=SIZE",
    "QUOTA",
    "OBJECTID",
    "UTF8=ACCEPT",
    "LOGIN-REFERRALS",
    "SASL-IR",
];
const KEPT_PREFIXES: &[&str] = &["THREAD=", "I18NLEVEL=", "QUOTA=RES-", "AUTH="];

/// Commands the view lets through (as named by imap-codec). Public for
/// the fuzz target, which checks what is forwarded against it.
#[doc(hidden)]
pub const READ_COMMANDS: &[&str] = &[
    "CAPABILITY",
    "NOOP",
    "LOGOUT",
    "ID",
    "ENABLE",
    "SELECT",
    "EXAMINE",
    "LIST",
    "LSUB",
    "STATUS",
    "NAMESPACE",
    "FETCH",
    "SEARCH",
    "SORT",
    "THREAD",
    "CHECK",
    "CLOSE",
    "UNSELECT",
    "IDLE",
    "GETQUOTA",
    "GETQUOTAROOT",
];

pub struct Filter {
    /// Capability list for the client, space separated.
    caps: String,
    /// An IDLE went to the backend: the next client line must be DONE.
    idling: bool,
    /// The command in progress was refused at a non-synchronizing literal:
    /// its literal is dropped as it comes, and it gets no second answer.
    refused: bool,
}

impl Filter {
    /// `backend_caps`: the backend's capabilities after login.
    pub fn new(backend_caps: &[String]) -> Filter {
        let mut caps: Vec<&str> = backend_caps
            .iter()
            .map(String::as_str)
            .filter(|c| keeps(c))
            .collect();
        // A backend that named none still speaks IMAP4rev1 (RFC 3501).
        if caps.is_empty() {
            caps.push("IMAP4rev1");
        }
        Filter {
            caps: caps.join(" "),
            idling: false,
            refused: false,
        }
    }

    /// The capabilities the client may see.
    pub fn capabilities(&self) -> &str {
        &self.caps
    }

    /// A literal announced in the command framed so far: accept it only
    /// for a command that may be let through, so that a refused APPEND
    /// never gets its (possibly huge) literal invited.
    pub fn on_literal(
        &mut self,
        partial: &[u8],
        mode: LiteralMode,
        length: u32,
        max: u32,
    ) -> LiteralVerdict {
        if self.refused {
            // Already answered: a synchronizing literal is not invited (the
            // message is skipped, with no second answer), a non-synchronizing
            // one is dropped as it arrives.
            if mode == LiteralMode::Sync {
                self.refused = false;
                return LiteralVerdict::Refuse(Vec::new());
            }
            return LiteralVerdict::Accept;
        }
        let verdict = judge_literal(partial, length, max);
        // A refused synchronizing literal ends the message here (it is
        // skipped); a non-synchronizing one arrives anyway.
        self.refused = mode == LiteralMode::NonSync && matches!(verdict, LiteralVerdict::Refuse(_));
        verdict
    }

    /// Judges one complete client message.
    pub fn judge(&mut self, framer: &Framer) -> Verdict {
        if std::mem::take(&mut self.refused) {
            return Verdict::Drop;
        }
        if self.idling {
            return self.done(framer);
        }
        match framer.decode(&CommandCodec::default()) {
            Ok(cmd) => self.judge_command(cmd),
            Err(DecodeMessageError::MessageTooLong { .. }) => {
                let tag = framer.tag().unwrap_or_else(|| "*".into());
                Verdict::Reply(format!("{tag} BAD [TOOBIG] Command too long.\r\n").into_bytes())
            }
            Err(_) => {
                let (tag, name) = command_words(framer.message());
                if READ_COMMANDS.contains(&name.as_str()) {
                    Verdict::Reply(format!("{tag} BAD Syntax error.\r\n").into_bytes())
                } else {
                    Verdict::Reply(no_perm(&tag, &name))
                }
            }
        }
    }

    fn done(&mut self, framer: &Framer) -> Verdict {
        match framer.decode(&IdleDoneCodec::default()) {
            Ok(_) => {
                self.idling = false;
                Verdict::Forward(b"DONE\r\n".to_vec())
            }
            // RFC 2177: only DONE ends IDLE; anything else is an error.
            Err(_) => Verdict::Reply(b"* BAD Expected DONE.\r\n".to_vec()),
        }
    }

    fn judge_command(&mut self, mut cmd: Command<'_>) -> Verdict {
        let tag = cmd.tag.as_ref().to_string();
        let name = cmd.body.name();
        match &mut cmd.body {
            CommandBody::Capability => {
                let text = format!(
                    "* CAPABILITY {}\r\n{tag} OK Capability completed.\r\n",
                    self.caps
                );
                return Verdict::Reply(text.into_bytes());
            }
            CommandBody::Select {
                mailbox,
                parameters,
            } => {
                cmd.body = CommandBody::Examine {
                    mailbox: mailbox.clone(),
                    parameters: std::mem::take(parameters),
                };
            }
            CommandBody::Fetch {
                macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(items),
                ..
            } => items.iter_mut().for_each(peek),
            CommandBody::Enable { capabilities }
                if !capabilities.as_ref().iter().all(enable_keeps_read_only) =>
            {
                return Verdict::Reply(no_perm(&tag, name));
            }
            CommandBody::Idle => self.idling = true,
            _ if READ_COMMANDS.contains(&name) => {}
            _ => return Verdict::Reply(no_perm(&tag, name)),
        }
        Verdict::Forward(encode(&cmd))
    }
}

/// Whether a literal of the command framed so far may be accepted.
fn judge_literal(partial: &[u8], length: u32, max: u32) -> LiteralVerdict {
    let (tag, name) = command_words(partial);
    if !READ_COMMANDS.contains(&name.as_str()) {
        return LiteralVerdict::Refuse(no_perm(&tag, &name));
    }
    if length > max {
        let text = format!("{tag} NO [TOOBIG] Literal too large.\r\n");
        return LiteralVerdict::Refuse(text.into_bytes());
    }
    LiteralVerdict::Accept
}

fn keeps(cap: &str) -> bool {
    let upper = cap.to_ascii_uppercase();
    KEPT_CAPABILITIES.contains(&upper.as_str())
        || KEPT_PREFIXES.iter().any(|p| upper.starts_with(p))
}

fn enable_keeps_read_only(c: &CapabilityEnable<'_>) -> bool {
    match c {
        CapabilityEnable::CondStore | CapabilityEnable::Utf8(_) => true,
        CapabilityEnable::Metadata | CapabilityEnable::MetadataServer => false,
        other => {
            ["QRESYNC", "IMAP4REV2"].contains(&other.to_string().to_ascii_uppercase().as_str())
        }
    }
}

/// Body items as their `.PEEK` forms, so that reading sets no `\Seen`.
fn peek(item: &mut MessageDataItemName<'_>) {
    match item {
        MessageDataItemName::BodyExt { peek, .. } | MessageDataItemName::Binary { peek, .. } => {
            *peek = true
        }
        MessageDataItemName::Rfc822 => {
            *item = MessageDataItemName::BodyExt {
                section: None,
                partial: None,
                peek: true,
            }
        }
        MessageDataItemName::Rfc822Text => {
            *item = MessageDataItemName::BodyExt {
                section: Some(Section::Text(None)),
                partial: None,
                peek: true,
            }
        }
        _ => {}
    }
}

/// The command as bytes for the backend. Synchronizing literals become
/// non-synchronizing (`{n+}`, RFC 7888): ponte already invited them from
/// the client, and the backend's own `+` must not reach the client.
fn encode(cmd: &Command<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    for fragment in CommandCodec::default().encode(cmd) {
        match fragment {
            Fragment::Line { data } => out.extend_from_slice(&data),
            Fragment::Literal { data, mode } => {
                if mode == LiteralMode::Sync && out.ends_with(b"}\r\n") {
                    let at = out.len() - 3;
                    out.insert(at, b'+');
                }
                out.extend_from_slice(&data);
            }
        }
    }
    out
}

fn no_perm(tag: &str, name: &str) -> Vec<u8> {
    let what = if name.is_empty() {
        "This command"
    } else {
        name
    };
    format!("{tag} NO [NOPERM] Read-only view of the old mailbox: {what} is not allowed.\r\n")
        .into_bytes()
}

/// The tag and command name (after `UID`) at the start of a command line,
/// upper case, for a command imap-codec cannot parse yet (incomplete, or
/// unknown). Only used to choose between refusing and waiting; what is let
/// through is always parsed in full first.
fn command_words(line: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(&line[..line.len().min(200)]);
    let mut words = text.split([' ', '\r', '\n']).filter(|w| !w.is_empty());
    let tag = words.next().unwrap_or("*").to_string();
    let mut name = words.next().unwrap_or("").to_ascii_uppercase();
    if name == "UID" {
        name = words.next().unwrap_or("").to_ascii_uppercase();
    }
    // Only atom characters go back to the client (RFC 9051 `tag`, `atom`):
    // no control bytes or escapes reflected into a response line.
    let tag = if !tag.is_empty()
        && tag
            .chars()
            .all(|c| c.is_ascii_graphic() && !"+{()%*\\\"".contains(c))
    {
        tag
    } else {
        "*".into()
    };
    let name = if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        name
    } else {
        String::new()
    };
    (tag, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::imap::framer::Frame;

    fn caps() -> Vec<String> {
        "IMAP4rev1 LITERAL+ IDLE MOVE UIDPLUS COMPRESS=DEFLATE THREAD=REFS CONDSTORE METADATA X-GM-EXT-1"
            .split(' ')
            .map(String::from)
            .collect()
    }

    /// Runs one client byte stream through the filter, as the session
    /// does: what goes to the backend and what the client is told.
    fn run(input: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut filter = Filter::new(&caps());
        let mut framer = Framer::streaming(4096);
        framer.push(input);
        let (mut backend, mut client) = (Vec::new(), Vec::new());
        while let Some(frame) = framer.next_frame() {
            match frame {
                Frame::Literal { mode, length } => {
                    match filter.on_literal(framer.message(), mode, length, 4096) {
                        LiteralVerdict::Accept if mode == LiteralMode::Sync => {
                            client.extend_from_slice(b"+ Ready\r\n")
                        }
                        LiteralVerdict::Accept => {}
                        LiteralVerdict::Refuse(reply) => {
                            client.extend_from_slice(&reply);
                            if mode == LiteralMode::Sync {
                                framer.skip_message();
                            }
                        }
                    }
                }
                Frame::Message => match filter.judge(&framer) {
                    Verdict::Forward(b) => backend.extend_from_slice(&b),
                    Verdict::Reply(r) => client.extend_from_slice(&r),
                    Verdict::Drop => {}
                },
            }
        }
        (backend, client)
    }

    #[test]
    fn reads_pass_rewritten_and_writes_are_refused() {
        let (backend, client) = run(b"a select INBOX\r\nb UID FETCH 1:* (FLAGS BODY[] RFC822 rfc822.text BINARY[1])\r\nc store 1 +FLAGS (\\Seen)\r\nd UID MOVE 1 Trash\r\ne XLIST \"\" *\r\nf CAPABILITY\r\n");
        let backend = String::from_utf8(backend).unwrap();
        assert_eq!(
            backend,
            "a EXAMINE INBOX\r\nb UID FETCH 1:* (FLAGS BODY.PEEK[] BODY.PEEK[] BODY.PEEK[TEXT] BINARY.PEEK[1])\r\n"
        );
        let client = String::from_utf8(client).unwrap();
        assert!(
            client.contains("c NO [NOPERM]") && client.contains("STORE"),
            "{client}"
        );
        assert!(
            client.contains("d NO [NOPERM]") && client.contains("e NO [NOPERM]"),
            "{client}"
        );
        assert!(
            client.contains("* CAPABILITY IMAP4rev1 LITERAL+ IDLE THREAD=REFS CONDSTORE\r\nf OK"),
            "{client}"
        );
    }

    #[test]
    fn a_refused_append_never_invites_or_runs_its_literal() {
        let (backend, client) =
            run(b"a APPEND INBOX {11}\r\nb APPEND INBOX {5+}\r\nhello\r\nc NOOP\r\n");
        assert_eq!(backend, b"c NOOP\r\n");
        let client = String::from_utf8(client).unwrap();
        assert!(client.starts_with("a NO [NOPERM]"), "{client}");
        assert!(
            !client.contains('+'),
            "no continuation for a refused literal: {client}"
        );
        assert_eq!(
            client.matches("NO [NOPERM]").count(),
            2,
            "one answer per refused command: {client}"
        );
    }

    #[test]
    fn literals_of_allowed_commands_go_on_as_non_synchronizing() {
        // A string with a line break can only be sent as a literal.
        let (backend, client) = run(b"a SEARCH BODY {4}\r\nx\r\ny\r\n");
        assert_eq!(client, b"+ Ready\r\n");
        assert_eq!(
            String::from_utf8(backend).unwrap(),
            "a SEARCH BODY {4+}\r\nx\r\ny\r\n"
        );
    }

    #[test]
    fn idle_then_done_and_enable() {
        let (backend, client) =
            run(b"a IDLE\r\nDONE\r\nb ENABLE CONDSTORE\r\nc ENABLE X-WRITE\r\n");
        assert_eq!(backend, b"a IDLE\r\nDONE\r\nb ENABLE CONDSTORE\r\n");
        assert!(String::from_utf8(client)
            .unwrap()
            .starts_with("c NO [NOPERM]"));
    }
}
