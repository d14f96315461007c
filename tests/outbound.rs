//! Mail ponte sends outside the managed domains, and backends named by
//! domain: a DSN for a sender at another provider goes to that domain's
//! MX host, found with a real DNS server (dnsmasq) on loopback; a null
//! MX domain gets none and the spool still empties. Mail hosts that offer
//! STARTTLS get the message over TLS; one whose handshake fails gets it in
//! clear text on a second connection. Only 127.0.0.0/8.

mod common;

use std::time::{Duration, Instant};

use common::admin::Api;
use common::dnsmasq::DnsmasqOptions;
use common::net::LineConn;
use common::smtp_sink::{SinkTls, SmtpSink};
use common::world::World;
use serde_json::json;

fn set_state(w: &World, address: &str, state: &str) {
    let api = Api::new(w.addr("admin"));
    let (code, body) = api.send_json(
        "PUT",
        &format!("/api/mailboxes/{address}"),
        &json!({ "state": state }),
    );
    assert_eq!(code, 200, "{body}");
}

/// Sends one message with a raw SMTP dialogue; the reply to DATA's end.
fn send(w: &World, from: &str, to: &str, tag: &str) -> String {
    let mut c = LineConn::tcp(w.addr("inbound"));
    let reply = |c: &mut LineConn<_>, want: &str| {
        // The last line of a (possibly multi-line) reply.
        let mut line = c.read_line();
        while line.as_bytes().get(3) == Some(&b'-') {
            line = c.read_line();
        }
        assert!(line.starts_with(want), "wanted {want}, got {line}");
    };
    reply(&mut c, "220");
    for (line, want) in [
        ("EHLO mx.other.example\r\n".to_string(), "250"),
        (format!("MAIL FROM:<{from}>\r\n"), "250"),
        (format!("RCPT TO:<{to}>\r\n"), "250"),
        ("DATA\r\n".to_string(), "354"),
    ] {
        c.send_raw(line.as_bytes());
        reply(&mut c, want);
    }
    c.send_raw(format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {tag}\r\nMessage-ID: <{tag}@other.example>\r\n\r\nbody\r\n.\r\n"
    ).as_bytes());
    c.read_line()
}

fn spool_empty(w: &World) -> bool {
    std::fs::read_dir(w.dir.path().join("spool").join("env"))
        .map(|d| d.count() == 0)
        .unwrap_or(true)
}

#[test]
fn a_dsn_for_another_providers_sender_goes_to_its_mx_and_a_null_mx_gets_none() {
    let sink = SmtpSink::start_tls("mx.other.example", SinkTls::Offer);
    let dns = DnsmasqOptions::new()
        .local("other.example")
        .local("nomail.example")
        .mx("other.example", "mx.other.example", 10)
        .host("mx.other.example", "127.0.0.1")
        .null_mx("nomail.example")
        .start();
    let outbound = format!(
        "\n[outbound]\nhostname = \"mx.pec.example\"\nnameservers = [\"{}\"]\nmx_port = {}\n",
        dns.addr(),
        sink.addr().port()
    );
    let w = World::start_with(&outbound);
    let ghost = "ghost@pec.example";
    set_state(&w, ghost, "blackout");
    let out = send(&w, "mittente@other.example", ghost, "to-mx");
    assert!(out.starts_with("250"), "{out}");
    let out = send(&w, "someone@nomail.example", ghost, "to-null-mx");
    assert!(out.starts_with("250"), "{out}");

    set_state(&w, ghost, "migrated");
    let got = sink.wait_for(1);
    assert!(got[0].tls, "the MX host offered STARTTLS");
    assert_eq!(got[0].mail_from, "", "a DSN has the null sender");
    assert_eq!(got[0].rcpt_to, ["mittente@other.example"]);
    assert_eq!(got[0].helo, "mx.pec.example");
    let text = got[0].text();
    for needle in [
        "report-type=delivery-status",
        "Reporting-MTA: dns; mx.pec.example",
        "Final-Recipient: rfc822; ghost@pec.example",
        "Status: 5.1.1",
        "Message-ID: <to-mx@other.example>",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    let start = Instant::now();
    while !spool_empty(&w) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        spool_empty(&w),
        "the failures, the DSN and the undeliverable DSN all leave the spool"
    );
    assert_eq!(sink.settle().len(), 1, "nothing for the null MX domain");
}

#[test]
fn a_backend_named_by_domain_gets_inbound_mail_at_its_mx_host_over_tls() {
    let got = to_backend_mx_host(SinkTls::Offer);
    assert!(got.tls, "the MX host offered STARTTLS");
}

#[test]
fn an_mx_host_whose_tls_handshake_fails_gets_the_mail_in_clear_text() {
    let got = to_backend_mx_host(SinkTls::Broken);
    assert!(!got.tls);
}

/// Mail for carol (migrated) to the new backend, whose inbound endpoint
/// is `mx://new-provider.example` and whose MX host is a sink that does
/// `tls`: what it received, once.
fn to_backend_mx_host(tls: SinkTls) -> common::smtp_sink::Received {
    // The new backend's inbound endpoint becomes mx://new-provider.example
    // (port: the sink's), whose MX host is the SMTP sink on loopback.
    let sink = SmtpSink::start_tls("mx.new-provider.example", tls);
    let dns = DnsmasqOptions::new()
        .local("new-provider.example")
        .mx("new-provider.example", "mx1.new-provider.example", 10)
        .host("mx1.new-provider.example", "127.0.0.1")
        .start();
    let mut w = World::backends_only(&format!(
        "\n[outbound]\nnameservers = [\"{}\"]\n",
        dns.addr()
    ));
    let config = w.config().replace(
        &format!("inbound = \"lmtp://{}\"", w.new.lmtp_addr()),
        &format!(
            "inbound = \"mx://new-provider.example:{}\"",
            sink.addr().port()
        ),
    );
    assert!(config.contains("mx://new-provider.example"));
    w.start_config(&config);
    // carol's domain is migrated: relayed at once, to the MX host.
    let out = send(
        &w,
        "mittente@other.example",
        common::world::CAROL.address,
        "via-mx",
    );
    assert!(out.starts_with("250"), "{out}");
    let got = sink.wait_for(1);
    assert_eq!(got[0].rcpt_to, [common::world::CAROL.address]);
    assert!(got[0].text().contains("Message-ID: <via-mx@other.example>"));
    assert_eq!(sink.settle().len(), 1, "delivered once");
    got[0].clone()
}

#[test]
fn a_dsn_to_an_mx_host_whose_tls_fails_goes_in_clear_text() {
    let sink = SmtpSink::start_tls("mx.other.example", SinkTls::Broken);
    let dns = DnsmasqOptions::new()
        .local("other.example")
        .mx("other.example", "mx.other.example", 10)
        .host("mx.other.example", "127.0.0.1")
        .start();
    let outbound = format!(
        "\n[outbound]\nhostname = \"mx.pec.example\"\nnameservers = [\"{}\"]\nmx_port = {}\n",
        dns.addr(),
        sink.addr().port()
    );
    let w = World::start_with(&outbound);
    let ghost = "ghost@pec.example";
    set_state(&w, ghost, "blackout");
    let out = send(&w, "mittente@other.example", ghost, "tls-broken");
    assert!(out.starts_with("250"), "{out}");
    set_state(&w, ghost, "migrated");
    let got = sink.wait_for(1);
    assert!(!got[0].tls);
    assert_eq!(got[0].rcpt_to, ["mittente@other.example"]);
    assert!(got[0]
        .text()
        .contains("Message-ID: <tls-broken@other.example>"));
    assert_eq!(sink.settle().len(), 1, "delivered once");
}
