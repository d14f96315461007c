//! POP3 end to end: real Dovecot pop3d on both backends, ponte in front,
//! real clients (Python poplib, curl, raw sockets).

mod common;

use std::time::{Duration, Instant};

use common::clients::{curl, python};
use common::net::LineConn;
use common::world::{marker, World, ALICE, BOB, CAROL, DAVE};

/// Logs in with poplib (USER/PASS, or STLS/implicit TLS with SNI) and
/// prints every message's Subject line.
const POPLIB_SUBJECTS: &str = r#"
import poplib, ssl, sys
port, user, pw, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ca = sys.argv[5] if len(sys.argv) > 5 else None
ctx = ssl.create_default_context(cafile=ca) if ca else None
if mode == "implicit":
    class SNI(poplib.POP3_SSL):
        def _create_socket(self, timeout):
            s = poplib.POP3._create_socket(self, timeout)
            return ctx.wrap_socket(s, server_hostname="mbox.pec.example")
    m = SNI("127.0.0.1", port, context=ctx, timeout=10)
else:
    m = poplib.POP3("127.0.0.1", port, timeout=10)
m.user(user)
m.pass_(pw)
count, _ = m.stat()
for i in range(1, count + 1):
    for line in m.retr(i)[1]:
        if line.startswith(b"Subject:"):
            print(line.decode())
m.quit()
"#;

fn subjects(w: &World, listener: &str, user: &str, pw: &str, mode: &str) -> String {
    let port = w.addr(listener).port().to_string();
    let ca = w.ca_file.display().to_string();
    python(POPLIB_SUBJECTS, &[&port, user, pw, mode, &ca])
        .expect_ok(&format!("poplib {user} on {listener}"))
        .stdout
}

#[test]
fn each_pop3_login_lands_on_the_backend_of_its_mailbox_state() {
    let w = World::start();
    let out = subjects(
        &w,
        "pop3",
        ALICE.address,
        ALICE.legacy_password.unwrap(),
        "plain",
    );
    assert!(out.contains(&marker("legacy", ALICE.address)), "{out}");
    let out = subjects(&w, "pop3", BOB.address, BOB.new_password.unwrap(), "plain");
    assert!(out.contains(&marker("new", BOB.address)), "{out}");
    // A bare user name takes the listener's default domain.
    let out = subjects(&w, "pop3", "dave", DAVE.legacy_password.unwrap(), "plain");
    assert!(out.contains(&marker("legacy", DAVE.address)), "{out}");
    let out = subjects(
        &w,
        "pop3s",
        CAROL.address,
        CAROL.new_password.unwrap(),
        "implicit",
    );
    assert!(out.contains(&marker("new", CAROL.address)), "{out}");
}

#[test]
fn curl_retrieves_through_pop3() {
    let w = World::start();
    let url = format!("pop3://{}/1", w.addr("pop3"));
    let creds = format!("{}:{}", ALICE.address, ALICE.legacy_password.unwrap());
    let out = curl(&["--user", &creds, &url])
        .expect_ok("curl pop3")
        .stdout;
    assert!(out.contains(&marker("legacy", ALICE.address)), "{out}");
}

#[test]
fn sasl_plain_login_and_the_refusals() {
    let w = World::start();
    let mut c = LineConn::tcp(w.addr("pop3"));
    assert!(c.read_line().starts_with("+OK"));
    c.send("CAPA");
    let mut caps = String::new();
    loop {
        let line = c.read_line();
        if line.trim_end() == "." {
            break;
        }
        caps.push_str(&line);
    }
    assert!(
        caps.contains("SASL PLAIN LOGIN") && caps.contains("RESP-CODES"),
        "{caps}"
    );
    c.send("APOP alice@pec.example 0123456789abcdef0123456789abcdef");
    assert!(c.read_line().starts_with("-ERR"));
    // Wrong password: the backend's own answer.
    c.send(&format!("USER {}", ALICE.address));
    assert!(c.read_line().starts_with("+OK"));
    c.send("PASS wrong");
    assert!(c.read_line().starts_with("-ERR [AUTH]"));
    // Unknown domain: the same answer.
    c.send("USER eve@elsewhere.example");
    c.read_line();
    c.send("PASS x");
    assert!(c.read_line().starts_with("-ERR [AUTH]"));
    let mut c = LineConn::tcp(w.addr("pop3"));
    c.read_line();
    c.send(&format!(
        "AUTH PLAIN {}",
        b64(&format!(
            "\0{}\0{}",
            CAROL.address,
            CAROL.new_password.unwrap()
        ))
    ));
    assert!(c.read_line().starts_with("+OK"));
    c.send("STAT");
    assert!(c.read_line().starts_with("+OK 1 "));
    // AUTH LOGIN, as Outlook does it.
    let mut c = LineConn::tcp(w.addr("pop3"));
    c.read_line();
    c.send("AUTH LOGIN");
    assert_eq!(c.read_line().trim_end(), "+ VXNlcm5hbWU6");
    c.send(&b64(DAVE.address));
    assert_eq!(c.read_line().trim_end(), "+ UGFzc3dvcmQ6");
    c.send(&b64(DAVE.legacy_password.unwrap()));
    assert!(c.read_line().starts_with("+OK"));
}

#[test]
fn a_command_pipelined_before_stls_is_discarded() {
    let w = World::start();
    // The world's plain POP3 listener offers no STLS.
    let mut c = LineConn::tcp(w.addr("pop3"));
    c.read_line();
    c.send("STLS");
    assert!(c.read_line().starts_with("-ERR"));
    drop(c);
    // On a listener with tls = "starttls", USER/PASS sent in the same packet
    // as STLS must not be run after the handshake.
    let script = r#"
import socket, ssl, sys
port, ca, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
s = socket.create_connection(("127.0.0.1", port), timeout=10)
f = s.makefile("rb")
f.readline()
s.sendall(f"STLS\r\nUSER {user}\r\nPASS {pw}\r\n".encode())
print(f.readline().decode().strip())
t = ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname="mbox.pec.example")
tf = t.makefile("rb")
t.sendall(b"STAT\r\n")
print(tf.readline().decode().strip())
"#;
    let (ponte, _state) = pop3_starttls(&w);
    let port = ponte.addr("pop3").port();
    let ca = w.ca_file.display().to_string();
    let out = python(
        script,
        &[
            &port.to_string(),
            &ca,
            ALICE.address,
            ALICE.legacy_password.unwrap(),
        ],
    )
    .expect_ok("stls injection")
    .stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("+OK"), "{out}");
    // Not logged in: the pipelined USER/PASS were dropped, so STAT fails.
    assert!(lines[1].starts_with("-ERR"), "{out}");
}

/// The test world has no POP3 STARTTLS listener: a second ponte on the
/// same backends, with its own state directory, has one.
fn pop3_starttls(w: &World) -> (common::ponte::Ponte, tempfile::TempDir) {
    let config = w.config().replacen(
        "name = \"pop3\"\nprotocol = \"pop3\"\nbind = \"127.0.0.1:0\"\n",
        "name = \"pop3\"\nprotocol = \"pop3\"\nbind = \"127.0.0.1:0\"\ntls = \"starttls\"\n",
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config.replace(
        &format!("{}/state", w.dir.path().display()),
        &format!("{}/state", dir.path().display()),
    );
    (common::ponte::Ponte::start(&config), dir)
}

#[test]
fn the_read_only_view_deletes_nothing_and_sets_no_flag() {
    let w = World::start();
    w.legacy
        .deliver(DAVE.address, "INBOX", b"Subject: second\r\n\r\nbody\r\n");
    let before = w.legacy.store_digest(DAVE.address);
    let mut c = LineConn::tcp(w.addr("pop3-tempmail"));
    c.read_line();
    c.send("USER dave");
    c.read_line();
    c.send(&format!("PASS {}", DAVE.legacy_password.unwrap()));
    let hello = c.read_line();
    assert!(
        hello.starts_with("+OK") && hello.contains("read-only"),
        "{hello}"
    );
    c.send("STAT");
    assert!(c.read_line().starts_with("+OK 2 "));
    c.send("RETR 1");
    assert!(c.read_line().starts_with("+OK"));
    let mut body = String::new();
    loop {
        let line = c.read_line();
        if line == "." {
            break;
        }
        body.push_str(&line);
    }
    assert!(body.contains(&marker("legacy", DAVE.address)), "{body}");
    for cmd in ["DELE 1", "dele 2", "XTND XMIT"] {
        c.send(cmd);
        assert!(c.read_line().starts_with("-ERR"), "{cmd}");
    }
    c.send("UIDL");
    assert!(c.read_line().starts_with("+OK"));
    while c.read_line() != "." {}
    c.send("QUIT");
    assert!(c.read_line().starts_with("+OK"));
    // Dovecot would commit \Seen (RETR) and deletions at QUIT; it got none.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.legacy.store_digest(DAVE.address), before);
    // A migrated mailbox is read from its legacy store too.
    let out = subjects(
        &w,
        "pop3-tempmail",
        BOB.address,
        BOB.legacy_password.unwrap(),
        "plain",
    );
    assert!(out.contains(&marker("legacy", BOB.address)), "{out}");
}

#[test]
fn backend_down_is_a_prompt_temporary_error() {
    let mut w = World::start();
    let spare = common::dovecot::Dovecot::start(common::dovecot::DovecotOptions::new("spare", &[]));
    drop(std::mem::replace(&mut w.new, spare));
    let mut c = LineConn::tcp(w.addr("pop3"));
    c.read_line();
    c.send(&format!("USER {}", CAROL.address));
    c.read_line();
    let started = Instant::now();
    c.send(&format!("PASS {}", CAROL.new_password.unwrap()));
    assert!(c.read_line().starts_with("-ERR [SYS/TEMP]"));
    assert!(started.elapsed() < Duration::from_secs(3));
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
