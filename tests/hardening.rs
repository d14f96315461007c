//! Hostile and unusual input end to end, after the security review: real
//! Dovecot backends, ponte in-process, raw sockets on the wire. Each test
//! checks what reaches the backend (its log) as well as what the client
//! sees.

mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::admin::Api;
use common::dovecot::{Dovecot, DovecotOptions};
use common::net::{literal_len, LineConn};
use common::ponte::Ponte;
use common::world::{marker, World, ALICE, DAVE};
use serde_json::{json, Value};

type Conn = LineConn<TcpStream>;

/// A TCP connection to `to` from the loopback address `local` (so the
/// client's own address can be told apart from ponte's 127.0.0.1), with a
/// receive buffer of `rcvbuf` bytes if given (set before connecting, so the
/// window never grows past it). Reads and writes time out after 5 s.
fn connect_from(local: &str, to: SocketAddr, rcvbuf: Option<u32>) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let stream = rt
        .block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            if let Some(n) = rcvbuf {
                sock.set_recv_buffer_size(n)?;
            }
            sock.bind(format!("{local}:0").parse().expect("local address"))?;
            sock.connect(to).await
        })
        .unwrap_or_else(|e| panic!("connect from {local} to {to}: {e}"));
    let stream = stream.into_std().expect("into_std");
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(common::net::IO_TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(common::net::IO_TIMEOUT))
        .expect("write timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// A plain connection with ponte's greeting read.
fn greeted(addr: SocketAddr) -> Conn {
    let mut c = LineConn::tcp(addr);
    let greeting = c.read_line();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    c
}

fn login_cmd(user: &str, pw: &str) -> String {
    format!(
        "LOGIN \"{user}\" \"{}\"",
        pw.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

/// How the peer ended the connection, if it did within `within`.
#[derive(Debug, PartialEq)]
enum Closed {
    Eof,
    Reset,
}

/// Waits for the end of the connection, failing on any further byte or
/// if it stays open for `within`. Returns how it ended and when.
fn expect_closed(c: &mut Conn, within: Duration) -> (Closed, Duration) {
    let started = Instant::now();
    c.get_mut()
        .set_read_timeout(Some(within))
        .expect("read timeout");
    let how = match c.try_read_raw_line() {
        Ok(line) => panic!(
            "expected the connection to close, got {:?}",
            String::from_utf8_lossy(&line)
        ),
        // `try_read_raw_line` reports a clean end of stream this way.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof && e.to_string().ends_with("\"\"") => {
            Closed::Eof
        }
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => panic!("closed mid-line: {e}"),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
            Closed::Reset
        }
        Err(e) => panic!("connection still open after {:?}: {e}", started.elapsed()),
    };
    (how, started.elapsed())
}

/// Lines of the Dovecot log that record a successful login of `user`.
fn logins<'a>(log: &'a str, user: &str) -> Vec<&'a str> {
    let needle = format!("Login: user=<{user}>");
    log.lines().filter(|l| l.contains(&needle)).collect()
}

/// The open sessions as the admin API lists them.
fn sessions(api: &Api) -> Vec<Value> {
    let (code, body) = api.get("/api/sessions");
    assert_eq!(code, 200, "{body}");
    body["sessions"].as_array().cloned().unwrap_or_default()
}

/// Waits (bounded) until ponte lists no open session.
fn wait_no_sessions(api: &Api) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let listed = sessions(api);
        if listed.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sessions still listed: {listed:?}"
        );
        sleep(Duration::from_millis(20));
    }
}

/// Commands smuggled in an ID field name. Before the review ponte copied
/// field names of up to 64 bytes verbatim into its own `p1 ID (…)` to the
/// backend: Dovecot ends that command at the CRLF (BAD, so the real client
/// address is never set) and runs the next line as a command of its own.
/// This one sets an address of the attacker's choosing (LITERAL+ needs no
/// quotes, which ponte escapes)…
const INJECT_ADDR: &str = "k\r\np9 ID ({16+}\r\nx-originating-ip {8+}\r\n10.9.8.7)\r\n";
/// …and this one logs in as someone else before ponte's AUTHENTICATE.
const INJECT_LOGIN: &str = "k\r\np8 LOGIN alice@pec.example alice-legacy-pw\r\n";
/// Longer: several commands in a field value (values with control
/// characters were dropped already; this checks it stays so).
const INJECT_MANY: &str = "x\r\np9 ID ({16+}\r\nx-originating-ip {8+}\r\n10.9.8.7)\r\np8 LOGIN alice@pec.example alice-legacy-pw\r\np7 NOOP";

#[test]
fn id_fields_cannot_inject_backend_commands_or_the_client_address() {
    assert!(INJECT_ADDR.len() <= 64 && INJECT_LOGIN.len() <= 64);
    let w = World::start();
    let api = Api::new(w.addr("admin"));
    let (a, l, m) = (INJECT_ADDR.len(), INJECT_LOGIN.len(), INJECT_MANY.len());
    // (description, the ID exchange as the client sends it; `None` marks a
    // point where the client waits for ponte's `+` to a sync literal)
    let variants: [(&str, Vec<Option<String>>); 5] = [
        (
            "address in a key, synchronizing literal",
            vec![
                Some(format!("i ID ({{{a}}}\r\n")),
                None,
                Some(format!("{INJECT_ADDR} \"v\")\r\n")),
            ],
        ),
        (
            "login in a key, non-synchronizing literal",
            vec![Some(format!(
                "i ID (\"name\" \"x\" {{{l}+}}\r\n{INJECT_LOGIN} \"v\")\r\n"
            ))],
        ),
        (
            "commands in a value, non-synchronizing literal",
            vec![Some(format!(
                "i ID (\"name\" {{{m}+}}\r\n{INJECT_MANY} \"version\" \"1.0\")\r\n"
            ))],
        ),
        (
            "key and value both LITERAL+",
            vec![Some(format!(
                "i ID ({{{a}+}}\r\n{INJECT_ADDR} {{{l}+}}\r\n{INJECT_LOGIN})\r\n"
            ))],
        ),
        (
            "the forwarding fields themselves",
            vec![Some(
                "i ID (\"x-originating-ip\" \"10.9.8.7\" \"X-Connected-IP\" \"10.9.8.7\" \"x-session-ext-id\" \"10.9.8.7\")\r\n"
                    .to_string(),
            )],
        ),
    ];
    for (i, (what, exchange)) in variants.iter().enumerate() {
        // From 127.0.0.2: ponte itself talks to the backend from 127.0.0.1.
        let mut c = LineConn::new(connect_from("127.0.0.2", w.addr("imap"), None));
        assert!(c.read_line().starts_with("* OK"));
        for part in exchange {
            match part {
                Some(bytes) => c.send_raw(bytes.as_bytes()),
                None => {
                    let go = c.read_line();
                    assert!(go.starts_with('+'), "{what}: literal not invited: {go}");
                }
            }
        }
        let r = c.imap_until_tagged("i");
        assert!(r.is_ok(), "{what}: ID refused: {}", r.status);
        assert!(r.text().contains("* ID ("), "{what}: {}", r.text());
        let r = c.imap("a", &login_cmd(DAVE.address, DAVE.legacy_password.unwrap()));
        assert!(r.status.starts_with("OK"), "{what}: {}", r.status);
        // The session is dave's own, on his store…
        assert!(c.imap("b", "EXAMINE INBOX").is_ok());
        let r = c.imap("c", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])");
        assert!(
            r.is_ok() && r.text().contains(&marker("legacy", DAVE.address)),
            "{what}: {}",
            r.text()
        );
        // …and ponte lists it as dave's, from the client's real address.
        let listed = sessions(&api);
        assert_eq!(listed.len(), 1, "{what}: {listed:?}");
        assert_eq!(listed[0]["address"], DAVE.address, "{what}");
        let peer = listed[0]["peer"].as_str().unwrap_or_default();
        assert!(peer.starts_with("127.0.0.2:"), "{what}: {peer}");
        let r = c.imap("z", "LOGOUT");
        assert!(r.is_ok(), "{what}: {}", r.status);
        wait_no_sessions(&api);
        // The backend saw this login from the real client address.
        let log = w.legacy.wait_log("Login: user=<dave@pec.example>");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut log = log;
        while logins(&log, DAVE.address).len() < i + 1 && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
            log = w.legacy.log();
        }
        assert_eq!(logins(&log, DAVE.address).len(), i + 1, "{what}:\n{log}");
    }
    let log = w.legacy.log();
    for line in logins(&log, DAVE.address) {
        assert!(line.contains("rip=127.0.0.2,"), "{line}\n{log}");
    }
    assert!(
        !log.contains("10.9.8.7"),
        "injected address reached the backend:\n{log}"
    );
    assert!(
        logins(&log, ALICE.address).is_empty(),
        "injected LOGIN ran:\n{log}"
    );
}

#[test]
fn a_non_ascii_password_in_a_quoted_string_is_forwarded() {
    let w = World::start();
    let mut c = greeted(w.addr("imap"));
    // Raw UTF-8 inside a quoted string (RFC 9051 allows 8-bit there after
    // UTF8=ACCEPT; clients send it anyway): parsed, not `BAD`.
    let r = c.imap("a", "LOGIN dave@pec.example \"pässwörd\"");
    assert!(
        r.status.starts_with("NO [AUTHENTICATIONFAILED]"),
        "{}",
        r.status
    );
    // It was the backend that said no: it checked dave's password.
    let log = w.legacy.wait_log("Password mismatch");
    let mismatch: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Password mismatch"))
        .collect();
    assert!(
        mismatch.len() == 1 && mismatch[0].contains(DAVE.address),
        "{log}"
    );
    // The same in a literal, and the connection is still good for a login.
    let pw = "pässwörd".as_bytes();
    c.send(&format!("b LOGIN dave@pec.example {{{}}}", pw.len()));
    assert!(c.read_line().starts_with('+'));
    c.send_raw(pw);
    c.send_raw(b"\r\n");
    let r = c.imap_until_tagged("b");
    assert!(
        r.status.starts_with("NO [AUTHENTICATIONFAILED]"),
        "{}",
        r.status
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.legacy.log().matches("Password mismatch").count() < 2 {
        assert!(Instant::now() < deadline, "{}", w.legacy.log());
        sleep(Duration::from_millis(20));
    }
    let r = c.imap("c", &login_cmd(DAVE.address, DAVE.legacy_password.unwrap()));
    assert!(r.status.starts_with("OK"), "{}", r.status);
}

#[test]
fn a_non_ascii_password_reaches_the_backend_byte_for_byte() {
    // A legacy backend whose user really has a non-ASCII password: the
    // login succeeds only if ponte passes the UTF-8 bytes on unchanged.
    let w = World::backends_only("");
    let user = "erin@pec.example";
    let pw = "pässwörd-ß€";
    let mut opts = DovecotOptions::new("utf8", &[(user, pw)]);
    let d = w.dir.path();
    opts.tls = Some((d.join("backend.crt"), d.join("backend.key")));
    let utf8 = Dovecot::start(opts);
    let legacy = format!("imaps://{}", w.legacy.imaps_addr().expect("imaps"));
    let config = w.config().replacen(
        &legacy,
        &format!("imaps://{}", utf8.imaps_addr().expect("imaps")),
        1,
    );
    assert!(!config.contains(&legacy));
    let ponte = Ponte::start(&config);
    let mut c = greeted(ponte.addr("imap"));
    let r = c.imap("a", &format!("LOGIN {user} \"{pw}\""));
    assert!(r.status.starts_with("OK"), "quoted: {}", r.status);
    c.imap("z", "LOGOUT");
    let mut c = greeted(ponte.addr("imap"));
    c.send(&format!("a LOGIN {user} {{{}+}}", pw.len()));
    c.send(pw);
    let r = c.imap_until_tagged("a");
    assert!(r.status.starts_with("OK"), "literal: {}", r.status);
    c.imap("z", "LOGOUT");
    let mut c = greeted(ponte.addr("imap"));
    let r = c.imap(
        "a",
        &format!("AUTHENTICATE PLAIN {}", b64(&format!("\0{user}\0{pw}"))),
    );
    assert!(r.status.starts_with("OK"), "SASL PLAIN: {}", r.status);
    c.imap("z", "LOGOUT");
    let log = utf8.wait_log("Login: user=<erin@pec.example>");
    assert!(!log.contains("Password mismatch"), "{log}");
}

#[test]
fn excluded_and_blackout_mailboxes_answer_only_after_the_password() {
    let w = World::backends_only("");
    let notice = "Write to help@pec.example for your new account.";
    let config = w.config().replacen(
        "[domain.\"pec.example\"]\nstate = \"legacy\"\n",
        &format!("[domain.\"pec.example\"]\nstate = \"legacy\"\nnotice = \"{notice}\"\n"),
        1,
    );
    assert!(config.contains(notice), "{config}");
    let ponte = Ponte::start(&config);
    let api = Api::new(ponte.addr("admin"));
    let alice_pw = ALICE.legacy_password.unwrap();

    // What a wrong password looks like for a mailbox still on legacy.
    let mut c = greeted(ponte.addr("imap"));
    let baseline = c
        .imap("a", &login_cmd(DAVE.address, "wrong-password"))
        .status;
    assert!(
        baseline.starts_with("NO [AUTHENTICATIONFAILED]"),
        "{baseline}"
    );

    for state in ["excluded", "blackout"] {
        let (status, body) = api.send_json(
            "PUT",
            "/api/mailboxes/alice@pec.example",
            &json!({ "state": state }),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["new"], state, "{body}");

        let mut c = greeted(ponte.addr("imap"));
        let wrong = c.imap("a", &login_cmd(ALICE.address, "wrong-password"));
        assert!(
            wrong.status.starts_with("NO [AUTHENTICATIONFAILED]"),
            "{state}: {}",
            wrong.status
        );
        // Exactly what any wrong password gets: neither the state nor the
        // notice leaks to someone without the password.
        assert_eq!(wrong.status, baseline, "{state}");
        assert!(!wrong.text().contains(notice), "{state}: {}", wrong.text());

        let right = c.imap("b", &login_cmd(ALICE.address, alice_pw));
        if state == "blackout" && right.status.starts_with("OK") {
            // DESIGN.md's blackout: the legacy box, read-only, with an
            // [ALERT] carrying the notice (the view being wired in now;
            // before it, blackout was refused like excluded, below).
            assert!(
                right
                    .text()
                    .lines()
                    .any(|l| l.starts_with("* OK [ALERT]") && l.contains(notice)),
                "{state}: no ALERT with the notice: {}",
                right.text()
            );
            assert!(c.imap("c", "EXAMINE INBOX").is_ok());
            let r = c.imap("d", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])");
            assert!(
                r.text().contains(&marker("legacy", ALICE.address)),
                "{state}: {}",
                r.text()
            );
            c.imap("z", "LOGOUT");
            wait_no_sessions(&api);
            continue;
        }
        let code = if state == "excluded" {
            "CONTACTADMIN"
        } else {
            "UNAVAILABLE"
        };
        assert_eq!(
            right.status,
            format!("NO [{code}] {notice}"),
            "{state}: {}",
            right.text()
        );
        // Not logged in anywhere, and the connection is still usable.
        assert!(sessions(&api).is_empty(), "{state}");
        let r = c.imap("c", &login_cmd(DAVE.address, DAVE.legacy_password.unwrap()));
        assert!(r.status.starts_with("OK"), "{state}: {}", r.status);
        c.imap("z", "LOGOUT");
        wait_no_sessions(&api);
    }
    // Both answers came after the legacy backend checked the password.
    let log = w.legacy.wait_log("Login: user=<alice@pec.example>");
    assert_eq!(logins(&log, ALICE.address).len(), 2, "{log}");
}

#[test]
fn logout_ends_the_connection_promptly_when_the_backend_closes_first() {
    let w = World::start();
    let mut c = greeted(w.addr("imap"));
    let r = c.imap("a", &login_cmd(DAVE.address, DAVE.legacy_password.unwrap()));
    assert!(r.status.starts_with("OK"), "{}", r.status);
    c.send("z LOGOUT");
    let bye = c.read_line();
    assert!(bye.starts_with("* BYE"), "{bye}");
    let ok = c.read_line();
    assert!(ok.starts_with("z OK"), "{ok}");
    // The client never closes its side; ponte must, once Dovecot has.
    let (how, took) = expect_closed(&mut c, Duration::from_secs(3));
    assert_eq!(how, Closed::Eof);
    assert!(took < Duration::from_secs(1), "EOF after {took:?}");
    // And the session is gone from the registry.
    wait_no_sessions(&Api::new(w.addr("admin")));
}

#[test]
fn a_literal_in_a_sasl_response_is_refused_not_invited() {
    let w = World::start();
    let mut c = greeted(w.addr("imap"));
    c.send("a AUTHENTICATE PLAIN");
    let go = c.read_line();
    assert!(go.starts_with('+'), "{go}");
    // A literal announcement where base64 belongs: never `+`.
    c.send("{5}");
    let r = c.read_line();
    assert!(r.starts_with("a BAD"), "expected a tagged BAD, got {r:?}");
    // The non-synchronizing form is already on its way: read and refused.
    c.send("b AUTHENTICATE PLAIN");
    assert!(c.read_line().starts_with('+'));
    c.send_raw(b"{5+}\r\nhello\r\n");
    let r = c.read_line();
    assert!(r.starts_with("b BAD"), "expected a tagged BAD, got {r:?}");
    // Nothing was left behind in the stream: the session goes on.
    assert!(c.imap("c", "NOOP").is_ok());
    let plain = b64(&format!(
        "\0{}\0{}",
        DAVE.address,
        DAVE.legacy_password.unwrap()
    ));
    c.send("d AUTHENTICATE PLAIN");
    assert!(c.read_line().starts_with('+'));
    c.send(&plain);
    let r = c.imap_until_tagged("d");
    assert!(r.status.starts_with("OK"), "{}", r.status);
    assert!(c.imap("e", "EXAMINE INBOX").is_ok());
}

#[test]
fn an_overlong_line_ending_in_a_literal_is_cut_and_nothing_behind_it_runs() {
    let w = World::start();
    let mut c = greeted(w.addr("imap"));
    // Over the 16 KiB pre-auth limit, then a literal announcement, then a
    // pipelined login that must never run, all in one write.
    let mut bytes = b"a ".to_vec();
    bytes.extend(std::iter::repeat_n(b'x', 20 * 1024));
    bytes.extend_from_slice(b" {99999}\r\n");
    let login = login_cmd(DAVE.address, DAVE.legacy_password.unwrap());
    bytes.extend_from_slice(format!("b {login}\r\n").as_bytes());
    c.send_raw(&bytes);
    let bye = c.read_line();
    assert!(bye.starts_with("* BYE"), "{bye}");
    let (_, took) = expect_closed(&mut c, Duration::from_secs(3));
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    // A login of alice afterwards shows up in the log; dave's never does.
    let mut c = greeted(w.addr("imap"));
    let r = c.imap(
        "a",
        &login_cmd(ALICE.address, ALICE.legacy_password.unwrap()),
    );
    assert!(r.status.starts_with("OK"), "{}", r.status);
    let log = w.legacy.wait_log("Login: user=<alice@pec.example>");
    sleep(Duration::from_millis(200));
    let log = format!("{log}{}", w.legacy.log());
    assert!(
        logins(&log, DAVE.address).is_empty() && !log.contains("dave@pec.example"),
        "the pipelined login reached the backend:\n{log}"
    );
}

/// A message of about `size` bytes with CRLF lines, deterministic content.
fn big_message(size: usize) -> Vec<u8> {
    let mut m = b"From: sender@example\r\nTo: dave@pec.example\r\nSubject: big one\r\nMessage-ID: <big@example>\r\n\r\n".to_vec();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u32 = 0x1234_5678;
    while m.len() < size {
        for _ in 0..76 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            m.push(alphabet[(x % 64) as usize]);
        }
        m.extend_from_slice(b"\r\n");
    }
    m
}

#[test]
fn a_kick_during_a_large_fetch_waits_for_the_end_of_the_literal() {
    let w = World::start();
    let message = big_message(6 * 1024 * 1024);
    w.legacy.deliver(DAVE.address, "INBOX", &message);
    let api = Api::new(w.addr("admin"));
    // A small receive window: ponte cannot push the whole message into
    // kernel buffers, so the kick arrives while the literal is in flight.
    let mut c = LineConn::new(connect_from("127.0.0.1", w.addr("imap"), Some(64 * 1024)));
    assert!(c.read_line().starts_with("* OK"));
    let r = c.imap("a", &login_cmd(DAVE.address, DAVE.legacy_password.unwrap()));
    assert!(r.status.starts_with("OK"), "{}", r.status);
    assert!(c.imap("b", "EXAMINE INBOX").is_ok());
    c.send("c FETCH 2 BODY.PEEK[]");
    let head = c.try_read_raw_line().expect("FETCH response line");
    let announced = literal_len(&head)
        .unwrap_or_else(|| panic!("no literal in {:?}", String::from_utf8_lossy(&head)));
    assert!(
        head.starts_with(b"* 2 FETCH (BODY[] {"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert_eq!(announced, message.len());
    let first = c.read_exact(64 * 1024);

    let (code, body) = api.send_json(
        "POST",
        "/api/kick",
        &json!({"mailbox": DAVE.address, "reason": "moved"}),
    );
    assert_eq!((code, body["kicked"].as_u64()), (200, Some(1)), "{body}");
    // The kicked session waits for the client to take the literal: it
    // neither cuts the message nor leaves the registry meanwhile.
    sleep(Duration::from_millis(300));
    assert_eq!(sessions(&api).len(), 1, "the session ended mid-literal");

    let mut got = first;
    got.extend(c.read_exact(announced - got.len()));
    assert!(got == message, "the literal was altered in transit");
    // Then the end of the FETCH response, maybe the tagged OK, then BYE.
    let end = c.read_line();
    assert_eq!(end, ")", "after the literal");
    let mut after = Vec::new();
    let bye = loop {
        let line = c.read_line();
        if line.starts_with("* BYE") {
            break line;
        }
        after.push(line);
        assert!(after.len() < 3, "no BYE after the FETCH: {after:?}");
    };
    assert!(
        after.iter().all(|l| l.starts_with("c OK")),
        "unexpected lines before BYE: {after:?}"
    );
    assert_eq!(bye, "* BYE [ALERT] moved");
    expect_closed(&mut c, Duration::from_secs(3));
    wait_no_sessions(&api);
}

#[test]
fn the_connection_limit_per_client_address_is_enforced_and_released() {
    let w = World::start_with("max_connections_per_ip = 3");
    let addr = w.addr("imap");
    let mut held: Vec<Conn> = (0..3).map(|_| greeted(addr)).collect();
    // The fourth concurrent connection from 127.0.0.1 is turned away.
    let mut c = LineConn::tcp(addr);
    let bye = c.read_line();
    assert!(bye.starts_with("* BYE [UNAVAILABLE]"), "{bye}");
    expect_closed(&mut c, Duration::from_secs(3));
    // The cap is per address: another one still gets in (and can log in).
    let mut other = LineConn::new(connect_from("127.0.0.2", addr, None));
    assert!(other.read_line().starts_with("* OK"));
    let r = other.imap("a", &login_cmd(DAVE.address, DAVE.legacy_password.unwrap()));
    assert!(r.status.starts_with("OK"), "{}", r.status);
    // A logged-in session counts too: still full for 127.0.0.1.
    let r = held[0].imap("a", &login_cmd(DAVE.address, DAVE.legacy_password.unwrap()));
    assert!(r.status.starts_with("OK"), "{}", r.status);
    let mut c = LineConn::tcp(addr);
    assert!(c.read_line().starts_with("* BYE [UNAVAILABLE]"));
    // Closing one frees its slot (once ponte notices the close).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let fresh = loop {
        let mut c = LineConn::tcp(addr);
        let line = c.read_line();
        if line.starts_with("* OK") {
            break c;
        }
        assert!(line.starts_with("* BYE [UNAVAILABLE]"), "{line}");
        assert!(Instant::now() < deadline, "slot never released");
        sleep(Duration::from_millis(20));
    };
    let mut fresh = fresh;
    assert!(fresh.imap("n", "NOOP").is_ok());
    // And it is full again.
    let mut c = LineConn::tcp(addr);
    assert!(c.read_line().starts_with("* BYE [UNAVAILABLE]"));
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
