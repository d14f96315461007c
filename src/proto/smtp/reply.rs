//! SMTP replies as a client reads them (RFC 5321 §4.2): one or more lines
//! `NNN-text` ended by `NNN text`, all with the same code.

use super::lines::Lines;

/// One whole reply: its code and its raw lines, line ends included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub raw: Vec<u8>,
}

/// Why a reply could not be read from the buffered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line too long")]
    TooLong,
    #[error("malformed reply")]
    Malformed,
}

/// Replies are small; a longer one is broken or hostile.
pub const MAX_REPLY: usize = 64 * 1024;

impl Reply {
    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 5xx: retrying will not help.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The reply as one line of text, for logs and the spool.
    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.raw);
        text.lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// Takes the next whole reply out of `lines`; `None` until all its
    /// lines have arrived (what was taken stays in `partial`).
    pub fn take(lines: &mut Lines, partial: &mut Vec<u8>) -> Result<Option<Reply>, ReplyError> {
        loop {
            let line = match lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(None),
                Err(_) => return Err(ReplyError::TooLong),
            };
            let (code, last) = parse_line(line).ok_or(ReplyError::Malformed)?;
            let first = partial.get(..3).map(parse_code);
            if first.is_some_and(|c| c != Some(code)) || partial.len() + line.len() > MAX_REPLY {
                return Err(ReplyError::Malformed);
            }
            partial.extend_from_slice(line);
            if last {
                let raw = std::mem::take(partial);
                return Ok(Some(Reply { code, raw }));
            }
        }
    }
}

fn parse_code(digits: &[u8]) -> Option<u16> {
    if digits.len() != 3 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0')),
    )
}

/// The code of one reply line and whether it ends the reply (`NNN-`
/// continues, `NNN `, or a bare `NNN`, ends).
pub fn parse_line(line: &[u8]) -> Option<(u16, bool)> {
    let code = parse_code(line.get(..3)?)?;
    match line.get(3) {
        Some(b'-') => Some((code, false)),
        Some(b' ' | b'\r' | b'\n') => Some((code, true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn takes_multi_line_replies_whole() {
        let mut lines = Lines::new(512);
        let mut input: &[u8] = b"250-a\r\n250 b\r\n550 5.1.1 no\r\n45";
        lines.fill(&mut input).await.unwrap();
        let mut partial = Vec::new();
        let r = Reply::take(&mut lines, &mut partial).unwrap().unwrap();
        assert_eq!((r.code, r.text()), (250, "250-a / 250 b".to_string()));
        let r = Reply::take(&mut lines, &mut partial).unwrap().unwrap();
        assert!(r.is_permanent() && !r.is_success());
        assert_eq!(Reply::take(&mut lines, &mut partial), Ok(None));
    }

    #[tokio::test]
    async fn refuses_mixed_codes_and_garbage() {
        let mut lines = Lines::new(512);
        let mut input: &[u8] = b"250-a\r\n251 b\r\n";
        lines.fill(&mut input).await.unwrap();
        let mut partial = Vec::new();
        assert_eq!(
            Reply::take(&mut lines, &mut partial),
            Err(ReplyError::Malformed)
        );
        assert_eq!(parse_line(b"2x0 x\r\n"), None);
        assert_eq!(parse_line(b"221\r\n"), Some((221, true)));
    }
}
