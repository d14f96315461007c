//! The read-only POP3 view (tempmail, blackout): one command at a time,
//! default-deny. Reads (STAT, LIST, UIDL, RETR, TOP, NOOP, RSET, CAPA) go
//! to the backend and their answers stream back unchanged; DELE and
//! anything else get `-ERR`. QUIT is answered here and the backend
//! connection dropped without a QUIT: Dovecot commits the `\Seen` of RETR
//! and the deletions only at QUIT (RFC 1939 UPDATE state), so nothing is.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::bridge::{End, Spliced, Stops};
use crate::net::stream::Stream;

const MAX_LINE: usize = 2048;

/// What the view does with one command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it on; `multiline`: a `+OK` answer goes on to a `.` line.
    Forward { multiline: bool },
    /// Answer the client with this; the backend sees nothing.
    Reply(&'static str),
    /// Answer and end the session.
    Quit(&'static str),
}

/// Judges one command line (without its line end).
pub fn judge(line: &str) -> Verdict {
    let mut words = line.split_whitespace();
    let keyword = words.next().unwrap_or("").to_ascii_uppercase();
    let has_arg = words.next().is_some();
    match keyword.as_str() {
        "RETR" | "TOP" | "CAPA" => Verdict::Forward { multiline: true },
        "LIST" | "UIDL" => Verdict::Forward {
            multiline: !has_arg,
        },
        "STAT" | "NOOP" | "RSET" => Verdict::Forward { multiline: false },
        "QUIT" => Verdict::Quit("+OK Bye; the read-only view changed nothing.\r\n"),
        "DELE" => Verdict::Reply(
            "-ERR [SYS/PERM] Read-only view of the old mailbox: messages cannot be deleted.\r\n",
        ),
        _ => Verdict::Reply("-ERR Not allowed in the read-only view of the old mailbox.\r\n"),
    }
}

/// The command as sent on: keyword and arguments separated by single
/// spaces, CRLF-terminated. `None` if the line holds control characters
/// (a bare CR, NUL, …), which a backend might read as a line end.
fn canonical(line: &str) -> Option<String> {
    if line.chars().any(|c| c.is_control()) {
        return None;
    }
    let words: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
    Some(format!("{}\r\n", words.join(" ")))
}

/// Finds the end of a multi-line answer (`CRLF . CRLF`, RFC 1939 §3)
/// across chunks; dot-stuffed lines (`..`) are not ends.
#[derive(Debug, Default)]
struct MultilineEnd {
    /// 0: inside a line; 1: at a line start; 2: seen `.`; 3: seen `.\r`.
    state: u8,
}

impl MultilineEnd {
    /// Starts after the status line: the first data line begins now.
    fn at_line_start() -> MultilineEnd {
        MultilineEnd { state: 1 }
    }

    /// The index just past the terminator in `bytes`, if it is there.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            self.state = match (self.state, b) {
                (2, b'\n') | (3, b'\n') => return Some(i + 1),
                (1, b'.') => 2,
                (2, b'\r') => 3,
                (_, b'\n') => 1,
                _ => 0,
            };
        }
        None
    }
}

struct View<'a> {
    client: &'a mut Stream,
    backend: &'a mut Stream,
    buf: Vec<u8>,
    /// Dropping the rest of an overlong line, up to its end.
    discarding: bool,
    up: u64,
    down: u64,
}

pub async fn run(
    client: &mut Stream,
    backend: &mut Stream,
    client_rest: Vec<u8>,
    stops: Stops<'_>,
) -> Spliced {
    let mut v = View {
        client,
        backend,
        buf: client_rest,
        discarding: false,
        up: 0,
        down: 0,
    };
    let end = tokio::select! {
        r = v.serve(stops.idle) => match r {
            Ok(()) => End::Closed,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => End::Idle,
            Err(e) => End::Error(e),
        },
        _ = stops.kick.cancelled() => End::Kicked,
                _ = stops.shutdown.cancelled() => End::Shutdown,
        _ = stops.expired() => End::Expired,
    };
    Spliced {
        up: v.up,
        down: v.down,
        end,
        // Answers are relayed whole before the next command is read, but a
        // stop may cut one short: POP3 has no unsolicited line to send.
        at_boundary: false,
    }
}

impl View<'_> {
    /// Serves commands until QUIT or the end; a client silent for `idle`
    /// (RFC 1939 §3 asks for at least 10 minutes) ends with `TimedOut`.
    async fn serve(&mut self, idle: std::time::Duration) -> std::io::Result<()> {
        loop {
            let line = tokio::time::timeout(idle, self.read_line())
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
            let Some(line) = line? else {
                return Ok(());
            };
            match judge(&line) {
                Verdict::Forward { multiline } => {
                    let Some(command) = canonical(&line) else {
                        self.send("-ERR Invalid characters in command.\r\n").await?;
                        continue;
                    };
                    self.backend.write_all(command.as_bytes()).await?;
                    self.backend.flush().await?;
                    // A backend that stops answering must not hold the session.
                    tokio::time::timeout(idle, self.relay_answer(multiline))
                        .await
                        .map_err(|_| std::io::Error::other("backend did not answer"))??;
                }
                Verdict::Reply(text) => self.send(text).await?,
                Verdict::Quit(text) => {
                    self.send(text).await?;
                    return Ok(());
                }
            }
        }
    }

    async fn send(&mut self, text: &str) -> std::io::Result<()> {
        self.down += text.len() as u64;
        self.client.write_all(text.as_bytes()).await?;
        self.client.flush().await
    }

    /// One client line without its end; `None` at end of stream.
    async fn read_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                if std::mem::take(&mut self.discarding) {
                    continue;
                }
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                return Ok(Some(text));
            }
            if self.buf.len() > MAX_LINE {
                // One answer for the whole line; its tail is no command.
                if !self.discarding {
                    self.send("-ERR Line too long.\r\n").await?;
                }
                self.buf.clear();
                self.discarding = true;
            }
            let mut chunk = [0u8; 1024];
            let n = self.client.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.up += n as u64;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Relays the backend's answer to one command, streaming a multi-line
    /// one to its terminator.
    async fn relay_answer(&mut self, multiline: bool) -> std::io::Result<()> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut status: Vec<u8> = Vec::new();
        // The status line first: it says whether data lines follow.
        let rest = loop {
            let n = self.backend.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            status.extend_from_slice(&chunk[..n]);
            if let Some(i) = status.iter().position(|&b| b == b'\n') {
                break status.split_off(i + 1);
            }
            if status.len() > MAX_LINE {
                return Err(std::io::Error::other("backend status line too long"));
            }
        };
        self.forward(&status).await?;
        if !(multiline && status.starts_with(b"+OK")) {
            return Ok(());
        }
        let mut end = MultilineEnd::at_line_start();
        let mut pending = rest;
        loop {
            if let Some(i) = end.scan(&pending) {
                return self.forward(&pending[..i]).await;
            }
            self.forward(&pending).await?;
            let n = self.backend.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            pending = chunk[..n].to_vec();
        }
    }

    async fn forward(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.down += bytes.len() as u64;
        self.client.write_all(bytes).await?;
        self.client.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pass_and_writes_do_not() {
        assert_eq!(judge("RETR 1"), Verdict::Forward { multiline: true });
        assert_eq!(judge("list"), Verdict::Forward { multiline: true });
        assert_eq!(judge("LIST 3"), Verdict::Forward { multiline: false });
        assert_eq!(judge("uidl 2"), Verdict::Forward { multiline: false });
        assert!(matches!(judge("DELE 1"), Verdict::Reply(t) if t.starts_with("-ERR")));
        assert!(matches!(judge("XTND XMIT"), Verdict::Reply(_)));
        assert!(matches!(judge("QUIT"), Verdict::Quit(_)));
    }

    #[test]
    fn only_clean_lines_are_sent_on() {
        assert_eq!(canonical("RETR  1").as_deref(), Some("RETR 1\r\n"));
        assert_eq!(canonical("STAT\rQUIT"), None);
        assert_eq!(canonical("LIST\t1"), None);
        assert_eq!(canonical("TOP 1\u{0}0"), None);
    }

    #[test]
    fn finds_the_terminator_across_chunks_and_skips_stuffed_dots() {
        let body = b"line\r\n..stuffed\r\n.\r\n";
        for cut in 0..body.len() {
            let mut end = MultilineEnd::at_line_start();
            let found = end
                .scan(&body[..cut])
                .or_else(|| end.scan(&body[cut..]).map(|i| i + cut));
            assert_eq!(found, Some(body.len()), "cut at {cut}");
        }
        let mut end = MultilineEnd::at_line_start();
        assert_eq!(end.scan(b".\r\n"), Some(3), "empty listing");
    }
}
