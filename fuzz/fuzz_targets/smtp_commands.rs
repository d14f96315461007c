//! Drives ponte's SMTP command handling before the backends, as the
//! inbound server (`src/proto/inbound/`) and the submission front
//! (`src/proto/submission/preauth.rs`) use it: `Lines` framing under the
//! line limit with reads of at most 4 KiB, smtp-proto's `Request::parse`
//! on each line, the inbound `plain_address` check on envelope addresses,
//! submission's SASL steps (`decode_response`, `decode_plain`,
//! `credentials`), and the inbound DATA reader exactly as `read_data`
//! runs it (smtp-proto's `DataReceiver`, started by `data_receiver` at
//! the start of a line, over the same buffer, the size limit checked
//! after each ingest).
//!
//! Checked on every input:
//! - no panic;
//! - bytes accounted for: lines taken + DATA bytes consumed + pending =
//!   everything read; after a login, `into_rest` is exactly the input
//!   after the last line taken;
//! - memory bounded: the buffer never holds more than the line limit plus
//!   one read; a line refused as too long is at least the limit;
//! - an address `plain_address` accepts goes back into a command line
//!   (`MAIL FROM:<…>` / `RCPT TO:<…>`, as the delivery client writes it)
//!   that smtp-proto reads back as the same address;
//! - DATA: the unstuffed message is never longer than what was read for
//!   it; the end is found exactly at the first CRLF.CRLF (counting the
//!   DATA line's own CRLF), never missed, and where smtp-proto stops
//!   early (CRLF `.` CR CR LF) ponte's `DataEnd` says so (the session
//!   ends with 554); the message is the
//!   input with the dot of each CRLF-led `.` line removed; past the size
//!   limit the reader stops within one read of it.
//!
//! Input layout: byte 0: bit 0 submission (else inbound), bit 1 a short
//! line limit, bit 2 a small message size limit, bit 3 logins succeed
//! (the session ends there, the rest checked); byte 1 the read sizes (see
//! `common::chunks`); the rest is the client's byte stream.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use ponte::proto::inbound::{data_receiver, plain_address, DataEnd};
use ponte::proto::sasl;
use ponte::proto::smtp::lines::Lines;
use ponte::proto::submission::{decode_response, Sasl};
use smtp_proto::request::receiver::DataReceiver;
use smtp_proto::{Request, AUTH_LOGIN, AUTH_PLAIN};

use common::{chunks, ready, show};

const READ_CHUNK: usize = 4096;

enum Mode {
    Command,
    /// DATA: the receiver, its end check, the message so far, the raw
    /// bytes it read.
    Data(DataReceiver, DataEnd, Vec<u8>, Vec<u8>),
    /// Waiting for a SASL response: PLAIN, LOGIN user, LOGIN password.
    Plain,
    LoginUser,
    LoginPass(Vec<u8>),
}

struct Session {
    submission: bool,
    logins_succeed: bool,
    limit: usize,
    helo: bool,
    mail: bool,
    rcpts: usize,
    mode: Mode,
}

enum Next {
    More,
    End,
}

fuzz_target!(|data: &[u8]| {
    let [cfg, seed, input @ ..] = data else {
        return;
    };
    let submission = cfg & 1 != 0;
    let max_line = match (submission, cfg & 2 != 0) {
        (_, true) => 16 + usize::from(*cfg),
        (true, false) => 12288,
        (false, false) => 2048,
    };
    let mut s = Session {
        submission,
        logins_succeed: cfg & 8 != 0,
        limit: if cfg & 4 != 0 {
            usize::from(*cfg) * 2
        } else {
            50 * 1024 * 1024
        },
        helo: false,
        mail: false,
        rcpts: 0,
        mode: Mode::Command,
    };
    let mut lines = Lines::new(max_line);
    let mut pushed = 0;
    let mut taken = 0;
    for mut part in chunks(*seed, input) {
        pushed += ready(lines.fill(&mut part)).expect("a read from a slice");
        assert!(
            lines.pending() <= max_line + READ_CHUNK,
            "{} bytes buffered",
            lines.pending()
        );
        let next = s.run(&mut lines, &mut taken, max_line);
        assert_eq!(taken + lines.pending(), pushed, "bytes lost");
        if let Next::End = next {
            if s.logins_succeed && matches!(s.mode, Mode::Command) {
                let rest = lines.into_rest();
                assert_eq!(rest, &input[taken..pushed]);
            }
            return;
        }
    }
});

impl Session {
    /// Handles what is buffered; `More` when more bytes are needed.
    fn run(&mut self, lines: &mut Lines, taken: &mut usize, max_line: usize) -> Next {
        loop {
            if let Mode::Data(..) = self.mode {
                match self.data(lines, taken) {
                    Some(next) => return next,
                    None => continue,
                }
            }
            let line = match lines.next_line() {
                Ok(Some(line)) => line.to_vec(),
                Ok(None) => return Next::More,
                Err(_) => {
                    let pending = lines.pending_bytes();
                    let len = pending
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(pending.len(), |i| i + 1);
                    assert!(len >= max_line, "a line of {len} refused");
                    return Next::End;
                }
            };
            *taken += line.len();
            assert!(line.len() <= max_line && line.ends_with(b"\n"));
            match std::mem::replace(&mut self.mode, Mode::Command) {
                Mode::Command => {
                    if let Next::End = self.command(&line) {
                        return Next::End;
                    }
                }
                Mode::Plain => {
                    if let Some(d) = response(&line) {
                        if let Next::End = self.login(sasl::decode_plain(&d)) {
                            return Next::End;
                        }
                    }
                }
                Mode::LoginUser => {
                    if let Some(d) = response(&line) {
                        self.mode = Mode::LoginPass(d);
                    }
                }
                Mode::LoginPass(user) => {
                    if let Some(d) = response(&line) {
                        if let Next::End = self.login(sasl::credentials(&user, &d)) {
                            return Next::End;
                        }
                    }
                }
                Mode::Data(..) => unreachable!(),
            }
        }
    }

    fn command(&mut self, line: &[u8]) -> Next {
        let Ok(request) = Request::parse(&mut line.iter()) else {
            return Next::More;
        };
        let request = request.into_owned();
        match request {
            Request::Ehlo { .. } | Request::Helo { .. } => {
                self.helo = true;
                self.mail = false;
                self.rcpts = 0;
            }
            Request::Rset => {
                self.mail = false;
                self.rcpts = 0;
            }
            Request::Bdat { .. } | Request::Quit => return Next::End,
            Request::Auth {
                mechanism,
                initial_response,
            } if self.submission => {
                if !self.helo || (mechanism != AUTH_PLAIN && mechanism != AUTH_LOGIN) {
                    return Next::More;
                }
                let ir = if initial_response.is_empty() {
                    None
                } else {
                    match response(initial_response.as_bytes()) {
                        Some(d) => Some(d),
                        None => return Next::More,
                    }
                };
                match (mechanism, ir) {
                    (AUTH_PLAIN, Some(d)) => return self.login(sasl::decode_plain(&d)),
                    (AUTH_PLAIN, None) => self.mode = Mode::Plain,
                    (_, Some(d)) => self.mode = Mode::LoginPass(d),
                    (_, None) => self.mode = Mode::LoginUser,
                }
            }
            _ if self.submission => {}
            Request::Mail { from } => {
                if self.helo && !self.mail && plain_address(&from.address) {
                    check_round_trip("MAIL FROM", &from.address);
                    self.mail = true;
                }
            }
            Request::Rcpt { to } => {
                if self.mail && !to.address.is_empty() && plain_address(&to.address) {
                    check_round_trip("RCPT TO", &to.address);
                    self.rcpts += 1;
                }
            }
            Request::Data => {
                if self.rcpts > 0 {
                    self.mode =
                        Mode::Data(data_receiver(), DataEnd::default(), Vec::new(), Vec::new());
                }
            }
            _ => {}
        }
        Next::More
    }

    fn login(&mut self, creds: Result<ponte::secret::Credentials, sasl::SaslError>) -> Next {
        match creds {
            Ok(c) => {
                assert!(!c.user.is_empty());
                if self.logins_succeed {
                    Next::End
                } else {
                    Next::More
                }
            }
            Err(_) => Next::More,
        }
    }

    /// One round of `read_data`; `None` when the message is done.
    fn data(&mut self, lines: &mut Lines, taken: &mut usize) -> Option<Next> {
        let Mode::Data(receiver, end, body, read) = &mut self.mode else {
            unreachable!()
        };
        let pending = lines.pending_bytes();
        let mut bytes = pending.iter();
        let done = receiver.ingest(&mut bytes, body);
        let used = pending.len() - bytes.as_slice().len();
        end.push(&pending[..used]);
        read.extend_from_slice(&pending[..used]);
        lines.consume(used);
        *taken += used;
        assert!(
            body.len() <= read.len(),
            "unstuffing made the message longer"
        );
        let mut stream = b"\r\n".to_vec();
        stream.extend_from_slice(read);
        let first_end = stream.windows(5).position(|w| w == b"\r\n.\r\n");
        if body.len() > self.limit {
            // ponte answers 552 and closes; within one read of the limit.
            assert!(body.len() <= self.limit + 2 * READ_CHUNK + 12288);
            return Some(Next::End);
        }
        if !done {
            assert_eq!(first_end, None, "end missed: {}", show(&stream));
            return Some(Next::More);
        }
        assert_eq!(end.is_end(), stream.ends_with(b"\r\n.\r\n"));
        if !end.is_end() {
            // smtp-proto stopped at CRLF `.` CR… LF: ponte answers 554
            // and closes. No real end came before it.
            assert_eq!(first_end, None, "end missed: {}", show(&stream));
            return Some(Next::End);
        }
        assert_eq!(
            first_end,
            Some(stream.len() - 5),
            "end not at the first CRLF.CRLF: {}",
            show(&stream)
        );
        let expected = unstuff(&stream[2..stream.len() - 3]);
        assert_eq!(body, &expected, "unstuffed differently: {}", show(&stream));
        self.mode = Mode::Command;
        self.mail = false;
        self.rcpts = 0;
        None
    }
}

/// The message of DATA bytes (up to the final `.CRLF`): the dot of each
/// line that starts with one, a line starting after a CRLF (or at the
/// start: the DATA line ended with one).
fn unstuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for (i, &b) in data.iter().enumerate() {
        let line_start = i == 0 || (i >= 2 && &data[i - 2..i] == b"\r\n");
        if !(b == b'.' && line_start) {
            out.push(b);
        }
    }
    out
}

/// What ponte's backends get: the address back inside a command line.
fn check_round_trip(verb: &str, address: &str) {
    assert!(address
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>'));
    let line = format!("{verb}:<{address}>\r\n");
    let got = match Request::parse(&mut line.as_bytes().iter()) {
        Ok(Request::Mail { from }) if verb == "MAIL FROM" => from.address.into_owned(),
        Ok(Request::Rcpt { to }) if verb == "RCPT TO" => to.address.into_owned(),
        other => panic!("{line:?} reads back as {other:?}"),
    };
    assert_eq!(got, address, "{line:?}");
}

/// A SASL response as the submission front decodes it.
fn response(line: &[u8]) -> Option<Vec<u8>> {
    match decode_response(line) {
        Sasl::Data(d) => Some(d.expose().clone()),
        Sasl::Refused(_) => None,
    }
}
