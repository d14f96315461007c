//! IMAP message framing for both directions, on imap-codec's
//! `Fragmentizer` (lines and literals, with a size limit). It adds what a
//! proxy needs on top: the exact raw bytes that follow the last complete
//! message, so that whatever a client or backend pipelined behind a login
//! can be passed on unchanged once the session is spliced.

use imap_codec::decode::Decoder;
use imap_codec::fragmentizer::{DecodeMessageError, FragmentInfo, Fragmentizer};
use imap_codec::imap_types::core::LiteralMode;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What the framer found in the buffered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A line ended by announcing a literal: a server answers `+` to a
    /// synchronizing one before the peer sends it.
    Literal { mode: LiteralMode, length: u32 },
    /// A whole message is ready: see [`Framer::message`].
    Message,
}

pub struct Framer {
    frag: Fragmentizer,
    /// Raw bytes from the start of the current message on.
    raw: Vec<u8>,
    /// Length of the complete message at the front of `raw`, if any.
    done: usize,
    max: u32,
    /// Keep a copy of the raw bytes (for `into_rest`). A streaming user
    /// (the read-only filter) does not: an oversized literal it refuses
    /// is then dropped as it arrives instead of piling up.
    keep_raw: bool,
}

impl Framer {
    pub fn new(max_message: u32) -> Framer {
        Framer {
            frag: Fragmentizer::new(max_message),
            raw: Vec::new(),
            done: 0,
            max: max_message,
            keep_raw: true,
        }
    }

    /// A framer that keeps no raw copy: memory stays bounded by
    /// `max_message` whatever the peer sends.
    pub fn streaming(max_message: u32) -> Framer {
        Framer {
            keep_raw: false,
            ..Framer::new(max_message)
        }
    }

    /// Advances over buffered bytes; `None` means more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        self.release_message();
        loop {
            let info = self.frag.progress()?;
            if self.frag.is_message_complete() {
                if self.keep_raw {
                    self.done = self.frag.message_bytes().len();
                }
                return Some(Frame::Message);
            }
            if let FragmentInfo::Line {
                announcement: Some(a),
                ..
            } = info
            {
                return Some(Frame::Literal {
                    mode: a.mode,
                    length: a.length,
                });
            }
        }
    }

    /// The bytes of the complete message returned last.
    pub fn message(&self) -> &[u8] {
        if self.keep_raw {
            &self.raw[..self.done]
        } else {
            self.frag.message_bytes()
        }
    }

    pub fn is_too_long(&self) -> bool {
        self.frag.is_max_message_size_exceeded()
    }

    pub fn decode<'a, C: Decoder>(
        &'a self,
        codec: &C,
    ) -> Result<C::Message<'a>, DecodeMessageError<'a, C>> {
        self.frag.decode_message(codec)
    }

    /// Best-effort tag of the current (maybe malformed) message, for a `BAD`.
    pub fn tag(&self) -> Option<String> {
        self.frag.decode_tag().map(|t| t.as_ref().to_string())
    }

    /// Drops the current message after refusing its synchronizing literal:
    /// the peer does not send a literal it was not invited to.
    pub fn skip_message(&mut self) {
        let line = self.frag.message_bytes().len();
        self.frag.skip_message();
        self.raw.drain(..line.min(self.raw.len()));
        self.done = 0;
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.frag.enqueue_bytes(bytes);
        if self.keep_raw {
            self.raw.extend_from_slice(bytes);
        }
    }

    /// Reads once from `stream` into the framer; returns the byte count
    /// (0 at end of stream).
    pub async fn fill<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> std::io::Result<usize> {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await?;
        self.push(&buf[..n]);
        Ok(n)
    }

    /// Everything received after the last complete message (pipelined
    /// commands or responses), consuming the framer.
    pub fn into_rest(mut self) -> Vec<u8> {
        self.release_message();
        self.raw
    }

    /// Bytes buffered beyond the last complete message.
    pub fn pending(&self) -> usize {
        self.raw.len() - self.done
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    fn release_message(&mut self) {
        if self.done > 0 {
            self.raw.drain(..self.done);
            self.done = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::CommandCodec;

    /// Feeds `input` split at every position; the frames and the rest must
    /// not depend on how the bytes arrived.
    fn frames_split_everywhere(input: &[u8]) -> Vec<(Vec<Frame>, Vec<u8>)> {
        (0..=input.len())
            .map(|cut| {
                let mut f = Framer::new(1024);
                let mut frames = Vec::new();
                for part in [&input[..cut], &input[cut..]] {
                    f.push(part);
                    while let Some(fr) = f.next_frame() {
                        frames.push(fr);
                        if fr == Frame::Message {
                            assert!(f.decode(&CommandCodec::default()).is_ok());
                        }
                    }
                }
                (frames, f.into_rest())
            })
            .collect()
    }

    #[test]
    fn frames_literals_and_keeps_the_pipelined_rest() {
        let input = b"a LOGIN {5}\r\nalice {3+}\r\npw!\r\nb SELECT INB";
        for (frames, rest) in frames_split_everywhere(input) {
            assert_eq!(
                frames,
                vec![
                    Frame::Literal {
                        mode: LiteralMode::Sync,
                        length: 5
                    },
                    Frame::Literal {
                        mode: LiteralMode::NonSync,
                        length: 3
                    },
                    Frame::Message,
                ]
            );
            assert_eq!(rest, b"b SELECT INB");
        }
    }

    #[test]
    fn skipping_a_refused_literal_resumes_at_the_next_line() {
        let mut f = Framer::new(1024);
        f.push(b"a LOGIN {99999}\r\nb NOOP\r\n");
        assert!(matches!(
            f.next_frame(),
            Some(Frame::Literal { length: 99999, .. })
        ));
        f.skip_message();
        assert_eq!(f.next_frame(), Some(Frame::Message));
        assert_eq!(f.message(), b"b NOOP\r\n");
    }
}
