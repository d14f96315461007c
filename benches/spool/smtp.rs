//! The load: a small async SMTP sender (tokio, plain TCP, no pipelining)
//! and the messages it sends. Each sender connects, `EHLO`s, sends up to
//! `per_conn` messages (`MAIL`, `RCPT`, `DATA`, then the next `MAIL`, as an
//! MTA with a queue for one destination does), `QUIT`s and connects again,
//! until its count or the round's time is up. Every reply code is checked;
//! every read and write has a timeout, every loop a count and a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// Any single read, write or connect.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_LINE: u64 = 4096;
const MAX_REPLY_LINES: usize = 50;

pub const DOMAIN: &str = "bench.example";
/// Mailboxes the recipients are spread over.
pub const MAILBOXES: usize = 50;

/// The part of every message after its per-message header block, dot-stuffed.
pub struct Body {
    stuffed: Vec<u8>,
}

impl Body {
    /// A MIME message body (a multipart with an 8-bit UTF-8 text part,
    /// lines that need dot-stuffing, and a base64 attachment) such that a
    /// whole message is about `size` bytes.
    pub fn new(size: usize) -> Body {
        let mut b = String::new();
        b.push_str("This is a multi-part message in MIME format.\r\n\r\n");
        b.push_str("--=_ponte_bench_1\r\n");
        b.push_str("Content-Type: text/plain; charset=UTF-8; format=flowed\r\n");
        b.push_str("Content-Transfer-Encoding: 8bit\r\n\r\n");
        b.push_str("Gentile dottoressa Bianchi,\r\n\r\n");
        b.push_str(
            "in allegato il verbale della riunione di lunedì: l'ordine del giorno è stato\r\n\
             approvato all'unanimità, la prossima seduta sarà a Forlì il 3 dicembre.\r\n\
             Perché la delibera sia efficace serve la firma del responsabile dell'area\r\n\
             tecnica; più copie verranno inviate per posta certificata.\r\n",
        );
        // Lines an SMTP client must dot-stuff, one of them a lone dot.
        b.push_str(".\r\n. punto elenco\r\n..doppio punto\r\n");
        b.push_str("Cordiali saluti,\r\n-- \r\nUfficio protocollo — Comune di Città\r\n\r\n");
        b.push_str("--=_ponte_bench_1\r\n");
        b.push_str("Content-Type: application/pdf; name=\"verbale.pdf\"\r\n");
        b.push_str("Content-Transfer-Encoding: base64\r\n");
        b.push_str("Content-Disposition: attachment; filename=\"verbale.pdf\"\r\n\r\n");
        let end = "--=_ponte_bench_1--\r\n";
        // The header block is about HEADER_GUESS bytes.
        const HEADER_GUESS: usize = 900;
        let room = size.saturating_sub(HEADER_GUESS + b.len() + end.len());
        // 57 input bytes make one 76-character line (+ CRLF = 78).
        let lines = room / 78;
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut raw = vec![0u8; lines * 57];
        for chunk in raw.chunks_mut(8) {
            // xorshift: incompressible, like a real PDF.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(&raw);
        for line in encoded.as_bytes().chunks(76) {
            b.push_str(std::str::from_utf8(line).unwrap_or_default());
            b.push_str("\r\n");
        }
        b.push_str(end);
        Body {
            stuffed: dot_stuff(b.as_bytes()),
        }
    }
}

/// One message's header block (CRLF lines, then the empty line).
fn header(round: usize, sender: usize, n: u64, from: &str, rcpt: &str) -> String {
    format!(
        "Received: from mail.far.example (mail.far.example [192.0.2.25])\r\n\
         \tby relay.far.example (Postfix) with ESMTPS id 4XbQ7k2Lm{sender:02}z{n}\r\n\
         \tfor <{rcpt}>; Tue, 25 Nov 2025 10:14:07 +0100 (CET)\r\n\
         DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=far.example; s=sel1;\r\n\
         \tt=1764062047; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n\
         \th=From:To:Subject:Date:Message-ID;\r\n\
         \tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSwganVzdCBpdHMgc2l6ZQ==\r\n\
         Message-ID: <bench.{round}.{sender}.{n}@far.example>\r\n\
         Date: Tue, 25 Nov 2025 10:14:05 +0100\r\n\
         From: =?UTF-8?Q?Giulia_Ross=C3=AC?= <{from}>\r\n\
         To: <{rcpt}>\r\n\
         Subject: =?UTF-8?Q?Verbale_n._{n}_=E2=80=93_riunione_di_luned=C3=AC?=\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"=_ponte_bench_1\"\r\n\
         X-Mailer: bench\r\n\
         \r\n"
    )
}

/// RFC 5321 §4.5.2: a line that starts with a dot gets another one.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut at_line_start = true;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

/// What one round asks of the senders.
#[derive(Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub round: usize,
    pub senders: usize,
    pub per_conn: u64,
    /// Most messages one sender sends in the round.
    pub max_per_sender: u64,
    /// No new message starts after this.
    pub stop_at: Instant,
    /// A sender still busy at this point fails.
    pub deadline: Instant,
}

/// One acknowledged message.
#[derive(Clone, Copy)]
pub struct Accepted {
    /// When the `250` to the end of DATA arrived.
    pub at: Instant,
    /// From the last byte of DATA (`.` CRLF written) to the `250`.
    pub latency: Duration,
    /// The whole transaction: from writing `MAIL FROM` to the `250`.
    pub cycle: Duration,
    /// DATA bytes as sent (dot-stuffed, without the final `.` line).
    pub bytes: u64,
}

/// What one sender did; `error` ends it early (the others go on).
#[derive(Default)]
pub struct Outcome {
    pub accepted: Vec<Accepted>,
    pub connections: u64,
    pub error: Option<String>,
}

/// Runs the round's senders together and returns what each did.
pub async fn run(plan: Plan, body: Arc<Body>) -> Vec<Outcome> {
    let tasks: Vec<_> = (0..plan.senders)
        .map(|i| {
            let (plan, body) = (plan.clone(), body.clone());
            tokio::spawn(async move {
                let mut out = Outcome::default();
                if let Err(e) = sender(&plan, i, &body, &mut out).await {
                    out.error = Some(format!("sender {i}: {e}"));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::with_capacity(tasks.len());
    for t in tasks {
        all.push(t.await.unwrap_or_else(|e| Outcome {
            error: Some(format!("sender task: {e}")),
            ..Outcome::default()
        }));
    }
    all
}

async fn sender(plan: &Plan, i: usize, body: &Body, out: &mut Outcome) -> Result<(), String> {
    let from = format!("sender{i}@far.example");
    let mut n: u64 = 0;
    // Each connection sends at least one message, so this bounds them too.
    while n < plan.max_per_sender && Instant::now() < plan.stop_at {
        check(plan)?;
        let mut c = Conn::open(plan.addr).await?;
        out.connections += 1;
        c.reply("greeting", 220).await?;
        c.command(b"EHLO relay.far.example\r\n", "EHLO", 250)
            .await?;
        let mut in_conn = 0;
        while in_conn < plan.per_conn && n < plan.max_per_sender && Instant::now() < plan.stop_at {
            check(plan)?;
            let rcpt = format!("user{}@{DOMAIN}", (i * 7 + n as usize) % MAILBOXES);
            let head = dot_stuff(header(plan.round, i, n, &from, &rcpt).as_bytes());
            let size = head.len() + body.stuffed.len();
            let mail = format!("MAIL FROM:<{from}> SIZE={size} BODY=8BITMIME\r\n");
            let begun = Instant::now();
            c.command(mail.as_bytes(), "MAIL", 250).await?;
            c.command(format!("RCPT TO:<{rcpt}>\r\n").as_bytes(), "RCPT", 250)
                .await?;
            c.command(b"DATA\r\n", "DATA", 354).await?;
            c.write(&head).await?;
            c.write(&body.stuffed).await?;
            c.write(b".\r\n").await?;
            let sent = Instant::now();
            c.reply("end of DATA", 250).await?;
            let at = Instant::now();
            out.accepted.push(Accepted {
                at,
                latency: at - sent,
                cycle: at - begun,
                bytes: size as u64,
            });
            n += 1;
            in_conn += 1;
        }
        c.command(b"QUIT\r\n", "QUIT", 221).await?;
    }
    Ok(())
}

fn check(plan: &Plan) -> Result<(), String> {
    if crate::watch::aborted() {
        return Err("aborted by the watchdog".into());
    }
    if Instant::now() > plan.deadline {
        return Err("round deadline passed".into());
    }
    Ok(())
}

struct Conn {
    r: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let tcp = timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect {addr}: timeout"))?
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn {
            r: BufReader::with_capacity(16 * 1024, tcp),
            line: Vec::with_capacity(512),
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        timeout(IO_TIMEOUT, self.r.get_mut().write_all(bytes))
            .await
            .map_err(|_| "write: timeout".to_string())?
            .map_err(|e| format!("write: {e}"))
    }

    async fn command(&mut self, cmd: &[u8], what: &str, want: u16) -> Result<(), String> {
        self.write(cmd).await?;
        self.reply(what, want).await
    }

    /// A whole (possibly multi-line) reply; an error unless its code is `want`.
    async fn reply(&mut self, what: &str, want: u16) -> Result<(), String> {
        for _ in 0..MAX_REPLY_LINES {
            self.line.clear();
            let mut limited = (&mut self.r).take(MAX_LINE);
            let n = timeout(IO_TIMEOUT, limited.read_until(b'\n', &mut self.line))
                .await
                .map_err(|_| format!("{what}: no reply within {IO_TIMEOUT:?}"))?
                .map_err(|e| format!("{what}: read: {e}"))?;
            if n == 0 || !self.line.ends_with(b"\n") {
                return Err(format!("{what}: connection closed or line too long"));
            }
            let l = String::from_utf8_lossy(&self.line);
            let l = l.trim_end();
            if l.len() >= 4 && l.as_bytes()[3] == b'-' {
                continue;
            }
            return match l.get(..3).and_then(|c| c.parse::<u16>().ok()) {
                Some(code) if code == want => Ok(()),
                _ => Err(format!("{what}: {l}")),
            };
        }
        Err(format!("{what}: reply over {MAX_REPLY_LINES} lines"))
    }
}
