//! OAuth 2.0 logins passed through (issue 9): Thunderbird and Outlook
//! accounts that use XOAUTH2 or OAUTHBEARER log in through ponte; ponte
//! routes by the user in the SASL message and hands the bearer token to
//! the backend as given. The backend is a real Dovecot with an oauth2
//! passdb that checks tokens against an introspection endpoint (a small
//! HTTP responder in this test): a good token logs in, a bad one gets
//! Dovecot's own refusal through ponte.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::thread;

use base64::Engine;
use common::dovecot::{Dovecot, DovecotOptions};
use common::net::LineConn;
use common::ponte::Ponte;

const USER: &str = "alice@pec.example";
const GOOD: &str = "good-token-for-alice";

/// Answers RFC 7662 introspection POSTs (`token=…`): active for GOOD.
fn introspection() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/introspect", listener.local_addr().unwrap());
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = BufReader::new(stream);
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let body = String::from_utf8_lossy(&body);
            let json = if body.contains(&format!("token={GOOD}")) {
                format!(r#"{{"active":"true","username":"{USER}"}}"#)
            } else {
                r#"{"active":"false"}"#.to_string()
            };
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                json.len()
            );
            let _ = r.get_mut().write_all(reply.as_bytes());
        }
    });
    url
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn xoauth2_and_oauthbearer_tokens_reach_the_backend_and_only_good_ones_log_in() {
    let mut opts = DovecotOptions::new("oauth", &[(USER, "alice-password")]);
    opts.oauth_introspection = Some(introspection());
    let dovecot = Dovecot::start(opts);
    let ponte = Ponte::start(&format!(
        r#"
[state]
path = "{dir}/state"
[spool]
path = "{dir}/spool"
[limits]
auth_failure_delay = "10ms"
[[listener]]
name = "imap"
protocol = "imap"
bind = "127.0.0.1:0"
oauth = true
[[listener]]
name = "pop3"
protocol = "pop3"
bind = "127.0.0.1:0"
oauth = true
[[listener]]
name = "submission"
protocol = "submission"
bind = "127.0.0.1:0"
oauth = true
[backend.legacy]
imap = "imap://{imap}"
pop3 = "pop3://{pop3}"
submission = "smtp://{submission}"
[backend.new]
imap = "imap://{imap}"
pop3 = "pop3://{pop3}"
submission = "smtp://{submission}"
[domain."pec.example"]
state = "legacy"
"#,
        dir = dovecot.dir().display(),
        imap = dovecot.imap_addr(),
        pop3 = dovecot.pop3_addr(),
        submission = dovecot.submission_addr(),
    ));
    let addr = ponte.addr("imap");

    let mut c = LineConn::tcp(addr);
    let greeting = c.read_line();
    assert!(
        greeting.contains("AUTH=XOAUTH2") && greeting.contains("AUTH=OAUTHBEARER"),
        "{greeting}"
    );
    let xoauth2 =
        |token: &str| b64(format!("user={USER}\x01auth=Bearer {token}\x01\x01").as_bytes());
    let r = c.imap("a", &format!("AUTHENTICATE XOAUTH2 {}", xoauth2(GOOD)));
    assert!(r.is_ok(), "{}", r.text());
    assert!(c.imap("b", "SELECT INBOX").is_ok());
    dovecot.wait_log("method=XOAUTH2");

    let mut c = LineConn::tcp(addr);
    c.read_line();
    let bearer =
        b64(format!("n,a={USER},\x01host=x\x01port=143\x01auth=Bearer {GOOD}\x01\x01").as_bytes());
    let r = c.imap("a", &format!("AUTHENTICATE OAUTHBEARER {bearer}"));
    assert!(r.is_ok(), "{}", r.text());
    dovecot.wait_log("method=OAUTHBEARER");

    // A bad token: Dovecot's refusal, through ponte, as a tagged NO.
    let mut c = LineConn::tcp(addr);
    c.read_line();
    let r = c.imap(
        "a",
        &format!("AUTHENTICATE XOAUTH2 {}", xoauth2("stolen-or-expired")),
    );
    assert!(r.status.starts_with("NO"), "{}", r.text());
    // Still usable: the password login works on the same connection.
    let r = c.imap("b", &format!("LOGIN {USER} alice-password"));
    assert!(r.is_ok(), "{}", r.text());

    // POP3 (RFC 5034 AUTH): the same, good token and bad.
    for (token, want) in [(GOOD, "+OK"), ("expired", "-ERR")] {
        let mut c = LineConn::tcp(ponte.addr("pop3"));
        c.read_line();
        c.send(&format!("AUTH XOAUTH2 {}", xoauth2(token)));
        let line = c.read_line();
        assert!(line.starts_with(want), "{token}: {line}");
    }

    // Submission (RFC 4954 AUTH): 235 for the good token, 535 for a bad one.
    for (token, want) in [(GOOD, "235"), ("expired", "535")] {
        let mut c = LineConn::tcp(ponte.addr("submission"));
        c.read_line();
        c.send("EHLO client.example");
        let mut line = c.read_line();
        let mut offered = false;
        while line.starts_with("250-") {
            offered |= line.contains("XOAUTH2");
            line = c.read_line();
        }
        assert!(offered || line.contains("XOAUTH2"), "XOAUTH2 not offered");
        c.send(&format!("AUTH XOAUTH2 {}", xoauth2(token)));
        let line = c.read_line();
        assert!(line.starts_with(want), "{token}: {line}");
    }

    // Without a user in the SASL message there is nothing to route by.
    let mut c = LineConn::tcp(addr);
    c.read_line();
    let r = c.imap(
        "a",
        &format!(
            "AUTHENTICATE OAUTHBEARER {}",
            b64(b"n,,\x01auth=Bearer x\x01\x01")
        ),
    );
    assert!(r.status.starts_with("NO"), "{}", r.text());
}
