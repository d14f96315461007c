//! The read-only view end to end: the `tempmail` listener (and a live
//! login in blackout) in front of a real legacy Dovecot, driven by raw
//! sockets and a real client (mbsync). Every write is refused with a
//! tagged `NO [NOPERM]`, reads that would set `\Seen` go out as `.PEEK`,
//! and the legacy store is byte-identical afterwards (message files and
//! the flags in their names: [`common::dovecot::Dovecot::store_digest`]).

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::Api;
use common::net::{literal_len, LineConn};
use common::world::{marker, User, World, ALICE, BOB, DAVE};
use serde_json::json;

type Conn = LineConn<TcpStream>;

/// A MIME message with two parts, so that `BINARY[1]` means something.
const MULTIPART: &str = "From: sender@example.org\r\n\
To: alice@pec.example\r\n\
Subject: two parts\r\n\
Message-ID: <multipart.1@example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
cHJpbWEgcGFydGUsIMOoIHZlcm8K\r\n\
--b1\r\n\
Content-Type: application/octet-stream\r\n\
\r\n\
second part\r\n\
--b1--\r\n";

fn message(n: usize, to: &str) -> String {
    format!(
        "From: sender{n}@example.org\r\nTo: {to}\r\nSubject: message {n}\r\n\
         Message-ID: <m{n}.{to}>\r\nDate: Mon, 1 Jan 2024 10:00:0{} +0100\r\n\r\n\
         body of message {n}\r\nwith a second line\r\n",
        n % 10
    )
}

/// Connects to `listener`, reads the greeting and logs in; panics unless OK.
fn login_on(w: &World, listener: &str, user: &str, pw: &str) -> (Conn, common::net::Tagged) {
    let mut c = LineConn::tcp(w.addr(listener));
    let greeting = c.read_line();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let r = c.imap(
        "a",
        &format!("LOGIN \"{user}\" \"{}\"", pw.replace('"', "\\\"")),
    );
    assert!(r.is_ok(), "login {user} on {listener}: {}", r.status);
    (c, r)
}

fn tempmail(w: &World, user: &User) -> Conn {
    let (c, r) = login_on(w, "tempmail", user.address, user.legacy_password.unwrap());
    assert!(r.status.contains("read-only"), "{}", r.status);
    c
}

/// One server response: its first line (without CRLF) and everything
/// it carried, literals included.
struct Resp {
    first: String,
    raw: Vec<u8>,
}

impl Resp {
    fn tag(&self) -> &str {
        self.first.split(' ').next().unwrap_or("")
    }
    /// The status after the tag (`NO [NOPERM] …`).
    fn status(&self) -> &str {
        self.first.split_once(' ').map_or("", |(_, s)| s)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// Reads whole responses (a line, its literals and the line's rest after
/// each literal) until one tagged `last`. Every read is bounded.
fn responses_until(c: &mut Conn, last: &str) -> Vec<Resp> {
    let mut out = Vec::new();
    loop {
        let mut raw = Vec::new();
        let first = c.try_read_raw_line().unwrap_or_else(|e| {
            panic!(
                "waiting for {last:?} after {:?}: {e}",
                out.iter()
                    .map(|r: &Resp| r.first.clone())
                    .collect::<Vec<_>>()
            )
        });
        let mut line = first.clone();
        loop {
            raw.extend_from_slice(&line);
            match literal_len(&line) {
                Some(n) => {
                    raw.extend(c.read_exact(n));
                    line = c
                        .try_read_raw_line()
                        .expect("rest of the line after a literal");
                }
                None => break,
            }
        }
        let first = String::from_utf8_lossy(&first)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        let done = first.starts_with(&format!("{last} "));
        out.push(Resp { first, raw });
        if done {
            return out;
        }
    }
}

/// The tagged responses among `resps`, by tag (each tag should have one).
fn tagged(resps: &[Resp]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in resps {
        if r.tag() != "*" && r.tag() != "+" {
            map.entry(r.tag().to_string())
                .or_default()
                .push(r.status().to_string());
        }
    }
    map
}

/// Sends `tag command` and returns every response up to its tagged one;
/// asserts that no other tagged response (a stray completion of an
/// earlier command) came first.
fn run(c: &mut Conn, tag: &str, command: &str) -> Vec<Resp> {
    c.send(&format!("{tag} {command}"));
    let resps = responses_until(c, tag);
    let strays: Vec<&str> = resps[..resps.len() - 1]
        .iter()
        .filter(|r| r.tag() != "*")
        .map(|r| r.first.as_str())
        .collect();
    assert!(
        strays.is_empty(),
        "responses to other commands before {tag} {command}: {strays:?}"
    );
    resps
}

fn status_of(resps: &[Resp]) -> &str {
    resps.last().expect("a tagged response").status()
}

fn assert_noperm(resps: &[Resp], what: &str) {
    let status = status_of(resps);
    assert!(
        status.starts_with("NO [NOPERM]"),
        "{what}: expected NO [NOPERM], got {status:?}"
    );
}

fn assert_ok(resps: &[Resp], what: &str) {
    let status = status_of(resps);
    assert!(status.starts_with("OK"), "{what}: {status:?}");
}

/// The session is still in step: a NOOP gets its own OK and nothing else
/// tagged comes with it.
fn noop(c: &mut Conn, tag: &str) {
    assert_ok(&run(c, tag, "NOOP"), "NOOP after a batch");
}

/// The legacy fixture for the write tests: extra INBOX messages (one
/// multipart, one already `\Deleted` so that an EXPUNGE or CLOSE that got
/// through would remove it) and an `Archive` folder to copy or move to.
fn fill_legacy(w: &World, user: &str) {
    w.legacy.deliver(user, "INBOX", message(1, user).as_bytes());
    w.legacy.deliver(user, "INBOX", MULTIPART.as_bytes());
    w.legacy
        .deliver_flagged(user, "INBOX", message(2, user).as_bytes(), "T");
    w.legacy
        .deliver(user, "Archive", message(3, user).as_bytes());
}

/// Write commands (and commands that would widen the session) a client
/// may try; none may reach the backend.
const WRITES: &[&str] = &[
    "STORE 1 +FLAGS (\\Seen)",
    "STORE 1:* +FLAGS.SILENT (\\Deleted)",
    "STORE 4 -FLAGS (\\Deleted)",
    "STORE 1 FLAGS (\\Flagged \\Answered)",
    "UID STORE 1:* +FLAGS (\\Seen \\Deleted)",
    "UID STORE 1 (UNCHANGEDSINCE 1) +FLAGS (\\Deleted)",
    "COPY 1:* Archive",
    "UID COPY 1:* Archive",
    "MOVE 1 Archive",
    "UID MOVE 1:* Archive",
    "EXPUNGE",
    "UID EXPUNGE 1:*",
    "CREATE NewFolder",
    "CREATE Archive/2024",
    "DELETE Archive",
    "RENAME Archive Old",
    "RENAME INBOX Old",
    "SUBSCRIBE Archive",
    "UNSUBSCRIBE INBOX",
    "SETACL INBOX bob@pec.example lrswipkxtecda",
    "DELETEACL INBOX alice@pec.example",
    "SETMETADATA INBOX (/private/comment \"hello\")",
    "SETQUOTA \"\" (STORAGE 1)",
    "COMPRESS DEFLATE",
    "ENABLE METADATA",
    "XFROBNICATE 1 2 3",
    "XLIST \"\" \"*\"",
    "X-GM-LABELS 1 +(\\Important)",
    "UID STORE 1 +X-GM-LABELS (\\Important)",
    "XAPPLEPUSHSERVICE aps-version 2",
    "LOGIN alice@pec.example alice-legacy-pw",
    "AUTHENTICATE PLAIN",
    "STARTTLS",
];

/// The same commands in mixed case.
const WRITES_MIXED_CASE: &[&str] = &[
    "sToRe 1 +flags (\\Seen)",
    "uid Store 1:* +Flags.Silent (\\Deleted)",
    "cOpY 1 Archive",
    "Uid mOvE 1 Archive",
    "expunge",
    "uId ExPuNgE 1:*",
    "create newfolder",
    "DeLeTe Archive",
    "rename Archive old",
    "subscribe Archive",
    "UnSubscribe INBOX",
    "setacl INBOX bob lr",
    "SetMetadata INBOX (/private/comment \"x\")",
    "compress deflate",
    "xlist \"\" *",
];

/// Reads that set `\Seen` on a selected (read-write) mailbox.
const SEEN_SETTING_READS: &[&str] = &[
    "FETCH 1 BODY[]",
    "FETCH 2 RFC822",
    "FETCH 3 RFC822.TEXT",
    "FETCH 3 BINARY[1]",
    "FETCH 3 (BODY[1] BODY[HEADER] BODY[TEXT]<0.10>)",
    "UID FETCH 1:* (FLAGS BODY[])",
    "fetch 1:* (rfc822 binary[1] body[text])",
];

/// UID → flags of every message in the selected mailbox.
fn flags(c: &mut Conn, tag: &str) -> BTreeMap<u32, String> {
    let resps = run(c, tag, "UID FETCH 1:* (UID FLAGS)");
    assert_ok(&resps, "UID FETCH FLAGS");
    let mut out = BTreeMap::new();
    for r in &resps[..resps.len() - 1] {
        let t = &r.first;
        let Some(uid) = t
            .split("UID ")
            .nth(1)
            .and_then(|s| s.split([' ', ')']).next())
            .and_then(|s| s.parse().ok())
        else {
            continue;
        };
        let flags = t
            .split("FLAGS (")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .unwrap_or("")
            .to_string();
        out.insert(uid, flags);
    }
    out
}

/// No message but the one delivered `\Deleted` (the 4th) has `\Deleted`;
/// none has `\Seen`.
fn assert_flags_as_delivered(c: &mut Conn, tag: &str) {
    let f = flags(c, tag);
    assert_eq!(f.len(), 4, "{f:?}");
    for (uid, flags) in &f {
        assert!(!flags.contains("\\Seen"), "uid {uid} got \\Seen: {f:?}");
        assert_eq!(
            flags.contains("\\Deleted"),
            *uid == 4,
            "uid {uid} flags {flags:?}: {f:?}"
        );
        assert!(!flags.contains("\\Flagged"), "{f:?}");
    }
}

fn list_folders(c: &mut Conn, tag: &str, command: &str) -> Vec<String> {
    let resps = run(c, tag, command);
    assert_ok(&resps, command);
    let mut v: Vec<String> = resps[..resps.len() - 1]
        .iter()
        .map(|r| r.first.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn every_write_alone_is_refused_and_the_store_is_untouched() {
    let w = World::start();
    let user = ALICE.address;
    fill_legacy(&w, user);
    let before = w.legacy.store_digest(user);
    let mut c = tempmail(&w, &ALICE);
    let subscribed = list_folders(&mut c, "l1", "LSUB \"\" \"*\"");
    let all = list_folders(&mut c, "l2", "LIST \"\" \"*\"");

    // Authenticated state (nothing selected) and selected state.
    for (phase, select) in [("auth", false), ("selected", true)] {
        if select {
            let r = run(&mut c, "s", "SELECT INBOX");
            assert_ok(&r, "SELECT");
            assert!(status_of(&r).contains("[READ-ONLY]"), "{}", status_of(&r));
        }
        for (i, cmd) in WRITES.iter().chain(WRITES_MIXED_CASE).enumerate() {
            let tag = format!("{phase}{i}");
            assert_noperm(&run(&mut c, &tag, cmd), cmd);
        }
        noop(&mut c, &format!("{phase}-noop"));
    }

    // APPEND with a synchronizing literal: refused instead of invited
    // (no `+`), so the client never sends the message.
    for (i, args) in [
        "INBOX",
        "INBOX (\\Seen)",
        "Archive (\\Seen \\Flagged) \"01-Jan-2024 10:00:00 +0100\"",
    ]
    .iter()
    .enumerate()
    {
        let msg = message(10 + i, user);
        let tag = format!("ap{i}");
        c.send(&format!("{tag} APPEND {args} {{{}}}", msg.len()));
        let line = c.read_line();
        assert!(
            line.starts_with(&format!("{tag} NO [NOPERM]")),
            "sync APPEND {args}: {line:?}"
        );
        noop(&mut c, &format!("ap{i}-noop"));
    }

    // Reads with literals are invited and go on; a read whose literal is
    // over the limit is refused without an invitation.
    c.send("li EXAMINE {7}");
    assert!(c.read_line().starts_with('+'), "literal of a read invited");
    c.send("Archive");
    let r = responses_until(&mut c, "li");
    assert!(status_of(&r).contains("[READ-ONLY]"), "{}", status_of(&r));
    c.send("lb SEARCH BODY {1000000}");
    let line = c.read_line();
    assert!(line.starts_with("lb NO [TOOBIG]"), "{line}");
    noop(&mut c, "lb-noop");
    let r = run(&mut c, "s2", "SELECT INBOX");
    assert!(status_of(&r).contains("[READ-ONLY]"), "{}", status_of(&r));

    // Reads that would set \Seen on a read-write mailbox: they work, and
    // set nothing.
    for (i, cmd) in SEEN_SETTING_READS.iter().enumerate() {
        let r = run(&mut c, &format!("r{i}"), cmd);
        assert_ok(&r, cmd);
        assert!(
            !r.iter().any(|x| x.text().contains("\\Seen")),
            "{cmd} reported \\Seen: {:?}",
            r.iter().map(|x| x.first.clone()).collect::<Vec<_>>()
        );
    }
    let body = run(&mut c, "rb", "FETCH 3 BINARY[1]");
    assert!(
        body[0].text().contains("prima parte, è vero"),
        "BINARY[1] decodes the part: {:?}",
        body[0].text()
    );
    let body = run(&mut c, "rc", "FETCH 1 RFC822");
    assert!(
        body[0].text().contains(&marker("legacy", user)),
        "{:?}",
        body[0].text()
    );

    // CLOSE on the (really EXAMINEd) INBOX expunges nothing.
    assert_ok(&run(&mut c, "cl", "CLOSE"), "CLOSE");
    assert_ok(&run(&mut c, "ex", "EXAMINE INBOX"), "EXAMINE");
    assert_flags_as_delivered(&mut c, "fl");
    assert_eq!(subscribed, list_folders(&mut c, "l3", "LSUB \"\" \"*\""));
    assert_eq!(all, list_folders(&mut c, "l4", "LIST \"\" \"*\""));
    assert_ok(&run(&mut c, "z", "LOGOUT"), "LOGOUT");
    assert_eq!(before, w.legacy.store_digest(user), "legacy store changed");
}

#[test]
fn pipelined_writes_in_one_packet_each_get_one_noperm() {
    let w = World::start();
    let user = ALICE.address;
    fill_legacy(&w, user);
    let before = w.legacy.store_digest(user);
    let mut c = tempmail(&w, &ALICE);
    let mut batch = String::from("s SELECT INBOX\r\n");
    let mut tags = Vec::new();
    for (i, cmd) in WRITES.iter().chain(WRITES_MIXED_CASE).enumerate() {
        // AUTHENTICATE would start an exchange and STARTTLS a handshake if
        // they were let through; alone they are covered above.
        if cmd.starts_with("AUTHENTICATE") || cmd.starts_with("STARTTLS") {
            continue;
        }
        let tag = format!("p{i}");
        batch.push_str(&format!("{tag} {cmd}\r\n"));
        tags.push(tag);
        // Reads in between, so that replies of both kinds interleave.
        if i % 5 == 0 {
            batch.push_str(&format!("q{i} FETCH 1:* (FLAGS BODY[HEADER])\r\n"));
        }
    }
    batch.push_str("z NOOP\r\n");
    c.send_raw(batch.as_bytes());
    let resps = responses_until(&mut c, "z");
    let by_tag = tagged(&resps);
    assert!(by_tag["s"][0].contains("[READ-ONLY]"), "{by_tag:?}");
    for tag in &tags {
        let got = by_tag.get(tag).cloned().unwrap_or_default();
        assert_eq!(got.len(), 1, "{tag}: one tagged reply: {got:?}");
        assert!(got[0].starts_with("NO [NOPERM]"), "{tag}: {got:?}");
    }
    for (tag, got) in &by_tag {
        if tag.starts_with('q') {
            assert_eq!(got.len(), 1, "{tag}: {got:?}");
            assert!(got[0].starts_with("OK"), "{tag}: {got:?}");
        }
    }
    assert!(
        !resps
            .iter()
            .any(|r| r.first.contains(" FETCH ") && r.text().contains("\\Seen")),
        "a FETCH reported \\Seen"
    );
    noop(&mut c, "n");
    assert_flags_as_delivered(&mut c, "fl");
    assert_eq!(before, w.legacy.store_digest(user), "legacy store changed");
}

#[test]
fn commands_pipelined_behind_the_login_are_filtered_too() {
    let w = World::start();
    let user = ALICE.address;
    fill_legacy(&w, user);
    let before = w.legacy.store_digest(user);
    let mut c = LineConn::tcp(w.addr("tempmail"));
    c.read_line();
    c.send_raw(
        format!(
            "a LOGIN {user} {}\r\nb SELECT INBOX\r\nc STORE 1:* +FLAGS (\\Deleted)\r\n\
             d EXPUNGE\r\ne FETCH 1 BODY[]\r\nf COPY 1 Archive\r\ng NOOP\r\n",
            ALICE.legacy_password.unwrap()
        )
        .as_bytes(),
    );
    let by_tag = tagged(&responses_until(&mut c, "g"));
    assert!(by_tag["a"][0].starts_with("OK"), "{by_tag:?}");
    assert!(by_tag["b"][0].contains("[READ-ONLY]"), "{by_tag:?}");
    for t in ["c", "d", "f"] {
        assert_eq!(by_tag[t].len(), 1, "{by_tag:?}");
        assert!(by_tag[t][0].starts_with("NO [NOPERM]"), "{by_tag:?}");
    }
    assert!(by_tag["e"][0].starts_with("OK"), "{by_tag:?}");
    assert_flags_as_delivered(&mut c, "fl");
    assert_eq!(before, w.legacy.store_digest(user));
}

/// Commands with non-synchronizing literals (RFC 7888) that the view
/// refuses: APPENDs alone, with flags and date, with several literals
/// (MULTIAPPEND), one of about 1 MB whose contents look like commands,
/// and a read command whose literal is over the size limit. `tag` is
/// each command's tag prefix.
fn refused_non_sync(tag: &str, user: &str) -> Vec<(&'static str, Vec<u8>)> {
    let small = message(20, user);
    let mut big = String::new();
    let mut n = 0;
    while big.len() < 1024 * 1024 {
        big.push_str(&format!(
            "x{n} STORE 1:* +FLAGS (\\Deleted)\r\ny{n} EXPUNGE\r\nz{n} CREATE Evil{n}\r\n"
        ));
        n += 1;
    }
    let inner = "DONE\r\nq LOGOUT\r\n";
    let (s, b, i) = (small.len(), big.len(), inner.len());
    let over = "w1 UID STORE 1:* +FLAGS (\\Deleted)\r\n".repeat(2000);
    let o = over.len();
    [
        ("small", format!("{tag}1 APPEND INBOX {{{s}+}}\r\n{small}\r\n")),
        (
            "flags and date",
            format!(
                "{tag}2 APPEND INBOX (\\Seen) \"01-Jan-2024 10:00:00 +0100\" {{{s}+}}\r\n{small}\r\n"
            ),
        ),
        (
            "multiappend",
            format!("{tag}3 APPEND INBOX {{{s}+}}\r\n{small} Archive {{{i}+}}\r\n{inner}\r\n"),
        ),
        ("1 MB", format!("{tag}4 APPEND INBOX {{{b}+}}\r\n{big}\r\n")),
        (
            "read command, literal over the limit",
            format!("{tag}5 SEARCH BODY {{{o}+}}\r\n{over}\r\n"),
        ),
    ]
    .into_iter()
    .map(|(what, text)| (what, text.into_bytes()))
    .collect()
}

/// The refused non-synchronizing literals are dropped as they arrive,
/// never parsed as commands (no reply to any tag inside them), each
/// refused command gets one completion, the session stays usable and
/// the store unchanged.
#[test]
fn non_synchronizing_literals_of_refused_commands_are_dropped() {
    let w = World::start();
    let user = ALICE.address;
    fill_legacy(&w, user);
    let before = w.legacy.store_digest(user);
    let mut c = tempmail(&w, &ALICE);
    assert_ok(&run(&mut c, "s", "SELECT INBOX"), "SELECT");
    let check = |by_tag: &BTreeMap<String, Vec<String>>, prefix: &str| {
        for (tag, got) in by_tag {
            if tag.starts_with('r') || tag.ends_with("noop") || tag == "zz" {
                assert!(got.iter().all(|g| g.starts_with("OK")), "{tag}: {by_tag:?}");
            } else {
                assert!(
                    tag.starts_with(prefix),
                    "a reply to {tag}, which only appears inside a literal: {by_tag:?}"
                );
                let want = if tag.ends_with('5') {
                    "NO [TOOBIG]"
                } else {
                    "NO [NOPERM]"
                };
                assert!(got[0].starts_with(want), "{tag}: {by_tag:?}");
                assert!(
                    !got.iter().any(|g| g.starts_with("OK")),
                    "{tag}: {by_tag:?}"
                );
            }
        }
    };
    // One at a time, each followed by a NOOP.
    for (i, (_, bytes)) in refused_non_sync("n", user).iter().enumerate() {
        let tag = format!("n{}", i + 1);
        c.send_raw(bytes);
        c.send(&format!("{tag}-noop NOOP"));
        let by_tag = tagged(&responses_until(&mut c, &format!("{tag}-noop")));
        assert!(by_tag.contains_key(&tag), "{by_tag:?}");
        check(&by_tag, "n");
    }
    // All at once, pipelined, with reads between them.
    let mut all = Vec::new();
    for (i, (_, bytes)) in refused_non_sync("p", user).iter().enumerate() {
        all.extend_from_slice(bytes);
        all.extend_from_slice(format!("r{i} FETCH 1 (FLAGS)\r\n").as_bytes());
    }
    all.extend_from_slice(b"zz NOOP\r\n");
    c.send_raw(&all);
    let by_tag = tagged(&responses_until(&mut c, "zz"));
    check(&by_tag, "p");
    assert_eq!(by_tag.len(), 2 * 5 + 1, "{by_tag:?}");
    noop(&mut c, "n");
    assert_flags_as_delivered(&mut c, "fl");
    assert_eq!(before, w.legacy.store_digest(user), "legacy store changed");
}

/// RFC 3501 §2.2.2 / RFC 9051 §2.2.2: every command gets exactly one
/// tagged completion, also one refused at a non-synchronizing literal
/// that the client sends on regardless. (Before 086f5b1 the view answered
/// at the literal and again once the command was complete, and once more
/// per further literal: `b APPEND INBOX {5+}\r\nhello\r\n` got
/// `b NO [NOPERM] …\r\nb NO [NOPERM] …\r\n`.)
#[test]
fn a_refused_non_synchronizing_literal_gets_exactly_one_completion() {
    let w = World::start();
    let user = ALICE.address;
    fill_legacy(&w, user);
    let mut c = tempmail(&w, &ALICE);
    assert_ok(&run(&mut c, "s", "SELECT INBOX"), "SELECT");
    for (i, (what, bytes)) in refused_non_sync("n", user).iter().enumerate() {
        let tag = format!("n{}", i + 1);
        c.send_raw(bytes);
        let resps = responses_until(&mut c, &tag);
        let want = if i == 4 { "NO [TOOBIG]" } else { "NO [NOPERM]" };
        assert!(
            status_of(&resps).starts_with(want),
            "{what}: {}",
            status_of(&resps)
        );
        // A second completion would come ahead of the NOOP's OK.
        noop(&mut c, &format!("{tag}-noop"));
    }
}

/// A client that sends the literal of a refused synchronizing APPEND
/// anyway: its bytes are read as commands, so they go through the filter
/// like any other command.
#[test]
fn an_uninvited_literal_is_filtered_like_any_command() {
    let w = World::start();
    let user = ALICE.address;
    fill_legacy(&w, user);
    let before = w.legacy.store_digest(user);
    let mut c = tempmail(&w, &ALICE);
    assert_ok(&run(&mut c, "s", "SELECT INBOX"), "SELECT");
    let smuggled = "x STORE 1:* +FLAGS (\\Deleted)\r\ny EXPUNGE\r\n";
    c.send_raw(
        format!(
            "a APPEND INBOX {{{}}}\r\n{smuggled}\r\nz NOOP\r\n",
            smuggled.len()
        )
        .as_bytes(),
    );
    let by_tag = tagged(&responses_until(&mut c, "z"));
    for t in ["a", "x", "y"] {
        assert!(by_tag[t][0].starts_with("NO [NOPERM]"), "{by_tag:?}");
    }
    assert_flags_as_delivered(&mut c, "fl");
    assert_eq!(before, w.legacy.store_digest(user));
}

/// Messages of all kinds for `user` on legacy: INBOX (the seeded one and
/// five more: multipart, large, 8-bit) and `Archive` (three, one flagged
/// and seen). Returns how many message files the store holds.
fn fill_for_export(w: &World, user: &str) -> usize {
    let mut sent = vec![message(1, user), MULTIPART.to_string(), message(2, user)];
    // A large one, and one with 8-bit text and long lines.
    let mut large = message(3, user);
    for i in 0..4000 {
        large.push_str(&format!(
            "line {i} of a large message, padded ........................\r\n"
        ));
    }
    sent.push(large);
    sent.push(format!(
        "From: a@example.org\r\nTo: {user}\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\nciò è già così {}\r\n",
        "x".repeat(2000)
    ));
    for m in &sent {
        w.legacy.deliver(user, "INBOX", m.as_bytes());
    }
    let archive = [message(4, user), message(5, user)];
    for m in &archive {
        w.legacy.deliver(user, "Archive", m.as_bytes());
    }
    w.legacy
        .deliver_flagged(user, "Archive", message(6, user).as_bytes(), "FS");
    9
}

/// Every message fetched through the view is byte for byte the file in
/// the legacy Maildir.
#[test]
fn fetched_messages_are_the_legacy_files_byte_for_byte() {
    let w = World::start();
    let user = DAVE.address;
    let count = fill_for_export(&w, user);
    let before = w.legacy.store_digest(user);
    let mut want = maildir_messages(&w.legacy.maildir(user));
    assert_eq!(want.len(), count);
    let mut c = tempmail(&w, &DAVE);
    let mut got = Vec::new();
    for (i, folder) in ["INBOX", "Archive"].iter().enumerate() {
        assert_ok(
            &run(&mut c, &format!("s{i}"), &format!("SELECT {folder}")),
            "SELECT",
        );
        for (j, item) in ["BODY[]", "RFC822", "BODY.PEEK[]"].iter().enumerate() {
            let resps = run(
                &mut c,
                &format!("f{i}{j}"),
                &format!("UID FETCH 1:* ({item})"),
            );
            assert_ok(&resps, item);
            for r in &resps[..resps.len() - 1] {
                let raw = &r.raw;
                let first = raw.split_inclusive(|&b| b == b'\n').next().unwrap();
                let len = literal_len(first).expect("the message as a literal");
                let start = first.len();
                if j == 0 {
                    got.push(raw[start..start + len].to_vec());
                } else {
                    assert!(
                        got.contains(&raw[start..start + len].to_vec()),
                        "{item} differs from BODY[]"
                    );
                }
            }
        }
    }
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "a fetched message differs from its legacy file"
    );
    assert_eq!(before, w.legacy.store_digest(user));
}

/// mbsync (isync) copies a whole legacy mailbox out through the tempmail
/// listener into a local Maildir: every message arrives byte for byte,
/// and the legacy store is unchanged.
#[test]
fn mbsync_copies_the_legacy_mailbox_out_byte_for_byte() {
    let w = World::start();
    let user = DAVE.address;
    let count = fill_for_export(&w, user);
    let before = w.legacy.store_digest(user);
    let legacy_files = maildir_messages(&w.legacy.maildir(user));
    assert_eq!(legacy_files.len(), count);

    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("mail");
    std::fs::create_dir(&local).unwrap();
    let rc = dir.path().join("mbsyncrc");
    std::fs::write(
        &rc,
        format!(
            "IMAPAccount legacy\n\
             Host 127.0.0.1\n\
             Port {port}\n\
             User {user}\n\
             Pass {pw}\n\
             SSLType None\n\
             AuthMechs LOGIN\n\
             Timeout 20\n\
             \n\
             IMAPStore remote\n\
             Account legacy\n\
             \n\
             MaildirStore local\n\
             Path {local}/\n\
             Inbox {local}/INBOX\n\
             SubFolders Verbatim\n\
             \n\
             Channel legacy\n\
             Far :remote:\n\
             Near :local:\n\
             Patterns *\n\
             Create Near\n\
             Sync Pull\n\
             Expunge None\n\
             SyncState *\n",
            port = w.addr("tempmail").port(),
            pw = DAVE.legacy_password.unwrap(),
            local = local.display(),
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["60", "mbsync", "-c"])
        .arg(&rc)
        .arg("-a")
        .output()
        .expect("run mbsync (package isync)");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "mbsync failed: {}\n{log}", out.status);
    eprintln!("mbsync took {:?}", started.elapsed());

    // mbsync stores messages the Maildir way: LF line ends, and an
    // `X-TUID` header of its own (its crash-recovery marker) at the end
    // of the header. Undone, every message is byte-identical.
    let mut got: Vec<Vec<u8>> = maildir_messages(&local)
        .iter()
        .map(|m| without_x_tuid(m))
        .collect();
    let mut want: Vec<Vec<u8>> = legacy_files.iter().map(|m| lf_only(m)).collect();
    got.sort();
    want.sort();
    assert_eq!(
        got.len(),
        want.len(),
        "message count; mbsync said:\n{log}\nlocal: {:?}",
        walk(&local)
    );
    for (g, l) in got.iter().zip(&want) {
        if g != l {
            let at = g
                .iter()
                .zip(l)
                .position(|(a, b)| a != b)
                .unwrap_or(g.len().min(l.len()));
            let show = |m: &[u8]| {
                String::from_utf8_lossy(&m[at.saturating_sub(80)..(at + 80).min(m.len())])
                    .into_owned()
            };
            panic!(
                "a message changed on the way ({} bytes locally, {} on legacy), first \
                 difference at {at}:\nlocal: {:?}\nlegacy: {:?}\nmbsync said:\n{log}",
                g.len(),
                l.len(),
                show(g),
                show(l)
            );
        }
    }
    // The flags came along (Maildir keeps them in the file name).
    let flagged: Vec<_> = walk(&local.join("Archive"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(":2,FS"))
        .collect();
    assert_eq!(flagged.len(), 1, "{:?}", walk(&local));
    // Both folders arrived as folders.
    let inbox = maildir_messages(&local.join("INBOX"));
    let arch = maildir_messages(&local.join("Archive"));
    assert_eq!((inbox.len(), arch.len()), (6, 3), "{:?}", walk(&local));
    assert_eq!(before, w.legacy.store_digest(user), "legacy store changed");
    // A second run finds nothing new and still changes nothing.
    let again = Command::new("timeout")
        .args(["60", "mbsync", "-c"])
        .arg(&rc)
        .arg("-a")
        .output()
        .expect("run mbsync");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(maildir_messages(&local).len(), want.len());
    assert_eq!(before, w.legacy.store_digest(user));
}

/// `m` with CRLF line ends turned into LF, as mbsync stores in a Maildir.
fn lf_only(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len());
    for (i, &b) in m.iter().enumerate() {
        if !(b == b'\r' && m.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    out
}

/// `m` (LF line ends) without the one `X-TUID:` header line mbsync adds
/// to the header; panics if there is not exactly one.
fn without_x_tuid(m: &[u8]) -> Vec<u8> {
    let header_end = m
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or(m.len(), |p| p + 1);
    let mut out = Vec::with_capacity(m.len());
    let mut found = 0;
    for line in m[..header_end].split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"X-TUID: ") {
            found += 1;
        } else {
            out.extend_from_slice(line);
        }
    }
    assert_eq!(found, 1, "X-TUID lines in {:?}", String::from_utf8_lossy(m));
    out.extend_from_slice(&m[header_end..]);
    out
}

/// The contents of every message file (in `cur/` or `new/`) below `dir`.
fn maildir_messages(dir: &Path) -> Vec<Vec<u8>> {
    walk(dir)
        .into_iter()
        .filter(|p| {
            let parent = p
                .parent()
                .and_then(|d| d.file_name())
                .and_then(|n| n.to_str());
            matches!(parent, Some("cur" | "new"))
        })
        .map(|p| std::fs::read(&p).unwrap())
        .collect()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// What Thunderbird does on the way in, through the tempmail listener.
#[test]
fn a_thunderbird_like_session_works() {
    let w = World::start();
    let user = DAVE.address;
    w.legacy.deliver(user, "INBOX", message(1, user).as_bytes());
    w.legacy
        .deliver(user, "Archive", message(2, user).as_bytes());
    let (mut c, login) = login_on(&w, "tempmail", user, DAVE.legacy_password.unwrap());
    let hidden = [
        "MOVE",
        "UIDPLUS",
        "COMPRESS",
        "METADATA",
        "CATENATE",
        "URLAUTH",
        "MULTIAPPEND",
        "APPENDLIMIT",
        "ACL",
        "NOTIFY",
        "X-GM-EXT",
    ];
    let check_caps = |caps: &str| {
        let words: Vec<&str> = caps.split([' ', ']']).collect();
        for h in hidden {
            assert!(
                !words.iter().any(|w| w.eq_ignore_ascii_case(h)
                    || w.to_ascii_uppercase().starts_with(&format!("{h}="))),
                "{h} offered: {caps}"
            );
        }
        let upper = caps.to_ascii_uppercase();
        assert!(
            upper.contains(" IMAP4REV1 ") && upper.contains(" IDLE "),
            "{caps}"
        );
    };
    check_caps(&login.status);
    let r = run(
        &mut c,
        "1",
        "ID (\"name\" \"Thunderbird\" \"version\" \"128.0\")",
    );
    assert_ok(&r, "ID");
    let r = run(&mut c, "2", "CAPABILITY");
    assert_ok(&r, "CAPABILITY");
    check_caps(&r[0].first);
    assert_ok(&run(&mut c, "3", "NAMESPACE"), "NAMESPACE");
    let r = run(&mut c, "4", "LIST \"\" \"*\"");
    assert_ok(&r, "LIST");
    let names: Vec<&str> = r.iter().map(|x| x.first.as_str()).collect();
    assert!(
        names.iter().any(|l| l.ends_with("INBOX")) && names.iter().any(|l| l.contains("Archive")),
        "{names:?}"
    );
    // Subscribed folders: Thunderbird uses `LIST (SUBSCRIBED)` when
    // LIST-EXTENDED is offered, LSUB otherwise.
    let subscribed = if login.status.to_ascii_uppercase().contains(" LIST-EXTENDED") {
        "LIST (SUBSCRIBED) \"\" \"*\""
    } else {
        "LSUB \"\" \"*\""
    };
    assert_ok(&run(&mut c, "5", subscribed), subscribed);
    // Thunderbird asks for the quota; this Dovecot has no quota plugin,
    // so its own answer (not a NOPERM of the view) comes back.
    let r = run(&mut c, "6", "GETQUOTAROOT INBOX");
    assert!(status_of(&r).contains("GETQUOTAROOT"), "{}", status_of(&r));
    assert_ok(
        &run(
            &mut c,
            "7",
            "STATUS Archive (MESSAGES UNSEEN UIDNEXT UIDVALIDITY)",
        ),
        "STATUS",
    );
    let r = run(&mut c, "8", "SELECT INBOX");
    assert_ok(&r, "SELECT");
    assert!(status_of(&r).contains("[READ-ONLY]"), "{}", status_of(&r));
    let r = run(
        &mut c,
        "9",
        "UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Subject Date)])",
    );
    assert_ok(&r, "UID FETCH headers");
    let text: String = r.iter().map(Resp::text).collect();
    assert!(
        text.contains(&marker("legacy", user)) && text.contains("message 1"),
        "{text}"
    );
    assert!(text.contains("RFC822.SIZE"), "{text}");
    let r = run(&mut c, "10", "UID FETCH 2 (UID BODY.PEEK[])");
    assert_ok(&r, "UID FETCH body");
    assert!(
        r[0].raw
            .ends_with(format!("{})\r\n", message(1, user)).as_bytes()),
        "{}",
        r[0].text()
    );
    // Marking as read is refused; the client goes on.
    assert_noperm(
        &run(&mut c, "11", "UID STORE 2 +FLAGS (\\Seen)"),
        "STORE \\Seen",
    );
    let before = w.legacy.store_digest(user);
    c.send("12 IDLE");
    let line = c.read_line();
    assert!(line.starts_with('+'), "{line}");
    w.legacy.deliver(user, "INBOX", message(3, user).as_bytes());
    let line = c.read_line();
    assert!(line.contains("EXISTS") || line.contains("RECENT"), "{line}");
    c.send("DONE");
    let r = responses_until(&mut c, "12");
    assert_ok(&r, "IDLE");
    let after_idle = w.legacy.store_digest(user);
    assert_ok(
        &run(&mut c, "13", "UID FETCH 3 (FLAGS BODY.PEEK[HEADER])"),
        "new message",
    );
    assert_ok(&run(&mut c, "14", "LOGOUT"), "LOGOUT");
    assert_ne!(before, after_idle, "the delivery changed the store");
    assert_eq!(
        after_idle,
        w.legacy.store_digest(user),
        "the session changed the store"
    );
}

/// Blackout: a live login gets the legacy box read-only with an alert.
#[test]
fn blackout_makes_the_live_listener_read_only() {
    let w = World::start();
    let user = ALICE.address;
    fill_legacy(&w, user);
    let api = Api::new(w.addr("admin"));
    let (code, body) = api.send_json(
        "PUT",
        "/api/mailboxes/alice@pec.example",
        &json!({"state": "blackout"}),
    );
    assert_eq!(code, 200, "{body}");
    let before = w.legacy.store_digest(user);
    let new_before = w.new.store_digest(user);
    let (mut c, login) = login_on(&w, "imap", user, ALICE.legacy_password.unwrap());
    assert!(login.text().contains("* OK [ALERT]"), "{}", login.text());
    assert!(login.status.contains("read-only"), "{}", login.status);
    assert!(
        !login.status.contains("MOVE") && !login.status.contains("UIDPLUS"),
        "{}",
        login.status
    );
    let r = run(&mut c, "s", "SELECT INBOX");
    assert!(status_of(&r).contains("[READ-ONLY]"), "{}", status_of(&r));
    assert!(
        r.iter().any(|x| x.first.contains("4 EXISTS")),
        "legacy INBOX"
    );
    assert_noperm(&run(&mut c, "b", "STORE 1 +FLAGS (\\Deleted)"), "STORE");
    assert_noperm(&run(&mut c, "c", "UID MOVE 1:* Archive"), "MOVE");
    assert_noperm(&run(&mut c, "d", "EXPUNGE"), "EXPUNGE");
    assert_ok(&run(&mut c, "e", "FETCH 1:* (BODY[] RFC822.TEXT)"), "FETCH");
    c.send("f APPEND INBOX {10}");
    assert!(c.read_line().starts_with("f NO [NOPERM]"));
    assert_flags_as_delivered(&mut c, "g");
    assert_ok(&run(&mut c, "h", "LOGOUT"), "LOGOUT");
    assert_eq!(before, w.legacy.store_digest(user), "legacy store changed");
    assert_eq!(new_before, w.new.store_digest(user), "new store touched");
    // The new password does not open the legacy box.
    let mut c = LineConn::tcp(w.addr("imap"));
    c.read_line();
    let r = c.imap(
        "a",
        &format!("LOGIN {user} {}", ALICE.new_password.unwrap()),
    );
    assert!(
        r.status.starts_with("NO [AUTHENTICATIONFAILED]"),
        "{}",
        r.status
    );
    // The cut-over ends: an open blackout session (here idling) is told
    // to reconnect, and the next login lands on the new store.
    let (mut c, _) = login_on(&w, "imap", user, ALICE.legacy_password.unwrap());
    assert_ok(&run(&mut c, "b", "SELECT INBOX"), "SELECT");
    c.send("c IDLE");
    assert!(c.read_line().starts_with('+'));
    let (code, body) = api.send_json(
        "PUT",
        "/api/mailboxes/alice@pec.example",
        &json!({"state": "migrated"}),
    );
    assert_eq!(code, 200, "{body}");
    let bye = c.read_line();
    assert!(bye.starts_with("* BYE [ALERT]"), "{bye}");
    let (mut c, login) = login_on(&w, "imap", user, ALICE.new_password.unwrap());
    assert!(!login.status.contains("read-only"), "{}", login.status);
    assert_ok(&run(&mut c, "b", "EXAMINE INBOX"), "EXAMINE");
    let r = run(&mut c, "c", "FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]");
    assert!(
        r[0].text().contains(&marker("new", user)),
        "{}",
        r[0].text()
    );
    assert_eq!(before, w.legacy.store_digest(user), "legacy store changed");
}

/// The tempmail deadline closes the view, after the password check.
#[test]
fn the_tempmail_view_closes_at_its_deadline() {
    let w = World::start();
    let api = Api::new(w.addr("admin"));
    let path = "/api/mailboxes/dave@pec.example/tempmail";
    let (code, body) = api.send_json("PUT", path, &json!({"until": "2020-01-01T00:00:00Z"}));
    assert_eq!(code, 200, "{body}");
    let mut c = LineConn::tcp(w.addr("tempmail"));
    c.read_line();
    let r = c.imap(
        "a",
        &format!("LOGIN dave {}", DAVE.legacy_password.unwrap()),
    );
    assert!(r.status.starts_with("NO [CONTACTADMIN]"), "{}", r.status);
    assert!(
        r.status.contains("closed") && r.status.contains("2020-01-01"),
        "names the closed view: {}",
        r.status
    );
    let r = c.imap("b", "LOGIN dave not-the-password");
    assert!(
        r.status.starts_with("NO [AUTHENTICATIONFAILED]"),
        "{}",
        r.status
    );
    assert!(!r.status.contains("closed"), "{}", r.status);
    // The live listener is not affected.
    let (mut live, _) = login_on(&w, "imap", DAVE.address, DAVE.legacy_password.unwrap());
    assert_ok(&run(&mut live, "b", "NOOP"), "live NOOP");
    // A deadline in the future opens the view again.
    let (code, body) = api.send_json("PUT", path, &json!({"until": "2099-01-01T00:00:00Z"}));
    assert_eq!(code, 200, "{body}");
    let mut c = tempmail(&w, &DAVE);
    let r = run(&mut c, "b", "EXAMINE INBOX");
    assert_ok(&r, "EXAMINE");
    let r = run(&mut c, "c", "FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]");
    assert!(
        r[0].text().contains(&marker("legacy", DAVE.address)),
        "{}",
        r[0].text()
    );
}

/// bob is migrated: live logins go to the new store, the tempmail view
/// still shows his legacy store, with his legacy password.
#[test]
fn the_tempmail_view_of_a_migrated_mailbox_is_the_legacy_store() {
    let w = World::start();
    let before = w.legacy.store_digest(BOB.address);
    let mut c = tempmail(&w, &BOB);
    let r = run(&mut c, "b", "SELECT INBOX");
    assert!(status_of(&r).contains("[READ-ONLY]"), "{}", status_of(&r));
    let r = run(&mut c, "c", "FETCH 1:* (FLAGS BODY[])");
    assert_ok(&r, "FETCH");
    let text: String = r.iter().map(Resp::text).collect();
    assert!(text.contains(&marker("legacy", BOB.address)), "{text}");
    assert!(!text.contains(&marker("new", BOB.address)), "{text}");
    assert_noperm(&run(&mut c, "d", "STORE 1 +FLAGS (\\Deleted)"), "STORE");
    assert_ok(&run(&mut c, "e", "LOGOUT"), "LOGOUT");
    assert_eq!(before, w.legacy.store_digest(BOB.address));
    // The new password is not the legacy one.
    let mut c = LineConn::tcp(w.addr("tempmail"));
    c.read_line();
    let r = c.imap(
        "a",
        &format!(
            "LOGIN {} \"{}\"",
            BOB.address,
            BOB.new_password.unwrap().replace('"', "\\\"")
        ),
    );
    assert!(
        r.status.starts_with("NO [AUTHENTICATIONFAILED]"),
        "{}",
        r.status
    );
    // Live, bob is on the new store.
    let (mut live, _) = login_on(&w, "imap", BOB.address, BOB.new_password.unwrap());
    let r = run(&mut live, "b", "EXAMINE INBOX");
    assert_ok(&r, "EXAMINE");
    let r = run(&mut live, "c", "FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]");
    assert!(
        r[0].text().contains(&marker("new", BOB.address)),
        "{}",
        r[0].text()
    );
}

/// Extensions the view advertises must work through it: a client that
/// sees one uses it (Thunderbird lists folders with
/// `LIST (SUBSCRIBED) "" "*"` instead of LSUB when LIST-EXTENDED is
/// offered). Each command here gets OK from the same Dovecot directly.
/// (Before 086f5b1 the view offered LIST-EXTENDED, LIST-STATUS, ESEARCH,
/// SEARCHRES, ESORT, PREVIEW, SNIPPET=FUZZY and SAVEDATE, and answered
/// their commands with `BAD Syntax error.`: its parser lacks them.)
#[test]
fn every_extension_the_view_advertises_works_through_it() {
    let w = World::start();
    let user = ALICE.address;
    fill_legacy(&w, user);
    let (mut c, login) = login_on(&w, "tempmail", user, ALICE.legacy_password.unwrap());
    let caps = login.status.to_ascii_uppercase();
    let advertised = |cap: &str| caps.split([' ', '[', ']']).any(|w| w == cap);
    assert_ok(&run(&mut c, "s", "SELECT INBOX"), "SELECT");
    let uses = [
        ("LIST-EXTENDED", "LIST (SUBSCRIBED) \"\" \"*\""),
        ("LIST-EXTENDED", "LIST \"\" \"*\" RETURN (CHILDREN)"),
        ("LIST-EXTENDED", "LIST \"\" (\"INBOX\" \"Archive\")"),
        (
            "LIST-EXTENDED",
            "LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"*\"",
        ),
        (
            "LIST-STATUS",
            "LIST \"\" \"*\" RETURN (STATUS (MESSAGES UNSEEN))",
        ),
        ("SPECIAL-USE", "LIST (SPECIAL-USE) \"\" \"*\""),
        ("SPECIAL-USE", "LIST \"\" \"*\" RETURN (SPECIAL-USE)"),
        ("ESEARCH", "SEARCH RETURN (MIN MAX COUNT) ALL"),
        ("ESEARCH", "UID SEARCH RETURN (ALL) UNSEEN"),
        ("SEARCHRES", "SEARCH RETURN (SAVE) ALL"),
        ("SEARCHRES", "UID FETCH $ (FLAGS)"),
        ("ESORT", "SORT RETURN (ALL) (DATE) UTF-8 ALL"),
        ("PREVIEW", "FETCH 1 (PREVIEW)"),
        ("SNIPPET=FUZZY", "FETCH 1 (SNIPPET (FUZZY))"),
        ("SAVEDATE", "FETCH 1 (SAVEDATE)"),
        ("SAVEDATE", "SEARCH SAVEDBEFORE 1-Jan-2030"),
        ("CONDSTORE", "FETCH 1:* (FLAGS) (CHANGEDSINCE 1)"),
        ("BINARY", "FETCH 1 (BINARY.SIZE[1])"),
        ("STATUS=SIZE", "STATUS INBOX (MESSAGES SIZE)"),
    ];
    let mut broken = Vec::new();
    for (i, (cap, cmd)) in uses.iter().enumerate() {
        if !advertised(cap) {
            continue;
        }
        let r = run(&mut c, &format!("x{i}"), cmd);
        if !status_of(&r).starts_with("OK") {
            broken.push(format!("{cap}: {cmd} -> {}", status_of(&r)));
        }
    }
    assert!(
        broken.is_empty(),
        "advertised but refused:\n{}",
        broken.join("\n")
    );
}

/// The tempmail deadline closes the view for sessions already open too,
/// as a route change closes live sessions: a client idling on the
/// legacy box must not stay there past the deadline, whether an admin
/// moves the deadline into the past or it passes while the client idles.
#[test]
fn an_open_tempmail_session_is_closed_at_the_deadline() {
    let w = World::start();
    let api = Api::new(w.addr("admin"));
    let path = "/api/mailboxes/dave@pec.example/tempmail";
    // An admin closes the view now.
    let mut c = tempmail(&w, &DAVE);
    assert_ok(&run(&mut c, "b", "SELECT INBOX"), "SELECT");
    c.send("c IDLE");
    assert!(c.read_line().starts_with('+'));
    let (code, body) = api.send_json("PUT", path, &json!({"until": "2020-01-01T00:00:00Z"}));
    assert_eq!(code, 200, "{body}");
    let line = c.try_read_line();
    assert!(
        matches!(&line, Ok(l) if l.starts_with("* BYE") && l.contains("closed")),
        "deadline set in the past, session still open: {line:?}"
    );
    // The deadline passes while a session idles.
    let until = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let until = until
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (code, body) = api.send_json("PUT", path, &json!({ "until": until }));
    assert_eq!(code, 200, "{body}");
    let mut c = tempmail(&w, &DAVE);
    assert_ok(&run(&mut c, "b", "SELECT INBOX"), "SELECT");
    c.send("c IDLE");
    assert!(c.read_line().starts_with('+'));
    // The deadline is 2 s away; give a loaded machine 15 s, reading
    // whatever untagged data the idling backend sends meanwhile.
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        match c.try_read_line() {
            Ok(l) if l.starts_with("* BYE") => {
                assert!(l.contains("closed"), "{l}");
                break;
            }
            Ok(l) if l.starts_with("* ") => seen.push(l),
            Ok(l) => panic!("unexpected {l:?} while idling past the deadline ({seen:?})"),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                panic!("closed without a BYE: {e} ({seen:?})")
            }
            Err(e) if started.elapsed() < Duration::from_secs(15) => seen.push(e.to_string()),
            Err(e) => panic!(
                "deadline {until} passed ({} now), session still open: {e} ({seen:?})",
                time::OffsetDateTime::now_utc()
            ),
        }
    }
}
