//! Drives ponte's IMAP response boundary tracker
//! (`src/proto/imap/boundary.rs`), which watches the spliced backend
//! stream to know where a line of ponte's own (`* BYE [ALERT] …`) may go.
//!
//! Checked on every input, after every chunk: `at_boundary()` is true
//! exactly where a straightforward model of the whole stream says a
//! response ends: right after a line end that is not inside a literal and
//! whose line does not announce one (`{N}` at its end, CR optional), with
//! the announced N bytes skipped and the line going on after them. The
//! tracker keeps a fixed-size tail, so it must agree with the model on
//! long lines, huge literal lengths and announcements cut across reads;
//! it never panics.
//!
//! Input layout: byte 0 picks the read sizes (see `common::chunks`); the
//! rest is the backend's byte stream.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use ponte::net::bridge::Boundary;
use ponte::proto::imap::boundary::ResponseBoundary;

use common::{chunks, show};

fuzz_target!(|data: &[u8]| {
    let [seed, input @ ..] = data else {
        return;
    };
    let ends = model(input);
    let mut tracker = ResponseBoundary::default();
    assert!(tracker.at_boundary());
    let mut at = 0;
    for part in chunks(*seed, input) {
        tracker.observe(part);
        at += part.len();
        assert_eq!(
            tracker.at_boundary(),
            ends[at],
            "at byte {at} of {}",
            show(input)
        );
    }
});

/// `ends[i]`: a response ends after the first `i` bytes.
fn model(input: &[u8]) -> Vec<bool> {
    let mut ends = vec![false; input.len() + 1];
    ends[0] = true;
    let mut line: Vec<u8> = Vec::new();
    let mut literal: u64 = 0;
    for (i, &b) in input.iter().enumerate() {
        if literal > 0 {
            literal -= 1;
            ends[i + 1] = false;
            continue;
        }
        if b != b'\n' {
            line.push(b);
            ends[i + 1] = false;
            continue;
        }
        literal = announced(&line).unwrap_or(0);
        line.clear();
        // After a literal the line goes on (its bytes are `false` above
        // and below) and ends only at its own line end.
        ends[i + 1] = literal == 0;
    }
    ends
}

/// `{N}` (CR optional) at the end of a whole line: N if it fits a u64.
///
/// Known, not checked: only an announcement within the line's last 24
/// bytes counts, as in the tracker (its fixed tail). A longer one needs
/// leading zeros (`{000…0005}`, 21+ digits); no server sends those, and
/// only the backend writes this stream. See README.md.
fn announced(line: &[u8]) -> Option<u64> {
    let line = &line[line.len().saturating_sub(24)..];
    let l = line.strip_suffix(b"\r").unwrap_or(line);
    let l = l.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let digits = &l[open + 1..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}
