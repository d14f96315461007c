//! Inbound SMTP end to end: ponte's inbound listener in front of each
//! backend's real Dovecot LMTP, driven by swaks, Python's smtplib and raw
//! sockets. Mail for legacy and migrated mailboxes is relayed at once;
//! mail for a mailbox in blackout waits in the spool (across a restart)
//! and reaches the new store once the mailbox is migrated, byte for byte
//! as sent plus ponte's `Received:` header.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::Api;
use common::clients::python;
use common::dovecot::Dovecot;
use common::net::LineConn;
use common::world::{World, ALICE, BOB, CAROL, DAVE};
use serde_json::json;

const SENDER: &str = "mittente@sender.example";

/// A message as another PEC provider would send it: signed-looking
/// headers (folded, trailing spaces), 8-bit text and lines starting with
/// a dot. Any rewriting shows as a byte difference.
fn message(tag: &str, to: &str) -> Vec<u8> {
    format!(
        "DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; d=sender.example; s=pec;\r\n\
         \th=from:to:subject:message-id;\r\n\
         \tb=c2lnbmF0dXJlIHRoYXQgbXVzdCBub3QgY2hhbmdl\r\n\
         From: {SENDER}\r\n\
         To: {to}\r\n\
         Subject: =?UTF-8?Q?Posta_certificata_{tag}?=  \r\n\
         Message-ID: <{tag}@sender.example>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         Caffè e perché, body of {tag}.\r\n\
         .a line that starts with a dot\r\n\
         ..and one with two\r\n\
         \ttabbed   trailing spaces   \r\n"
    )
    .into_bytes()
}

/// The message dot-stuffed and terminated, as swaks sends it verbatim
/// (it adds the CRLF after the final dot itself).
fn data_file(w: &World, tag: &str, msg: &[u8]) -> PathBuf {
    let mut data = stuffed(msg);
    data.push(b'.');
    let path = w.dir.path().join(format!("{tag}.data"));
    std::fs::write(&path, data).expect("write data");
    path
}

/// `msg` dot-stuffed (RFC 5321 §4.5.2), without the final dot line.
fn stuffed(msg: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for line in msg.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    data
}

/// Sends `msg` with swaks to `rcpts` through the inbound listener; the
/// exit status and the transcript.
fn swaks(w: &World, tag: &str, rcpts: &[&str], msg: &[u8]) -> (bool, String) {
    swaks_from(w, SENDER, tag, rcpts, msg)
}

/// [`swaks`] with another reverse path (`""` for the null sender).
fn swaks_from(w: &World, from: &str, tag: &str, rcpts: &[&str], msg: &[u8]) -> (bool, String) {
    let file = data_file(w, tag, msg);
    let out = Command::new("timeout")
        .arg("30")
        .arg("swaks")
        .args([
            "--timeout",
            "10",
            "--no-data-fixup",
            "--helo",
            "mx.sender.example",
        ])
        .args(["--server", &w.addr("inbound").to_string()])
        .args(["--from", from, "--to", &rcpts.join(",")])
        .args(["--data", &format!("@{}", file.display())])
        .output()
        .expect("run swaks");
    let transcript =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), transcript)
}

/// Sends a file with smtplib (`sendmail`, STARTTLS first if `tls`);
/// prints the refused recipients or the error's code and text.
const SMTPLIB: &str = r#"
import smtplib, ssl, sys
host, port, path, tls, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
rcpts = sys.argv[6:]
msg = open(path, "rb").read()
s = smtplib.SMTP(host, port, local_hostname="mx.sender.example", timeout=20)
if tls == "1":
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    s.starttls(context=ctx)
try:
    refused = s.sendmail("mittente@sender.example", rcpts, msg)
    print("OK", sorted(refused.items()))
except smtplib.SMTPRecipientsRefused as e:
    print("REFUSED", sorted((k, v[0], v[1].decode()) for k, v in e.recipients.items()))
except smtplib.SMTPResponseException as e:
    print("ERROR", e.smtp_code, e.smtp_error.decode())
s.quit()
"#;

fn smtplib(w: &World, tag: &str, rcpts: &[&str], msg: &[u8], tls: bool) -> String {
    let path = w.dir.path().join(format!("{tag}.eml"));
    std::fs::write(&path, msg).expect("write message");
    let addr = w.addr("inbound");
    let (port, path, ca) = (
        addr.port().to_string(),
        path.display().to_string(),
        w.ca_file.display().to_string(),
    );
    let mut args = vec!["127.0.0.1", &port, &path, if tls { "1" } else { "0" }, &ca];
    args.extend_from_slice(rcpts);
    python(SMTPLIB, &args).expect_ok("smtplib").stdout
}

/// Files in `user`'s INBOX (new/ and cur/) that hold message `tag`.
fn stored(d: &Dovecot, user: &str, tag: &str) -> Vec<Vec<u8>> {
    let needle = format!("<{tag}@sender.example>");
    let mut found = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(dir) = std::fs::read_dir(d.maildir(user).join(sub)) else {
            continue;
        };
        for f in dir.flatten() {
            let bytes = std::fs::read(f.path()).unwrap_or_default();
            if String::from_utf8_lossy(&bytes).contains(&needle) {
                found.push(bytes);
            }
        }
    }
    found
}

/// Waits until `tag` is in `user`'s INBOX; panics after `within`.
fn wait_stored(d: &Dovecot, user: &str, tag: &str, within: Duration) -> Vec<Vec<u8>> {
    let start = Instant::now();
    loop {
        let found = stored(d, user, tag);
        if !found.is_empty() || start.elapsed() > within {
            assert!(
                !found.is_empty(),
                "{tag} never reached {user} on {}",
                d.name()
            );
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that a stored file is Dovecot's own trace headers, then
/// ponte's single `Received:` header, then `msg` byte for byte (Maildir
/// keeps LF line ends, so both sides are compared with LF).
fn assert_same_message(file: &[u8], msg: &[u8]) {
    let lf = |b: &[u8]| String::from_utf8_lossy(b).replace("\r\n", "\n");
    let file = lf(file);
    let at = file.find("(ponte) with").expect("ponte's Received header");
    let start = file[..at].rfind("Received: from ").expect("header start");
    let (dovecot, ours) = file.split_at(start);
    for line in dovecot.lines() {
        let own = ["Return-Path:", "Delivered-To:", "Received:", "\t", " "];
        assert!(
            own.iter().any(|p| line.starts_with(p)),
            "unexpected header {line:?}"
        );
    }
    let mut header = ours.splitn(4, '\n');
    let first = header.next().unwrap_or_default();
    assert!(
        first.starts_with("Received: from mx.sender.example ([127.0.0.1])"),
        "{first}"
    );
    assert!(header.next().unwrap_or_default().starts_with("\tby "));
    assert!(header.next().unwrap_or_default().starts_with('\t'));
    assert_eq!(
        header.next().unwrap_or_default(),
        lf(msg),
        "message bytes changed"
    );
    assert_eq!(file.matches("(ponte)").count(), 1);
}

fn set_state(w: &World, address: &str, state: &str) {
    let api = Api::new(w.addr("admin"));
    let (code, body) = api.send_json(
        "PUT",
        &format!("/api/mailboxes/{address}"),
        &json!({ "state": state }),
    );
    assert_eq!(code, 200, "{body}");
}

/// Committed spool entries (the envelope files).
fn spooled(w: &World) -> Vec<PathBuf> {
    let dir: &Path = &w.dir.path().join("spool").join("env");
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn legacy_and_migrated_recipients_are_relayed_to_their_own_backend() {
    let w = World::start();
    let msg = message("to-alice", ALICE.address);
    let (ok, transcript) = swaks(&w, "to-alice", &[ALICE.address], &msg);
    assert!(ok, "{transcript}");
    // The sender gets the backend's own answer (Dovecot LMTP's "Saved").
    assert!(
        transcript.contains("<-  250 2.0.0 <alice@pec.example>"),
        "{transcript}"
    );
    let files = wait_stored(&w.legacy, ALICE.address, "to-alice", Duration::from_secs(5));
    assert_eq!(files.len(), 1);
    assert_same_message(&files[0], &msg);
    assert!(stored(&w.new, ALICE.address, "to-alice").is_empty());

    let msg = message("to-bob", BOB.address);
    let out = smtplib(&w, "to-bob", &[BOB.address], &msg, true);
    assert!(out.starts_with("OK []"), "{out}");
    let files = wait_stored(&w.new, BOB.address, "to-bob", Duration::from_secs(5));
    assert_same_message(&files[0], &msg);
    assert!(stored(&w.legacy, BOB.address, "to-bob").is_empty());
    assert!(spooled(&w).is_empty());
}

#[test]
fn open_relay_excluded_and_oversized_mail_are_refused() {
    let w = World::start();
    set_state(&w, DAVE.address, "excluded");
    let msg = message("refused", "someone@elsewhere.example");
    let out = smtplib(&w, "refused", &["someone@elsewhere.example"], &msg, false);
    assert!(out.contains("550, '5.7.1 Relaying denied'"), "{out}");
    let out = smtplib(&w, "refused", &[DAVE.address], &msg, false);
    assert!(out.contains("550, '5.1.1"), "{out}");
    // One good recipient among refused ones: only it gets the message.
    let msg = message("partial", CAROL.address);
    let out = smtplib(
        &w,
        "partial",
        &[CAROL.address, "x@elsewhere.example"],
        &msg,
        false,
    );
    assert!(out.starts_with("OK [('x@elsewhere.example', (550"), "{out}");
    wait_stored(&w.new, CAROL.address, "partial", Duration::from_secs(5));

    let mut c = LineConn::tcp(w.addr("inbound"));
    assert!(c.read_line().starts_with("220 "));
    c.send("EHLO mx.sender.example");
    let mut ehlo = Vec::new();
    loop {
        let line = c.read_line();
        ehlo.push(line.clone());
        if line.starts_with("250 ") {
            break;
        }
    }
    let ehlo = ehlo.join("");
    for ext in [
        "PIPELINING",
        "8BITMIME",
        "SIZE 52428800",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(ehlo.contains(ext), "{ext} in {ehlo}");
    }
    assert!(
        !ehlo.contains("AUTH") && !ehlo.contains("SMTPUTF8"),
        "{ehlo}"
    );
    // A 100 MB message is refused at MAIL, before any of it is sent.
    c.send("MAIL FROM:<a@sender.example> SIZE=104857600");
    assert!(c.read_line().starts_with("552 5.3.4"));
    c.send("DATA");
    assert!(c.read_line().starts_with("554 "));
    c.send("QUIT");
    assert!(c.read_line().starts_with("221 "));
}

#[test]
fn blackout_mail_waits_in_the_spool_across_a_restart_then_reaches_the_new_store_once() {
    let mut w = World::start();
    set_state(&w, ALICE.address, "blackout");
    let msg = message("blackout", ALICE.address);
    let out = smtplib(&w, "blackout", &[ALICE.address], &msg, true);
    assert!(out.starts_with("OK []"), "{out}");
    assert_eq!(spooled(&w).len(), 1, "the spool has it");
    std::thread::sleep(Duration::from_millis(300));
    assert!(stored(&w.legacy, ALICE.address, "blackout").is_empty());
    assert!(stored(&w.new, ALICE.address, "blackout").is_empty());

    w.restart();
    assert_eq!(spooled(&w).len(), 1, "the spool survives the restart");
    set_state(&w, ALICE.address, "migrated");
    let files = wait_stored(&w.new, ALICE.address, "blackout", Duration::from_secs(10));
    assert_same_message(&files[0], &msg);
    let start = Instant::now();
    while !spooled(&w).is_empty() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(spooled(&w).is_empty(), "delivered and removed");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        stored(&w.new, ALICE.address, "blackout").len(),
        1,
        "exactly once"
    );
    assert!(stored(&w.legacy, ALICE.address, "blackout").is_empty());

    // Migrated now: the next message is relayed at once.
    let msg = message("after", ALICE.address);
    let out = smtplib(&w, "after", &[ALICE.address], &msg, false);
    assert!(out.starts_with("OK []"), "{out}");
    wait_stored(&w.new, ALICE.address, "after", Duration::from_secs(5));
}

/// ponte killed after handing a spooled message over and before writing
/// down the backend's answer: at the next start the recipient is in
/// doubt. The worker logs in as the backend's check user acting as the
/// mailbox and searches for the message's trace id: found, it is not
/// sent again; not found, it is delivered.
#[test]
fn an_in_doubt_delivery_is_looked_up_in_the_mailbox_and_sent_only_if_missing() {
    let mut w = World::start();
    set_state(&w, ALICE.address, "blackout");
    set_state(&w, BOB.address, "blackout");
    for (tag, to) in [("doubt-a", ALICE.address), ("doubt-b", BOB.address)] {
        let out = smtplib(&w, tag, &[to], &message(tag, to), false);
        assert!(out.starts_with("OK []"), "{out}");
    }
    assert_eq!(spooled(&w).len(), 2);
    w.stop();

    // Both cut short mid-delivery; alice's copy had reached the store.
    let spool = w.dir.path().join("spool");
    for env_path in spooled(&w) {
        let mut env: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&env_path).unwrap()).unwrap();
        env["recipients"][0]["sending"] = json!(1_700_000_000);
        std::fs::write(&env_path, serde_json::to_vec(&env).unwrap()).unwrap();
        let to = env["recipients"][0]["address"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(env["trace_id"].as_str().is_some_and(|t| !t.is_empty()));
        if to == ALICE.address {
            let id = env_path.file_name().unwrap();
            let data = std::fs::read(spool.join("msg").join(id)).unwrap();
            w.new.deliver(ALICE.address, "INBOX", &data);
        }
    }
    assert_eq!(stored(&w.new, ALICE.address, "doubt-a").len(), 1);

    w.restart();
    set_state(&w, ALICE.address, "migrated");
    set_state(&w, BOB.address, "migrated");
    wait_stored(&w.new, BOB.address, "doubt-b", Duration::from_secs(10));
    let start = Instant::now();
    while !spooled(&w).is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(spooled(&w).is_empty(), "both settled and removed");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        stored(&w.new, ALICE.address, "doubt-a").len(),
        1,
        "not sent twice"
    );
    assert_eq!(stored(&w.new, BOB.address, "doubt-b").len(), 1, "sent once");
    let log = w.new.log();
    for user in [ALICE.address, BOB.address] {
        assert!(
            log.contains(&format!("Master user logging in as {user}")),
            "the check logged in as the master user acting as {user}:\n{log}"
        );
    }
}

/// A spooled message the new backend refuses for good (no such user
/// there): the sender gets a DSN (RFC 3464) in their own mailbox, the
/// original's headers in it; a message with the null sender gets none.
/// Both leave the spool.
#[test]
fn a_permanent_failure_sends_the_sender_a_delivery_status_notification() {
    let w = World::start();
    let ghost = "ghost@pec.example";
    set_state(&w, ghost, "blackout");
    let msg = message("bounce", ghost);
    let (ok, out) = swaks_from(&w, CAROL.address, "bounce", &[ghost], &msg);
    assert!(ok && out.contains("queued as"), "{out}");
    let (ok, out) = swaks_from(
        &w,
        "",
        "nullsender",
        &[ghost],
        &message("nullsender", ghost),
    );
    assert!(ok && out.contains("queued as"), "{out}");
    assert_eq!(spooled(&w).len(), 2);

    set_state(&w, ghost, "migrated");
    // The DSN's Message-ID is not the original's: find it by its subject.
    let start = Instant::now();
    let dsn = loop {
        let found: Vec<String> = ["new", "cur"]
            .iter()
            .flat_map(|sub| {
                std::fs::read_dir(w.new.maildir(CAROL.address).join(sub))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|f| {
                String::from_utf8_lossy(&std::fs::read(f.path()).unwrap_or_default()).into_owned()
            })
            .filter(|m| m.contains("Undelivered Mail Returned to Sender"))
            .collect();
        if !found.is_empty() || start.elapsed() > Duration::from_secs(10) {
            assert_eq!(found.len(), 1, "one DSN reaches carol");
            break found[0].clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for needle in [
        "Content-Type: multipart/report; report-type=delivery-status;",
        "From: Mail Delivery System <MAILER-DAEMON@",
        "Auto-Submitted: auto-replied",
        "Content-Type: message/delivery-status",
        "Final-Recipient: rfc822; ghost@pec.example",
        "Action: failed",
        "Status: 5.1.1",
        "Content-Type: text/rfc822-headers",
        "Message-ID: <bounce@sender.example>",
    ] {
        assert!(
            dsn.contains(needle),
            "{needle:?} missing from the DSN:\n{dsn}"
        );
    }
    assert!(!dsn.contains("Caffè e perché"), "the body is not sent back");
    assert!(dsn.contains("Return-Path: <>"), "a DSN has the null sender");
    let start = Instant::now();
    while !spooled(&w).is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        spooled(&w).is_empty(),
        "both failures and the DSN leave the spool"
    );
    let dsns = std::fs::read_dir(w.new.maildir(CAROL.address).join("new"))
        .into_iter()
        .flatten()
        .count();
    assert_eq!(dsns, 1, "no report for the null sender's message");
}

#[test]
fn a_message_for_blackout_and_live_mailboxes_is_spooled_whole_and_the_live_part_delivered_at_once()
{
    let w = World::start();
    set_state(&w, ALICE.address, "blackout");
    let msg = message("mixed", ALICE.address);
    let (ok, transcript) = swaks(&w, "mixed", &[ALICE.address, CAROL.address], &msg);
    assert!(ok, "{transcript}");
    assert!(transcript.contains("queued as"), "{transcript}");
    let files = wait_stored(&w.new, CAROL.address, "mixed", Duration::from_secs(5));
    assert_same_message(&files[0], &msg);
    std::thread::sleep(Duration::from_millis(300));
    assert!(stored(&w.new, ALICE.address, "mixed").is_empty());
    assert_eq!(spooled(&w).len(), 1, "alice's part still waits");

    set_state(&w, ALICE.address, "migrated");
    let files = wait_stored(&w.new, ALICE.address, "mixed", Duration::from_secs(10));
    assert_same_message(&files[0], &msg);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        stored(&w.new, CAROL.address, "mixed").len(),
        1,
        "carol's not twice"
    );
}

#[test]
fn data_is_unstuffed_only_at_crlf_dot_crlf_and_pipelined_commands_survive() {
    let w = World::start();
    let mut c = LineConn::tcp(w.addr("inbound"));
    assert!(c.read_line().starts_with("220 "));
    // Everything pipelined at once; a bare-LF dot line is message text
    // (the SMTP smuggling case), not the end of DATA.
    c.send_raw(
        b"EHLO mx.sender.example\r\nMAIL FROM:<a@sender.example>\r\n\
          RCPT TO:<carol@comune.example>\r\nDATA\r\n",
    );
    for want in [
        "250-", "250-", "250-", "250-", "250-", "250 ", "250 ", "250 ", "354 ",
    ] {
        let line = c.read_line();
        assert!(line.starts_with(want), "{want}: {line}");
    }
    c.send_raw(
        b"Message-ID: <smuggle@sender.example>\r\n\r\nfirst\n.\r\n\
          MAIL FROM:<evil@x>\r\n..dot\r\n.\r\nNOOP\r\n",
    );
    let reply = c.read_line();
    assert!(
        reply.starts_with("250 2.0.0 <carol@comune.example>"),
        "{reply}"
    );
    assert!(c.read_line().starts_with("250 "), "the pipelined NOOP");
    let files = wait_stored(&w.new, CAROL.address, "smuggle", Duration::from_secs(5));
    let text = String::from_utf8_lossy(&files[0]).replace("\r\n", "\n");
    assert!(
        text.ends_with("\n\nfirst\n.\nMAIL FROM:<evil@x>\n.dot\n"),
        "{text}"
    );
}

#[test]
fn spooled_mail_reaches_the_mailbox_before_mail_that_arrives_at_the_flip() {
    let w = World::start();
    set_state(&w, ALICE.address, "blackout");
    for tag in ["order-1", "order-2"] {
        let out = smtplib(
            &w,
            tag,
            &[ALICE.address],
            &message(tag, ALICE.address),
            false,
        );
        assert!(out.starts_with("OK []"), "{out}");
    }
    // A third message is under way at the flip: its final dot comes while
    // the worker may still be delivering the spooled two.
    let mut c = LineConn::tcp(w.addr("inbound"));
    c.read_line();
    c.send_raw(b"HELO mx.sender.example\r\nMAIL FROM:<a@sender.example>\r\n");
    c.send_raw(b"RCPT TO:<alice@pec.example>\r\nDATA\r\n");
    for want in ["250 ", "250 ", "250 ", "354 "] {
        let line = c.read_line();
        assert!(line.starts_with(want), "{want}: {line}");
    }
    c.send_raw(&stuffed(&message("order-3", ALICE.address)));
    set_state(&w, ALICE.address, "migrated");
    c.send_raw(b".\r\n");
    let reply = c.read_line();
    assert!(reply.starts_with("250 "), "{reply}");
    wait_stored(&w.new, ALICE.address, "order-3", Duration::from_secs(10));
    wait_stored(&w.new, ALICE.address, "order-2", Duration::from_secs(10));
    let out = w.new.doveadm(&[
        "fetch",
        "-u",
        ALICE.address,
        "hdr.message-id",
        "mailbox",
        "INBOX",
    ]);
    let at = |tag: &str| {
        out.find(&format!("<{tag}@sender.example>"))
            .unwrap_or(usize::MAX)
    };
    assert!(
        at("order-1") < at("order-2") && at("order-2") < at("order-3"),
        "{out}"
    );
}

#[test]
fn inbound_listeners_need_an_smtp_or_lmtp_endpoint_on_every_routed_backend() {
    let base = r#"
[state]
path = "var/state"

[[listener]]
name = "mx"
protocol = "smtp"
bind = "127.0.0.1:2525"

[backend.legacy]
inbound = "lmtp://127.0.0.1:24"

[backend.new]
inbound = "smtp://mx.new.example"

[domain."pec.example"]
state = "legacy"
"#;
    let cfg = ponte::Config::from_toml(base).expect("valid");
    assert_eq!(cfg.limits.max_message_size, 50 * 1024 * 1024);
    let cases = [
        (
            "inbound = \"smtp://mx.new.example\"",
            "",
            "backend.new.inbound",
            "missing",
        ),
        (
            "inbound = \"smtp://mx.new.example\"",
            "inbound = \"imap://mx.new.example\"",
            "backend.new.inbound",
            "smtp://, lmtp:// or mx://",
        ),
        (
            "bind = \"127.0.0.1:2525\"",
            "bind = \"127.0.0.1:2525\"\nview = \"tempmail\"",
            "listener[0].view",
            "read-only",
        ),
    ];
    for (from, to, key, reason) in cases {
        let err = ponte::Config::from_toml(&base.replacen(from, to, 1))
            .expect_err(key)
            .to_string();
        assert!(
            err.contains(key) && err.contains(reason),
            "{key} {reason}: {err}"
        );
    }
}

#[test]
fn data_over_the_size_limit_without_a_size_parameter_is_refused_and_closed() {
    let w = World::start_with("max_message_size = 2000");
    let mut c = LineConn::tcp(w.addr("inbound"));
    c.read_line();
    c.send_raw(b"HELO mx.sender.example\r\nMAIL FROM:<a@sender.example>\r\n");
    c.send_raw(b"RCPT TO:<carol@comune.example>\r\nDATA\r\n");
    for want in ["250 ", "250 ", "250 ", "354 "] {
        let line = c.read_line();
        assert!(line.starts_with(want), "{want}: {line}");
    }
    let mut big = b"Message-ID: <big@sender.example>\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b"0123456789abcdef\r\n", 200).flatten());
    c.send_raw(&big);
    let reply = c.read_line();
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    let end = c.try_read_line();
    assert!(end.is_err(), "the connection is closed: {end:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(stored(&w.new, CAROL.address, "big").is_empty());
    assert!(spooled(&w).is_empty());
}
