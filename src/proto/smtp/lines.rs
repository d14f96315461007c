//! SMTP is line-based both ways (RFC 5321 §2.3.8): commands from the
//! client, replies from the backend. This buffer frames lines under a
//! length limit and keeps the exact bytes that follow the last line taken,
//! so that what a client pipelined behind its `AUTH` (or a backend sent
//! behind its `235`) is passed on unchanged once the session is spliced.
//! Each line is then parsed with smtp-proto.

use tokio::io::{AsyncRead, AsyncReadExt};

/// A line (or what has come of it so far) is longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line too long")]
pub struct TooLong;

/// How much one read may add to the buffer.
const READ_CHUNK: usize = 4096;

pub struct Lines {
    buf: Vec<u8>,
    /// Start of the bytes not taken yet.
    start: usize,
    max: usize,
}

impl Lines {
    /// `max`: the longest line accepted, line end included.
    pub fn new(max: usize) -> Lines {
        Lines {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// The next complete line, its line end included; `None` until one has
    /// arrived. A line over the limit is an error, also before its end.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, TooLong> {
        let pending = &self.buf[self.start..];
        match pending.iter().position(|&b| b == b'\n') {
            Some(i) if i < self.max => {
                let line = self.start..self.start + i + 1;
                self.start += i + 1;
                Ok(Some(&self.buf[line]))
            }
            Some(_) => Err(TooLong),
            None if pending.len() >= self.max => Err(TooLong),
            None => Ok(None),
        }
    }

    /// Reads once from `r`; returns the byte count (0 at end of stream).
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> std::io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // `take` bounds the read by the chunk, not by what `reserve` gave.
        self.buf.reserve(READ_CHUNK);
        r.take(READ_CHUNK as u64).read_buf(&mut self.buf).await
    }

    /// Bytes received and not taken yet.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The bytes received and not taken yet, for a receiver that is not
    /// line-based (DATA); tell [`Lines::consume`] how many it took.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks `n` pending bytes as taken.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
    }

    /// Drops everything buffered (STARTTLS: it came in clear text).
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
    }

    /// What follows the last line taken.
    pub fn into_rest(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_lines_and_keeps_the_rest_byte_exact() {
        let mut lines = Lines::new(64);
        let mut input: &[u8] = b"EHLO a\r\nAUTH PLAIN x\r\nMAIL FROM:<a@b>\r\nRCPT";
        while lines.fill(&mut input).await.unwrap() > 0 {}
        assert_eq!(lines.next_line().unwrap(), Some(&b"EHLO a\r\n"[..]));
        assert_eq!(lines.next_line().unwrap(), Some(&b"AUTH PLAIN x\r\n"[..]));
        assert_eq!(lines.pending(), 21);
        assert_eq!(lines.into_rest(), b"MAIL FROM:<a@b>\r\nRCPT");
    }

    #[tokio::test]
    async fn refuses_long_lines_before_their_end() {
        let mut lines = Lines::new(8);
        let mut input: &[u8] = b"1234567\nabcdefgh";
        while lines.fill(&mut input).await.unwrap() > 0 {}
        assert_eq!(lines.next_line().unwrap(), Some(&b"1234567\n"[..]));
        assert_eq!(lines.next_line(), Err(TooLong));
        let mut lines = Lines::new(8);
        let mut input: &[u8] = b"12345678\n";
        lines.fill(&mut input).await.unwrap();
        assert_eq!(lines.next_line(), Err(TooLong));
    }

    #[tokio::test]
    async fn clear_forgets_everything_buffered() {
        let mut lines = Lines::new(64);
        let mut input: &[u8] = b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n";
        lines.fill(&mut input).await.unwrap();
        assert!(lines.next_line().unwrap().is_some());
        lines.clear();
        assert_eq!(lines.next_line().unwrap(), None);
        assert!(lines.into_rest().is_empty());
    }
}
