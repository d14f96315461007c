//! ponte behind a load balancer (issue 9): a listener with
//! `proxy_protocol = true` takes the PROXY header (v1 text, v2 binary) from
//! its trusted balancer and forwards the client address it names to the
//! backend, whose log shows it; a connection from anyone else is closed
//! without a word, and so is one whose header is not a PROXY header.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::net::LineConn;
use common::world::{World, ALICE};
use tokio::net::TcpSocket;

const LISTENER: &str = r#"
[[listener]]
name = "imap-proxied"
protocol = "imap"
bind = "127.0.0.1:0"
proxy_protocol = true
proxy_trusted = ["127.0.0.1/32"]
"#;

/// Logs in after sending `header`; the tagged answer.
fn login_behind(addr: SocketAddr, header: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.write_all(header).expect("header");
    let mut c = LineConn::new(tcp);
    let greeting = c.read_line();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let r = c.imap(
        "a",
        &format!("LOGIN {} {}", ALICE.address, ALICE.legacy_password.unwrap()),
    );
    r.status
}

#[test]
fn proxy_headers_from_the_balancer_name_the_client_and_others_are_refused() {
    let mut w = World::backends_only("");
    let config = format!("{}{LISTENER}", w.config());
    w.start_config(&config);
    let addr = w.addr("imap-proxied");

    // v1, IPv4.
    let status = login_behind(addr, b"PROXY TCP4 192.0.2.7 127.0.0.1 50123 993\r\n");
    assert!(status.starts_with("OK"), "{status}");
    w.legacy.wait_log("rip=192.0.2.7");

    // v2, IPv6, built with the same crate's writer.
    let client: SocketAddr = "[2001:db8::7]:50124".parse().unwrap();
    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, "[2001:db8::1]:993".parse::<SocketAddr>().unwrap()),
    )
    .build()
    .unwrap();
    let status = login_behind(addr, &v2);
    assert!(status.starts_with("OK"), "{status}");
    w.legacy.wait_log("rip=2001:db8::7");

    // Not a PROXY header from the balancer: closed, no greeting.
    assert_eq!(
        closed_without_a_word(addr, "127.0.0.1", b"a LOGIN x y\r\n"),
        ""
    );

    // From 127.0.0.2, not a trusted balancer: closed, no greeting, even
    // with a well-formed header claiming any address.
    let said = closed_without_a_word(
        addr,
        "127.0.0.2",
        b"PROXY TCP4 10.9.9.9 127.0.0.1 1 993\r\n",
    );
    assert_eq!(said, "");
    assert!(!w.legacy.log().contains("rip=10.9.9.9"));
}

/// Connects from `source`, sends `bytes`, and returns whatever ponte said
/// before closing (panics if it keeps the connection open).
fn closed_without_a_word(addr: SocketAddr, source: &str, bytes: &[u8]) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let std = rt.block_on(async {
        let s = TcpSocket::new_v4().unwrap();
        s.bind(format!("{source}:0").parse().unwrap()).unwrap();
        s.connect(addr).await.unwrap().into_std().unwrap()
    });
    std.set_nonblocking(false).unwrap();
    std.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tcp = std;
    let _ = tcp.write_all(bytes);
    let mut out = Vec::new();
    match tcp.read_to_end(&mut out) {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            String::from_utf8_lossy(&out).into_owned()
        }
        Err(e) => panic!(
            "still open after 5 s ({e}); said {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
}
