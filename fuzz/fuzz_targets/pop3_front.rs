//! Drives ponte's POP3 pre-auth front end (`src/proto/pop3/front.rs`,
//! `Front`) itself, over a loopback TCP connection (it owns a TCP stream,
//! so there is no sans-I/O part to call): the fuzzer's bytes are written
//! in chunks, each followed by a yield so that the front reads them as
//! they come, then the write side is shut; the front's greeting and
//! answers are collected, login attempts refused (or, if the input says
//! so, accepted: the session ends there) as the session does.
//!
//! Checked on every input:
//! - no panic; the session ends (the client's close is seen);
//! - the front never echoes client bytes: every line it sends is one of
//!   its own fixed lines (greeting, `+OK`/`-ERR` texts, capability and
//!   mechanism lists, SASL challenges), CRLF-ended;
//! - one command, at most one answer: status lines never outnumber the
//!   client's lines plus the greeting;
//! - a login attempt has a non-empty user name (CR or LF in it are
//!   the backend login's to refuse: it checks `line_safe`);
//! - after a login, what the client pipelined (`into_parts`, passed to the
//!   backend) starts right after a line end of the input, matches the
//!   input there, and is no more than the line limit plus one read.
//!
//! Input layout: byte 0: bit 0 STARTTLS required (no TLS offered: the
//! plain-text refusals), bit 1 a small byte budget, bit 2 the first login
//! succeeds; byte 1 the write sizes (see `common::chunks`); the rest is
//! the client's byte stream.
#![no_main]

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ponte::config::TlsMode;
use ponte::net::stream::Stream;
use ponte::proto::pop3::{Front, TlsPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

use common::{chunks, show};

/// `front.rs` MAX_LINE, and its read size.
const MAX_LINE: usize = 2048;
const READ: usize = 1024;

struct Net {
    rt: Runtime,
    listener: TcpListener,
    addr: SocketAddr,
}

fn net() -> &'static Net {
    static NET: OnceLock<Net> = OnceLock::new();
    NET.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("listen");
        let addr = listener.local_addr().expect("addr");
        Net { rt, listener, addr }
    })
}

/// The lines the front may send, whole (`+ ` challenges and list items
/// included).
const KNOWN: &[&str] = &[
    "+OK ponte POP3 ready.",
    "+OK Capability list follows",
    "TOP",
    "UIDL",
    "RESP-CODES",
    "AUTH-RESP-CODE",
    "PIPELINING",
    "STLS",
    "USER",
    "SASL PLAIN LOGIN",
    "IMPLEMENTATION ponte",
    ".",
    "+OK",
    "PLAIN",
    "LOGIN",
    "+OK Bye.",
    "+ ",
    "+ VXNlcm5hbWU6",
    "+ UGFzc3dvcmQ6",
    "-ERR Line too long.",
    "-ERR Too much data before login.",
    "-ERR APOP is not supported; use USER/PASS or AUTH.",
    "-ERR Empty command.",
    "-ERR Unknown command.",
    "-ERR STLS not available.",
    "-ERR No user name given.",
    "-ERR USER first.",
    "-ERR Authentication canceled.",
    "-ERR Unsupported authentication mechanism.",
    "-ERR [AUTH] Authentication failed.",
    "-ERR [AUTH] Plaintext authentication is disallowed before STLS.",
];

fuzz_target!(|data: &[u8]| {
    let [cfg, seed, input @ ..] = data else {
        return;
    };
    let cfg = *cfg;
    let net = net();
    let (answers, rest) = net.rt.block_on(session(net, cfg, *seed, input));
    check_answers(&answers, input);
    if let Some(rest) = rest {
        assert!(
            rest.len() <= MAX_LINE + READ,
            "{} bytes buffered",
            rest.len()
        );
        let starts = (0..=input.len())
            .filter(|&i| i == 0 || input[i - 1] == b'\n')
            .any(|i| input[i..].starts_with(&rest));
        assert!(starts, "rest {} is not the input after a line", show(&rest));
    }
});

/// Runs one session; the front's answers, and the rest after a login
/// that succeeded.
async fn session(net: &Net, cfg: u8, seed: u8, input: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let (client, accepted) = tokio::join!(TcpStream::connect(net.addr), net.listener.accept());
    let client = client.expect("connect");
    let (server, _) = accepted.expect("accept");
    // Closed with a reset: no TIME_WAIT pile-up over millions of runs.
    // (A zero linger never blocks the thread on drop, the deprecation's
    // concern.)
    #[allow(deprecated)]
    let _ = client.set_linger(Some(Duration::ZERO));
    let (mut rd, mut wr) = client.into_split();
    let writer = async move {
        for part in chunks(seed, input) {
            if wr.write_all(part).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        let _ = wr.shutdown().await;
    };
    let reader = async move {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let policy = TlsPolicy {
        mode: if cfg & 1 != 0 {
            TlsMode::Starttls
        } else {
            TlsMode::None
        },
        config: None,
    };
    let budget = if cfg & 2 != 0 {
        64 + usize::from(cfg) * 8
    } else {
        16 * 1024 * 4
    };
    let front = async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut front = Front::new(Stream::Plain(server), policy, deadline, budget);
        if front.greet().await.is_err() {
            return None;
        }
        let mut failures = 0;
        loop {
            match front.next_login().await {
                Ok(Some(creds)) => {
                    assert!(!creds.user.is_empty());
                    if cfg & 4 != 0 {
                        return front.into_parts().map(|(_, rest)| rest);
                    }
                    failures += 1;
                    if front
                        .write(b"-ERR [AUTH] Authentication failed.\r\n")
                        .await
                        .is_err()
                        || failures >= 3
                    {
                        return None;
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    };
    let ((), answers, rest) = tokio::join!(writer, reader, front);
    (answers, rest)
}

fn check_answers(answers: &[u8], input: &[u8]) {
    if answers.is_empty() {
        return;
    }
    assert!(answers.ends_with(b"\r\n"), "answers {}", show(answers));
    let mut status = 0;
    for line in answers[..answers.len() - 1].split(|&b| b == b'\n') {
        let line = line
            .strip_suffix(b"\r")
            .unwrap_or_else(|| panic!("bare LF in {}", show(answers)));
        let text = std::str::from_utf8(line).expect("ASCII answers");
        assert!(
            KNOWN.contains(&text),
            "unknown answer line {text:?} in {}",
            show(answers)
        );
        if text.starts_with('+') || text.starts_with('-') {
            status += 1;
        }
    }
    let lines = input.iter().filter(|&&b| b == b'\n').count();
    // The greeting, one answer per line, and one for a final line cut
    // short (too long, over budget).
    assert!(
        status <= lines + 2,
        "{status} answers to {lines} lines: {}",
        show(answers)
    );
}
