//! The byte streams the micro-benchmarks feed through ponte's parsers:
//! built once, before anything is timed, deterministic (no randomness), so
//! every run measures the same bytes.

/// A client or server byte stream and how many complete messages it holds.
pub struct Stream {
    pub bytes: Vec<u8>,
    /// Complete IMAP messages (commands or responses), or SMTP replies.
    pub messages: u64,
}

/// `len` bytes of base64-looking text in 76-character CRLF lines, as a
/// message body in a literal looks.
pub fn body(len: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(len);
    let mut x: u32 = 0x9e37_79b9;
    while out.len() < len {
        if out.len() % 78 == 76 {
            out.extend_from_slice(b"\r\n");
            continue;
        }
        // xorshift32: cheap, fixed sequence.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(ALPHABET[(x % 64) as usize]);
    }
    out.truncate(len);
    out
}

/// The header fields Thunderbird asks for when it lists a folder.
const TB_HEADERS: &str = "From To Cc Bcc Subject Date Message-ID Priority X-Priority \
    References Newsgroups In-Reply-To Content-Type Reply-To";

/// `n` UIDs `first, first+2, …` as a comma-separated set (a selection of
/// scattered messages, as a client sends after a search or a sort).
fn uid_set(first: u32, n: u32) -> String {
    (0..n)
        .map(|i| (first + 2 * i).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A client's command stream: 2,000 commands of the kinds a mail client
/// sends all day (UID FETCH of headers and bodies, FETCH FLAGS, SEARCH,
/// STORE, NOOP, SELECT, STATUS), a SEARCH with a small non-synchronizing
/// literal every 100 commands, and one APPEND with a 1 MiB literal.
pub fn client_mixed() -> Stream {
    let mut bytes = Vec::new();
    let mut messages = 0;
    for i in 0..2000u32 {
        let u = 4000 + i * 7;
        let line = match i % 8 {
            0 => format!("a{i} UID FETCH {u}:{} (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS ({TB_HEADERS})])\r\n", u + 49),
            1 => format!("a{i} UID FETCH {u} (UID RFC822.SIZE BODY.PEEK[])\r\n"),
            2 => format!("a{i} FETCH {} (FLAGS)\r\n", i + 1),
            3 => format!("a{i} UID SEARCH UNDELETED SINCE 1-Jan-2025 FROM \"alice@example.org\"\r\n"),
            4 => format!("a{i} UID STORE {u} +FLAGS.SILENT (\\Seen)\r\n"),
            5 => format!("a{i} NOOP\r\n"),
            6 => format!("a{i} SELECT \"INBOX\"\r\n"),
            _ => format!("a{i} STATUS \"Sent\" (MESSAGES UNSEEN UIDNEXT)\r\n"),
        };
        bytes.extend_from_slice(line.as_bytes());
        messages += 1;
        if i % 100 == 50 {
            bytes.extend_from_slice(
                format!("s{i} UID SEARCH CHARSET UTF-8 SUBJECT {{5+}}\r\nCaf\u{e9}\r\n").as_bytes(),
            );
            messages += 1;
        }
        if i == 1000 {
            let mail = body(1 << 20);
            let line = format!("p{i} APPEND \"Sent\" (\\Seen) {{{}}}\r\n", mail.len());
            bytes.extend_from_slice(line.as_bytes());
            bytes.extend_from_slice(&mail);
            bytes.extend_from_slice(b"\r\n");
            messages += 1;
        }
    }
    Stream { bytes, messages }
}

/// The header block of message `i` (about 400 bytes), as a server sends
/// it for `BODY[HEADER.FIELDS (…)]`.
fn headers(i: u32) -> String {
    format!(
        "From: Alice Example <alice@example.org>\r\n\
         To: Bob Example <bob@pec.example>, team@pec.example\r\n\
         Subject: Re: quarterly report, draft {i}\r\n\
         Date: Tue, 4 Mar 2025 10:{:02}:00 +0100\r\n\
         Message-ID: <{i}.{}@mail.example.org>\r\n\
         References: <{}.1@mail.example.org>\r\n\
         Content-Type: multipart/alternative; boundary=\"b{i}\"\r\n\r\n",
        i % 60,
        u64::from(i) * 7919,
        i.saturating_sub(1)
    )
}

/// A backend's response stream to a client listing and reading a folder:
/// 2,000 untagged FETCH responses (three in four with a header literal,
/// the others flags only), a tagged OK after every 50, and, with
/// `big_literal`, one FETCH of a 10 MiB message and its tagged OK.
pub fn server(big_literal: bool) -> Stream {
    let mut bytes = Vec::new();
    let mut messages = 0;
    for i in 1..=2000u32 {
        let uid = 9000 + i;
        if i % 4 == 0 {
            bytes.extend_from_slice(
                format!("* {i} FETCH (UID {uid} FLAGS (\\Seen))\r\n").as_bytes(),
            );
        } else {
            let h = headers(i);
            let line = format!(
                "* {i} FETCH (UID {uid} RFC822.SIZE {} FLAGS (\\Seen) BODY[HEADER.FIELDS (FROM TO CC SUBJECT DATE MESSAGE-ID REFERENCES CONTENT-TYPE)] {{{}}}\r\n",
                20_000 + i * 13,
                h.len()
            );
            bytes.extend_from_slice(line.as_bytes());
            bytes.extend_from_slice(h.as_bytes());
            bytes.extend_from_slice(b")\r\n");
        }
        messages += 1;
        if i % 50 == 0 {
            let tag = i / 50;
            bytes.extend_from_slice(
                format!("a{tag} OK Fetch completed (0.002 + 0.000 + 0.001 secs).\r\n").as_bytes(),
            );
            messages += 1;
        }
    }
    if big_literal {
        let mail = body(10 << 20);
        bytes.extend_from_slice(
            format!("* 2001 FETCH (UID 11001 BODY[] {{{}}}\r\n", mail.len()).as_bytes(),
        );
        bytes.extend_from_slice(&mail);
        bytes.extend_from_slice(b")\r\nb1 OK Fetch completed (0.010 + 0.000 + 0.009 secs).\r\n");
        messages += 2;
    }
    Stream { bytes, messages }
}

/// One command of a read session and what the read-only filter must do
/// with it.
pub struct SessionCommand {
    pub bytes: Vec<u8>,
    pub expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Forwarded as it is (re-encoded).
    Forward,
    /// Forwarded, rewritten (SELECT → EXAMINE, BODY[] → BODY.PEEK[]).
    Rewritten,
    /// Answered by the filter (CAPABILITY, or refused).
    Reply,
}

/// A Thunderbird-like session on the read-only view, one command per read
/// (a client waits for each answer): the opening (CAPABILITY, ID,
/// NAMESPACE, ENABLE, LIST, LSUB), then `rounds` times: SELECT, flag
/// resync, header listing with BODY.PEEK, a message body with BODY.PEEK[]
/// and one with FETCH BODY[] (goes out as BODY.PEEK[]), a STORE \Seen
/// (refused), SEARCH, STATUS of another folder, EXAMINE of it, NOOP,
/// IDLE/DONE; LOGOUT at the end.
pub fn read_session(rounds: u32) -> Vec<SessionCommand> {
    use Expect::*;
    let mut cmds = Vec::new();
    let mut n = 0u32;
    let mut push = |text: String, expect: Expect| {
        n += 1;
        let tagged = if text == "DONE" {
            "DONE\r\n".to_string()
        } else {
            format!("{n} {text}\r\n")
        };
        cmds.push(SessionCommand {
            bytes: tagged.into_bytes(),
            expect,
        });
    };
    push("capability".into(), Reply);
    push(
        "ID (\"name\" \"Thunderbird\" \"version\" \"128.5.2\")".into(),
        Forward,
    );
    push("NAMESPACE".into(), Forward);
    push("ENABLE CONDSTORE".into(), Forward);
    push("LIST \"\" \"*\"".into(), Forward);
    push("LSUB \"\" \"*\"".into(), Forward);
    for r in 0..rounds {
        let u = 4000 + r * 50;
        push("select \"INBOX\" (CONDSTORE)".into(), Rewritten);
        push("UID FETCH 1:* (FLAGS)".into(), Forward);
        push(
            format!(
                "UID FETCH {u}:{} (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS ({TB_HEADERS})])",
                u + 49
            ),
            Forward,
        );
        push(
            format!("UID FETCH {u} (UID RFC822.SIZE BODY.PEEK[])"),
            Forward,
        );
        push(format!("FETCH {} BODY[]", r + 1), Rewritten);
        push(format!("UID STORE {u} +FLAGS (\\Seen)"), Reply);
        push(
            "UID SEARCH UNDELETED SINCE 1-Jan-2025 FROM \"alice@example.org\"".into(),
            Forward,
        );
        push(
            "STATUS \"Sent\" (UIDNEXT MESSAGES UNSEEN RECENT)".into(),
            Forward,
        );
        push("EXAMINE \"Sent\"".into(), Forward);
        push("NOOP".into(), Forward);
        push("IDLE".into(), Forward);
        push("DONE".into(), Forward);
    }
    push("LOGOUT".into(), Forward);
    cmds
}

/// Pipelined commands without literals, about `target` bytes: FETCH FLAGS
/// of long scattered UID sets (~2 KB lines), header listings, SEARCH over
/// a UID set, a STORE of a UID set (refused) and NOOPs.
pub fn literal_free(target: usize) -> Stream {
    let mut bytes = Vec::new();
    let mut messages = 0;
    let mut i = 0u32;
    while bytes.len() < target {
        let u = 1000 + (i % 500) * 3;
        let line = match i % 5 {
            0 => format!("t{i} UID FETCH {} (FLAGS)\r\n", uid_set(u, 300)),
            1 => format!(
                "t{i} UID FETCH {u}:{} (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS ({TB_HEADERS})])\r\n",
                u + 99
            ),
            2 => format!("t{i} UID SEARCH UID {} UNDELETED\r\n", uid_set(u, 100)),
            3 => format!("t{i} UID STORE {} +FLAGS (\\Seen)\r\n", uid_set(u, 100)),
            _ => format!("t{i} NOOP\r\n"),
        };
        bytes.extend_from_slice(line.as_bytes());
        messages += 1;
        i += 1;
    }
    Stream { bytes, messages }
}

/// What an SMTP server answers over `sessions` submission sessions of 5
/// messages each: the greeting, an 11-line EHLO reply, AUTH, then MAIL,
/// RCPT, `354`, `250 queued` per message, and `221`.
pub fn smtp_replies(sessions: u32) -> Stream {
    let mut bytes = Vec::new();
    let mut messages = 0;
    for s in 0..sessions {
        let mut reply = |text: &str| {
            bytes.extend_from_slice(text.as_bytes());
            messages += 1;
        };
        reply("220 mx.new.example ESMTP Postfix (Debian/GNU)\r\n");
        reply(
            "250-mx.new.example\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-VRFY\r\n\
             250-ETRN\r\n250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n\
             250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
        );
        reply("235 2.7.0 Authentication successful\r\n");
        for m in 0..5 {
            reply("250 2.1.0 Ok\r\n");
            reply("250 2.1.5 Ok\r\n");
            reply("354 End data with <CR><LF>.<CR><LF>\r\n");
            reply(&format!("250 2.0.0 Ok: queued as 4Xb{s:05}Q{m}z\r\n"));
        }
        reply("221 2.0.0 Bye\r\n");
    }
    Stream { bytes, messages }
}

/// `x UID FETCH <n UIDs> (FLAGS)`, the UIDs 10001, 10003, …: one long
/// sequence set of single numbers, none adjacent to another.
pub fn uid_fetch(n: u32) -> Vec<u8> {
    format!("x UID FETCH {} (FLAGS)\r\n", uid_set(10_001, n)).into_bytes()
}
