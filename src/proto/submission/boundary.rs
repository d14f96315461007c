//! Where the backend's reply stream may take a line of ponte's own (`421`
//! on a route change, shutdown or idle timeout): after the last line of a
//! reply (RFC 5321 §4.2.1: `NNN text`, where continuation lines are
//! `NNN-text`), never inside a multi-line reply or a line. It watches the
//! spliced bytes without buffering them: the first four bytes of the
//! current line are all it needs.

use crate::net::bridge::Boundary;

#[derive(Debug)]
pub struct ReplyBoundary {
    /// The first bytes of the current line: its code and separator.
    head: [u8; 4],
    head_len: usize,
    /// Inside a line (bytes after the last line end).
    in_line: bool,
    /// The last complete line ended a reply.
    last_final: bool,
}

impl Default for ReplyBoundary {
    /// The bridge starts right after ponte's own `235`, a whole reply.
    fn default() -> Self {
        ReplyBoundary {
            head: [0; 4],
            head_len: 0,
            in_line: false,
            last_final: true,
        }
    }
}

impl ReplyBoundary {
    fn keep_head(&mut self, bytes: &[u8]) {
        let n = (4 - self.head_len).min(bytes.len());
        self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
        self.head_len += n;
    }
}

impl Boundary for ReplyBoundary {
    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if !self.in_line {
                self.head_len = 0;
                self.in_line = true;
            }
            match bytes.iter().position(|&b| b == b'\n') {
                None => {
                    self.keep_head(bytes);
                    return;
                }
                Some(i) => {
                    self.keep_head(&bytes[..i]);
                    // `NNN-` continues the reply; `NNN `, `NNN\r` end it.
                    self.last_final = !(self.head_len == 4 && self.head[3] == b'-');
                    self.in_line = false;
                    bytes = &bytes[i + 1..];
                }
            }
        }
    }

    fn at_boundary(&self) -> bool {
        !self.in_line && self.last_final
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] =
        b"250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n250 2.1.0 Ok\r\n354 Go\r\n221\r\n";

    /// Boundaries found when the stream arrives in pieces of `size`.
    fn boundaries(size: usize) -> Vec<usize> {
        let mut b = ReplyBoundary::default();
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
    fn boundaries_fall_after_whole_replies_only() {
        let ends = vec![46, 60, 68, 73];
        assert_eq!(boundaries(1), ends);
        for size in 2..STREAM.len() {
            for pos in boundaries(size) {
                assert!(ends.contains(&pos), "size {size}: boundary at {pos}");
            }
        }
    }

    #[test]
    fn starts_at_a_boundary_and_leaves_it_inside_a_line() {
        let mut b = ReplyBoundary::default();
        assert!(b.at_boundary());
        b.observe(b"25");
        assert!(!b.at_boundary());
        b.observe(b"0-a\r\n250");
        assert!(!b.at_boundary());
        b.observe(b" b\r\n");
        assert!(b.at_boundary());
    }
}
