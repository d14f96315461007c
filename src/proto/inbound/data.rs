//! The DATA phase: smtp-proto's `DataReceiver` does the framing and the
//! dot-unstuffing (only `<CRLF>.<CRLF>` ends the message: a bare LF before
//! the dot does not, the SMTP smuggling case), fed from the same buffer
//! the commands come from so that what the client pipelined after the
//! final dot stays for the next command. Bounded by the `SIZE` limit:
//! past it ponte answers `552` and closes rather than read on. The
//! receiver also stops at CRLF `.` CR CR LF: `DataEnd` checks the end it
//! found, and anything else is refused with `554` and a close.

use smtp_proto::request::receiver::DataReceiver;

use super::{Session, SessionError};

impl Session<'_> {
    /// The message as the client sent it (unstuffed, ending with CRLF).
    pub(super) async fn read_data(&mut self) -> Result<Vec<u8>, SessionError> {
        let limit = usize::try_from(self.ctx.config.limits.max_message_size).unwrap_or(usize::MAX);
        let mut receiver = data_receiver();
        let mut end = DataEnd::default();
        let mut body = Vec::new();
        loop {
            let pending = self.lines.pending_bytes();
            let mut bytes = pending.iter();
            let done = receiver.ingest(&mut bytes, &mut body);
            let used = pending.len() - bytes.as_slice().len();
            end.push(&pending[..used]);
            self.lines.consume(used);
            if body.len() > limit {
                self.goodbye("552 5.3.4 Message too big for system, closing connection\r\n")
                    .await;
                return Err(SessionError::TooBig);
            }
            if done && !end.is_end() {
                // What follows would be read as commands that the sender
                // (and an RFC 5321 relay before it) took for message text.
                self.goodbye("554 5.6.0 Malformed end of data, closing connection\r\n")
                    .await;
                return Err(SessionError::Protocol("CR before the end of data"));
            }
            if done {
                return Ok(body);
            }
            self.fill().await?;
        }
    }
}

/// A receiver at the start of a line, as after the DATA command's CRLF.
/// smtp-proto's starts mid-line: `.` CRLF at once would not end an empty
/// message (the commands after it became its text) and a first line's
/// leading dot would not be unstuffed (RFC 5321 §4.5.2).
#[doc(hidden)]
pub fn data_receiver() -> DataReceiver {
    let mut receiver = DataReceiver::new();
    let mut scratch = Vec::new();
    receiver.ingest(&mut b"\r\n".iter(), &mut scratch);
    receiver
}

/// The last bytes read for a message, to check the end the receiver
/// found: smtp-proto's also ends at CRLF `.` CR CR… LF, where RFC 5321
/// sees message text (an SMTP smuggling case).
#[doc(hidden)]
pub struct DataEnd {
    /// The last five bytes, starting with the DATA line's CRLF.
    tail: Vec<u8>,
}

impl Default for DataEnd {
    fn default() -> DataEnd {
        DataEnd {
            tail: b"\r\n".to_vec(),
        }
    }
}

impl DataEnd {
    pub fn push(&mut self, bytes: &[u8]) {
        self.tail
            .extend_from_slice(&bytes[bytes.len().saturating_sub(5)..]);
        let extra = self.tail.len().saturating_sub(5);
        self.tail.drain(..extra);
    }

    /// The bytes so far end with `<CRLF>.<CRLF>`.
    pub fn is_end(&self) -> bool {
        self.tail == b"\r\n.\r\n"
    }
}

#[cfg(test)]
mod tests {
    use super::{data_receiver, DataEnd};

    /// The receiver's output for `input` split at `at`, and what it left.
    fn ingest_split(input: &[u8], at: usize) -> (Vec<u8>, bool, usize) {
        let mut rx = data_receiver();
        let mut body = Vec::new();
        let mut left = 0;
        let mut done = false;
        for part in [&input[..at], &input[at..]] {
            if done {
                left += part.len();
                continue;
            }
            let mut it = part.iter();
            done = rx.ingest(&mut it, &mut body);
            left += it.as_slice().len();
        }
        (body, done, left)
    }

    #[test]
    fn unstuffs_and_stops_at_crlf_dot_crlf_at_every_split() {
        let input = b"Subject: x\r\n\r\n..dot\r\nbare\n.not end\r\n.\r\nQUIT\r\n";
        for at in 0..=input.len() {
            let (body, done, left) = ingest_split(input, at);
            assert!(done, "split {at}");
            assert_eq!(
                body, b"Subject: x\r\n\r\n.dot\r\nbare\n.not end\r\n",
                "split {at}"
            );
            assert_eq!(left, b"QUIT\r\n".len(), "split {at}");
        }
    }

    /// Found by the `smtp_commands` fuzz target: `DATA` then `.` CRLF (an
    /// empty message) did not end the message, and a leading `..` on the
    /// first line kept both dots.
    #[test]
    fn the_first_line_is_a_line_too() {
        for at in 0..=9 {
            let (body, done, left) = ingest_split(b".\r\nQUIT\r\n", at);
            assert!(done, "split {at}");
            assert_eq!(body, b"", "split {at}");
            assert_eq!(left, b"QUIT\r\n".len(), "split {at}");
        }
        let input = b"..x\r\n.\r\n";
        for at in 0..=input.len() {
            assert_eq!(ingest_split(input, at), (b".x\r\n".to_vec(), true, 0));
        }
    }

    /// Found by the `smtp_commands` fuzz target: smtp-proto ends the data
    /// at CRLF `.` CR CR LF too; `DataEnd` tells it from the real end.
    #[test]
    fn a_cr_before_the_dot_line_end_is_not_the_end() {
        let input = b"x\r\n.\r\r\nMAIL FROM:<evil@x>\r\n";
        for at in 0..=input.len() {
            let mut rx = data_receiver();
            let (mut end, mut body) = (DataEnd::default(), Vec::new());
            let mut done = false;
            for part in [&input[..at], &input[at..]] {
                let mut it = part.iter();
                done = done || rx.ingest(&mut it, &mut body);
                end.push(&part[..part.len() - it.as_slice().len()]);
            }
            assert!(done, "smtp-proto changed: split {at}");
            assert!(!end.is_end(), "split {at}");
        }
        let mut end = DataEnd::default();
        assert!(!end.is_end());
        end.push(b".\r\n");
        assert!(end.is_end(), "the DATA line's CRLF counts");
        for part in [&b"a\r"[..], b"\n", b".", b"\r", b"\n"] {
            end.push(part);
        }
        assert!(end.is_end());
    }
}
