//! Delivery status notifications (RFC 3464, in a `multipart/report` of
//! RFC 6522): what the sender of a spooled message gets when a recipient
//! fails for good. Three parts: a short text for people (Italian and
//! English: the senders are Italian administrations and their
//! correspondents), the machine-readable `message/delivery-status`, and
//! the original message's header (`text/rfc822-headers`: enough to tell
//! which message it was, without sending a signed PEC body back out).

use std::fmt::Write as _;

use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

use super::Envelope;

/// The original header section sent back is cut at this size.
const MAX_HEADERS: usize = 64 * 1024;

/// One recipient that failed for good, and why (the backend's reply, or
/// ponte's own).
pub struct Failure<'a> {
    pub address: &'a str,
    pub reason: &'a str,
}

/// A DSN for `failed` recipients of the message `env` with data `data`,
/// reported by `host`. Only for a message with a non-null sender: the
/// caller never answers a bounce with a bounce (RFC 5321 §4.5.5).
pub fn build(
    env: &Envelope,
    data: &[u8],
    failed: &[Failure<'_>],
    host: &str,
    now: OffsetDateTime,
) -> Vec<u8> {
    let date = |t: OffsetDateTime| t.format(&Rfc2822).unwrap_or_default();
    let arrived = OffsetDateTime::from_unix_timestamp(env.arrived).unwrap_or(now);
    let token = env.trace_id.as_deref().unwrap_or("0");
    let boundary = format!("=_ponte-dsn-{token}");
    let mut m = String::with_capacity(2048);
    // Header. Auto-Submitted (RFC 3834) keeps auto-responders quiet.
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{to}>\r\n\
         Subject: Messaggio non consegnato / Undelivered Mail Returned to Sender\r\n\
         Date: {now}\r\n\
         Message-ID: <dsn.{token}@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n",
        to = env.mail_from,
        now = date(now),
    );
    // For people.
    let _ = write!(
        m,
        "--{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         Il messaggio ricevuto da {host} il {arrived} non è stato consegnato\r\n\
         ai destinatari seguenti, in modo definitivo.\r\n\
         \r\n\
         The message {host} received on {arrived} could not be delivered\r\n\
         to the following recipients. This is a permanent error.\r\n\
         \r\n",
        arrived = date(arrived),
    );
    for f in failed {
        let _ = write!(m, "  <{}>: {}\r\n", f.address, one_line(f.reason));
    }
    // For machines (RFC 3464 §2.2, §2.3).
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n\
         Arrival-Date: {arrived}\r\n",
        arrived = date(arrived),
    );
    for f in failed {
        let reason = one_line(f.reason);
        let _ = write!(
            m,
            "\r\nFinal-Recipient: rfc822; {}\r\n\
             Action: failed\r\n\
             Status: {}\r\n\
             Diagnostic-Code: smtp; {reason}\r\n\
             Last-Attempt-Date: {}\r\n",
            f.address,
            status_code(&reason),
            date(now),
        );
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n"
    );
    let mut out = m.into_bytes();
    out.extend_from_slice(header_section(data));
    out.extend_from_slice(format!("\r\n\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The original's header section without its last line end, as
/// mail-parser finds it, at most [`MAX_HEADERS`] bytes cut at a line end.
fn header_section(data: &[u8]) -> &[u8] {
    // Where the last header field ends (`parse_headers` skips the body,
    // so the part's own body offset is not set).
    let end = mail_parser::MessageParser::new()
        .parse_headers(data)
        .and_then(|m| m.headers().iter().map(|h| h.offset_end).max())
        .map_or(0, |e| e as usize)
        .min(data.len());
    let mut head = &data[..end];
    if head.len() > MAX_HEADERS {
        let cut = head[..MAX_HEADERS]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        head = &head[..cut];
    }
    while let [rest @ .., b'\r' | b'\n'] = head {
        head = rest;
    }
    head
}

/// A reply as one printable line: a multi-line SMTP reply's lines joined,
/// control characters dropped (it goes into header fields).
fn one_line(reason: &str) -> String {
    let joined: Vec<&str> = reason
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    joined
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(900)
        .collect()
}

/// The enhanced status code (RFC 3463) in a reply such as `550 5.1.1 No
/// such user`, or the class's generic one from its basic code.
fn status_code(reason: &str) -> String {
    let mut words = reason.split([' ', '-']);
    let basic = words.next().unwrap_or_default();
    let enhanced = words.next().filter(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && matches!(parts[0], "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    });
    match enhanced {
        Some(code) => code.to_string(),
        None if basic.starts_with('4') => "4.0.0".into(),
        None => "5.0.0".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MimeHeaders;

    fn envelope() -> Envelope {
        let mut env = Envelope::new(
            "mittente@sender.example",
            ["a@pec.example", "b@pec.example"],
            None,
            "mx.sender.example",
        );
        env.arrived = 1_700_000_000;
        env.trace_id = Some("18c.1.1".into());
        env
    }

    #[test]
    fn enhanced_codes_are_read_from_the_reply_or_derived() {
        assert_eq!(status_code("550 5.1.1 <a@x> User doesn't exist"), "5.1.1");
        assert_eq!(status_code("552-5.2.2 Over quota"), "5.2.2");
        assert_eq!(status_code("550 User unknown"), "5.0.0");
        assert_eq!(status_code("Mailbox not served"), "5.0.0");
        assert_eq!(status_code("5.1.1.1 x"), "5.0.0");
    }

    #[test]
    fn the_report_parses_as_a_multipart_report_with_the_original_headers() {
        let data = b"Received: from x\r\n\tby y;\r\n\tdate\r\nFrom: m@sender.example\r\n\
                     Subject: PEC\r\nMessage-ID: <orig@sender.example>\r\n\r\nsigned body\r\n";
        let failed = [Failure {
            address: "a@pec.example",
            reason: "550-5.1.1 <a@pec.example> User doesn't exist\r\n550 5.1.1 really\r\n",
        }];
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_100).unwrap();
        let dsn = build(&envelope(), data, &failed, "mx.pec.example", now);
        let text = String::from_utf8(dsn.clone()).unwrap();
        assert!(text.contains(
            "Final-Recipient: rfc822; a@pec.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(text.contains("Diagnostic-Code: smtp; 550-5.1.1 <a@pec.example> User doesn't exist 550 5.1.1 really\r\n"));
        assert!(!text.contains("b@pec.example"), "only the failed recipient");
        assert!(!text.contains("signed body"), "headers only");

        let msg = mail_parser::MessageParser::default().parse(&dsn).unwrap();
        assert_eq!(msg.content_type().unwrap().ctype(), "multipart");
        assert_eq!(msg.content_type().unwrap().subtype(), Some("report"));
        assert_eq!(
            msg.to().unwrap().first().unwrap().address(),
            Some("mittente@sender.example")
        );
        assert_eq!(msg.parts.len(), 4, "the multipart and its three parts");
        let kinds: Vec<String> = msg.parts[1..]
            .iter()
            .map(|p| {
                let ct = p.content_type().unwrap();
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default())
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );
        assert!(
            text.contains("Message-ID: <orig@sender.example>\r\n\r\n--=_ponte-dsn-18c.1.1--\r\n")
        );
    }

    #[test]
    fn long_header_sections_are_cut_at_a_line_end() {
        let mut data = Vec::new();
        for i in 0..5000 {
            data.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(20)).as_bytes());
        }
        data.extend_from_slice(b"\r\nbody\r\n");
        let head = header_section(&data);
        assert!(head.len() <= MAX_HEADERS && head.ends_with(b"vvvv"));
        assert!(header_section(b"no header at all").len() <= 16);
    }
}
