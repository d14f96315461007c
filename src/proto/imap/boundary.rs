//! Where the backend's response stream may be interrupted by a line of
//! ponte's own (`* BYE [ALERT] …` on a route change or shutdown): between
//! two response lines, never inside a line or a literal (a BYE inside a
//! FETCH literal would corrupt the message the client stores).
//!
//! Hand-written on purpose: it watches the spliced byte stream without
//! buffering it (imap-codec's framer keeps whole messages in memory). It
//! needs only the line ends and the `{N}` literal announcements at their
//! end (RFC 9051 `literal`, and `~{N}` `literal8`, which ends the same way).

use crate::net::bridge::Boundary;

/// Tracks line and literal state of server responses.
#[derive(Debug, Default)]
pub struct ResponseBoundary {
    /// Literal bytes still to come.
    literal: u64,
    /// The last bytes of the current line, enough to read `{N}\r` at its end.
    tail: [u8; TAIL],
    tail_len: usize,
    /// Inside a line (some bytes after the last line end).
    in_line: bool,
}

// `{` + 20 digits (u64) + `}` + `\r`.
const TAIL: usize = 24;

impl ResponseBoundary {
    fn keep_tail(&mut self, bytes: &[u8]) {
        if bytes.len() >= TAIL {
            self.tail.copy_from_slice(&bytes[bytes.len() - TAIL..]);
            self.tail_len = TAIL;
            return;
        }
        let keep = (TAIL - bytes.len()).min(self.tail_len);
        self.tail
            .copy_within(self.tail_len - keep..self.tail_len, 0);
        self.tail[keep..keep + bytes.len()].copy_from_slice(bytes);
        self.tail_len = keep + bytes.len();
    }

    /// The literal length announced at the end of the line now in `tail`.
    fn announced(&self) -> Option<u64> {
        let line = &self.tail[..self.tail_len];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let inner = line.strip_suffix(b"}")?;
        let open = inner.iter().rposition(|&b| b == b'{')?;
        let digits = &inner[open + 1..];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }
}

impl Boundary for ResponseBoundary {
    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.literal > 0 {
                let n = self.literal.min(bytes.len() as u64);
                self.literal -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            match bytes.iter().position(|&b| b == b'\n') {
                None => {
                    self.keep_tail(bytes);
                    self.in_line = true;
                    return;
                }
                Some(i) => {
                    self.keep_tail(&bytes[..i]);
                    self.literal = self.announced().unwrap_or(0);
                    // After a literal the response line goes on.
                    self.in_line = self.literal > 0;
                    self.tail_len = 0;
                    bytes = &bytes[i + 1..];
                }
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.literal == 0 && !self.in_line
    }

    fn opaque_ahead(&self) -> u64 {
        self.literal
    }

    fn skipped(&mut self, n: u64) {
        self.literal -= n.min(self.literal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] =
        b"* 1 FETCH (BODY[] {12}\r\nhello\r\nworld)\r\n* OK [ALERT] x {3}\r\nabc\r\nz OK done\r\n";

    /// Boundaries found when the stream arrives in pieces of `size`.
    fn boundaries(size: usize) -> Vec<usize> {
        let mut b = ResponseBoundary::default();
        let mut at = Vec::new();
        for (i, chunk) in STREAM.chunks(size).enumerate() {
            b.observe(chunk);
            if b.at_boundary() {
                at.push(i * size + chunk.len());
            }
        }
        at
    }

    #[test]
    fn boundaries_fall_between_responses_only() {
        // Byte by byte: exactly after each complete response.
        let ends: Vec<usize> = vec![39, 64, 75];
        assert_eq!(boundaries(1), ends);
        for size in 2..STREAM.len() {
            for pos in boundaries(size) {
                assert!(ends.contains(&pos), "size {size}: boundary at {pos}");
            }
        }
    }

    #[test]
    fn long_lines_and_huge_literals() {
        let mut b = ResponseBoundary::default();
        b.observe(&[b'x'; 100]);
        assert!(!b.at_boundary());
        b.observe(b" {99999999999}\r\n");
        assert!(!b.at_boundary());
        b.observe(&[b'y'; 1000]);
        assert!(!b.at_boundary());
        // A line ending in `}` that is not a literal announcement.
        let mut b = ResponseBoundary::default();
        b.observe(b"* OK {x}\r\n");
        assert!(b.at_boundary());
    }
}
