//! The DATA phase: smtp-proto's `DataReceiver` does the framing and the
//! dot-unstuffing (only `<CRLF>.<CRLF>` ends the message: a bare LF before
//! the dot does not, the SMTP smuggling case), fed from the same buffer
//! the commands come from so that what the client pipelined after the
//! final dot stays for the next command. Bounded by the `SIZE` limit:
//! past it ponte answers `552` and closes rather than read on.

use smtp_proto::request::receiver::DataReceiver;

use super::{Session, SessionError};

impl Session<'_> {
    /// The message as the client sent it (unstuffed, ending with CRLF).
    pub(super) async fn read_data(&mut self) -> Result<Vec<u8>, SessionError> {
        let limit = usize::try_from(self.ctx.config.limits.max_message_size).unwrap_or(usize::MAX);
        let mut receiver = data_receiver();
        let mut body = Vec::new();
        loop {
            let pending = self.lines.pending_bytes();
            let mut bytes = pending.iter();
            let done = receiver.ingest(&mut bytes, &mut body);
            let used = pending.len() - bytes.as_slice().len();
            self.lines.consume(used);
            if body.len() > limit {
                self.goodbye("552 5.3.4 Message too big for system, closing connection\r\n")
                    .await;
                return Err(SessionError::TooBig);
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

#[cfg(test)]
mod tests {
    use super::data_receiver;

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
}
