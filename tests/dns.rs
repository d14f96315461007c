//! MX-then-address resolution against a real DNS server (dnsmasq on a
//! loopback port): preference order, equal preferences, the implicit MX,
//! null MX, NXDOMAIN, a nameserver that never answers, and connecting to
//! the mail host an MX record points at. Every address is in 127.0.0.0/8.

#[path = "common/dnsmasq.rs"]
mod dnsmasq;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dnsmasq::{silent_nameserver, Dnsmasq, DnsmasqOptions};
use ponte::net::dns::{ConnectError, Dns, DnsError, DnsOptions, MailHost};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ZONE: &str = "test.example";
const TIMEOUT: Duration = Duration::from_millis(500);

fn zone() -> Dnsmasq {
    DnsmasqOptions::new()
        .local(ZONE)
        // Two preferences, listed worst first.
        .mx("ordered.test.example", "backup.test.example", 20)
        .mx("ordered.test.example", "primary.test.example", 10)
        .host("primary.test.example", "127.0.0.2")
        .host("backup.test.example", "127.0.0.3")
        // Equal preferences.
        .mx("equal.test.example", "e1.test.example", 10)
        .mx("equal.test.example", "e2.test.example", 10)
        .host("e1.test.example", "127.0.0.4")
        .host("e2.test.example", "127.0.0.5")
        // No MX: the domain's own address.
        .host("plain.test.example", "127.0.0.6")
        // No MX and no address.
        .arg("--txt-record=bare.test.example,exists")
        // One MX host without an address, one with.
        .mx("halfbroken.test.example", "ghost.test.example", 5)
        .mx("halfbroken.test.example", "real.test.example", 10)
        .host("real.test.example", "127.0.0.7")
        // Only MX hosts without addresses.
        .mx("broken.test.example", "ghost.test.example", 10)
        .null_mx("nullmx.test.example")
        // Connect: the preferred host refuses, the next one listens.
        .mx("connect.test.example", "down.test.example", 10)
        .mx("connect.test.example", "up.test.example", 20)
        .host("down.test.example", "127.0.0.9")
        .host("up.test.example", "127.0.0.2")
        .start()
}

fn resolver(nameserver: SocketAddr) -> Dns {
    Dns::new(&DnsOptions {
        nameservers: vec![nameserver],
        timeout: TIMEOUT,
        attempts: 2,
    })
    .expect("resolver")
}

fn summary(hosts: &[MailHost]) -> Vec<(String, u16, Vec<IpAddr>)> {
    hosts
        .iter()
        .map(|h| (h.name.clone(), h.preference, h.addrs.clone()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Bounds a lookup so a broken resolver fails the test instead of hanging it.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("lookup took over 10 s")
}

#[tokio::test]
async fn mx_hosts_come_in_preference_order() {
    let server = zone();
    let dns = resolver(server.addr());
    let hosts = bounded(dns.mail_hosts("ordered.test.example"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!(
        summary(&hosts),
        [
            ("primary.test.example".into(), 10, vec![ip("127.0.0.2")]),
            ("backup.test.example".into(), 20, vec![ip("127.0.0.3")]),
        ]
    );
}

#[tokio::test]
async fn equal_preferences_are_both_present_in_either_order() {
    let server = zone();
    let dns = resolver(server.addr());
    let mut firsts = BTreeSet::new();
    // Answers come from the cache after the first lookup; the shuffle is
    // ours, so 40 lookups show both orders but for a 2^-39 chance.
    for _ in 0..40 {
        let hosts = bounded(dns.mail_hosts("equal.test.example")).await.unwrap();
        let mut names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        firsts.insert(names[0].to_string());
        names.sort();
        assert_eq!(names, ["e1.test.example", "e2.test.example"]);
        assert!(hosts.iter().all(|h| h.preference == 10));
    }
    assert_eq!(
        firsts.len(),
        2,
        "equal preferences are shuffled: {firsts:?}"
    );
}

#[tokio::test]
async fn without_mx_the_domain_itself_is_the_mail_host() {
    let server = zone();
    let dns = resolver(server.addr());
    let hosts = bounded(dns.mail_hosts("plain.test.example")).await.unwrap();
    assert_eq!(
        summary(&hosts),
        [("plain.test.example".into(), 0, vec![ip("127.0.0.6")])]
    );
    // A domain with neither MX nor address cannot receive mail.
    let e = bounded(dns.mail_hosts("bare.test.example"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, DnsError::NoAddress { .. }) && e.is_permanent(),
        "{e:?}"
    );
}

#[tokio::test]
async fn mx_hosts_without_addresses_are_skipped() {
    let server = zone();
    let dns = resolver(server.addr());
    let hosts = bounded(dns.mail_hosts("halfbroken.test.example"))
        .await
        .unwrap();
    assert_eq!(
        summary(&hosts),
        [("real.test.example".into(), 10, vec![ip("127.0.0.7")])]
    );
    let e = bounded(dns.mail_hosts("broken.test.example"))
        .await
        .unwrap_err();
    assert!(matches!(e, DnsError::Temporary { .. }), "{e:?}");
    assert!(!e.is_permanent());
}

#[tokio::test]
async fn null_mx_is_permanent() {
    let server = zone();
    let dns = resolver(server.addr());
    let e = bounded(dns.mail_hosts("nullmx.test.example"))
        .await
        .unwrap_err();
    assert!(matches!(e, DnsError::NullMx { .. }), "{e:?}");
    assert!(e.is_permanent());
}

#[tokio::test]
async fn unknown_domain_is_permanent() {
    let server = zone();
    let dns = resolver(server.addr());
    let e = bounded(dns.mail_hosts("nowhere.test.example"))
        .await
        .unwrap_err();
    assert!(matches!(e, DnsError::NoSuchDomain { .. }), "{e:?}");
    assert!(e.is_permanent());
}

#[tokio::test]
async fn refused_query_is_temporary() {
    // Outside every local zone and without upstream servers, dnsmasq
    // answers REFUSED: the server's problem, not the domain's.
    let server = zone();
    let dns = resolver(server.addr());
    let e = bounded(dns.mail_hosts("elsewhere.example"))
        .await
        .unwrap_err();
    assert!(matches!(e, DnsError::Temporary { .. }), "{e:?}");
}

#[tokio::test]
async fn silent_nameserver_is_temporary_within_the_timeout() {
    let (_socket, addr) = silent_nameserver();
    let dns = resolver(addr);
    let started = Instant::now();
    let e = bounded(dns.mail_hosts("ordered.test.example"))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, DnsError::Temporary { .. }), "{e:?}");
    // Two tries of TIMEOUT each, plus the query limit's slack.
    assert!(took >= TIMEOUT, "gave up early: {took:?}");
    assert!(took < TIMEOUT * 2 + Duration::from_secs(1), "took {took:?}");
    let e = bounded(dns.connect_mail_host("ordered.test.example", 25, TIMEOUT))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConnectError::Dns(DnsError::Temporary { .. })),
        "{e:?}"
    );
    assert!(!e.is_permanent());
}

#[tokio::test]
async fn connects_to_the_first_reachable_mx_host() {
    // up.test.example is 127.0.0.2; down.test.example (127.0.0.9, more
    // preferred) has nothing listening on the port and refuses.
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = zone();
    let dns = resolver(server.addr());
    let accept = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        conn.write_all(b"220 up ESMTP\r\n").await.unwrap();
    });
    let (mut tcp, host) = bounded(dns.connect_mail_host("connect.test.example", port, TIMEOUT))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!(host, "up.test.example");
    assert_eq!(
        tcp.peer_addr().unwrap(),
        SocketAddr::from(([127, 0, 0, 2], port))
    );
    let mut greeting = [0u8; 14];
    bounded(tcp.read_exact(&mut greeting)).await.unwrap();
    assert_eq!(&greeting, b"220 up ESMTP\r\n");
    bounded(accept).await.unwrap();
}

#[tokio::test]
async fn unreachable_mail_hosts_are_temporary() {
    let server = zone();
    let dns = resolver(server.addr());
    // Nothing listens on 127.0.0.2/3 at this port (just freed).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = bounded(dns.connect_mail_host("ordered.test.example", port, TIMEOUT))
        .await
        .unwrap_err();
    match &e {
        ConnectError::Unreachable { tried, .. } => assert_eq!(*tried, 2, "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(!e.is_permanent());
}

#[tokio::test]
async fn address_literals_skip_the_dns() {
    // The silent nameserver would make any lookup time out.
    let (_socket, addr) = silent_nameserver();
    let dns = resolver(addr);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let started = Instant::now();
    let (_tcp, host) = bounded(dns.connect_mail_host("[127.0.0.1]", port, TIMEOUT))
        .await
        .unwrap();
    assert_eq!(host, "[127.0.0.1]");
    assert!(started.elapsed() < TIMEOUT);
    let e = bounded(dns.mail_hosts("bücher.test.example"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, DnsError::NonAscii { .. }) && e.is_permanent(),
        "{e:?}"
    );
}
