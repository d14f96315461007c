//! Loopback networking helpers for tests: free ports, connections and a
//! line-oriented client whose every read is bounded by [`IO_TIMEOUT`], so a
//! misbehaving server fails a test instead of hanging the whole run.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Upper bound for any single read or write in tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A port on 127.0.0.1 that was free a moment ago. Racy by nature (another
/// process may take it before we bind it again); `Dovecot::start` retries on
/// "Address already in use", callers binding their own listeners should too.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports: all listeners are held open together so the
/// kernel cannot hand out the same port twice within one call.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A TCP connection with read and write timeouts already set.
pub fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Polls `addr` until a connection's first line starts with `prefix`
/// (e.g. `"* OK"`), or `within` elapses. Returns the greeting line.
pub fn wait_greeting(addr: SocketAddr, prefix: &str, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match connect(addr).map(LineConn::new) {
            Ok(mut conn) => match conn.try_read_line() {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(line) => last = format!("unexpected greeting {line:?}"),
                Err(e) => last = format!("reading greeting: {e}"),
            },
            Err(e) => last = format!("connect: {e}"),
        }
        sleep(Duration::from_millis(5));
    }
    Err(format!(
        "no {prefix:?} greeting from {addr} within {within:?}; last: {last}"
    ))
}

/// Reply to one tagged IMAP command.
#[derive(Debug)]
pub struct Tagged {
    /// Everything before the tagged line, literals included, verbatim.
    pub untagged: Vec<u8>,
    /// The tagged line without the tag and CRLF, e.g. `OK Logged in`.
    pub status: String,
}

impl Tagged {
    pub fn is_ok(&self) -> bool {
        self.status.starts_with("OK")
    }

    /// The untagged part as (lossy) text, for `contains` checks.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.untagged).into_owned()
    }
}

/// Line-oriented client over any stream (plain TCP or a TLS stream); the
/// stream itself must carry the read timeout (see [`connect`]).
pub struct LineConn<S: Read + Write> {
    inner: BufReader<S>,
}

impl LineConn<TcpStream> {
    /// Connects with timeouts; panics with the address on failure.
    pub fn tcp(addr: SocketAddr) -> Self {
        let stream = connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        LineConn::new(stream)
    }
}

impl<S: Read + Write> LineConn<S> {
    pub fn new(stream: S) -> Self {
        LineConn {
            inner: BufReader::new(stream),
        }
    }

    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// One raw line including its line ending; an error on EOF or timeout.
    pub fn try_read_raw_line(&mut self) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.inner.read_until(b'\n', &mut buf)?;
        if !buf.ends_with(b"\n") {
            let got = String::from_utf8_lossy(&buf).into_owned();
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed mid-line after {got:?}"),
            ));
        }
        Ok(buf)
    }

    /// One line without its CRLF; an error on EOF or timeout.
    pub fn try_read_line(&mut self) -> std::io::Result<String> {
        let raw = self.try_read_raw_line()?;
        let text = String::from_utf8_lossy(&raw);
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    }

    /// One line without its CRLF; panics on EOF or timeout.
    pub fn read_line(&mut self) -> String {
        self.try_read_line()
            .unwrap_or_else(|e| panic!("read_line: {e}"))
    }

    /// Exactly `n` bytes; panics on EOF or timeout.
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.inner
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("read_exact({n}): {e}"));
        buf
    }

    /// Writes `line` followed by CRLF.
    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stream = self.inner.get_mut();
        stream
            .write_all(bytes)
            .and_then(|_| stream.flush())
            .unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// Sends `tag command` and reads up to the tagged reply, consuming any
    /// `{n}` literals on the way so message bodies cannot be mistaken for lines.
    pub fn imap(&mut self, tag: &str, command: &str) -> Tagged {
        self.send(&format!("{tag} {command}"));
        self.imap_until_tagged(tag)
    }

    /// Reads untagged responses until the line tagged `tag`.
    pub fn imap_until_tagged(&mut self, tag: &str) -> Tagged {
        let prefix = format!("{tag} ");
        let mut untagged = Vec::new();
        loop {
            let raw = self.try_read_raw_line().unwrap_or_else(|e| {
                panic!(
                    "waiting for {tag:?} after {:?}: {e}",
                    String::from_utf8_lossy(&untagged)
                )
            });
            if raw.starts_with(prefix.as_bytes()) {
                let status = String::from_utf8_lossy(&raw[prefix.len()..]);
                let status = status.trim_end_matches(['\r', '\n']).to_string();
                return Tagged { untagged, status };
            }
            let literal = literal_len(&raw);
            untagged.extend_from_slice(&raw);
            if let Some(n) = literal {
                untagged.extend(self.read_exact(n));
            }
        }
    }
}

/// The length of a literal announced at the end of an IMAP line
/// (`{12}` or non-synchronizing `{12+}`), if any.
pub fn literal_len(line: &[u8]) -> Option<usize> {
    let end = line.iter().rposition(|b| !matches!(b, b'\r' | b'\n'))? + 1;
    let inner = line[..end].strip_suffix(b"}")?;
    let digits = &inner[inner.iter().rposition(|&b| b == b'{')? + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    std::str::from_utf8(digits).ok()?.parse().ok()
}
