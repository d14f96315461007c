//! The soak's clients: one tokio task per client, each looping whole
//! sessions (IMAP, IMAPS or POP3) from its own loopback source address
//! (127.1.x.y) until the load ends. Every read, write, connect and TLS
//! handshake is bounded by [`IO_TIMEOUT`], every session by
//! [`SESSION_TIMEOUT`], every client by [`MAX_SESSIONS`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

use crate::common::net::literal_len;

/// Bound on one read, write, connect or TLS handshake. Generous: the two
/// cores are saturated by design.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on one whole session (its IDLE is at most 5 s of it).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Sessions per client, whatever the duration (a safety bound).
const MAX_SESSIONS: u64 = 100_000;
/// Distinct error texts kept; the rest are counted under "other".
const MAX_ERROR_KINDS: usize = 32;
/// Share of logins sent with a wrong password, per mille.
const WRONG_PASSWORD_PER_MILLE: u64 = 10;
/// Messages in every mailbox (the bench delivers them).
pub const MESSAGES: u32 = 5;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What a client speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    Imap,
    Imaps,
    Pop3,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::Imap => "IMAP",
            Proto::Imaps => "IMAPS",
            Proto::Pop3 => "POP3",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters shared by all clients and read by the sampler.
#[derive(Default)]
pub struct Stats {
    /// Sessions completed normally, per [`Proto`].
    pub ok: [AtomicU64; 3],
    /// Wrong-password logins refused as they should be.
    pub refused: AtomicU64,
    /// Sessions that failed (anything else).
    pub failed: AtomicU64,
    /// Sessions in progress.
    pub active: AtomicU64,
    /// Expected refusals by server answer, failures by kind.
    pub refusals: Mutex<BTreeMap<String, u64>>,
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Slowest session without its IDLE wait, µs.
    pub max_work_us: AtomicU64,
}

impl Stats {
    /// Sessions that ended, whichever way.
    pub fn ended(&self) -> u64 {
        self.ok
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.refused.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
    }

    pub fn ok(&self, p: Proto) -> u64 {
        self.ok[p.index()].load(Ordering::Relaxed)
    }

    fn count(map: &Mutex<BTreeMap<String, u64>>, key: String) {
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        let key = if m.len() < MAX_ERROR_KINDS || m.contains_key(&key) {
            key
        } else {
            "other".to_string()
        };
        *m.entry(key).or_default() += 1;
    }

    pub fn snapshot(map: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
        map.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One client's fixed settings.
pub struct Client {
    pub proto: Proto,
    pub src: Ipv4Addr,
    pub target: SocketAddr,
    pub user: String,
    pub pass: String,
    pub tls: TlsConnector,
    pub seed: u64,
}

/// Source address of client `i`: 127.1.x.y, y in 1..=250 (one per client,
/// so ponte's per-address limits and failure scores see distinct clients).
pub fn source_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// xorshift64*: per-client, deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Loops sessions until `end`: a random start within `ramp`, then session,
/// random pause (0–1 s; POP3 1–5 s), session, …
pub async fn run(c: Client, ramp: Duration, end: Instant, stats: Arc<Stats>) {
    let mut rng = Rng::new(c.seed);
    let start = Duration::from_millis(rng.range(0, ramp.as_millis() as u64));
    tokio::time::sleep(start).await;
    let mut n = 0;
    while Instant::now() < end && n < MAX_SESSIONS {
        n += 1;
        let wrong = rng.range(1, 1000) <= WRONG_PASSWORD_PER_MILLE;
        let idle = Duration::from_millis(rng.range(1000, 5000));
        let msgs = (rng.range(1, MESSAGES as u64), rng.range(1, 3));
        stats.active.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let r = tokio::time::timeout(SESSION_TIMEOUT, session(&c, wrong, idle, msgs)).await;
        let work = t0.elapsed().saturating_sub(idle);
        stats.active.fetch_sub(1, Ordering::Relaxed);
        match r.unwrap_or_else(|_| Err(Fail::Error("session: timeout".into()))) {
            Ok(()) => {
                stats.ok[c.proto.index()].fetch_add(1, Ordering::Relaxed);
                stats
                    .max_work_us
                    .fetch_max(work.as_micros() as u64, Ordering::Relaxed);
            }
            Err(Fail::Refused(why)) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                Stats::count(&stats.refusals, format!("{}: {why}", c.proto.label()));
            }
            Err(Fail::Error(e)) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let e = if wrong {
                    format!("{} (wrong password): {e}", c.proto.label())
                } else {
                    format!("{}: {e}", c.proto.label())
                };
                Stats::count(&stats.errors, e);
            }
        }
        // POP3 clients poll: their sessions have no IDLE, so they wait
        // as long between them instead (a few POP3 sessions, not a flood).
        let pause = if c.proto == Proto::Pop3 {
            Duration::from_millis(rng.range(1000, 5000))
        } else {
            Duration::from_millis(rng.range(0, 1000))
        };
        tokio::time::sleep(pause).await;
    }
}

/// One normal IMAP or POP3 session (short IDLE), for the check before
/// the load.
pub async fn smoke(c: &Client) -> Result<(), String> {
    match session(c, false, Duration::from_millis(200), (1, 3)).await {
        Ok(()) => Ok(()),
        Err(Fail::Refused(e) | Fail::Error(e)) => Err(e),
    }
}

/// How a session ended, if not normally.
enum Fail {
    /// The expected refusal of a wrong password (the server's answer).
    Refused(String),
    Error(String),
}

impl From<String> for Fail {
    fn from(e: String) -> Fail {
        Fail::Error(e)
    }
}

async fn session(c: &Client, wrong: bool, idle: Duration, msgs: (u64, u64)) -> Result<(), Fail> {
    let pass = if wrong {
        format!("{}-wrong", c.pass)
    } else {
        c.pass.clone()
    };
    let mut conn = Conn::open(c).await?;
    if c.proto == Proto::Pop3 {
        return pop3(&mut conn, &c.user, &pass, wrong, msgs.0).await;
    }
    conn.read_line("greeting").await?;
    if !conn.line.starts_with(b"* OK") {
        return Err(format!("greeting: {}", conn.text()).into());
    }
    let login = conn
        .command("a", &format!("LOGIN {} {pass}", c.user))
        .await?;
    match (login, wrong) {
        (Ok(()), false) => {}
        (Err(no), true) => {
            conn.command("z", "LOGOUT").await?.map_err(Fail::Error)?;
            conn.expect_close().await?;
            return Err(Fail::Refused(status_code(&no)));
        }
        (Ok(()), true) => return Err("LOGIN: wrong password accepted".to_string().into()),
        (Err(no), false) => return Err(format!("LOGIN: {no}").into()),
    }
    let ok = |r: Result<(), String>, what: &str| r.map_err(|s| Fail::Error(format!("{what}: {s}")));
    ok(conn.command("b", "SELECT INBOX").await?, "SELECT")?;
    // A few messages, bodies and all.
    let (first, count) = msgs;
    let last = (first + count - 1).min(MESSAGES as u64);
    conn.send(&format!(
        "c FETCH {first}:{last} (UID FLAGS RFC822.SIZE BODY.PEEK[])"
    ))
    .await?;
    let literals = conn.until_tagged("c", "FETCH").await?;
    ok(literals.0, "FETCH")?;
    if literals.1 != (last - first + 1) as usize {
        return Err(format!("FETCH: {} bodies for {first}:{last}", literals.1).into());
    }
    conn.send("i IDLE").await?;
    conn.read_line("IDLE").await?;
    if !conn.line.starts_with(b"+") {
        return Err(format!("IDLE: {}", conn.text()).into());
    }
    tokio::time::sleep(idle).await;
    conn.send("DONE").await?;
    ok(conn.until_tagged("i", "DONE").await?.0, "DONE")?;
    ok(conn.command("z", "LOGOUT").await?, "LOGOUT")?;
    conn.expect_close().await?;
    Ok(())
}

/// USER, PASS, STAT, RETR of one message, QUIT, close.
async fn pop3(c: &mut Conn, user: &str, pass: &str, wrong: bool, msg: u64) -> Result<(), Fail> {
    c.pop3_ok("greeting").await?;
    c.send(&format!("USER {user}")).await?;
    c.pop3_ok("USER").await?;
    c.send(&format!("PASS {pass}")).await?;
    c.read_line("PASS").await?;
    let accepted = c.line.starts_with(b"+OK");
    match (accepted, wrong) {
        (true, false) => {}
        (false, true) => {
            let why = c.text();
            c.send("QUIT").await?;
            c.pop3_ok("QUIT").await?;
            c.expect_close().await?;
            return Err(Fail::Refused(status_code(&why)));
        }
        (true, true) => return Err("PASS: wrong password accepted".to_string().into()),
        (false, false) => return Err(format!("PASS: {}", c.text()).into()),
    }
    c.send("STAT").await?;
    c.pop3_ok("STAT").await?;
    c.send(&format!("RETR {msg}")).await?;
    c.pop3_ok("RETR").await?;
    let mut lines = 0;
    loop {
        c.read_line("RETR").await?;
        if c.line == b".\r\n" {
            break;
        }
        lines += 1;
        if lines > 100_000 {
            return Err("RETR: no end".to_string().into());
        }
    }
    c.send("QUIT").await?;
    c.pop3_ok("QUIT").await?;
    c.expect_close().await?;
    Ok(())
}

/// The response code of a refusal (`NO [AUTHENTICATIONFAILED]`, `-ERR
/// [AUTH]`), or its first words: what the report counts by.
fn status_code(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let status = words.iter().position(|w| *w == "NO" || *w == "-ERR");
    match status {
        Some(i) => {
            let code = words
                .get(i + 1)
                .filter(|w| w.starts_with('['))
                .map_or("", |w| w);
            format!("{} {code}", words[i]).trim_end().to_string()
        }
        None => line.chars().take(40).collect(),
    }
}

/// Just enough IMAP and POP3.
struct Conn {
    io: BufReader<Box<dyn Io>>,
    line: Vec<u8>,
}

async fn within<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timeout")),
    }
}

impl Conn {
    /// TCP from the client's own source address, TLS for IMAPS (full
    /// handshake: the connector has resumption off).
    async fn open(c: &Client) -> Result<Conn, String> {
        let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        sock.bind(SocketAddr::V4(SocketAddrV4::new(c.src, 0)))
            .map_err(|e| format!("bind: {e}"))?;
        let tcp = within("connect", sock.connect(c.target)).await?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if c.proto == Proto::Imaps {
            let name = ServerName::try_from("localhost").expect("server name");
            Box::new(within("TLS", c.tls.connect(name, tcp)).await?)
        } else {
            Box::new(tcp)
        };
        Ok(Conn {
            io: BufReader::with_capacity(4096, io),
            line: Vec::with_capacity(256),
        })
    }

    async fn read_line(&mut self, what: &str) -> Result<(), String> {
        self.line.clear();
        within(what, self.io.read_until(b'\n', &mut self.line)).await?;
        if self.line.ends_with(b"\n") {
            Ok(())
        } else {
            Err(format!("{what}: connection closed"))
        }
    }

    async fn send(&mut self, line: &str) -> Result<(), String> {
        let bytes = format!("{line}\r\n");
        // The command's name: after the tag in IMAP (tags here are one
        // letter), first in POP3 and for DONE.
        let mut words = line.split(' ');
        let first = words.next().unwrap_or(line);
        let what = if first.len() == 1 {
            words.next().unwrap_or(first)
        } else {
            first
        }
        .to_string();
        within(&what, async {
            self.io.write_all(bytes.as_bytes()).await?;
            self.io.flush().await
        })
        .await
    }

    fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.line).trim_end().to_string();
        s.truncate(100);
        s
    }

    /// Sends a command, reads to its tagged reply: `Ok(Err(line))` for NO
    /// or BAD, `Err` for I/O.
    async fn command(&mut self, tag: &str, command: &str) -> Result<Result<(), String>, String> {
        self.send(&format!("{tag} {command}")).await?;
        let what = command.split(' ').next().unwrap_or(command);
        Ok(self.until_tagged(tag, what).await?.0)
    }

    /// Reads to the line tagged `tag`, skipping literals; returns its
    /// status and how many literals came before it.
    async fn until_tagged(
        &mut self,
        tag: &str,
        what: &str,
    ) -> Result<(Result<(), String>, usize), String> {
        let mut literals = 0;
        for _ in 0..10_000 {
            self.read_line(what).await?;
            if let Some(rest) = self
                .line
                .strip_prefix(tag.as_bytes())
                .and_then(|r| r.strip_prefix(b" "))
            {
                let status = if rest.starts_with(b"OK") {
                    Ok(())
                } else {
                    Err(self.text())
                };
                return Ok((status, literals));
            }
            if let Some(n) = literal_len(&self.line) {
                self.skip(n).await?;
                literals += 1;
            }
        }
        Err(format!("{what}: no tagged reply"))
    }

    async fn skip(&mut self, mut n: usize) -> Result<(), String> {
        while n > 0 {
            let buf = within("literal", self.io.fill_buf()).await?;
            if buf.is_empty() {
                return Err(format!("literal: connection closed, {n} bytes missing"));
            }
            let k = buf.len().min(n);
            self.io.consume(k);
            n -= k;
        }
        Ok(())
    }

    async fn pop3_ok(&mut self, what: &str) -> Result<(), String> {
        self.read_line(what).await?;
        if self.line.starts_with(b"+OK") {
            Ok(())
        } else {
            Err(format!("{what}: {}", self.text()))
        }
    }

    /// After LOGOUT / QUIT the server closes first (TIME_WAIT on its side).
    async fn expect_close(&mut self) -> Result<(), String> {
        for _ in 0..100 {
            self.line.clear();
            match tokio::time::timeout(IO_TIMEOUT, self.io.read_until(b'\n', &mut self.line)).await
            {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => {}
                // A TLS peer that closes without close_notify.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(format!("close: {e}")),
                Err(_) => return Err("close: server kept the connection open".into()),
            }
        }
        Err("close: server kept talking".into())
    }
}
