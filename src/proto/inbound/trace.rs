//! The one change ponte makes to an inbound message: a `Received:` trace
//! header prepended (RFC 5321 §4.4, date in RFC 5322 §3.3 format). The
//! message bytes that follow are left exactly as received (PEC messages
//! are signed).

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

/// The id in ponte's `Received:` header: unique per message across
/// restarts (this process's start time, the connection, the message in
/// it), so that a mailbox can be searched for it (`proto::imap::lookup`).
/// Hex digits and dots only.
pub fn trace_id(conn: u64, message: u32) -> String {
    static STARTED: OnceLock<u64> = OnceLock::new();
    let started = STARTED.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    });
    format!("{started:x}.{conn:x}.{message:x}")
}

/// Who handed the message over, and how.
pub struct Trace<'a> {
    /// The client's EHLO/HELO name.
    pub helo: Option<&'a str>,
    pub client: IpAddr,
    /// ponte's own name.
    pub by: &'a str,
    /// Over TLS (ESMTPS, RFC 3848).
    pub tls: bool,
    pub id: &'a str,
}

impl Trace<'_> {
    /// `Received: from … by … with … id …; date`, folded, CRLF-ended.
    pub fn header(&self, now: OffsetDateTime) -> String {
        let helo = clean(self.helo).unwrap_or("unknown");
        let client = match self.client.to_canonical() {
            IpAddr::V4(ip) => format!("[{ip}]"),
            IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
        };
        let with = if self.tls { "ESMTPS" } else { "ESMTP" };
        // Rfc2822 formatting fails only for years outside 1900..=9999.
        let date = now.format(&Rfc2822).unwrap_or_default();
        format!(
            "Received: from {helo} ({client})\r\n\tby {} (ponte) with {with} id {};\r\n\t{date}\r\n",
            self.by, self.id
        )
    }
}

/// The client's name if it is a plain domain or address literal (RFC 5321
/// §4.1.1.1); anything else could break the header.
pub fn clean(helo: Option<&str>) -> Option<&str> {
    helo.filter(|h| {
        (1..=255).contains(&h.len())
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_client_ponte_id_and_date() {
        let t = Trace {
            helo: Some("mx.sender.example"),
            client: "192.0.2.7".parse().unwrap(),
            by: "mx.pec.example",
            tls: false,
            id: "abc",
        };
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(
            t.header(now),
            "Received: from mx.sender.example ([192.0.2.7])\r\n\tby mx.pec.example (ponte) \
             with ESMTP id abc;\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
        let t = Trace {
            helo: Some("evil\r\nX-Injected: 1"),
            client: "2001:db8::1".parse().unwrap(),
            tls: true,
            ..t
        };
        let h = t.header(now);
        assert!(h.starts_with("Received: from unknown ([IPv6:2001:db8::1])"));
        assert!(h.contains("with ESMTPS") && !h.contains("Injected"));
    }
}
