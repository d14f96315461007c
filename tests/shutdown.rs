//! The `ponte` binary as an operator runs it: `serve --config`, logs on
//! stderr, SIGTERM for a graceful stop. Checks the drain and that no
//! password ever reaches the log.

mod common;

use std::time::{Duration, Instant};

use common::net::LineConn;
use common::process::Process;
use common::world::{World, ALICE, BOB, CAROL};

#[test]
fn sigterm_stops_accepting_and_drains_open_sessions() {
    let w = World::backends_only("");
    let (mut p, addrs) = Process::start(&w);
    let mut c = LineConn::tcp(addrs["imap"]);
    c.read_line();
    let login = format!("LOGIN {} {}", ALICE.address, ALICE.legacy_password.unwrap());
    assert!(c.imap("a", &login).is_ok());
    let started = Instant::now();
    p.terminate();
    // The open session goes on during the grace period (2 s in the test config)…
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.imap("b", "NOOP").is_ok());
    // …while new connections are no longer accepted.
    assert!(std::net::TcpStream::connect(addrs["imap"]).is_err());
    // Then it is told to go, and the process exits cleanly.
    assert!(c.read_line().starts_with("* BYE"));
    assert!(started.elapsed() >= Duration::from_secs(2));
    let status = p.wait(Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", p.log());
    let log = p.log();
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
}

#[test]
fn sessions_not_yet_logged_in_are_told_to_go_when_shutdown_starts() {
    let w = World::backends_only("");
    let (mut p, addrs) = Process::start(&w);
    let mut imap = LineConn::tcp(addrs["imap"]);
    assert!(imap.read_line().starts_with("* OK"));
    let mut pop3 = LineConn::tcp(addrs["pop3"]);
    assert!(pop3.read_line().starts_with("+OK"));
    let mut submission = LineConn::tcp(addrs["submission"]);
    assert!(submission.read_line().starts_with("220"));
    let started = Instant::now();
    p.terminate();
    // At once, not after the grace period (2 s): nothing is in flight.
    assert_eq!(
        imap.read_line(),
        "* BYE Server shutting down, please reconnect."
    );
    assert!(pop3.read_line().starts_with("-ERR [SYS/TEMP]"));
    assert!(submission.read_line().starts_with("421 4.3.2"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let status = p.wait(Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", p.log());
}

#[test]
fn passwords_never_reach_the_log() {
    let w = World::backends_only("");
    let (mut p, addrs) = Process::start(&w);
    let secrets = [
        ALICE.legacy_password.unwrap(),
        BOB.new_password.unwrap(),
        CAROL.new_password.unwrap(),
        "wrong-Pa55word",
    ];
    let mut c = LineConn::tcp(addrs["imap"]);
    c.read_line();
    assert!(!c
        .imap("a", &format!("LOGIN {} {}", ALICE.address, secrets[3]))
        .is_ok());
    assert!(c
        .imap("b", &format!("LOGIN {} {}", ALICE.address, secrets[0]))
        .is_ok());
    c.imap("c", "LOGOUT");
    let mut c = LineConn::tcp(addrs["imap"]);
    c.read_line();
    let plain = b64(&format!("\0{}\0{}", CAROL.address, secrets[2]));
    assert!(c.imap("a", &format!("AUTHENTICATE PLAIN {plain}")).is_ok());
    c.imap("b", "LOGOUT");
    let mut c = LineConn::tcp(addrs["imap"]);
    c.read_line();
    c.send("a AUTHENTICATE LOGIN");
    c.read_line();
    c.send(&b64(BOB.address));
    c.read_line();
    c.send(&b64(secrets[1]));
    assert!(c.imap_until_tagged("a").is_ok());
    c.imap("b", "LOGOUT");
    p.terminate();
    p.wait(Duration::from_secs(15));
    let log = p.log();
    // The log is useful: it names the mailbox, the route and the outcome…
    assert!(
        log.contains("alice@pec.example")
            && log.contains("route=\"legacy\"")
            && log.contains("session closed"),
        "{log}"
    );
    // …and holds no password, in clear or in base64.
    for s in secrets {
        assert!(!log.contains(s), "password {s:?} in the log:\n{log}");
        assert!(!log.contains(&b64(s)), "base64 password in the log");
    }
    assert!(!log.contains(&plain), "SASL PLAIN response in the log");
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
