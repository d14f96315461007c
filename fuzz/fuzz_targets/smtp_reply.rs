//! Drives ponte's SMTP reply reader (`src/proto/smtp/reply.rs`,
//! `Reply::take` over `src/proto/smtp/lines.rs` `Lines`) the way the
//! submission backend login and the inbound delivery client do: reads of
//! at most 4 KiB into a `Lines` of 4096, replies taken whenever one is
//! whole.
//!
//! Checked on every input:
//! - no panic;
//! - a reply is one or more whole lines, each starting with the same three
//!   digits (its code), all but the last `NNN-`, the last `NNN ` / `NNN`;
//!   no longer than `MAX_REPLY`; `text()` is one line;
//! - bytes accounted for: replies + the partial reply + pending bytes are
//!   the input so far, and `into_rest` is exactly the tail after the last
//!   line taken;
//! - memory bounded: the buffer never holds more than the line limit plus
//!   one read; the partial reply never more than `MAX_REPLY`;
//! - a `TooLong` or `Malformed` answer is right: the offending line is
//!   over the limit, not `NNN[- ]`, or changes the code.
//!
//! Input layout: byte 0 picks the read sizes (see `common::chunks`); the
//! rest is the backend's byte stream.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use ponte::proto::smtp::lines::Lines;
use ponte::proto::smtp::reply::{parse_line, Reply, ReplyError, MAX_REPLY};

use common::{chunks, ready, show};

/// As the submission backend and the delivery client frame replies.
const MAX_LINE: usize = 4096;
const READ_CHUNK: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let [seed, input @ ..] = data else {
        return;
    };
    let mut lines = Lines::new(MAX_LINE);
    let mut partial = Vec::new();
    let mut taken = 0usize;
    let mut pushed = 0usize;
    for mut part in chunks(*seed, input) {
        let n = ready(lines.fill(&mut part)).expect("a read from a slice");
        assert!(n <= READ_CHUNK);
        pushed += n;
        assert!(
            lines.pending() <= MAX_LINE + READ_CHUNK,
            "{} bytes buffered",
            lines.pending()
        );
        loop {
            let result = Reply::take(&mut lines, &mut partial);
            assert!(partial.len() <= MAX_REPLY);
            match result {
                Ok(Some(reply)) => {
                    check_reply(&reply);
                    taken += reply.raw.len();
                    assert!(partial.is_empty());
                }
                Ok(None) => {
                    assert!(lines.pending() < MAX_LINE);
                    break;
                }
                Err(e) => {
                    check_error(e, &input[taken..pushed], &partial);
                    return;
                }
            }
        }
        assert_eq!(
            taken + partial.len() + lines.pending(),
            pushed,
            "bytes lost"
        );
    }
    let rest = lines.into_rest();
    assert_eq!(rest, &input[taken + partial.len()..pushed]);
});

fn check_reply(reply: &Reply) {
    let raw = &reply.raw;
    assert!(raw.len() <= MAX_REPLY && raw.ends_with(b"\n"));
    let code = format!("{:03}", reply.code);
    assert_eq!(code.len(), 3);
    let body = &raw[..raw.len() - 1];
    let all: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    for (i, line) in all.iter().enumerate() {
        assert!(
            line.starts_with(code.as_bytes()),
            "line {} without code {code}: {}",
            show(line),
            show(raw)
        );
        let last = i + 1 == all.len();
        match line.get(3) {
            Some(b'-') => assert!(!last, "last line continues: {}", show(raw)),
            Some(b' ' | b'\r') | None => assert!(last, "reply ended early: {}", show(raw)),
            Some(_) => panic!("bad line {}", show(line)),
        }
    }
    // One line for logs and the spool (a bare CR inside a line stays: the
    // DSN writer's `one_line` replaces control characters).
    assert!(!reply.text().contains('\n'));
    assert_eq!(reply.is_success(), (200..300).contains(&reply.code));
}

/// `rest`: the input from the start of the reply that failed on.
fn check_error(e: ReplyError, rest: &[u8], partial: &[u8]) {
    assert!(rest.starts_with(partial));
    let after = &rest[partial.len()..];
    let line = match after.iter().position(|&b| b == b'\n') {
        Some(i) => &after[..=i],
        None => after,
    };
    match e {
        ReplyError::TooLong => assert!(
            line.len() >= MAX_LINE,
            "a line of {} refused as too long",
            line.len()
        ),
        ReplyError::Malformed => {
            let ok = parse_line(line);
            let same = partial.is_empty()
                || ok.is_some_and(|(c, _)| partial.starts_with(format!("{c:03}").as_bytes()));
            assert!(
                ok.is_none() || !same || partial.len() + line.len() > MAX_REPLY,
                "refused: {} after {}",
                show(line),
                show(partial)
            );
        }
    }
}
