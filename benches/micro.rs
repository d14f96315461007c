//! Criterion micro-benchmarks of ponte's hot paths, through its public
//! library API: IMAP command framing, backend response boundary tracking,
//! route lookups against a redb store of 100,000 mailboxes, the read-only
//! view's command filter, and SMTP reply parsing. Every input is built
//! (and checked once) before anything is timed. See benches/README.md.

#[path = "micro/report.rs"]
mod report;
#[path = "micro/streams.rs"]
mod streams;

use std::collections::BTreeMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput};
use imap_codec::imap_types::core::LiteralMode;
use ponte::config::{DomainConfig, View};
use ponte::net::bridge::Boundary;
use ponte::proto::imap::boundary::ResponseBoundary;
use ponte::proto::imap::framer::{Frame, Framer};
use ponte::proto::imap::readonly::{Filter, LiteralVerdict, Verdict};
use ponte::proto::imap::MAX_COMMAND;
use ponte::proto::smtp::lines::Lines;
use ponte::proto::smtp::reply::{Reply, MAX_REPLY};
use ponte::route::{Change, MailboxState, RedbStore, Router, StateStore};

use report::{Entry, Per};
use streams::{Expect, SessionCommand};

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Framer size limit for the client stream: room for its 1 MiB literal.
const FRAMER_MAX: u32 = 2 << 20;
/// Bytes per read: `Framer::fill` reads 4 KiB before login, the read-only
/// view 16 KiB from the client and 64 KiB from the backend, and the
/// bridge relays the backend in reads of up to 64 KiB.
const PREAUTH_READ: usize = 4 * 1024;
const CLIENT_READ: usize = 16 * 1024;
const BACKEND_READ: usize = 64 * 1024;
/// Mailbox overrides in the route store, over this many domains.
const MAILBOXES: u32 = 100_000;
const DOMAINS: u32 = 10;
/// Sessions of `read_session` per iteration of the filter's session bench.
const SESSION_ROUNDS: u32 = 20;

fn main() {
    let machine = report::Machine::now();
    let mut c = Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    let mut entries = Vec::new();
    let mut notes = Vec::new();
    bench_framer(&mut c, &mut entries);
    bench_boundary(&mut c, &mut entries);
    bench_route(&mut c, &mut entries, &mut notes);
    bench_readonly(&mut c, &mut entries);
    bench_smtp(&mut c, &mut entries);
    c.final_summary();
    report::write(&entries, &machine, &notes);
}

/// Pushes `bytes` in reads of `chunk` and takes every frame as a session
/// does (literals accepted); returns the complete messages seen.
fn frame_all(framer: &mut Framer, bytes: &[u8], chunk: usize) -> u64 {
    let mut messages = 0;
    for part in bytes.chunks(chunk) {
        framer.push(part);
        while let Some(frame) = framer.next_frame() {
            if frame == Frame::Message {
                black_box(framer.message());
                messages += 1;
            }
        }
    }
    messages
}

fn bench_framer(c: &mut Criterion, entries: &mut Vec<Entry>) {
    let stream = streams::client_mixed();
    for (id, make) in [
        ("mixed_keep_raw", Framer::new as fn(u32) -> Framer),
        ("mixed_streaming", Framer::streaming),
    ] {
        let mut check = make(FRAMER_MAX);
        assert_eq!(
            frame_all(&mut check, &stream.bytes, PREAUTH_READ),
            stream.messages
        );
        assert_eq!(check.pending(), 0);
        entries.push(Entry {
            group: "framer",
            id,
            what: format!(
                "`Framer::{}` over a client stream of {} commands, one with a 1 MiB literal ({} bytes in {} KiB reads)",
                if id.ends_with("raw") { "new" } else { "streaming" },
                stream.messages,
                stream.bytes.len(),
                PREAUTH_READ >> 10
            ),
            per: Per::Bytes(stream.bytes.len() as u64),
        });
    }
    let mut g = group(c, "framer", Throughput::Bytes(stream.bytes.len() as u64));
    g.bench_function("mixed_keep_raw", |b| {
        b.iter_batched_ref(
            || Framer::new(FRAMER_MAX),
            |f| frame_all(f, &stream.bytes, PREAUTH_READ),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("mixed_streaming", |b| {
        b.iter_batched_ref(
            || Framer::streaming(FRAMER_MAX),
            |f| frame_all(f, &stream.bytes, PREAUTH_READ),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Observes `bytes` in reads of `chunk`, as the bridge does; returns how
/// many reads ended at a response boundary.
fn observe_all(bytes: &[u8], chunk: usize) -> u64 {
    let mut b = ResponseBoundary::default();
    let mut at = 0;
    for part in bytes.chunks(chunk) {
        b.observe(part);
        at += u64::from(b.at_boundary());
    }
    at
}

fn bench_boundary(c: &mut Criterion, entries: &mut Vec<Entry>) {
    for (id, big) in [("mixed_10mib_literal", true), ("fetch_lines", false)] {
        let stream = streams::server(big);
        // One byte at a time, it must stand at a boundary exactly after
        // each response; in large reads, at the end.
        assert_eq!(observe_all(&stream.bytes, 1), stream.messages);
        let mut b = ResponseBoundary::default();
        b.observe(&stream.bytes);
        assert!(b.at_boundary());
        entries.push(Entry {
            group: "boundary",
            id,
            what: format!(
                "`ResponseBoundary::observe` over {} responses{} ({} bytes in {} KiB reads)",
                stream.messages,
                if big {
                    ", FETCH header literals and one 10 MiB body literal"
                } else {
                    ", 1,500 of them FETCH with a ~400-byte header literal"
                },
                stream.bytes.len(),
                BACKEND_READ >> 10
            ),
            per: Per::Bytes(stream.bytes.len() as u64),
        });
        let mut g = group(c, "boundary", Throughput::Bytes(stream.bytes.len() as u64));
        g.bench_function(id, |b| b.iter(|| observe_all(&stream.bytes, BACKEND_READ)));
        g.finish();
    }
}

/// The state seeded for mailbox `i`: all three kinds, one in seven of the
/// migrated ones with a backend of its own.
fn seeded(i: u32) -> (MailboxState, Option<String>) {
    let state = match i % 3 {
        0 => MailboxState::Migrated,
        1 => MailboxState::Blackout,
        _ => MailboxState::Legacy,
    };
    (state, (i % 21 == 0).then(|| "new2".to_string()))
}

/// A router over a redb store of `MAILBOXES` overrides spread over
/// `DOMAINS` domains (all in state legacy), in `dir`.
fn seed_router(dir: &std::path::Path) -> Router {
    let store = RedbStore::open(dir).expect("open store");
    let rows = (0..MAILBOXES)
        .map(|i| {
            let (state, backend) = seeded(i);
            (
                format!("user{i:06}@d{}.example", i % DOMAINS),
                state,
                backend,
            )
        })
        .collect();
    store
        .apply(&Change::Mailboxes(rows), "bench")
        .expect("seed mailboxes");
    assert_eq!(store.mailbox_count().unwrap(), u64::from(MAILBOXES));
    let domains = (0..DOMAINS)
        .map(|d| {
            let cfg = DomainConfig {
                state: MailboxState::Legacy,
                legacy: "legacy".into(),
                new: "new".into(),
                tempmail_until: None,
                notice: None,
            };
            (format!("d{d}.example"), cfg)
        })
        .collect::<BTreeMap<_, _>>();
    Router::new(store as Arc<dyn StateStore>, domains).expect("router")
}

/// 4,096 mailbox numbers, a fixed pseudo-random walk over the store.
fn walk() -> Vec<u32> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..4096)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ((x >> 33) % u64::from(MAILBOXES)) as u32
        })
        .collect()
}

/// The logins for `walk`, as clients type them (mixed case): the
/// overridden mailboxes, or addresses of the same domains with none.
fn logins(walk: &[u32], overridden: bool) -> Vec<String> {
    let local = if overridden { "User" } else { "Other" };
    walk.iter()
        .map(|i| format!("{local}{i:06}@D{}.example", i % DOMAINS))
        .collect()
}

fn bench_route(c: &mut Criterion, entries: &mut Vec<Entry>, notes: &mut Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let router = seed_router(dir.path());
    let size = std::fs::metadata(dir.path().join("state.redb")).map_or(0, |m| m.len());
    notes.push(format!(
        "Route store: {MAILBOXES} mailbox overrides over {DOMAINS} domains, seeded with one \
         `Change::Mailboxes` in {:.1} s (not timed by the bench), `state.redb` {:.1} MB.",
        t.elapsed().as_secs_f64(),
        size as f64 / 1e6
    ));
    let walk = walk();
    let hits = logins(&walk, true);
    let misses = logins(&walk, false);
    // Check once: overrides win, the others take their domain's state.
    for (i, (hit, miss)) in walk.iter().zip(hits.iter().zip(&misses)) {
        let r = router.resolve(hit, None).unwrap();
        assert_eq!(r.state, seeded(*i).0, "{hit}");
        if let (MailboxState::Migrated, Some(b)) = seeded(*i) {
            assert_eq!(r.target.label(), b);
        }
        let r = router.resolve(miss, None).unwrap();
        assert_eq!(
            (r.state, r.target.label()),
            (MailboxState::Legacy, "legacy")
        );
    }
    let cases: [(&str, &[String], View, String); 3] = [
        (
            "resolve_mailbox_override",
            &hits,
            View::Live,
            "`Router::resolve` of an address with its own override (1 store read)".into(),
        ),
        (
            "resolve_domain_level",
            &misses,
            View::Live,
            "`Router::resolve` of an address without one: its domain's state (2 store reads)"
                .into(),
        ),
        (
            "resolve_for_tempmail",
            &hits,
            View::Tempmail,
            "`Router::resolve_for(.., View::Tempmail)` of an overridden address (2 store reads)"
                .into(),
        ),
    ];
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    for (id, logins, view, what) in cases {
        entries.push(Entry {
            group: "route",
            id,
            what,
            per: Per::Op("lookup"),
        });
        g.bench_function(id, |b| {
            let mut k = 0;
            b.iter(|| {
                let login = &logins[k & 4095];
                k += 1;
                router.resolve_for(black_box(login), None, view)
            })
        });
    }
    g.finish();
}

/// What the read-only filter did with a stream.
#[derive(Default, Debug, PartialEq, Eq)]
struct Tally {
    forwarded: u64,
    replied: u64,
    /// Forwarded bytes and replies, kept only when checking.
    backend: Vec<u8>,
    client: Vec<u8>,
}

/// Runs client bytes through the filter as the read-only view does:
/// literal announcements to `on_literal`, complete commands to `judge`.
fn filter_push(filter: &mut Filter, framer: &mut Framer, bytes: &[u8], t: &mut Tally, keep: bool) {
    framer.push(bytes);
    while let Some(frame) = framer.next_frame() {
        match frame {
            Frame::Literal { mode, length } => {
                let v = filter.on_literal(framer.message(), mode, length, framer.max());
                if let (LiteralVerdict::Refuse(_), LiteralMode::Sync) = (v, mode) {
                    framer.skip_message();
                }
            }
            Frame::Message => match filter.judge(framer) {
                Verdict::Forward(b) => {
                    t.forwarded += 1;
                    if keep {
                        t.backend.extend_from_slice(&b);
                    }
                    black_box(b);
                }
                Verdict::Reply(r) => {
                    t.replied += 1;
                    if keep {
                        t.client.extend_from_slice(&r);
                    }
                    black_box(r);
                }
                Verdict::Drop => {}
            },
        }
    }
}

fn backend_caps() -> Vec<String> {
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES \
     THREAD=REFS MULTIAPPEND UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 \
     CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE \
     SNIPPET=FUZZY PREVIEW=FUZZY STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE QUOTA"
        .split(' ')
        .map(String::from)
        .collect()
}

/// Checks each session command's fate, one at a time.
fn check_session(session: &[SessionCommand]) {
    let mut filter = Filter::new(&backend_caps());
    let mut framer = Framer::streaming(MAX_COMMAND);
    for cmd in session {
        let mut t = Tally::default();
        filter_push(&mut filter, &mut framer, &cmd.bytes, &mut t, true);
        let show = String::from_utf8_lossy(&cmd.bytes);
        match cmd.expect {
            Expect::Forward => assert_eq!((t.forwarded, t.replied), (1, 0), "{show}"),
            Expect::Rewritten => {
                assert_eq!(t.forwarded, 1, "{show}");
                assert_ne!(t.backend, cmd.bytes, "{show}");
                let out = String::from_utf8_lossy(&t.backend);
                assert!(
                    out.contains("EXAMINE") || out.contains("BODY.PEEK[]"),
                    "{out}"
                );
            }
            Expect::Reply => assert_eq!((t.forwarded, t.replied), (0, 1), "{show}"),
        }
    }
}

fn bench_readonly(c: &mut Criterion, entries: &mut Vec<Entry>) {
    let session = streams::read_session(SESSION_ROUNDS);
    check_session(&session);
    let commands = session.len() as u64;
    let refused = session.iter().filter(|s| s.expect == Expect::Reply).count();
    entries.push(Entry {
        group: "readonly",
        id: "thunderbird_session",
        what: format!(
            "`Filter` (with its streaming `Framer`) over a Thunderbird-like read session of \
             {commands} commands, one per read: SELECT→EXAMINE, UID FETCH BODY.PEEK, FETCH BODY[]→PEEK, \
             SEARCH, STATUS, IDLE/DONE, {refused} answered by the filter (STORE refused, CAPABILITY)"
        ),
        per: Per::Items(commands, "commands"),
    });
    let bulk = streams::literal_free(1 << 20);
    let mut t = Tally::default();
    let (mut filter, mut framer) = (Filter::new(&backend_caps()), Framer::streaming(MAX_COMMAND));
    for part in bulk.bytes.chunks(CLIENT_READ) {
        filter_push(&mut filter, &mut framer, part, &mut t, false);
    }
    assert_eq!(t.forwarded + t.replied, bulk.messages);
    assert_eq!(t.replied, bulk.messages / 5, "the STOREs are refused");
    entries.push(Entry {
        group: "readonly",
        id: "literal_free_stream",
        what: format!(
            "`Filter` over {} pipelined commands without literals (UID sets of 100–300, \
             header FETCHes, SEARCH, a refused STORE in five, NOOP; {} bytes in {} KiB reads)",
            bulk.messages,
            bulk.bytes.len(),
            CLIENT_READ >> 10
        ),
        per: Per::Bytes(bulk.bytes.len() as u64),
    });
    let setup = || {
        (
            Filter::new(&backend_caps()),
            Framer::streaming(MAX_COMMAND),
            Tally::default(),
        )
    };
    let mut g = group(c, "readonly", Throughput::Elements(commands));
    g.bench_function("thunderbird_session", |b| {
        b.iter_batched_ref(
            setup,
            |(filter, framer, t)| {
                for cmd in &session {
                    filter_push(filter, framer, &cmd.bytes, t, false);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Bytes(bulk.bytes.len() as u64));
    g.bench_function("literal_free_stream", |b| {
        b.iter_batched_ref(
            setup,
            |(filter, framer, t)| {
                for part in bulk.bytes.chunks(CLIENT_READ) {
                    filter_push(filter, framer, part, t, false);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    bench_uid_sets(c, entries);
}

/// One `UID FETCH` of `n` scattered UIDs (no two adjacent) through the
/// filter: the cost of re-encoding a long sequence set.
fn bench_uid_sets(c: &mut Criterion, entries: &mut Vec<Entry>) {
    let mut g = c.benchmark_group("readonly");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1));
    for (id, n) in [("uid_set_1000", 1000), ("uid_set_10000", 10_000)] {
        let cmd = streams::uid_fetch(n);
        assert!(cmd.len() <= MAX_COMMAND as usize);
        let mut t = Tally::default();
        let (mut filter, mut framer) =
            (Filter::new(&backend_caps()), Framer::streaming(MAX_COMMAND));
        filter_push(&mut filter, &mut framer, &cmd, &mut t, false);
        assert_eq!((t.forwarded, t.replied), (1, 0));
        entries.push(Entry {
            group: "readonly",
            id,
            what: format!(
                "`Filter` on one `UID FETCH` of {n} scattered UIDs (no two adjacent; {} bytes)",
                cmd.len()
            ),
            per: Per::Op("command"),
        });
        g.bench_function(id, |b| {
            b.iter_batched_ref(
                || {
                    (
                        Filter::new(&backend_caps()),
                        Framer::streaming(MAX_COMMAND),
                        Tally::default(),
                    )
                },
                |(filter, framer, t)| filter_push(filter, framer, &cmd, t, false),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Reads every reply from `bytes` with `Lines::fill` (4 KiB reads) and
/// `Reply::take`, as the SMTP client does; returns the reply count.
fn take_replies(bytes: &[u8]) -> u64 {
    let mut lines = Lines::new(MAX_REPLY);
    let mut partial = Vec::new();
    let mut input = bytes;
    let mut count = 0;
    loop {
        while let Some(r) = Reply::take(&mut lines, &mut partial).expect("reply") {
            black_box(r);
            count += 1;
        }
        // A slice never makes a read wait: one poll completes it.
        let fill = pin!(lines.fill(&mut input));
        match fill.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(0)) => return count,
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => panic!("read from a slice: {e}"),
            Poll::Pending => unreachable!("a slice read is never pending"),
        }
    }
}

fn bench_smtp(c: &mut Criterion, entries: &mut Vec<Entry>) {
    let stream = streams::smtp_replies(200);
    assert_eq!(take_replies(&stream.bytes), stream.messages);
    entries.push(Entry {
        group: "smtp",
        id: "replies",
        what: format!(
            "`Lines::fill` + `Reply::take` over 200 submission sessions' replies: {} replies \
             (11-line EHLO, AUTH, MAIL/RCPT/354/250 × 5, 221; {} bytes)",
            stream.messages,
            stream.bytes.len()
        ),
        per: Per::Items(stream.messages, "replies"),
    });
    let mut g = group(c, "smtp", Throughput::Elements(stream.messages));
    g.bench_function("replies", |b| b.iter(|| take_replies(&stream.bytes)));
    g.finish();
}

fn group<'a>(c: &'a mut Criterion, name: &str, throughput: Throughput) -> Group<'a> {
    let mut g = c.benchmark_group(name);
    g.throughput(throughput);
    g
}
