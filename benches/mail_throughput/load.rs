//! The load generator: blocking POP3 and SMTP clients on std threads, one
//! thread per client. Every read and write has a timeout ([`IO_TIMEOUT`]),
//! every loop a count and the round's deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::common::net::IO_TIMEOUT;
use crate::sys::ABORT;

/// Longest line or multi-line reply the clients accept.
const MAX_LINE: usize = 64 * 1024;
const MAX_REPLY_LINES: usize = 100;
const MAX_MESSAGE: u64 = 64 * 1024 * 1024;

/// What all clients of one round did together.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    pub secs: f64,
    pub messages: u64,
    pub bytes: u64,
}

impl Round {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs
    }
    pub fn msgs_per_s(&self) -> f64 {
        self.messages as f64 / self.secs
    }
}

/// Runs `client(i)` for i in 0..k on k threads, all released together; the
/// time is from the release to the last one's end. Each returns (messages,
/// bytes). Any client's error fails the round.
pub fn run_clients<F>(k: usize, client: F) -> Result<Round, String>
where
    F: Fn(usize) -> Result<(u64, u64), String> + Sync,
{
    let barrier = Barrier::new(k + 1);
    let (results, secs) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..k)
            .map(|i| {
                let (barrier, client) = (&barrier, &client);
                s.spawn(move || {
                    barrier.wait();
                    client(i)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<Result<(u64, u64), String>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("client panicked".into())))
            .collect();
        (results, start.elapsed().as_secs_f64())
    });
    let mut round = Round {
        secs,
        messages: 0,
        bytes: 0,
    };
    for (i, r) in results.into_iter().enumerate() {
        let (m, b) = r.map_err(|e| format!("client {i}: {e}"))?;
        round.messages += m;
        round.bytes += b;
    }
    Ok(round)
}

/// Fails once the round's deadline passed or the watchdog fired.
pub fn check_time(deadline: Instant) -> Result<(), String> {
    if ABORT.load(Ordering::Relaxed) {
        return Err("aborted by the watchdog".into());
    }
    if Instant::now() > deadline {
        return Err("round deadline passed".into());
    }
    Ok(())
}

/// A plain TCP connection with a large read buffer.
pub struct Conn {
    r: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn {
            r: BufReader::with_capacity(256 * 1024, tcp),
            line: Vec::with_capacity(1024),
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.r
            .get_mut()
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))
    }

    /// One line including CRLF into `self.line`; an error on EOF, timeout
    /// or a line over [`MAX_LINE`].
    fn read_line(&mut self) -> Result<&[u8], String> {
        self.line.clear();
        let n = (&mut self.r)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut self.line)
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 || !self.line.ends_with(b"\n") {
            return Err(format!(
                "connection closed or line too long after {:?}",
                String::from_utf8_lossy(&self.line[..self.line.len().min(80)])
            ));
        }
        Ok(&self.line)
    }

    fn text_line(&mut self) -> Result<String, String> {
        let l = self.read_line()?;
        Ok(String::from_utf8_lossy(l).trim_end().to_string())
    }

    // --- POP3 ---

    /// Reads one status line; an error unless it is `+OK`.
    fn pop3_ok(&mut self, what: &str) -> Result<String, String> {
        let l = self.text_line()?;
        if l.starts_with("+OK") {
            Ok(l)
        } else {
            Err(format!("{what}: {l}"))
        }
    }

    pub fn pop3_cmd(&mut self, cmd: &str) -> Result<String, String> {
        self.send(format!("{cmd}\r\n").as_bytes())?;
        let verb = cmd.split(' ').next().unwrap_or(cmd);
        self.pop3_ok(verb)
    }

    /// Greeting, USER and PASS; returns the message count from STAT.
    pub fn pop3_login(&mut self, user: &str, pass: &str) -> Result<u64, String> {
        self.pop3_ok("greeting")?;
        self.pop3_cmd(&format!("USER {user}"))?;
        self.pop3_cmd(&format!("PASS {pass}"))?;
        let stat = self.pop3_cmd("STAT")?;
        stat.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("STAT: {stat}"))
    }

    /// `RETR n`, read to the terminating `.` line; the bytes of the message
    /// as sent (dot-stuffed lines with their CRLF, without the `.` line).
    pub fn retr(&mut self, n: u64) -> Result<u64, String> {
        self.pop3_cmd(&format!("RETR {n}"))?;
        let mut bytes = 0u64;
        loop {
            let l = self.read_line()?;
            if l == b".\r\n" {
                return Ok(bytes);
            }
            bytes += l.len() as u64;
            if bytes > MAX_MESSAGE {
                return Err(format!("RETR {n}: over {MAX_MESSAGE} bytes"));
            }
        }
    }

    // --- SMTP ---

    /// A whole (possibly multi-line) reply; an error unless its code is `want`.
    fn smtp_reply(&mut self, what: &str, want: u16) -> Result<(), String> {
        for _ in 0..MAX_REPLY_LINES {
            let l = self.text_line()?;
            let last = l.len() < 4 || l.as_bytes()[3] == b' ';
            if !last {
                continue;
            }
            return match l.get(..3).and_then(|c| c.parse::<u16>().ok()) {
                Some(code) if code == want => Ok(()),
                _ => Err(format!("{what}: {l}")),
            };
        }
        Err(format!("{what}: reply over {MAX_REPLY_LINES} lines"))
    }

    fn smtp_cmd(&mut self, cmd: &str, want: u16) -> Result<(), String> {
        self.send(format!("{cmd}\r\n").as_bytes())?;
        let verb = cmd.split([' ', ':']).next().unwrap_or(cmd);
        self.smtp_reply(verb, want)
    }
}

/// One POP3 session: login, `RETR` of every message (or of `only`), `QUIT`.
/// Returns (messages, bytes).
pub fn pop3_session(
    addr: SocketAddr,
    user: &str,
    pass: &str,
    expect: u64,
    deadline: Instant,
) -> Result<(u64, u64), String> {
    let mut c = Conn::connect(addr)?;
    let count = c.pop3_login(user, pass)?;
    if count != expect {
        return Err(format!("STAT says {count} messages, expected {expect}"));
    }
    let mut bytes = 0;
    for n in 1..=count {
        check_time(deadline)?;
        bytes += c.retr(n)?;
    }
    c.pop3_cmd("QUIT")?;
    Ok((count, bytes))
}

/// `RETR n` of a large message, alternating between a direct and a
/// ponte session (both logged in and warmed up with one untimed `RETR`), so
/// that background load hits both sides alike. `between` runs around each
/// ponte `RETR` (CPU readings). Returns each side's (seconds, bytes).
#[allow(clippy::type_complexity)]
pub fn pop3_big_retr(
    direct: SocketAddr,
    ponte: SocketAddr,
    (user, pass): (&str, &str),
    n: u64,
    rounds: usize,
    deadline: Instant,
    mut between: impl FnMut(),
) -> Result<(Vec<(f64, u64)>, Vec<(f64, u64)>), String> {
    let mut sides = Vec::new();
    for addr in [direct, ponte] {
        let mut c = Conn::connect(addr)?;
        c.pop3_login(user, pass)?;
        c.retr(n)?;
        sides.push(c);
    }
    let (mut d, mut p) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        check_time(deadline)?;
        let start = Instant::now();
        let bytes = sides[0].retr(n)?;
        d.push((start.elapsed().as_secs_f64(), bytes));
        between();
        let start = Instant::now();
        let bytes = sides[1].retr(n)?;
        p.push((start.elapsed().as_secs_f64(), bytes));
        between();
    }
    for c in &mut sides {
        c.pop3_cmd("QUIT")?;
    }
    Ok((d, p))
}

/// One SMTP session: greeting, `EHLO`, `AUTH PLAIN` (if `auth`), `n` ×
/// (`MAIL`, `RCPT`, `DATA`, the message, `.`), `QUIT`. `message` must be
/// dot-stuffed already and end in CRLF. Returns (messages, bytes).
pub fn smtp_session(
    addr: SocketAddr,
    auth: Option<(&str, &str)>,
    from: &str,
    n: u64,
    message: &[u8],
    deadline: Instant,
) -> Result<(u64, u64), String> {
    let mut c = Conn::connect(addr)?;
    c.smtp_reply("greeting", 220)?;
    c.smtp_cmd("EHLO bench.example", 250)?;
    if let Some((user, pass)) = auth {
        let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        c.smtp_cmd(&format!("AUTH PLAIN {plain}"), 235)?;
    }
    for _ in 0..n {
        check_time(deadline)?;
        c.smtp_cmd(&format!("MAIL FROM:<{from}>"), 250)?;
        c.smtp_cmd("RCPT TO:<sink@relay.example>", 250)?;
        c.smtp_cmd("DATA", 354)?;
        c.send(message)?;
        c.smtp_cmd(".", 250)?;
    }
    c.smtp_cmd("QUIT", 221)?;
    Ok((n, n * message.len() as u64))
}

/// A message of about `size` bytes: a few headers and a body of 76-character
/// lines (base64 alphabet, so never a leading `.`), CRLF line ends.
pub fn message(size: usize, subject: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut m = format!(
        "From: bench@pec.example\r\nTo: sink@relay.example\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@bench.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ size as u64;
    while m.len() < size {
        for _ in 0..76 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            m.push(ALPHABET[(x >> 58) as usize]);
        }
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// Median of a non-empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Per-round time limit.
pub const ROUND_LIMIT: Duration = Duration::from_secs(60);
