//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in
//! front of ponte puts the real client's address in a header before the
//! connection's first byte. Parsed with the `ppp` crate; this module only
//! reads exactly the header's bytes off the socket (what follows belongs
//! to TLS or to the mail protocol) and says whom the connection is for.
//!
//! Only peers in the listener's trusted networks may send one: anyone else
//! could claim any address, and with it dodge per-address limits and
//! throttling or forge the address the backends log.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::v2;
use ppp::HeaderResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// v2's fixed part: the 12-byte signature, version/command, family,
/// length.
const V2_FIXED: usize = 16;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1's longest header (the specification's 107 bytes).
const V1_MAX: usize = 107;
/// The longest v2 header taken: addresses plus a few TLVs (a balancer's
/// TLS and unique-id TLVs fit easily); the format allows 64 KiB.
const V2_MAX: usize = 1024;
/// An incomplete header is looked at again after this long.
const RETRY: Duration = Duration::from_millis(5);

/// Whom a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The balancer relays this client, which connected to this address.
    Proxied {
        client: SocketAddr,
        local: SocketAddr,
    },
    /// The balancer's own connection (health check, `LOCAL` or
    /// `UNKNOWN`): the TCP addresses stand.
    Direct,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("PROXY header from {0}, which is not a trusted proxy")]
    Untrusted(IpAddr),
    #[error("no PROXY header within the time limit")]
    Timeout,
    #[error("connection closed before the PROXY header was complete")]
    Closed,
    #[error("not a PROXY header: {0}")]
    Invalid(String),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Whether `peer` may send PROXY headers.
pub fn trusted(peer: IpAddr, networks: &[IpNet]) -> bool {
    let peer = peer.to_canonical();
    networks.iter().any(|n| n.contains(&peer))
}

/// Reads the header every connection to a PROXY listener starts with,
/// exactly its bytes, by `deadline`.
pub async fn read(tcp: &mut TcpStream, deadline: Instant) -> Result<Origin, ProxyHeaderError> {
    let len = match tokio::time::timeout_at(deadline, header_len(tcp)).await {
        Ok(r) => r?,
        Err(_) => return Err(ProxyHeaderError::Timeout),
    };
    let mut header = vec![0; len];
    match tokio::time::timeout_at(deadline, tcp.read_exact(&mut header)).await {
        Ok(Ok(_)) => parse(&header),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(ProxyHeaderError::Closed)
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ProxyHeaderError::Timeout),
    }
}

/// The header's length, from peeking at the socket: the balancer sends it
/// in one segment, so one peek almost always does; a header split across
/// segments is peeked at again shortly after.
async fn header_len(tcp: &TcpStream) -> Result<usize, ProxyHeaderError> {
    let mut buf = [0u8; V2_MAX];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        if let Some(len) = complete_len(&buf[..n])? {
            return Ok(len);
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The length of the header at the start of `seen`, `None` if more bytes
/// are needed to tell.
fn complete_len(seen: &[u8]) -> Result<Option<usize>, ProxyHeaderError> {
    let invalid = |why: &str| Err(ProxyHeaderError::Invalid(why.to_string()));
    let prefix = seen.len().min(V2_SIGNATURE.len());
    if seen[..prefix] == V2_SIGNATURE[..prefix] {
        if seen.len() < V2_FIXED {
            return Ok(None);
        }
        let len = V2_FIXED + usize::from(u16::from_be_bytes([seen[14], seen[15]]));
        if len > V2_MAX {
            return invalid("v2 header too long");
        }
        return Ok((seen.len() >= len).then_some(len));
    }
    let prefix = seen.len().min(6);
    if seen[..prefix] != b"PROXY "[..prefix] {
        return invalid("no PROXY signature");
    }
    match seen.windows(2).position(|w| w == b"\r\n") {
        Some(at) if at + 2 <= V1_MAX => Ok(Some(at + 2)),
        Some(_) => invalid("v1 header too long"),
        None if seen.len() >= V1_MAX => invalid("v1 header too long"),
        None => Ok(None),
    }
}

/// The origin a complete header names.
fn parse(header: &[u8]) -> Result<Origin, ProxyHeaderError> {
    let invalid = |e: &dyn std::fmt::Display| ProxyHeaderError::Invalid(e.to_string());
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Origin::Proxied {
                client: (a.source_address, a.source_port).into(),
                local: (a.destination_address, a.destination_port).into(),
            },
            ppp::v1::Addresses::Tcp6(a) => Origin::Proxied {
                client: (a.source_address, a.source_port).into(),
                local: (a.destination_address, a.destination_port).into(),
            },
            ppp::v1::Addresses::Unknown => Origin::Direct,
        }),
        HeaderResult::V1(Err(e)) => Err(invalid(&e)),
        HeaderResult::V2(Ok(h)) => {
            if h.command == v2::Command::Local {
                return Ok(Origin::Direct);
            }
            match h.addresses {
                v2::Addresses::IPv4(a) => Ok(Origin::Proxied {
                    client: (a.source_address, a.source_port).into(),
                    local: (a.destination_address, a.destination_port).into(),
                }),
                v2::Addresses::IPv6(a) => Ok(Origin::Proxied {
                    client: (a.source_address, a.source_port).into(),
                    local: (a.destination_address, a.destination_port).into(),
                }),
                // A balancer on a UNIX socket or of an unknown family: no
                // client address to use, the connection's own stands.
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => Ok(Origin::Direct),
            }
        }
        HeaderResult::V2(Err(e)) => Err(invalid(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(client: &str, local: &str) -> Vec<u8> {
        let client: SocketAddr = client.parse().unwrap();
        let local: SocketAddr = local.parse().unwrap();
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (client, local),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn lengths_are_known_only_once_the_header_is_complete() {
        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 50000 143\r\nA1 LOGIN";
        assert_eq!(complete_len(&v1[..5]).unwrap(), None);
        assert_eq!(complete_len(&v1[..20]).unwrap(), None);
        assert_eq!(complete_len(v1).unwrap(), Some(42));
        let v2 = v2_header("192.0.2.7:50000", "127.0.0.1:993");
        assert_eq!(complete_len(&v2[..10]).unwrap(), None);
        assert_eq!(complete_len(&v2[..16]).unwrap(), None);
        let mut more = v2.clone();
        more.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(complete_len(&more).unwrap(), Some(v2.len()));
        assert!(complete_len(b"A1 LOGIN x y\r\n").is_err());
        assert!(complete_len(&[b'P'; 200]).is_err());
        assert!(complete_len(format!("PROXY {}", "1".repeat(120)).as_bytes()).is_err());
    }

    #[test]
    fn both_versions_name_the_client() {
        let want = Origin::Proxied {
            client: "192.0.2.7:50000".parse().unwrap(),
            local: "127.0.0.1:143".parse().unwrap(),
        };
        assert_eq!(
            parse(b"PROXY TCP4 192.0.2.7 127.0.0.1 50000 143\r\n").unwrap(),
            want
        );
        assert_eq!(
            parse(&v2_header("192.0.2.7:50000", "127.0.0.1:143")).unwrap(),
            want
        );
        let v6 = parse(b"PROXY TCP6 2001:db8::7 ::1 50000 993\r\n").unwrap();
        assert!(matches!(v6, Origin::Proxied { client, .. } if client.ip().is_ipv6()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), Origin::Direct);
        assert!(parse(b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n").is_err());
    }

    #[test]
    fn only_trusted_networks_may_send_headers() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(trusted("10.1.2.3".parse().unwrap(), &nets));
        assert!(trusted("::1".parse().unwrap(), &nets));
        assert!(trusted("::ffff:10.0.0.1".parse().unwrap(), &nets));
        assert!(!trusted("192.0.2.1".parse().unwrap(), &nets));
        assert!(!trusted("127.0.0.1".parse().unwrap(), &[]));
    }
}
