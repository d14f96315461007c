//! A small SMTP server that accepts every message and records it: the
//! relay host of a test Dovecot's submission service, so that a test can
//! see what a client submitted through ponte arrive, exactly once and
//! byte for byte. std::net threads, no async: one thread accepts, one
//! thread per connection; all of them stop when the sink is dropped.
//! It can offer STARTTLS (a self-signed certificate, as many MX hosts
//! have), or offer it and then fail the handshake.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use super::net::IO_TIMEOUT;

/// One message as the sink received it.
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// The EHLO/HELO argument of its session.
    pub helo: String,
    /// The reverse-path inside `MAIL FROM:<…>`, parameters dropped.
    pub mail_from: String,
    /// The forward-paths inside `RCPT TO:<…>`, in order.
    pub rcpt_to: Vec<String>,
    /// The message as sent after `DATA`, dot-stuffing undone, without the
    /// final `.` line: headers and body, each line ending in CRLF.
    pub data: Vec<u8>,
    /// It came over TLS (after STARTTLS).
    pub tls: bool,
}

/// What the sink does about STARTTLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkTls {
    /// Not offered.
    Off,
    /// Offered, with a self-signed certificate.
    Offer,
    /// Offered, then clear-text garbage instead of a handshake.
    Broken,
}

impl Received {
    /// The data as (lossy) text, for `contains` checks.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// A running sink; dropping it stops accepting and ends its sessions.
pub struct SmtpSink {
    addr: SocketAddr,
    name: String,
    messages: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SmtpSink {
    /// Listens on a fresh loopback port; `name` shows in its greeting.
    pub fn start(name: &str) -> SmtpSink {
        SmtpSink::start_tls(name, SinkTls::Off)
    }

    /// Same, with STARTTLS as `tls` says.
    pub fn start_tls(name: &str, tls: SinkTls) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        listener.set_nonblocking(true).expect("nonblocking sink");
        let addr = listener.local_addr().expect("sink addr");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let config = (tls != SinkTls::Off).then(|| tls_config(name));
        let ctx = Ctx {
            messages: messages.clone(),
            stop: stop.clone(),
            name: name.to_string(),
            tls,
            config,
        };
        let thread = std::thread::spawn(move || accept_loop(listener, ctx));
        SmtpSink {
            addr,
            name: name.to_string(),
            messages,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything received so far, in order.
    pub fn messages(&self) -> Vec<Received> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` messages arrived; panics after [`IO_TIMEOUT`]
    /// with what did arrive.
    pub fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "sink {:?}: {} message(s) after {IO_TIMEOUT:?}, expected {n}: {got:?}",
                self.name,
                got.len()
            );
            sleep(Duration::from_millis(10));
        }
    }

    /// Gives late deliveries (duplicates) time to show, then returns all.
    pub fn settle(&self) -> Vec<Received> {
        sleep(Duration::from_millis(300));
        self.messages()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone)]
struct Ctx {
    messages: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    name: String,
    tls: SinkTls,
    config: Option<Arc<rustls::ServerConfig>>,
}

use tokio_rustls::rustls;

fn tls_config(name: &str) -> Arc<rustls::ServerConfig> {
    let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("sink cert");
    let cert = rustls::pki_types::CertificateDer::from(made.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(made.key_pair.serialize_der())
        .expect("sink key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("sink TLS config");
    Arc::new(cfg)
}

/// The session's stream: clear text, or TLS after STARTTLS.
enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

fn accept_loop(listener: TcpListener, ctx: Ctx) {
    while !ctx.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((tcp, _)) => {
                let ctx = ctx.clone();
                std::thread::spawn(move || {
                    // A broken session is the client's problem, not the test's.
                    let _ = session(tcp, ctx);
                });
            }
            Err(_) => sleep(Duration::from_millis(5)),
        }
    }
}

/// Reads one line; `None` at end of stream, on timeout or once stopped.
fn read_line(r: &mut BufReader<Transport>, stop: &AtomicBool) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        match r.read_until(b'\n', &mut line) {
            Ok(0) => return None,
            Ok(_) if line.ends_with(b"\n") => return Some(line),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

/// The text between `<` and `>` of a `MAIL FROM:`/`RCPT TO:` line.
fn path(line: &str) -> String {
    let inner = line.split_once('<').map_or("", |(_, r)| r);
    inner.split_once('>').map_or(inner, |(p, _)| p).to_string()
}

fn session(tcp: TcpStream, ctx: Ctx) -> std::io::Result<()> {
    let Ctx {
        messages,
        stop,
        name,
        tls,
        config,
    } = ctx;
    // Short reads so that a stopped sink ends its sessions promptly.
    tcp.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut r = BufReader::new(Transport::Plain(tcp));
    r.get_mut()
        .write_all(format!("220 {name}.sink ESMTP test sink\r\n").as_bytes())?;
    let mut current = Received::default();
    while let Some(raw) = read_line(&mut r, &stop) {
        let line = String::from_utf8_lossy(&raw).trim_end().to_string();
        let verb = line.split([' ', ':']).next().unwrap_or("");
        let w = r.get_mut();
        match verb.to_ascii_uppercase().as_str() {
            "DATA" => {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                w.flush()?;
                let Some(data) = read_data(&mut r, &stop) else {
                    return Ok(());
                };
                let msg = Received {
                    data,
                    ..current.clone()
                };
                messages.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
                r.get_mut().write_all(b"250 2.0.0 Ok: queued\r\n")?;
            }
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n")?;
                return w.flush();
            }
            "STARTTLS" if tls != SinkTls::Off && !current.tls => {
                w.write_all(b"220 2.0.0 Ready to start TLS\r\n")?;
                w.flush()?;
                let Transport::Plain(mut tcp) = r.into_inner() else {
                    unreachable!("not TLS yet");
                };
                if tls == SinkTls::Broken {
                    let _ = tcp.write_all(b"this is not a TLS handshake\r\n");
                    return Ok(());
                }
                let config = config.clone().expect("a TLS sink has a configuration");
                let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
                r = BufReader::new(Transport::Tls(Box::new(rustls::StreamOwned::new(
                    conn, tcp,
                ))));
                // RFC 3207 §4.2: the client starts over with EHLO.
                current = Received {
                    tls: true,
                    ..Received::default()
                };
            }
            verb => {
                let offer = tls != SinkTls::Off && !current.tls;
                w.write_all(answer(verb, &line, &mut current, offer))?;
            }
        }
        r.get_mut().flush()?;
    }
    Ok(())
}

/// The reply to an envelope or session command; notes what it sets.
fn answer(verb: &str, line: &str, current: &mut Received, offer_tls: bool) -> &'static [u8] {
    match verb {
        "EHLO" | "LHLO" if offer_tls => {
            current.helo = line[4..].trim().to_string();
            b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n"
        }
        "EHLO" | "LHLO" => {
            current.helo = line[4..].trim().to_string();
            b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
        }
        "HELO" => {
            current.helo = line[4..].trim().to_string();
            b"250 sink\r\n"
        }
        "MAIL" => {
            current.mail_from = path(line);
            current.rcpt_to.clear();
            b"250 2.1.0 Ok\r\n"
        }
        "RCPT" => {
            current.rcpt_to.push(path(line));
            b"250 2.1.5 Ok\r\n"
        }
        "RSET" | "NOOP" => b"250 2.0.0 Ok\r\n",
        _ => b"502 5.5.2 Command not implemented\r\n",
    }
}

/// The message up to the `.` line, dot-stuffing undone (RFC 5321 §4.5.2).
fn read_data(r: &mut BufReader<Transport>, stop: &AtomicBool) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let line = read_line(r, stop)?;
        if line == b".\r\n" || line == b".\n" {
            return Some(data);
        }
        let line = line.strip_prefix(b".").unwrap_or(&line);
        data.extend_from_slice(line);
    }
}
