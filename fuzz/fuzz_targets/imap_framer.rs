//! Drives ponte's IMAP framer (`src/proto/imap/framer.rs`) in both modes
//! at once over the same chunked byte stream: `Framer::new` (keeps the raw
//! bytes, as the pre-auth phase and the backend login do) and
//! `Framer::streaming` (keeps none, as the read-only view does).
//!
//! Checked on every input:
//! - no panic in framing, tag guessing or decoding;
//! - both modes see the same frames, and the same message bytes whenever
//!   the message is within the limit;
//! - bytes accounted for: everything pushed is either in a message handed
//!   out, in a message skipped after a refused literal, or pending; the
//!   raw rest (`into_rest`, what goes to the backend after a login) is
//!   exactly the input after the last message;
//! - a streaming framer never holds raw bytes (`pending() == 0`);
//! - a literal announcement frame follows a line that ends in `{N}` /
//!   `{N+}` / `~{N}` with that N, and an accepted literal's N bytes are in
//!   the message that completes it, right after the announcement;
//! - the best-effort tag (used in `BAD` replies) is never empty and holds
//!   no space, CR or LF (it cannot split or forge a response line).
//!
//! Input layout: byte 0 picks the size limit (even: the default
//! pre-auth limit, 16 KiB; odd: 16 + byte), byte 1 the read sizes (see
//! `common::chunks`); the rest is the peer's byte stream.
#![no_main]

mod common;

use imap_codec::imap_types::core::LiteralMode;
use imap_codec::CommandCodec;
use libfuzzer_sys::fuzz_target;
use ponte::proto::imap::framer::{Frame, Framer};

use common::{chunks, show};

fuzz_target!(|data: &[u8]| {
    let [limit, seed, input @ ..] = data else {
        return;
    };
    let max = if limit & 1 == 0 {
        16 * 1024
    } else {
        16 + u32::from(*limit)
    };
    let mut raw = Framer::new(max);
    let mut streaming = Framer::streaming(max);
    let mut pushed = 0usize;
    // Bytes handed out as messages or skipped with a refused literal.
    let mut consumed = 0usize;
    // Where in the current message each accepted literal starts, and its
    // length (from the streaming framer's view of the message so far).
    let mut literals: Vec<(usize, u32)> = Vec::new();
    // Every user of the framer ends the stream at a message over the
    // limit (its raw copy is then no longer in step): so does this one.
    for part in chunks(*seed, input) {
        raw.push(part);
        streaming.push(part);
        pushed += part.len();
        loop {
            let frame = raw.next_frame();
            assert_eq!(frame, streaming.next_frame(), "the two modes disagree");
            assert_eq!(streaming.pending(), 0, "a streaming framer kept raw bytes");
            let Some(frame) = frame else { break };
            check_tag(&raw);
            if raw.is_too_long() {
                assert!(streaming.is_too_long());
                return;
            }
            match frame {
                Frame::Literal { mode, length } => {
                    let so_far = streaming.message();
                    check_announcement(so_far, mode, length);
                    // As the pre-auth phase does: a synchronizing literal
                    // over the limit is refused and never sent.
                    if length > max && mode == LiteralMode::Sync {
                        let before = raw.pending();
                        raw.skip_message();
                        streaming.skip_message();
                        consumed += before - raw.pending();
                        literals.clear();
                    } else {
                        literals.push((so_far.len(), length));
                    }
                }
                Frame::Message => {
                    let message = raw.message();
                    assert!(!message.is_empty());
                    {
                        assert_eq!(
                            message,
                            streaming.message(),
                            "the two modes framed different bytes"
                        );
                        assert!(message.ends_with(b"\n"), "message {}", show(message));
                        for &(at, length) in &literals {
                            let end = at + length as usize;
                            assert!(
                                end <= message.len(),
                                "literal of {length} at {at} cut short: {}",
                                show(message)
                            );
                        }
                        // Decoding must not panic, whatever it says.
                        let _ = raw.decode(&CommandCodec::default());
                    }
                    consumed += message.len();
                    literals.clear();
                }
            }
            assert_eq!(consumed + raw.pending(), pushed, "bytes lost or duplicated");
        }
    }
    let rest = raw.into_rest();
    assert_eq!(consumed + rest.len(), pushed);
    assert_eq!(rest, &input[consumed..], "the rest is not the input's tail");
});

/// The line so far ends in the announcement the frame reports.
fn check_announcement(line: &[u8], mode: LiteralMode, length: u32) {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    let l = l.strip_suffix(b"\r").unwrap_or(l);
    let l = l
        .strip_suffix(b"}")
        .unwrap_or_else(|| panic!("no announcement at the end of {}", show(line)));
    let l = match mode {
        LiteralMode::NonSync => l
            .strip_suffix(b"+")
            .unwrap_or_else(|| panic!("non-sync without `+`: {}", show(line))),
        LiteralMode::Sync => l,
    };
    let open = l
        .iter()
        .rposition(|&b| b == b'{')
        .unwrap_or_else(|| panic!("no `{{`: {}", show(line)));
    let digits = std::str::from_utf8(&l[open + 1..]).expect("digits");
    assert_eq!(
        digits.parse::<u32>().ok(),
        Some(length),
        "announced {digits}, framed {length}: {}",
        show(line)
    );
}

fn check_tag(f: &Framer) {
    if let Some(tag) = f.tag() {
        assert!(
            !tag.is_empty() && !tag.bytes().any(|b| b == b' ' || b == b'\r' || b == b'\n'),
            "tag {tag:?} would break a reply line"
        );
    }
}
