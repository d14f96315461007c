//! The demo: a migration on loopback. Starts a real legacy and a real new
//! Dovecot, ponte in front of both, and shows on the wire how a login is
//! routed by its mailbox's state, and how a state flip moves a mailbox
//! (its open session is told to reconnect, the next login lands on the new
//! store). Run with `bash .ci/demo` (installs what it needs) or
//! `cargo run --release --example demo`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;

use common::net::LineConn;
use common::world::{World, ALICE, BOB};
use ponte::route::{Change, MailboxState};

fn main() {
    ponte::observe::init();
    step("Starting a legacy and a new Dovecot on loopback, and ponte in front of them");
    let w = World::start();
    println!(
        "  legacy IMAPS  {}\n  new IMAP+STARTTLS {}\n  ponte IMAP {}  STARTTLS {}  IMAPS {}",
        w.legacy.imaps_addr().expect("legacy imaps"),
        w.new.imap_addr(),
        w.addr("imap"),
        w.addr("imap-starttls"),
        w.addr("imaps"),
    );
    println!("  configuration: {}/ponte.toml", w.dir.path().display());
    std::fs::write(w.dir.path().join("ponte.toml"), w.config()).expect("write config");

    step(
        "alice@pec.example: the domain is still `legacy`, so ponte logs her in at the legacy store",
    );
    let mut alice = session(
        w.addr("imap"),
        ALICE.address,
        ALICE.legacy_password.unwrap_or_default(),
    );

    step("bob@pec.example: the seed file marks him `migrated`, so the same hostname takes him to the new store");
    let mut bob = session(
        w.addr("imap"),
        BOB.address,
        BOB.new_password.unwrap_or_default(),
    );
    exchange(&mut bob, "z", "LOGOUT");

    step("An admin flips alice to `migrated`: her open session is told to reconnect");
    let ctx = &w.ponte().ctx;
    let rows = vec![(ALICE.address.to_string(), MailboxState::Migrated, None)];
    ctx.router
        .store()
        .apply(&Change::Mailboxes(rows), "demo")
        .expect("store");
    ctx.registry
        .kick_mailbox(ALICE.address, "Your mailbox has moved; please reconnect.");
    println!("  S: {}", alice.read_line().trim_end());

    step("alice reconnects to the same hostname and lands on the new store, with her new password");
    let mut alice = session(
        w.addr("imap"),
        ALICE.address,
        ALICE.new_password.unwrap_or_default(),
    );
    exchange(&mut alice, "z", "LOGOUT");
    step("Done: no client was reconfigured.");
}

fn step(text: &str) {
    println!("\n== {text}");
}

/// Logs in, selects INBOX and shows the subjects: they name the store.
fn session(addr: SocketAddr, user: &str, password: &str) -> LineConn<std::net::TcpStream> {
    let mut c = LineConn::tcp(addr);
    println!("  S: {}", c.read_line().trim_end());
    println!("  C: a LOGIN {user} ********");
    let r = c.imap(
        "a",
        &format!(
            "LOGIN \"{user}\" \"{}\"",
            password.replace('\\', "\\\\").replace('"', "\\\"")
        ),
    );
    println!("  S: a {}", r.status);
    exchange(&mut c, "b", "EXAMINE INBOX");
    exchange(
        &mut c,
        "c",
        "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
    );
    c
}

fn exchange(c: &mut LineConn<std::net::TcpStream>, tag: &str, command: &str) {
    println!("  C: {tag} {command}");
    let r = c.imap(tag, command);
    for line in r.text().lines().filter(|l| !l.trim().is_empty()) {
        println!("  S: {}", line.trim_end());
    }
    println!("  S: {tag} {}", r.status);
}
