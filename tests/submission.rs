//! SMTP submission end to end: real Dovecot submission services (legacy
//! and new) relaying to SMTP sinks, ponte in front on a 587-style
//! (STARTTLS) and a 465-style (implicit TLS) listener, driven by real
//! clients (swaks, Python smtplib, curl) and raw sockets.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::admin::Api;
use common::clients::{curl, python};
use common::net::{connect, LineConn};
use common::ponte::Ponte;
use common::smtp_sink::SmtpSink;
use common::world::{User, World, ALICE, BOB, CAROL, DAVE};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio_rustls::rustls;

/// The name ponte's certificate is issued for (SNI and verification).
const HOST: &str = "mbox.pec.example";
const RCPT: &str = "protocollo@destinatario.example";

/// A message as a PEC client would submit it: a signed-looking header
/// block (folded lines, base64, trailing spaces), 8-bit text and lines
/// that start with a dot. Any rewriting shows as a byte difference.
fn signed_message(tag: &str, from: &str) -> Vec<u8> {
    format!(
        "DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; d=pec.example; s=pec;\r\n\
         \th=from:to:subject:message-id:x-riferimento-message-id;\r\n\
         \tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n\
         \tb=c2lnbmF0dXJlIHRoYXQgbXVzdCBub3QgY2hhbmdlIGJ5IGEgc2luZ2xlIGJ5dGU=\r\n\
         X-Riferimento-Message-ID: <{tag}@pec.example>  \r\n\
         From: {from}\r\n\
         To: {RCPT}\r\n\
         Subject: =?UTF-8?Q?Ricevuta_di_accettazione_{tag}?=\r\n\
         Message-ID: <{tag}@pec.example>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         Caffè e perché — body of {tag}.\r\n\
         .a line that starts with a dot\r\n\
         ..and one with two\r\n\
         \ttabbed   trailing spaces   \r\n\
         \r\n\
         Last line.\r\n"
    )
    .into_bytes()
}

/// Writes the message to a file in the world's directory.
fn message_file(w: &World, tag: &str, from: &str) -> (Vec<u8>, PathBuf) {
    let msg = signed_message(tag, from);
    let path = w.dir.path().join(format!("{tag}.eml"));
    std::fs::write(&path, &msg).expect("write message");
    (msg, path)
}

/// The message dot-stuffed (RFC 5321 §4.5.2), as a client sends it.
fn dot_stuffed(msg: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for line in msg.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    data
}

/// Asserts that `sink` got `msg` exactly once, unchanged but for the
/// backend's own `Received:` header in front, for `from` → [`RCPT`]; and
/// returns that header block.
fn assert_delivered_once(sink: &SmtpSink, msg: &[u8], from: &str) -> String {
    let got = sink.wait_for(1);
    let got = if got.len() == 1 { sink.settle() } else { got };
    assert_eq!(got.len(), 1, "delivered {} times: {got:?}", got.len());
    let m = &got[0];
    assert_eq!(
        (m.mail_from.as_str(), &m.rcpt_to[..]),
        (from, &[RCPT.to_string()][..])
    );
    assert!(
        m.data.ends_with(msg),
        "message changed on the way:\nsent:\n{}\nreceived:\n{}",
        String::from_utf8_lossy(msg),
        m.text()
    );
    let trace = String::from_utf8_lossy(&m.data[..m.data.len() - msg.len()]).into_owned();
    assert!(trace.starts_with("Received: "), "{trace}");
    assert_eq!(trace.matches("\r\nReceived: ").count(), 0, "{trace}");
    trace
}

/// Submits a fresh signed message from `user` with swaks through
/// `listener`; `options` are swaks options and their values (`""` for a
/// flag). Returns the message and swaks's transcript.
fn swaks_submit(
    w: &World,
    listener: &str,
    user: &User,
    password: Option<&str>,
    options: &[(&str, &str)],
) -> (Vec<u8>, String) {
    let tag = format!("swaks-{listener}-{}", user.address);
    let (msg, _) = message_file(w, &tag, user.address);
    // `--no-data-fixup` sends the file verbatim: stuffed and terminated.
    let mut data = dot_stuffed(&msg);
    data.extend_from_slice(b".\r\n");
    let data_file = w.dir.path().join(format!("{tag}.swaks"));
    std::fs::write(&data_file, data).expect("write swaks data");
    let server = w.addr(listener).to_string();
    let data_arg = format!("@{}", data_file.display());
    let mut args = vec!["--timeout", "10", "--no-data-fixup"];
    for (option, value) in [
        ("--server", server.as_str()),
        ("--auth-user", user.address),
        (
            "--auth-password",
            password.expect("a password on that backend"),
        ),
        ("--from", user.address),
        ("--to", RCPT),
        ("--data", &data_arg),
    ]
    .iter()
    .chain(options)
    {
        args.push(option);
        if !value.is_empty() {
            args.push(value);
        }
    }
    let out = Command::new("timeout")
        .arg("30")
        .arg("swaks")
        .args(&args)
        .output()
        .expect("run swaks");
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "swaks {args:?}:\n{transcript}{errors}"
    );
    (msg, transcript)
}

#[test]
fn swaks_submits_through_starttls_and_implicit_tls() {
    let w = World::start();
    let ca = w.ca_file.display().to_string();
    let verify = [
        ("--tls-verify", ""),
        ("--tls-ca-path", &ca),
        ("--tls-sni", HOST),
    ];
    let starttls = [("--tls", ""), ("--auth", "PLAIN")];
    let (msg, transcript) = swaks_submit(
        &w,
        "submission",
        &ALICE,
        ALICE.legacy_password,
        &[&verify[..], &starttls].concat(),
    );
    assert!(
        transcript.contains("<-  220 ponte ESMTP ready")
            && transcript.contains("<~  235 2.7.0 Authentication successful"),
        "{transcript}"
    );
    assert_delivered_once(&w.legacy_sink, &msg, ALICE.address);

    let implicit = [("--tls-on-connect", ""), ("--auth", "LOGIN")];
    let (msg, transcript) = swaks_submit(
        &w,
        "submissions",
        &BOB,
        BOB.new_password,
        &[&verify[..], &implicit].concat(),
    );
    assert!(
        transcript.contains(&format!("<~  220 {HOST} ESMTP ready")),
        "{transcript}"
    );
    assert_delivered_once(&w.new_sink, &msg, BOB.address);
    assert_eq!(w.legacy_sink.messages().len(), 1);
}

#[test]
fn client_address_and_helo_reach_the_backend() {
    let w = World::start();
    // From 127.0.0.2: ponte itself talks to the backend from 127.0.0.1.
    let options = [
        ("--tls-on-connect", ""),
        ("--local-interface", "127.0.0.2"),
        ("--ehlo", "client.example"),
        ("--auth", "PLAIN"),
    ];
    let (msg, _) = swaks_submit(&w, "submissions", &DAVE, DAVE.legacy_password, &options);
    let trace = assert_delivered_once(&w.legacy_sink, &msg, DAVE.address);
    assert!(
        trace.starts_with("Received: from client.example ([127.0.0.2])"),
        "{trace}"
    );
    let log = w.legacy.wait_log("rip=127.0.0.2");
    assert!(log.contains(&format!("user=<{}>", DAVE.address)), "{log}");
}

/// smtplib through ponte: `mode` `starttls` or `ssl`, `mech` `plain`
/// (`login()`), `login` (no initial response) or `login-ir`. The message
/// goes as bytes, so smtplib changes nothing but the dot-stuffing. The
/// host name resolves to 127.0.0.1 so that the certificate is verified.
const SMTPLIB_SEND: &str = r#"
import smtplib, socket, ssl, sys
mode, mech, port, ca, user, pw, rcpt, path = sys.argv[1:9]
real = socket.getaddrinfo
socket.getaddrinfo = lambda h, *a, **k: real("127.0.0.1" if h == "mbox.pec.example" else h, *a, **k)
ctx = ssl.create_default_context(cafile=ca)
if mode == "starttls":
    s = smtplib.SMTP("mbox.pec.example", int(port), local_hostname="client.example", timeout=10)
    s.starttls(context=ctx)
else:
    s = smtplib.SMTP_SSL("mbox.pec.example", int(port), local_hostname="client.example", context=ctx, timeout=10)
if mech == "plain":
    code, text = s.login(user, pw)
else:
    # RFC 3207 §4.2: EHLO again after TLS; login() does it itself.
    s.ehlo()
    s.user, s.password = user, pw
    code, text = s.auth("LOGIN", s.auth_login, initial_response_ok=(mech == "login-ir"))
print(code, text.decode())
print("refused:", s.sendmail(user, [rcpt], open(path, "rb").read()))
s.quit()
"#;

/// Sends a fresh signed message from `user` with smtplib; returns it.
fn smtplib_submit(
    w: &World,
    mode: &str,
    mech: &str,
    user: &User,
    password: Option<&str>,
) -> Vec<u8> {
    let listener = if mode == "ssl" {
        "submissions"
    } else {
        "submission"
    };
    let tag = format!("smtplib-{mode}-{mech}-{}", user.address);
    let (msg, path) = message_file(w, &tag, user.address);
    let port = w.addr(listener).port().to_string();
    let ca = w.ca_file.display().to_string();
    let path = path.display().to_string();
    let password = password.expect("a password on that backend");
    let args = [mode, mech, &port, &ca, user.address, password, RCPT, &path];
    let out = python(SMTPLIB_SEND, &args).expect_ok(&tag).stdout;
    assert!(out.starts_with("235 2.7.0"), "{tag}: {out}");
    assert!(out.contains("refused: {}"), "{tag}: {out}");
    msg
}

#[test]
fn python_smtplib_submits_with_plain_and_login() {
    let w = World::start();
    let msg = smtplib_submit(&w, "starttls", "plain", &ALICE, ALICE.legacy_password);
    assert_delivered_once(&w.legacy_sink, &msg, ALICE.address);
    let msg = smtplib_submit(&w, "ssl", "login", &CAROL, CAROL.new_password);
    assert_delivered_once(&w.new_sink, &msg, CAROL.address);
    let msg = smtplib_submit(&w, "starttls", "login-ir", &BOB, BOB.new_password);
    let got = w.new_sink.wait_for(2);
    assert!(got[1].data.ends_with(&msg) && !got[0].data.ends_with(&msg));
    assert_eq!(w.legacy_sink.settle().len(), 1);
}

/// Sends a fresh signed message from `user` with curl (`smtp` with
/// STARTTLS required, or `smtps`) and SASL `mech`; returns it.
fn curl_submit(
    w: &World,
    scheme: &str,
    mech: &str,
    user: &User,
    password: Option<&str>,
) -> Vec<u8> {
    let listener = if scheme == "smtps" {
        "submissions"
    } else {
        "submission"
    };
    let tag = format!("curl-{scheme}-{}", user.address);
    let (msg, path) = message_file(w, &tag, user.address);
    let port = w.addr(listener).port();
    let url = format!("{scheme}://{HOST}:{port}/client.example");
    let resolve = format!("{HOST}:{port}:127.0.0.1");
    let ca = w.ca_file.display().to_string();
    let login = format!("{}:{}", user.address, password.expect("a password"));
    let mech = format!("AUTH={mech}");
    let from = format!("<{}>", user.address);
    let rcpt = format!("<{RCPT}>");
    let path = path.display().to_string();
    let args = [
        ("--resolve", resolve.as_str()),
        ("--cacert", &ca),
        ("--user", &login),
        ("--login-options", &mech),
        ("--mail-from", &from),
        ("--mail-rcpt", &rcpt),
        ("--upload-file", &path),
    ];
    let mut argv = vec![url.as_str(), "--ssl-reqd"];
    argv.extend(args.iter().flat_map(|(k, v)| [*k, *v]));
    curl(&argv).expect_ok(&tag);
    msg
}

#[test]
fn curl_submits_with_starttls_and_smtps() {
    let w = World::start();
    // bob's new password has spaces and quotes in it.
    let msg = curl_submit(&w, "smtp", "PLAIN", &BOB, BOB.new_password);
    assert_delivered_once(&w.new_sink, &msg, BOB.address);
    let msg = curl_submit(&w, "smtps", "LOGIN", &DAVE, DAVE.legacy_password);
    assert_delivered_once(&w.legacy_sink, &msg, DAVE.address);
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client that trusts the world's CA and asks for [`HOST`].
fn tls_over(tcp: TcpStream, ca: &Path) -> Tls {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(HOST).expect("server name").to_owned();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    rustls::StreamOwned::new(conn, tcp)
}

/// An implicit-TLS session on `submissions`, greeting read.
fn smtps(w: &World) -> LineConn<Tls> {
    let tcp = connect(w.addr("submissions")).expect("connect");
    let mut c = LineConn::new(tls_over(tcp, &w.ca_file));
    assert_eq!(c.read_line(), format!("220 {HOST} ESMTP ready"));
    c
}

/// A STARTTLS session on `submission`, upgraded; EHLO not yet sent again.
fn starttls(w: &World) -> LineConn<Tls> {
    let tcp = connect(w.addr("submission")).expect("connect");
    let mut c = LineConn::new(tcp.try_clone().expect("clone"));
    assert_eq!(c.read_line(), "220 ponte ESMTP ready");
    assert!(command(&mut c, "EHLO client.example").contains("STARTTLS"));
    assert!(command(&mut c, "STARTTLS").starts_with("220 "));
    LineConn::new(tls_over(tcp, &w.ca_file))
}

/// One whole reply (continuation lines included), lines joined by `\n`.
fn reply<S: std::io::Read + Write>(c: &mut LineConn<S>) -> String {
    let mut lines = Vec::new();
    loop {
        let line = c.read_line();
        let last = line.as_bytes().get(3) != Some(&b'-');
        lines.push(line);
        if last {
            return lines.join("\n");
        }
    }
}

fn command<S: std::io::Read + Write>(c: &mut LineConn<S>, line: &str) -> String {
    c.send(line);
    reply(c)
}

fn plain(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn before_auth_only_ehlo_starttls_and_auth_are_served() {
    let w = World::start();
    let mut c = LineConn::tcp(w.addr("submission"));
    assert_eq!(c.read_line(), "220 ponte ESMTP ready");
    let ehlo = command(&mut c, "EHLO client.example");
    assert_eq!(
        ehlo,
        "250-ponte\n250-PIPELINING\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250 STARTTLS"
    );
    let alice = plain(ALICE.address, ALICE.legacy_password.unwrap());
    for (cmd, want) in [
        (
            "MAIL FROM:<alice@pec.example>",
            "530 5.7.0 Authentication required",
        ),
        (
            "RCPT TO:<x@example.org>",
            "530 5.7.0 Authentication required",
        ),
        ("DATA", "530 5.7.0 Authentication required"),
        ("VRFY alice", "530 5.7.0 Authentication required"),
        (
            &format!("AUTH PLAIN {alice}"),
            "530 5.7.0 Must issue a STARTTLS command first",
        ),
        (
            "AUTH LOGIN",
            "530 5.7.0 Must issue a STARTTLS command first",
        ),
        ("XYZZY", "500 5.5.2 Command unrecognized"),
        ("MAIL FROM alice", "501 5.5.4 Syntax error"),
        ("EHLO", "501 5.5.4 Syntax error"),
        ("NOOP", "250 2.0.0 OK"),
        ("RSET", "250 2.0.0 OK"),
        ("QUIT", "221 2.0.0 Bye"),
    ] {
        assert_eq!(command(&mut c, cmd), want, "{cmd}");
    }
    assert!(c.try_read_line().is_err(), "closed after QUIT");
    assert!(w
        .legacy
        .log()
        .lines()
        .all(|l| !l.contains("submission-login: Info: Login")));

    // Implicit TLS: AUTH at once, no STARTTLS, and EHLO comes first.
    let mut c = smtps(&w);
    let pass = plain(ALICE.address, ALICE.legacy_password.unwrap());
    assert_eq!(
        command(&mut c, &format!("AUTH PLAIN {pass}")),
        "503 5.5.1 Send EHLO first"
    );
    assert_eq!(
        command(&mut c, "EHLO client.example"),
        format!("250-{HOST}\n250-PIPELINING\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250 AUTH PLAIN LOGIN")
    );
    assert_eq!(command(&mut c, "STARTTLS"), "503 5.5.1 TLS already active");
    assert_eq!(
        command(&mut c, "AUTH CRAM-MD5"),
        "504 5.5.4 Unrecognized authentication type"
    );
    assert_eq!(command(&mut c, "AUTH LOGIN"), "334 VXNlcm5hbWU6");
    assert_eq!(command(&mut c, "*"), "501 5.7.0 Authentication canceled");
    assert_eq!(command(&mut c, "AUTH PLAIN"), "334 ");
    assert_eq!(
        command(&mut c, "not base64!"),
        "501 5.5.2 Cannot decode response"
    );
    assert_eq!(command(&mut c, "AUTH PLAIN"), "334 ");
    assert_eq!(
        command(&mut c, &pass),
        "235 2.7.0 Authentication successful"
    );
    // From here on the backend (Dovecot) answers.
    assert!(command(&mut c, "EHLO again.example").contains("CHUNKING"));
    assert_eq!(command(&mut c, "QUIT"), "221 2.0.0 Bye");
}

#[test]
fn a_listener_without_tls_offers_auth_at_once() {
    let mut w = World::backends_only("");
    let config = format!(
        "{}\n[[listener]]\nname = \"submission-plain\"\nprotocol = \"submission\"\n\
         bind = \"127.0.0.1:0\"\ndefault_domain = \"pec.example\"\n",
        w.config()
    );
    w.ponte = Some(Ponte::start(&config));
    let mut c = LineConn::tcp(w.addr("submission-plain"));
    assert_eq!(c.read_line(), "220 ponte ESMTP ready");
    assert!(command(&mut c, "EHLO client.example").ends_with("\n250 AUTH PLAIN LOGIN"));
    assert_eq!(command(&mut c, "HELO client.example"), "250 ponte");
    assert_eq!(
        command(&mut c, "STARTTLS"),
        "502 5.5.1 STARTTLS not available"
    );
    // A bare local part takes the listener's default domain.
    let dave = plain("dave", DAVE.legacy_password.unwrap());
    assert_eq!(
        command(&mut c, &format!("AUTH PLAIN {dave}")),
        "235 2.7.0 Authentication successful"
    );
    assert!(command(&mut c, "MAIL FROM:<dave@pec.example>").starts_with("250 "));
    assert_eq!(command(&mut c, "QUIT"), "221 2.0.0 Bye");
}

#[test]
fn starttls_discards_commands_pipelined_before_the_handshake() {
    let w = World::start();
    let tcp = connect(w.addr("submission")).expect("connect");
    let mut c = LineConn::new(tcp.try_clone().expect("clone"));
    c.read_line();
    command(&mut c, "EHLO client.example");
    // An attacker on the path appends commands to the client's STARTTLS,
    // in the same packet: they must die with the clear-text session.
    let alice = plain(ALICE.address, ALICE.legacy_password.unwrap());
    c.send_raw(
        format!("STARTTLS\r\nEHLO injected\r\nAUTH PLAIN {alice}\r\nMAIL FROM:<evil@x>\r\n")
            .as_bytes(),
    );
    assert_eq!(reply(&mut c), "220 2.0.0 Ready to start TLS");
    let mut c = LineConn::new(tls_over(tcp, &w.ca_file));
    // The first reply over TLS answers the first command sent over TLS.
    assert_eq!(command(&mut c, "NOOP"), "250 2.0.0 OK");
    // Not authenticated, and the EHLO from before TLS is forgotten.
    assert_eq!(
        command(&mut c, "MAIL FROM:<alice@pec.example>"),
        "530 5.7.0 Authentication required"
    );
    assert_eq!(
        command(&mut c, &format!("AUTH PLAIN {alice}")),
        "503 5.5.1 Send EHLO first"
    );
    let ehlo = command(&mut c, "EHLO client.example");
    assert!(
        ehlo.ends_with("250 AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert_eq!(
        command(&mut c, &format!("AUTH PLAIN {alice}")),
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(command(&mut c, "QUIT"), "221 2.0.0 Bye");
    assert!(w.legacy_sink.settle().is_empty());
}

#[test]
fn wrong_password_gets_the_backends_535_and_unknown_domain_535() {
    let w = World::start();
    let mut c = smtps(&w);
    command(&mut c, "EHLO client.example");
    let wrong = plain(ALICE.address, "not-her-password");
    assert_eq!(
        command(&mut c, &format!("AUTH PLAIN {wrong}")),
        "535 5.7.8 Authentication failed."
    );
    // Malformed PLAIN data is refused by ponte and does not count.
    assert_eq!(
        command(&mut c, "AUTH PLAIN ="),
        "535 5.7.8 Authentication credentials invalid"
    );
    let stranger = plain("someone@unknown.example", "pw");
    assert_eq!(
        command(&mut c, &format!("AUTH PLAIN {stranger}")),
        "535 5.7.8 Authentication credentials invalid"
    );
    // The third failure (max_auth_failures = 3) closes the connection.
    assert_eq!(command(&mut c, "AUTH LOGIN"), "334 VXNlcm5hbWU6");
    assert_eq!(command(&mut c, &b64(DAVE.address)), "334 UGFzc3dvcmQ6");
    assert!(command(&mut c, &b64("wrong")).starts_with("535 "));
    assert_eq!(reply(&mut c), "421 4.7.0 Too many authentication failures");
    assert!(c.try_read_line().is_err());
}

#[test]
fn commands_pipelined_behind_auth_reach_the_backend() {
    let w = World::start();
    let mut c = smtps(&w);
    command(&mut c, "EHLO client.example");
    let msg = signed_message("pipelined", CAROL.address);
    let auth = plain(CAROL.address, CAROL.new_password.unwrap());
    c.send_raw(
        format!(
            "AUTH PLAIN {auth}\r\nMAIL FROM:<{}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n",
            CAROL.address
        )
        .as_bytes(),
    );
    assert_eq!(reply(&mut c), "235 2.7.0 Authentication successful");
    assert!(reply(&mut c).starts_with("250 "));
    assert!(reply(&mut c).starts_with("250 "));
    assert!(reply(&mut c).starts_with("354 "));
    let mut data = dot_stuffed(&msg);
    data.extend_from_slice(b".\r\nQUIT\r\n");
    c.send_raw(&data);
    assert!(reply(&mut c).starts_with("250 "));
    assert!(reply(&mut c).starts_with("221 "));
    assert_delivered_once(&w.new_sink, &msg, CAROL.address);
    assert!(w.legacy_sink.settle().is_empty());
}

/// STARTTLS, then AUTH PLAIN as `user`/`pw`, once; prints the reply.
/// Then waits for a line on stdin and, in the same session, logs in again
/// and sends the message: a client that keeps its mail and retries.
const SMTPLIB_RETRY: &str = r#"
import smtplib, socket, ssl, sys
port, ca, user, pw, path = sys.argv[1:6]
real = socket.getaddrinfo
socket.getaddrinfo = lambda h, *a, **k: real("127.0.0.1" if h == "mbox.pec.example" else h, *a, **k)
s = smtplib.SMTP("mbox.pec.example", int(port), timeout=10)
s.starttls(context=ssl.create_default_context(cafile=ca))
s.ehlo()
s.user, s.password = user, pw
try:
    code, text = s.auth("PLAIN", s.auth_plain)
except smtplib.SMTPAuthenticationError as e:
    code, text = e.smtp_code, e.smtp_error
print(code, text.decode(), flush=True)
sys.stdin.readline()
code, text = s.auth("PLAIN", s.auth_plain)
print(code, text.decode(), flush=True)
print("refused:", s.sendmail(user, ["protocollo@destinatario.example"], open(path, "rb").read()), flush=True)
s.quit()
"#;

#[test]
fn blackout_is_a_temporary_451_and_the_retry_after_the_flip_goes_through() {
    let w = World::start();
    let api = Api::new(w.addr("admin"));
    let (code, body) = api.send_json(
        "PUT",
        "/api/mailboxes/alice@pec.example",
        &json!({"state": "blackout"}),
    );
    assert_eq!(code, 200, "{body}");
    // A wrong password learns nothing about the state.
    let mut c = starttls(&w);
    command(&mut c, "EHLO client.example");
    let wrong = plain(ALICE.address, "guess");
    assert_eq!(
        command(&mut c, &format!("AUTH PLAIN {wrong}")),
        "535 5.7.8 Authentication failed."
    );
    drop(c);

    let (msg, path) = message_file(&w, "blackout", ALICE.address);
    let mut child = Command::new("timeout")
        .args(["30", "python3", "-c", SMTPLIB_RETRY])
        .args([
            &w.addr("submission").port().to_string(),
            &w.ca_file.display().to_string(),
            ALICE.address,
            ALICE.legacy_password.unwrap(),
            &path.display().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("first reply");
    assert!(
        first.starts_with("451 4.3.2 ") && first.contains("sending is paused"),
        "{first}"
    );
    assert!(w.legacy_sink.settle().is_empty() && w.new_sink.messages().is_empty());
    // The admin ends the blackout: alice is back on her domain's state.
    let (code, body) = api.call("DELETE", "/api/mailboxes/alice@pec.example", None);
    assert_eq!(code, 200, "{body}");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("go");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("rest");
    let status = child.wait().expect("python");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).ok();
    }
    assert!(status.success(), "{first}{rest}{err}");
    assert!(
        rest.starts_with("235 2.7.0") && rest.contains("refused: {}"),
        "{rest}"
    );
    assert_delivered_once(&w.legacy_sink, &msg, ALICE.address);
    assert!(w.new_sink.messages().is_empty());
}

#[test]
fn excluded_mailbox_is_refused_for_good_after_the_password_check() {
    let w = World::start();
    let api = Api::new(w.addr("admin"));
    let (code, body) = api.send_json(
        "PUT",
        "/api/mailboxes/dave@pec.example",
        &json!({"state": "excluded"}),
    );
    assert_eq!(code, 200, "{body}");
    let mut c = smtps(&w);
    command(&mut c, "EHLO client.example");
    let wrong = plain(DAVE.address, "guess");
    assert_eq!(
        command(&mut c, &format!("AUTH PLAIN {wrong}")),
        "535 5.7.8 Authentication failed."
    );
    let right = plain(DAVE.address, DAVE.legacy_password.unwrap());
    let r = command(&mut c, &format!("AUTH PLAIN {right}"));
    assert!(
        r.starts_with("550 5.7.1 ") && r.contains("no longer served"),
        "{r}"
    );
    assert_eq!(
        command(&mut c, "MAIL FROM:<dave@pec.example>"),
        "530 5.7.0 Authentication required"
    );
}

#[test]
fn a_flip_closes_an_open_session_with_421() {
    let w = World::start();
    let mut c = smtps(&w);
    command(&mut c, "EHLO client.example");
    let auth = plain(ALICE.address, ALICE.legacy_password.unwrap());
    assert_eq!(
        command(&mut c, &format!("AUTH PLAIN {auth}")),
        "235 2.7.0 Authentication successful"
    );
    assert!(command(&mut c, &format!("MAIL FROM:<{}>", ALICE.address)).starts_with("250 "));
    let sessions = w.ponte().ctx.registry.list();
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        (sessions[0].address.as_str(), sessions[0].listener.as_str()),
        (ALICE.address, "submissions")
    );
    let api = Api::new(w.addr("admin"));
    let (code, body) = api.send_json(
        "PUT",
        "/api/mailboxes/alice@pec.example",
        &json!({"state": "migrated"}),
    );
    assert_eq!((code, body["kicked"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(
        c.read_line(),
        "421 4.3.0 Your mailbox has moved to a new server; please reconnect."
    );
    assert!(c.try_read_line().is_err());
    assert!(w.legacy_sink.settle().is_empty());
}

#[test]
fn backend_down_is_a_prompt_454() {
    let mut w = World::start();
    // Dropping the new backend stops it; its port now refuses connections.
    let new = std::mem::replace(
        &mut w.new,
        common::dovecot::Dovecot::start(common::dovecot::DovecotOptions::new("spare", &[])),
    );
    drop(new);
    let mut c = smtps(&w);
    command(&mut c, "EHLO client.example");
    let started = Instant::now();
    let carol = plain(CAROL.address, CAROL.new_password.unwrap());
    assert_eq!(
        command(&mut c, &format!("AUTH PLAIN {carol}")),
        "454 4.7.0 Temporary authentication failure"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The legacy backend still works from the same connection.
    let dave = plain(DAVE.address, DAVE.legacy_password.unwrap());
    assert_eq!(
        command(&mut c, &format!("AUTH PLAIN {dave}")),
        "235 2.7.0 Authentication successful"
    );
}

#[test]
fn oversized_lines_and_silent_clients_are_closed() {
    let w = World::start_with("preauth_timeout = \"1s\"");
    let mut c = LineConn::tcp(w.addr("submission"));
    c.read_line();
    c.send(&format!("EHLO {}", "x".repeat(20_000)));
    assert_eq!(c.read_line(), "500 5.5.6 Line too long");
    assert!(c.try_read_line().is_err());

    let mut c = LineConn::tcp(w.addr("submission"));
    c.read_line();
    let started = Instant::now();
    assert_eq!(c.read_line(), "421 4.4.2 Timeout, closing connection");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(c.try_read_line().is_err());
}
