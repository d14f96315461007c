//! IMAP end to end: real Dovecot backends (legacy and new), ponte in
//! front, real clients (Python imaplib and ssl, curl, raw sockets).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::clients::{curl, python};
use common::net::LineConn;
use common::world::{marker, World, ALICE, BOB, CAROL, DAVE};
use ponte::route::{Change, MailboxState, RedbStore, StateStore};

/// Logs in with imaplib over plain IMAP, prints the INBOX subjects.
const IMAPLIB_SUBJECTS: &str = r#"
import imaplib, sys
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
m = imaplib.IMAP4(host, port, timeout=10)
m.login(user, pw)
typ, data = m.select("INBOX", readonly=True)
assert typ == "OK", data
typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
for part in data:
    if isinstance(part, tuple):
        print(part[1].decode().strip())
m.logout()
"#;

fn subjects(addr: SocketAddr, user: &str, pw: &str) -> String {
    let port = addr.port().to_string();
    let ip = addr.ip().to_string();
    python(IMAPLIB_SUBJECTS, &[&ip, &port, user, pw])
        .expect_ok(&format!("imaplib login {user}"))
        .stdout
}

#[test]
fn each_login_lands_on_the_backend_of_its_mailbox_state() {
    let w = World::start();
    let addr = w.addr("imap");
    let alice = subjects(addr, ALICE.address, ALICE.legacy_password.unwrap());
    assert!(alice.contains(&marker("legacy", ALICE.address)), "{alice}");
    // bob is migrated by the seed file; his password has a quote in it.
    let bob = subjects(addr, BOB.address, BOB.new_password.unwrap());
    assert!(bob.contains(&marker("new", BOB.address)), "{bob}");
    // carol's whole domain is migrated; the login is case-insensitive.
    let carol = subjects(addr, "Carol@Comune.Example", CAROL.new_password.unwrap());
    assert!(carol.contains(&marker("new", CAROL.address)), "{carol}");
    // A bare local part takes the listener's default domain.
    let dave = subjects(addr, "dave", DAVE.legacy_password.unwrap());
    assert!(dave.contains(&marker("legacy", DAVE.address)), "{dave}");
}

#[test]
fn route_follows_a_state_change_across_a_restart() {
    let mut w = World::start();
    let before = subjects(
        w.addr("imap"),
        ALICE.address,
        ALICE.legacy_password.unwrap(),
    );
    assert!(before.contains(&marker("legacy", ALICE.address)));
    w.ponte.take().unwrap().stop();
    {
        let store = RedbStore::open(&w.dir.path().join("state")).unwrap();
        let rows = vec![(ALICE.address.to_string(), MailboxState::Migrated, None)];
        store.apply(&Change::Mailboxes(rows), "test").unwrap();
    }
    w.restart();
    let after = subjects(w.addr("imap"), ALICE.address, ALICE.new_password.unwrap());
    assert!(after.contains(&marker("new", ALICE.address)), "{after}");
    // The seed is not imported again over the changed store.
    let bob = subjects(w.addr("imap"), BOB.address, BOB.new_password.unwrap());
    assert!(bob.contains(&marker("new", BOB.address)));
}

#[test]
fn wrong_password_gets_the_backends_no_and_unknown_domain_fails() {
    let w = World::start();
    let mut c = LineConn::tcp(w.addr("imap"));
    assert!(c.read_line().starts_with("* OK [CAPABILITY IMAP4rev1"));
    let r = c.imap("a", "LOGIN alice@pec.example wrong-password");
    assert!(
        r.status.starts_with("NO [AUTHENTICATIONFAILED]"),
        "{}",
        r.status
    );
    let r = c.imap("b", "LOGIN eve@elsewhere.example whatever");
    assert!(
        r.status.starts_with("NO [AUTHENTICATIONFAILED]"),
        "{}",
        r.status
    );
    // The same connection may still log in.
    let r = c.imap(
        "c",
        &format!("LOGIN {} {}", ALICE.address, ALICE.legacy_password.unwrap()),
    );
    assert!(r.status.starts_with("OK [CAPABILITY "), "{}", r.status);
    assert!(
        r.status.contains("IDLE"),
        "backend capabilities relayed: {}",
        r.status
    );
}

#[test]
fn too_many_failures_close_the_connection() {
    let w = World::start();
    let mut c = LineConn::tcp(w.addr("imap"));
    c.read_line();
    for tag in ["a", "b", "c"] {
        let r = c.imap(tag, "LOGIN nobody@nowhere.example x");
        assert!(r.status.starts_with("NO"));
    }
    assert!(c.read_line().starts_with("* BYE"));
    assert!(c.try_read_line().is_err() || c.try_read_line().unwrap_or_default().is_empty());
}

#[test]
fn sasl_plain_with_initial_response_and_auth_login_work() {
    let w = World::start();
    let mut c = LineConn::tcp(w.addr("imap"));
    c.read_line();
    let plain = b64(&format!(
        "\0{}\0{}",
        ALICE.address,
        ALICE.legacy_password.unwrap()
    ));
    let r = c.imap("a", &format!("AUTHENTICATE PLAIN {plain}"));
    assert!(r.status.starts_with("OK [CAPABILITY"), "{}", r.status);
    let r = c.imap("b", "SELECT INBOX");
    assert!(r.is_ok(), "{}", r.status);

    // AUTH LOGIN, as Outlook does it: user and password in two rounds.
    let mut c = LineConn::tcp(w.addr("imap"));
    c.read_line();
    c.send("a AUTHENTICATE LOGIN");
    assert_eq!(c.read_line().trim_end(), "+ VXNlcm5hbWU6");
    c.send(&b64(CAROL.address));
    assert_eq!(c.read_line().trim_end(), "+ UGFzc3dvcmQ6");
    c.send(&b64(CAROL.new_password.unwrap()));
    let r = c.imap_until_tagged("a");
    assert!(r.status.starts_with("OK"), "{}", r.status);

    // PLAIN without initial response, then a cancel.
    let mut c = LineConn::tcp(w.addr("imap"));
    c.read_line();
    c.send("a AUTHENTICATE PLAIN");
    assert!(c.read_line().starts_with('+'));
    c.send("*");
    assert!(c.imap_until_tagged("a").status.starts_with("BAD"));
    let r = c.imap("b", "AUTHENTICATE CRAM-MD5");
    assert!(r.status.starts_with("NO"), "{}", r.status);
}

#[test]
fn commands_pipelined_behind_login_reach_the_backend() {
    let w = World::start();
    let mut c = LineConn::tcp(w.addr("imap"));
    c.read_line();
    let pw = ALICE.legacy_password.unwrap();
    c.send_raw(format!("a LOGIN {} {pw}\r\nb SELECT INBOX\r\nc FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n", ALICE.address).as_bytes());
    assert!(c.imap_until_tagged("a").is_ok());
    assert!(c.imap_until_tagged("b").is_ok());
    let r = c.imap_until_tagged("c");
    assert!(
        r.is_ok() && r.text().contains(&marker("legacy", ALICE.address)),
        "{}",
        r.text()
    );
}

#[test]
fn preauth_rejects_bad_input_with_protocol_errors() {
    let w = World::start();
    let mut c = LineConn::tcp(w.addr("imap"));
    c.read_line();
    assert!(c.imap("a", "FOO BAR").status.starts_with("BAD"));
    assert!(c.imap("b", "SELECT INBOX").status.starts_with("BAD"));
    assert!(
        c.imap("c", "STARTTLS").status.starts_with("BAD"),
        "no STARTTLS on a plain listener"
    );
    let r = c.imap("d", "CAPABILITY");
    assert!(r.text().contains("AUTH=PLAIN") && r.text().contains("AUTH=LOGIN"));
    assert!(!r.text().contains("CRAM") && !r.text().contains("STARTTLS"));
    let r = c.imap("e", "ID (\"name\" \"test\")");
    assert!(r.is_ok() && r.text().contains("* ID"));
    // A synchronizing literal over the limit is refused without inviting it.
    c.send("f LOGIN {999999}");
    assert!(c.read_line().starts_with("f BAD [TOOBIG]"));
    assert!(c.imap("g", "NOOP").is_ok(), "session still usable");
    // An accepted literal is invited with '+'.
    c.send("h LOGIN {17}");
    assert!(c.read_line().starts_with('+'));
    c.send(&format!(
        "{} {}",
        ALICE.address,
        ALICE.legacy_password.unwrap()
    ));
    assert!(c.imap_until_tagged("h").is_ok());

    // A line longer than the limit ends the connection with BYE.
    let mut c = LineConn::tcp(w.addr("imap"));
    c.read_line();
    c.send_raw(&vec![b'a'; 40_000]);
    assert!(c.read_line().starts_with("* BYE"));
}

#[test]
fn preauth_timeout_closes_silent_clients() {
    let w = World::start_with("preauth_timeout = \"1s\"");
    let mut c = LineConn::tcp(w.addr("imap"));
    c.read_line();
    let started = Instant::now();
    assert!(c.read_line().starts_with("* BYE"));
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn starttls_listener_requires_tls_and_drops_injected_commands() {
    let w = World::start();
    let addr = w.addr("imap-starttls");
    let mut c = LineConn::tcp(addr);
    let greeting = c.read_line();
    assert!(
        greeting.contains("STARTTLS") && greeting.contains("LOGINDISABLED"),
        "{greeting}"
    );
    let r = c.imap(
        "a",
        &format!("LOGIN {} {}", ALICE.address, ALICE.legacy_password.unwrap()),
    );
    assert!(r.status.starts_with("NO [PRIVACYREQUIRED]"), "{}", r.status);

    // STARTTLS with a LOGIN pipelined behind it in the same packet: the
    // LOGIN must be discarded, not run after the handshake.
    let script = r#"
import socket, ssl, sys
port, ca, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
s = socket.create_connection(("127.0.0.1", port), timeout=10)
f = s.makefile("rb")
f.readline()
s.sendall(f"a STARTTLS\r\nb LOGIN {user} {pw}\r\n".encode())
print(f.readline().decode().strip())
ctx = ssl.create_default_context(cafile=ca)
t = ctx.wrap_socket(s, server_hostname="mbox.pec.example")
t.sendall(b"c CAPABILITY\r\n")
tf = t.makefile("rb")
lines = [tf.readline().decode().strip() for _ in range(2)]
print("\n".join(lines))
t.sendall(f"d LOGIN {user} {pw}\r\n".encode())
print(tf.readline().decode().strip())
"#;
    let ca = w.ca_file.display().to_string();
    let out = python(
        script,
        &[
            &addr.port().to_string(),
            &ca,
            ALICE.address,
            ALICE.legacy_password.unwrap(),
        ],
    )
    .expect_ok("starttls injection")
    .stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("a OK"), "{out}");
    assert!(
        lines[1].starts_with("* CAPABILITY") && !lines[1].contains("LOGINDISABLED"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("c OK"),
        "the injected b LOGIN never answered: {out}"
    );
    assert!(lines[3].starts_with("d OK"), "{out}");
}

/// Connects with TLS sending `sni`, prints the certificate's subject
/// alternative names, logs in and prints the first subject.
const TLS_LOGIN: &str = r#"
import imaplib, socket, ssl, sys
port, ca, sni, user, pw, starttls = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6] == "1"
ctx = ssl.create_default_context(cafile=ca)
class SNI(imaplib.IMAP4):
    def _create_socket(self, timeout):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        return s if starttls else ctx.wrap_socket(s, server_hostname=sni)
m = SNI("127.0.0.1", port)
if starttls:
    m._mode_ascii()
    typ, _ = m._simple_command("STARTTLS")
    assert typ == "OK"
    m.sock = ctx.wrap_socket(m.sock, server_hostname=sni)
    m.file = m.sock.makefile("rb")
    m._get_capabilities()
print([v for k, v in m.sock.getpeercert()["subjectAltName"]])
m.login(user, pw)
m.select("INBOX", readonly=True)
typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
print(data[0][1].decode().strip())
m.logout()
"#;

#[test]
fn implicit_tls_and_starttls_present_the_certificate_sni_asks_for() {
    let w = World::start();
    let ca = w.ca_file.display().to_string();
    for (listener, starttls) in [("imaps", "0"), ("imap-starttls", "1")] {
        let port = w.addr(listener).port().to_string();
        let out = python(
            TLS_LOGIN,
            &[
                &port,
                &ca,
                "imap.comune.example",
                CAROL.address,
                CAROL.new_password.unwrap(),
                starttls,
            ],
        )
        .expect_ok(listener)
        .stdout;
        assert!(
            out.contains("imap.comune.example") && !out.contains("mbox.pec.example"),
            "{out}"
        );
        assert!(out.contains(&marker("new", CAROL.address)), "{out}");
        let out = python(
            TLS_LOGIN,
            &[
                &port,
                &ca,
                "mbox.pec.example",
                ALICE.address,
                ALICE.legacy_password.unwrap(),
                starttls,
            ],
        )
        .expect_ok(listener)
        .stdout;
        assert!(out.contains("mbox.pec.example"), "{out}");
        assert!(out.contains(&marker("legacy", ALICE.address)), "{out}");
    }
}

#[test]
fn curl_fetches_through_plain_and_implicit_tls() {
    let w = World::start();
    let url = format!("imap://{}/INBOX;UID=1", w.addr("imap"));
    let creds = format!("{}:{}", ALICE.address, ALICE.legacy_password.unwrap());
    let out = curl(&["--user", &creds, &url])
        .expect_ok("curl imap")
        .stdout;
    assert!(out.contains(&marker("legacy", ALICE.address)), "{out}");

    let port = w.addr("imaps").port();
    let resolve = format!("mbox.pec.example:{port}:127.0.0.1");
    let url = format!("imaps://mbox.pec.example:{port}/INBOX;UID=1");
    let creds = format!("{}:{}", BOB.address, BOB.new_password.unwrap());
    let ca = w.ca_file.display().to_string();
    let out = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--user",
        &creds,
        &url,
    ])
    .expect_ok("curl imaps")
    .stdout;
    assert!(out.contains(&marker("new", BOB.address)), "{out}");
}

#[test]
fn idle_passes_through_and_sees_new_mail() {
    let w = World::start();
    let mut c = w.login(&DAVE, DAVE.legacy_password);
    assert!(c.imap("b", "SELECT INBOX").is_ok());
    c.send("c IDLE");
    assert!(c.read_line().starts_with('+'));
    w.legacy.deliver(
        DAVE.address,
        "INBOX",
        b"Subject: while idling\r\n\r\nhi\r\n",
    );
    let line = c.read_line();
    assert!(line.contains("EXISTS") || line.contains("RECENT"), "{line}");
    c.send("DONE");
    assert!(c.imap_until_tagged("c").is_ok());
}

#[test]
fn client_address_reaches_the_backend() {
    let w = World::start();
    // Connect from 127.0.0.2 so that ponte's own address (127.0.0.1) is distinguishable.
    let sock = socket_from("127.0.0.2", w.addr("imap"));
    let mut c = LineConn::new(sock);
    c.read_line();
    assert!(c
        .imap(
            "a",
            &format!("LOGIN {} {}", DAVE.address, DAVE.legacy_password.unwrap())
        )
        .is_ok());
    c.imap("b", "LOGOUT");
    let log = w.legacy.wait_log("rip=127.0.0.2");
    assert!(log.contains(DAVE.address), "{log}");
}

#[test]
fn backend_down_is_a_prompt_temporary_failure() {
    let mut w = World::start();
    // Dropping the new backend stops it; its port now refuses connections.
    let new = std::mem::replace(
        &mut w.new,
        common::dovecot::Dovecot::start(common::dovecot::DovecotOptions::new("spare", &[])),
    );
    drop(new);
    let mut c = LineConn::tcp(w.addr("imap"));
    c.read_line();
    let started = Instant::now();
    let r = c.imap(
        "a",
        &format!("LOGIN {} {}", CAROL.address, CAROL.new_password.unwrap()),
    );
    assert!(r.status.starts_with("NO [UNAVAILABLE]"), "{}", r.status);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Legacy still works from the same connection.
    assert!(c
        .imap(
            "b",
            &format!("LOGIN {} {}", DAVE.address, DAVE.legacy_password.unwrap())
        )
        .is_ok());
}

#[test]
fn kicked_session_gets_bye_alert() {
    let w = World::start();
    let mut c = w.login(&ALICE, ALICE.legacy_password);
    assert!(c.imap("b", "SELECT INBOX").is_ok());
    c.send("c IDLE");
    assert!(c.read_line().starts_with('+'));
    let sessions = w.ponte().ctx.registry.list();
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        (sessions[0].address.as_str(), sessions[0].route.as_str()),
        (ALICE.address, "legacy")
    );
    assert_eq!(
        w.ponte()
            .ctx
            .registry
            .kick_mailbox(ALICE.address, "Mailbox moved, reconnect."),
        1
    );
    let line = c.read_line();
    assert_eq!(line.trim_end(), "* BYE [ALERT] Mailbox moved, reconnect.");
}

#[test]
fn shutdown_says_goodbye_to_open_sessions() {
    let mut w = World::start();
    let mut c = w.login(&ALICE, ALICE.legacy_password);
    let started = Instant::now();
    w.ponte.take().unwrap().stop();
    assert!(c.read_line().starts_with("* BYE"));
    // shutdown_grace is 2 s in the test configuration.
    assert!(started.elapsed() >= Duration::from_secs(2));
}

/// A TCP connection from a chosen loopback address (std cannot bind
/// before connecting; tokio's `TcpSocket` can).
fn socket_from(local: &str, to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt
        .block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(format!("{local}:0").parse().unwrap())?;
            sock.connect(to).await
        })
        .unwrap_or_else(|e| panic!("connect from {local}: {e}"));
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn backend_certificate_that_does_not_verify_is_unavailable_not_a_hang() {
    let w = World::backends_only("");
    // Trust a CA that did not sign the legacy backend's certificate.
    let stranger = common::certs::TestCa::new("some other CA").write_to(w.dir.path(), "stranger");
    let d = w.dir.path().display().to_string();
    let config = w.config().replacen(
        &format!("ca = \"{d}/ca.crt\""),
        &format!("ca = \"{}\"", stranger.display()),
        1,
    );
    assert!(config.contains("stranger.crt"));
    let ponte = common::ponte::Ponte::start(&config);
    let mut c = LineConn::tcp(ponte.addr("imap"));
    c.read_line();
    let started = Instant::now();
    let r = c.imap(
        "a",
        &format!("LOGIN {} {}", ALICE.address, ALICE.legacy_password.unwrap()),
    );
    assert!(r.status.starts_with("NO [UNAVAILABLE]"), "{}", r.status);
    assert!(started.elapsed() < Duration::from_secs(3));
    // The new backend (verified with the right CA) still works.
    let r = c.imap(
        "b",
        &format!("LOGIN {} {}", CAROL.address, CAROL.new_password.unwrap()),
    );
    assert!(r.is_ok(), "{}", r.status);
}
