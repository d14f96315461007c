//! Self-test of the test harness: real Dovecot instances side by side, TLS
//! with certificates from the test CA, and the mail store digest. If these
//! fail, every end-to-end test built on the harness is suspect.

#[path = "common/certs.rs"]
mod certs;
#[path = "common/dovecot.rs"]
mod dovecot;
#[path = "common/net.rs"]
mod net;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use certs::TestCa;
use dovecot::{Dovecot, DovecotOptions};
use net::{connect, LineConn};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls;

const ALICE: &str = "alice@pec.example";

fn message(subject: &str, body: &str) -> Vec<u8> {
    format!("From: bob@pec.example\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\r\n{body}\r\n")
        .into_bytes()
}

/// Logs in over plain IMAP; the tagged status of LOGIN.
fn imap_login(addr: SocketAddr, user: &str, pass: &str) -> (LineConn<std::net::TcpStream>, String) {
    let mut conn = LineConn::tcp(addr);
    assert!(conn.read_line().starts_with("* OK"));
    let status = conn
        .imap("a1", &format!("LOGIN \"{user}\" \"{pass}\""))
        .status;
    (conn, status)
}

#[test]
fn two_instances_keep_their_own_users_and_mail() {
    let t = Instant::now();
    let legacy = Dovecot::start(DovecotOptions::new("legacy", &[(ALICE, "old-secret")]));
    eprintln!("legacy started in {:?}", t.elapsed());
    let new = Dovecot::start(DovecotOptions::new("new", &[(ALICE, "new-secret")]));
    assert_ne!(legacy.imap_addr(), new.imap_addr());

    for (dovecot, good, bad) in [
        (&legacy, "old-secret", "new-secret"),
        (&new, "new-secret", "old-secret"),
    ] {
        let (_, status) = imap_login(dovecot.imap_addr(), ALICE, bad);
        assert!(
            status.starts_with("NO"),
            "{}: wrong password accepted: {status}",
            dovecot.name()
        );
        let (_, status) = imap_login(dovecot.imap_addr(), "nobody@pec.example", good);
        assert!(
            status.starts_with("NO"),
            "{}: unknown user accepted: {status}",
            dovecot.name()
        );
        let (_, status) = imap_login(dovecot.imap_addr(), "Alice@PEC.example", good);
        assert!(
            status.starts_with("OK"),
            "{}: login failed: {status}\n{}",
            dovecot.name(),
            dovecot.log()
        );
    }

    for n in 1..=3 {
        legacy.deliver(
            ALICE,
            "INBOX",
            &message(&format!("legacy {n}"), "hello from legacy"),
        );
    }
    let status = legacy.doveadm(&["mailbox", "status", "-u", ALICE, "messages", "INBOX"]);
    assert_eq!(status.trim(), "INBOX messages=3");
    let (mut conn, _) = imap_login(legacy.imap_addr(), ALICE, "old-secret");
    assert!(conn
        .imap("a2", "SELECT INBOX")
        .text()
        .contains("* 3 EXISTS"));
    let fetched = conn
        .imap(
            "a3",
            "FETCH 1:3 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT])",
        )
        .text();
    let order: Vec<_> = ["legacy 1", "legacy 2", "legacy 3"]
        .iter()
        .map(|s| fetched.find(s))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0].is_some() && w[0] < w[1]),
        "UID order:\n{fetched}"
    );
    assert!(
        fetched.contains("hello from legacy") && !fetched.contains("\\Seen"),
        "{fetched}"
    );

    let (mut conn, _) = imap_login(new.imap_addr(), ALICE, "new-secret");
    assert!(
        conn.imap("a2", "EXAMINE INBOX")
            .text()
            .contains("* 0 EXISTS"),
        "new instance sees legacy mail"
    );
}

#[test]
fn every_service_greets_and_forwarded_ip_is_logged() {
    let d = Dovecot::start(DovecotOptions::new("services", &[(ALICE, "pw")]));
    let mut pop3 = LineConn::tcp(d.pop3_addr());
    assert!(pop3.read_line().starts_with("+OK"));
    for (cmd, want) in [
        (format!("USER {ALICE}"), "+OK"),
        ("PASS pw".into(), "+OK Logged in"),
        ("QUIT".into(), "+OK"),
    ] {
        pop3.send(&cmd);
        assert!(pop3.read_line().starts_with(want), "POP3 {cmd}");
    }
    let mut lmtp = LineConn::tcp(d.lmtp_addr());
    assert!(lmtp.read_line().starts_with("220 "));
    let mut submission = LineConn::tcp(d.submission_addr());
    assert!(submission.read_line().starts_with("220 "));
    submission.send("EHLO client.test");
    while !submission.read_line().starts_with("250 ") {}
    submission.send("AUTH PLAIN AGFsaWNlQHBlYy5leGFtcGxlAHB3"); // \0alice@pec.example\0pw
    assert!(
        submission.read_line().starts_with("235 "),
        "submission AUTH\n{}",
        d.log()
    );

    // A proxy on a trusted network forwards the client's address with ID.
    let mut conn = LineConn::tcp(d.imap_addr());
    conn.read_line();
    assert!(conn
        .imap(
            "a1",
            r#"ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "4321")"#
        )
        .is_ok());
    assert!(conn.imap("a2", &format!("LOGIN {ALICE} pw")).is_ok());
    let log = d.wait_log("rip=192.0.2.7");
    assert!(log.contains(&format!("user=<{ALICE}>")), "{log}");

    // IDLE reports a message dropped into the Maildir (inotify, no polling wait).
    assert!(conn
        .imap("a3", "SELECT INBOX")
        .text()
        .contains("* 0 EXISTS"));
    conn.send("a4 IDLE");
    assert!(conn.read_line().starts_with("+ "));
    d.deliver(ALICE, "INBOX", &message("idle", "wake up"));
    while conn.read_line() != "* 1 EXISTS" {}
    conn.send("DONE");
    assert!(conn.imap_until_tagged("a4").is_ok());
}

/// A rustls client trusting only `ca_pem`, like ponte's backend connector.
fn tls_conn(
    addr: SocketAddr,
    ca_pem: &str,
) -> LineConn<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1")
        .expect("server name")
        .to_owned();
    let tls = rustls::ClientConnection::new(Arc::new(config), name).expect("client connection");
    LineConn::new(rustls::StreamOwned::new(
        tls,
        connect(addr).expect("connect"),
    ))
}

#[test]
fn implicit_tls_verifies_against_the_test_ca() {
    let ca = TestCa::new("ponte test CA");
    let leaf = ca.issue(&["127.0.0.1", "legacy.pec.example"]);
    let files = tempfile::tempdir().expect("tempdir");
    let (cert, key) = leaf.write_to(files.path(), "legacy");
    let ca_file = ca.write_to(files.path(), "ca");
    let opts = DovecotOptions {
        tls: Some((cert, key)),
        ..DovecotOptions::new("tls", &[(ALICE, "pw")])
    };
    let d = Dovecot::start(opts);

    // rustls (webpki) with an IP-address server name: checks the IP SAN.
    let mut imaps = tls_conn(d.imaps_addr().expect("imaps"), &ca.cert_pem);
    assert!(imaps.read_line().starts_with("* OK"));
    assert!(imaps.imap("a1", &format!("LOGIN {ALICE} pw")).is_ok());
    let mut pop3s = tls_conn(d.pop3s_addr().expect("pop3s"), &ca.cert_pem);
    assert!(pop3s.read_line().starts_with("+OK"));

    // The same server must be refused by a client trusting another CA.
    let other = TestCa::new("unrelated CA");
    let err = tls_conn(d.imaps_addr().unwrap(), &other.cert_pem)
        .try_read_line()
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // An independent TLS stack (curl/OpenSSL): implicit TLS and STARTTLS.
    let imaps_url = format!("imaps://{}/", d.imaps_addr().unwrap());
    let starttls_url = format!("imap://{}/", d.imap_addr());
    for (url, extra) in [
        (imaps_url.as_str(), None),
        (starttls_url.as_str(), Some("--ssl-reqd")),
    ] {
        let out = curl(&ca_file, url, extra);
        assert!(out.contains("INBOX"), "curl {url}: {out}");
    }
}

fn curl(ca_file: &std::path::Path, url: &str, extra: Option<&str>) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(ca_file)
        .args(["-u", &format!("{ALICE}:pw"), url])
        .args(extra)
        .output()
        .expect("run curl (apt-get install curl)");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn store_digest_survives_a_read_only_session() {
    let d = Dovecot::start(DovecotOptions::new("digest", &[(ALICE, "pw")]));
    d.deliver(ALICE, "INBOX", &message("one", "first"));
    d.deliver_flagged(ALICE, "INBOX", &message("two", "second"), "S");
    d.deliver(ALICE, "Archive/2023", &message("old", "archived"));
    let before = d.store_digest(ALICE);
    assert!(
        d.store_manifest(ALICE).contains("D .Archive.2023"),
        "{}",
        d.store_manifest(ALICE)
    );

    let (mut conn, _) = imap_login(d.imap_addr(), ALICE, "pw");
    assert!(conn
        .imap("a2", "EXAMINE INBOX")
        .text()
        .contains("* 2 EXISTS"));
    assert!(conn
        .imap("a3", "FETCH 1:* (FLAGS BODY.PEEK[])")
        .text()
        .contains("first"));
    assert!(conn
        .imap("a4", "EXAMINE Archive.2023")
        .text()
        .contains("* 1 EXISTS"));
    assert!(conn
        .imap("a5", "FETCH 1 BODY.PEEK[TEXT]")
        .text()
        .contains("archived"));
    assert!(conn.imap("a6", "LOGOUT").is_ok());
    assert_eq!(
        d.store_digest(ALICE),
        before,
        "read-only session changed the store:\n{}",
        d.store_manifest(ALICE)
    );

    // The digest must notice what a read-write session does: \Seen via BODY[].
    let (mut conn, _) = imap_login(d.imap_addr(), ALICE, "pw");
    assert!(conn.imap("a2", "SELECT INBOX").is_ok());
    assert!(conn.imap("a3", "FETCH 1 BODY[]").is_ok());
    assert!(conn.imap("a4", "LOGOUT").is_ok());
    assert_ne!(d.store_digest(ALICE), before, "digest missed a flag change");
}
