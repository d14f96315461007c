//! A small SMTP server that accepts every message and records it: the
//! relay host of a test Dovecot's submission service, so that a test can
//! see what a client submitted through ponte arrive, exactly once and
//! byte for byte. std::net threads, no async: one thread accepts, one
//! thread per connection; all of them stop when the sink is dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
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
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        listener.set_nonblocking(true).expect("nonblocking sink");
        let addr = listener.local_addr().expect("sink addr");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = (messages.clone(), stop.clone(), name.to_string());
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

type Ctx = (Arc<Mutex<Vec<Received>>>, Arc<AtomicBool>, String);

fn accept_loop(listener: TcpListener, (messages, stop, name): Ctx) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((tcp, _)) => {
                let ctx = (messages.clone(), stop.clone(), name.clone());
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
fn read_line(r: &mut BufReader<TcpStream>, stop: &AtomicBool) -> Option<Vec<u8>> {
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

fn session(tcp: TcpStream, (messages, stop, name): Ctx) -> std::io::Result<()> {
    // Short reads so that a stopped sink ends its sessions promptly.
    tcp.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut w = tcp.try_clone()?;
    let mut r = BufReader::new(tcp);
    w.write_all(format!("220 {name}.sink ESMTP test sink\r\n").as_bytes())?;
    let mut current = Received::default();
    while let Some(raw) = read_line(&mut r, &stop) {
        let line = String::from_utf8_lossy(&raw).trim_end().to_string();
        let verb = line.split([' ', ':']).next().unwrap_or("");
        match verb.to_ascii_uppercase().as_str() {
            "DATA" => {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                let Some(data) = read_data(&mut r, &stop) else {
                    return Ok(());
                };
                let msg = Received {
                    data,
                    ..current.clone()
                };
                messages.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
                w.write_all(b"250 2.0.0 Ok: queued\r\n")?;
            }
            "QUIT" => return w.write_all(b"221 2.0.0 Bye\r\n"),
            verb => w.write_all(answer(verb, &line, &mut current))?,
        }
    }
    Ok(())
}

/// The reply to an envelope or session command; notes what it sets.
fn answer(verb: &str, line: &str, current: &mut Received) -> &'static [u8] {
    match verb {
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
fn read_data(r: &mut BufReader<TcpStream>, stop: &AtomicBool) -> Option<Vec<u8>> {
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
