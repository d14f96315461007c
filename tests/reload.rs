//! SIGHUP reloads the configuration of a running `ponte`: a new
//! certificate is presented to the next handshake while a session opened
//! before goes on; a bad file is refused and the old configuration stays.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use common::net::{connect, LineConn};
use common::process::Process;
use common::world::{World, ALICE, DAVE};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConnection, RootCertStore, StreamOwned};

type Tls = LineConn<StreamOwned<ClientConnection, TcpStream>>;

/// A TLS connection asking for `sni`, trusting the world's CA; returns it
/// (greeting read) and the certificate the server presented.
fn tls_connect(w: &World, addr: SocketAddr, sni: &str) -> (Tls, Vec<u8>) {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&w.ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let mut c = LineConn::new(StreamOwned::new(conn, connect(addr).unwrap()));
    assert!(c.read_line().starts_with("* OK"));
    let cert = c.get_mut().conn.peer_certificates().unwrap()[0].to_vec();
    (c, cert)
}

#[test]
fn sighup_swaps_the_certificate_for_new_handshakes_only() {
    let w = World::backends_only("");
    let (p, addrs) = Process::start(&w);
    let (mut old, old_cert) = tls_connect(&w, addrs["imaps"], "mbox.pec.example");
    assert!(old
        .imap(
            "a",
            &format!("LOGIN {} {}", ALICE.address, ALICE.legacy_password.unwrap())
        )
        .is_ok());

    // The operator renews the certificate in place and sends SIGHUP.
    w.ca.issue(&["mbox.pec.example", "tempmail.pec.example"])
        .write_to(w.dir.path(), "pec");
    p.signal(libc::SIGHUP);
    p.wait_log("configuration reloaded");

    let (mut new, new_cert) = tls_connect(&w, addrs["imaps"], "mbox.pec.example");
    assert_ne!(
        old_cert, new_cert,
        "the next handshake gets the new certificate"
    );
    assert!(new
        .imap(
            "a",
            &format!("LOGIN {} {}", DAVE.address, DAVE.legacy_password.unwrap())
        )
        .is_ok());
    // The session from before the reload goes on, on its old certificate.
    assert!(old.imap("b", "SELECT INBOX").is_ok());

    // A broken file is refused; the configuration in force stays.
    let good = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        good.replace("state = \"legacy\"", "state = \"sideways\""),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    let log = p.wait_log("reload refused");
    assert!(log.contains("sideways"), "the reason names the problem");
    let (_, cert) = tls_connect(&w, addrs["imaps"], "mbox.pec.example");
    assert_eq!(cert, new_cert);
    assert!(old.imap("c", "NOOP").is_ok());
}

#[test]
fn reload_adds_and_removes_listeners_without_touching_open_sessions() {
    let w = World::backends_only("");
    let (p, addrs) = Process::start(&w);
    let mut open = LineConn::tcp(addrs["imap"]);
    open.read_line();
    assert!(open
        .imap(
            "a",
            &format!("LOGIN {} {}", DAVE.address, DAVE.legacy_password.unwrap())
        )
        .is_ok());
    // Drop the plain listener, add one on a new port.
    let extra = common::net::loopback(common::net::free_port());
    let text = std::fs::read_to_string(&p.config).unwrap();
    let text = text.replacen("name = \"imap\"\n", "name = \"imap-new\"\n", 1);
    let text = text.replacen(
        &format!("bind = \"{}\"", addrs["imap"]),
        &format!("bind = \"{extra}\""),
        1,
    );
    std::fs::write(&p.config, text).unwrap();
    p.signal(libc::SIGHUP);
    p.wait_log("configuration reloaded");
    let mut c = LineConn::tcp(extra);
    assert!(c.read_line().starts_with("* OK"));
    assert!(
        connect(addrs["imap"])
            .map(|mut s| {
                use std::io::Read;
                s.read(&mut [0u8; 1]).unwrap_or(0)
            })
            .unwrap_or(0)
            == 0,
        "the old listener is closed"
    );
    assert!(
        open.imap("b", "SELECT INBOX").is_ok(),
        "its open session goes on"
    );
}

/// A domain's tempmail deadline moved in the file: open tempmail sessions
/// are sent to it (they ran under the old one), others are not touched.
#[test]
fn a_reload_that_moves_a_domains_tempmail_deadline_closes_the_views_running_under_the_old() {
    let w = World::backends_only("");
    let (p, addrs) = Process::start(&w);
    let set_deadline = |until: &str| {
        let text = std::fs::read_to_string(&p.config).unwrap();
        let text = match text.find("tempmail_until = ") {
            Some(at) => {
                let end = at + text[at..].find('\n').unwrap();
                format!(
                    "{}tempmail_until = \"{until}\"{}",
                    &text[..at],
                    &text[end..]
                )
            }
            None => text.replacen(
                "[domain.\"pec.example\"]\n",
                &format!("[domain.\"pec.example\"]\ntempmail_until = \"{until}\"\n"),
                1,
            ),
        };
        std::fs::write(&p.config, text).unwrap();
        p.signal(libc::SIGHUP);
    };
    set_deadline("2099-01-01T00:00:00Z");
    p.wait_log("configuration reloaded");
    let login = |listener: &str| {
        let mut c = LineConn::tcp(addrs[listener]);
        c.read_line();
        let r = c.imap(
            "a",
            &format!("LOGIN {} {}", DAVE.address, DAVE.legacy_password.unwrap()),
        );
        assert!(r.is_ok(), "{listener}: {}", r.status);
        c
    };
    let mut view = login("tempmail");
    let mut live = login("imap");
    set_deadline("2098-01-01T00:00:00Z");
    let bye = view.read_line();
    assert!(
        bye.starts_with("* BYE [ALERT]") && bye.contains("closing date"),
        "{bye}"
    );
    assert!(live.imap("b", "NOOP").is_ok(), "the live session goes on");
}
