//! Crash safety of inbound mail (issue 7): the real `ponte` binary is
//! killed with SIGKILL at random moments while senders push numbered
//! messages through the inbound listener and the delivery worker drains
//! the spool, then restarted on the same state and spool. At the end
//! every message that got a `250` after DATA is in its mailbox's store,
//! and no message is in any store twice.
//!
//! Recipients: alice and bob flip between `blackout` (spooled) and
//! `migrated` (the worker delivers the spool to the new backend, then new
//! mail is relayed at once); carol (migrated domain, new backend) and
//! dave (legacy) are always live and relayed synchronously; mixed
//! messages cover one spool entry with recipients on both backends.
//!
//! The kill moments, the flips and the recipients come from a xorshift
//! PRNG; the seed is printed and can be set with `PONTE_CRASH_SEED` to
//! replay the same schedule (the timing itself is not deterministic).
//! `PONTE_CRASH_KILLS` overrides the number of kills.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::admin::Api;
use common::dovecot::Dovecot;
use common::process::Process;
use common::world::{World, ALICE, BOB, CAROL, DAVE};
use serde_json::json;

const SENDER: &str = "mittente@sender.example";
/// Kills in a normal run, and the time the kill loop may take at most.
const KILLS: u32 = 50;
const KILL_PHASE: Duration = Duration::from_secs(70);
/// How long the final drain of the spool may take.
const DRAIN: Duration = Duration::from_secs(30);
/// Concurrent senders.
const SENDERS: u64 = 2;
/// Every read and write of the raw SMTP client.
const IO: Duration = Duration::from_secs(5);

/// The recipient sets a message goes to. alice and bob are the flipping
/// (blackout/migrated) mailboxes.
const RCPT_SETS: [&[&str]; 7] = [
    &[ALICE.address],
    &[BOB.address],
    &[CAROL.address],
    &[DAVE.address],
    &[ALICE.address, CAROL.address],
    &[BOB.address, DAVE.address],
    &[ALICE.address, BOB.address, DAVE.address],
];

/// xorshift64*: small, deterministic, good enough for a schedule.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, never zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// What the sender saw of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// `250` after the final dot.
    Acked(String),
    /// Another reply after the final dot (e.g. 451).
    Refused(String),
    /// The connection broke at the named stage; no reply after DATA.
    Broken(&'static str),
}

#[derive(Debug, Clone)]
struct Sent {
    seq: u32,
    rcpts: &'static [&'static str],
    outcome: Outcome,
}

/// State shared by the killer (the test thread) and the senders.
struct Shared {
    /// The inbound listener of the running ponte; `None` while it is down.
    inbound: Mutex<Option<SocketAddr>>,
    stop: AtomicBool,
    next_seq: AtomicU32,
    sent: Mutex<Vec<Sent>>,
}

/// No `250`'d message lost, none misrouted, none in a store twice, the
/// spool drains. A kill between the backend's `250` and the worker's
/// status write leaves the delivery in doubt; the backends have a check
/// user (tests/common/world.rs), so the worker looks into the mailbox
/// before sending again. The report counts how many in-doubt deliveries
/// the kills made and how each was settled.
#[test]
fn messages_acknowledged_with_250_survive_kill_9_and_are_delivered_exactly_once() {
    let seed = std::env::var("PONTE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let max_kills = std::env::var("PONTE_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(KILLS);
    eprintln!("inbound_crash: seed {seed} (set PONTE_CRASH_SEED={seed} to replay)");
    let began = Instant::now();
    let mut rng = Rng::new(seed);

    let w = World::backends_only("");
    let lives = w.dir.path().join("lives");
    std::fs::create_dir_all(&lives).expect("lives dir");
    let (mut p, mut addrs) = Process::start(&w);
    set_states(addrs["admin"], "blackout");

    let shared = Arc::new(Shared {
        inbound: Mutex::new(Some(addrs["inbound"])),
        stop: AtomicBool::new(false),
        next_seq: AtomicU32::new(1),
        sent: Mutex::new(Vec::new()),
    });
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| {
            let shared = shared.clone();
            let rng = Rng::new(seed ^ (i + 1).wrapping_mul(0x5851_f42d_4c95_7f2d));
            thread::spawn(move || sender(&shared, rng, seed))
        })
        .collect();

    // The kill loop. Each life of the process is one of:
    // - blackout throughout: the kill lands in acceptance (reading DATA,
    //   storing and fsyncing, answering) or in the worker delivering the
    //   live part of a mixed message;
    // - a flip to migrated soon after the start: the kill lands while the
    //   worker drains the spool, or in a synchronous relay;
    // - a flip to migrated and back to blackout: the kill lands in
    //   whatever is under way then.
    let kill_phase = Instant::now();
    let mut kills = 0u32;
    let mut modes = [0u32; 3];
    let mut migrated = false;
    while kills < max_kills && kill_phase.elapsed() < KILL_PHASE {
        let mode = rng.below(3) as usize;
        modes[mode] += 1;
        let admin = addrs["admin"];
        match mode {
            0 => {
                if migrated {
                    set_states(admin, "blackout");
                    migrated = false;
                }
                thread::sleep(rng.millis(20, 400));
            }
            1 => {
                thread::sleep(rng.millis(0, 200));
                if !migrated {
                    set_states(admin, "migrated");
                    migrated = true;
                }
                thread::sleep(rng.millis(0, 250));
            }
            _ => {
                if !migrated {
                    set_states(admin, "migrated");
                }
                thread::sleep(rng.millis(0, 200));
                set_states(admin, "blackout");
                migrated = false;
                thread::sleep(rng.millis(0, 200));
            }
        }
        *shared.inbound.lock().expect("lock") = None;
        p.signal(libc::SIGKILL);
        let status = p.wait(Duration::from_secs(5));
        assert_eq!(status.code(), None, "killed by a signal: {status}");
        kills += 1;
        keep_log(&w, &lives, kills);
        let (np, na) = Process::start(&w);
        p = np;
        addrs = na;
        *shared.inbound.lock().expect("lock") = Some(addrs["inbound"]);
    }
    let kill_time = kill_phase.elapsed();

    // Let the senders finish what they are doing against the live process.
    shared.stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.join().expect("sender thread");
    }

    // The last life: everything live, the spool drains.
    set_states(addrs["admin"], "migrated");
    let drain = Instant::now();
    while !spooled(&w).is_empty() && drain.elapsed() < DRAIN {
        thread::sleep(Duration::from_millis(100));
    }
    let left = spooled(&w);
    let drain_time = drain.elapsed();
    // Deliveries a killed relay left running in Dovecot have long ended;
    // stop ponte so that nothing changes the stores while they are read.
    thread::sleep(Duration::from_millis(300));
    p.terminate();
    p.wait(Duration::from_secs(10));
    keep_log(&w, &lives, kills + 1);

    let sent = shared.sent.lock().expect("lock").clone();
    let stores = [
        ("new", count_store(&w.new, seed)),
        ("legacy", count_store(&w.legacy, seed)),
    ];
    let count = |store: &str, user: &str, seq: u32| -> usize {
        stores
            .iter()
            .find(|(n, _)| *n == store)
            .and_then(|(_, m)| m.get(&(user.to_string(), seq)))
            .copied()
            .unwrap_or(0)
    };

    let mut problems = Vec::new();
    let (mut acked, mut refused, mut broken, mut delivered_copies) = (0, 0, 0, 0);
    let (mut unacked_delivered, mut duplicates) = (0, 0);
    for s in &sent {
        match &s.outcome {
            Outcome::Acked(_) => acked += 1,
            Outcome::Refused(_) => refused += 1,
            Outcome::Broken(_) => broken += 1,
        }
        for rcpt in s.rcpts {
            let (right, wrong) = if *rcpt == DAVE.address {
                ("legacy", "new")
            } else {
                ("new", "legacy")
            };
            let n = count(right, rcpt, s.seq);
            let m = count(wrong, rcpt, s.seq);
            delivered_copies += n;
            if n > 0 && !matches!(s.outcome, Outcome::Acked(_)) {
                unacked_delivered += 1;
            }
            if matches!(s.outcome, Outcome::Acked(_)) && n == 0 {
                problems.push(format!(
                    "LOST: seq {} to {rcpt} got {:?} but is not in the {right} store",
                    s.seq, s.outcome
                ));
            }
            if n > 1 {
                duplicates += 1;
            }
            if n > 1 {
                problems.push(format!(
                    "DUPLICATE: seq {} to {rcpt} is {n} times in the {right} store ({:?})",
                    s.seq, s.outcome
                ));
            }
            if m > 0 {
                problems.push(format!(
                    "MISROUTED: seq {} to {rcpt} is {m} times in the {wrong} store",
                    s.seq
                ));
            }
        }
    }
    // Nothing in a store that no sender sent there.
    for (store, counts) in &stores {
        for (user, seq) in counts.keys() {
            let known = sent
                .iter()
                .any(|s| s.seq == *seq && s.rcpts.contains(&user.as_str()));
            if !known {
                problems.push(format!("UNKNOWN: seq {seq} in {user}'s {store} store"));
            }
        }
    }
    if !left.is_empty() {
        let envelopes: Vec<String> = left
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect();
        problems.push(format!(
            "SPOOL NOT EMPTY after {DRAIN:?}: {} entries\n{}",
            left.len(),
            envelopes.join("")
        ));
    }

    let (found, resent) = in_doubt(&lives);
    let report = format!(
        "seed {seed}: {kills} kills in {kill_time:.1?} (modes blackout/flip/flip-back {modes:?}); \
         {} messages started, {acked} got 250, {refused} another reply, {broken} broken; \
         {delivered_copies} copies in the stores ({unacked_delivered} of unacknowledged \
         messages, {duplicates} duplicated); in doubt after a kill: {found} found in the \
         mailbox, {resent} not there and sent; spool drained in {drain_time:.1?}; total {:.1?}",
        sent.len(),
        began.elapsed()
    );
    eprintln!("inbound_crash: {report}");
    if !problems.is_empty() {
        let kept = keep_evidence(&w, seed);
        panic!(
            "{report}\n{} problem(s) (logs and stores kept in {}):\n{}",
            problems.len(),
            kept.display(),
            problems.join("\n")
        );
    }
    assert!(acked > 0, "no message was acknowledged: {report}");
}

/// Sets the flipping mailboxes (alice and bob) to `state`.
fn set_states(admin: SocketAddr, state: &str) {
    let api = Api::new(admin);
    for user in [ALICE.address, BOB.address] {
        let (code, body) = api.send_json(
            "PUT",
            &format!("/api/mailboxes/{user}"),
            &json!({ "state": state }),
        );
        assert_eq!(code, 200, "{user} → {state}: {body}");
    }
}

/// Committed spool entries (the envelope files).
fn spooled(w: &World) -> Vec<PathBuf> {
    std::fs::read_dir(w.dir.path().join("spool").join("env"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Keeps the log of the life that just ended (the next start truncates it).
fn keep_log(w: &World, lives: &Path, life: u32) {
    let _ = std::fs::copy(
        w.dir.path().join("ponte.log"),
        lives.join(format!("ponte.{life:03}.log")),
    );
}

/// In-doubt deliveries over all lives: (found in the mailbox, sent).
fn in_doubt(lives: &Path) -> (usize, usize) {
    let (mut found, mut resent) = (0, 0);
    for f in std::fs::read_dir(lives).into_iter().flatten().flatten() {
        let log = std::fs::read_to_string(f.path()).unwrap_or_default();
        found += log
            .matches("in-doubt delivery found in the mailbox")
            .count();
        resent += log.matches("in-doubt delivery not in the mailbox").count();
    }
    (found, resent)
}

/// Copies the logs, the spool's seen log and both stores out of the
/// temporary world, for a failure to be looked into.
fn keep_evidence(w: &World, seed: u64) -> PathBuf {
    let to = std::env::temp_dir().join(format!("ponte-crash-{seed}"));
    let _ = std::fs::create_dir_all(&to);
    let _ = std::process::Command::new("cp")
        .arg("-r")
        .arg(w.dir.path().join("lives"))
        .arg(w.dir.path().join("spool"))
        .arg(&to)
        .status();
    for (name, d) in [("new", &w.new), ("legacy", &w.legacy)] {
        let _ = std::process::Command::new("cp")
            .arg("-r")
            .arg(d.dir().join("home"))
            .arg(to.join(format!("{name}-home")))
            .status();
    }
    to
}

/// How many times each (user, seq) of this run is in `d`'s INBOXes.
fn count_store(d: &Dovecot, seed: u64) -> BTreeMap<(String, u32), usize> {
    let mut counts = BTreeMap::new();
    let tag = format!("X-Crash-Seq: {seed:x}/");
    for user in [ALICE.address, BOB.address, CAROL.address, DAVE.address] {
        for sub in ["new", "cur"] {
            let Ok(dir) = std::fs::read_dir(d.maildir(user).join(sub)) else {
                continue;
            };
            for f in dir.flatten() {
                let text = String::from_utf8_lossy(&std::fs::read(f.path()).unwrap_or_default())
                    .into_owned();
                let Some(at) = text.find(&tag) else {
                    continue;
                };
                let rest = &text[at + tag.len()..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let seq: u32 = digits.parse().expect("sequence number");
                *counts.entry((user.to_string(), seq)).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// One sender: connections to whatever ponte is running, one to three
/// messages each, until told to stop.
fn sender(shared: &Shared, mut rng: Rng, seed: u64) {
    while !shared.stop.load(Ordering::SeqCst) {
        let addr = *shared.inbound.lock().expect("lock");
        let Some(addr) = addr else {
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        let Ok(mut c) = Smtp::connect(addr) else {
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        if c.expect("greeting", "220").is_err()
            || c.command("EHLO mx.sender.example", "EHLO", "250").is_err()
        {
            continue;
        }
        for _ in 0..1 + rng.below(3) {
            if shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let seq = shared.next_seq.fetch_add(1, Ordering::SeqCst);
            let rcpts = RCPT_SETS[rng.below(RCPT_SETS.len() as u64) as usize];
            let pad = rng.below(40) as usize;
            let outcome = c.transaction(seed, seq, rcpts, pad);
            let broken = matches!(outcome, Outcome::Broken(_));
            shared.sent.lock().expect("lock").push(Sent {
                seq,
                rcpts,
                outcome,
            });
            if broken {
                break;
            }
            // Paced, so that the final drain stays within seconds.
            thread::sleep(rng.millis(20, 80));
        }
        let _ = c.command("QUIT", "QUIT", "221");
    }
}

/// A raw SMTP client; every read and write bounded by [`IO`].
struct Smtp {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Smtp {
    fn connect(addr: SocketAddr) -> std::io::Result<Smtp> {
        let stream = TcpStream::connect_timeout(&addr, IO)?;
        stream.set_read_timeout(Some(IO))?;
        stream.set_write_timeout(Some(IO))?;
        stream.set_nodelay(true)?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Smtp { stream, reader })
    }

    /// The whole (possibly multi-line) reply; `Err` on EOF, a timeout or
    /// a malformed line.
    fn reply(&mut self) -> Result<String, ()> {
        let mut all = String::new();
        for _ in 0..50 {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return Err(()),
                Ok(_) => {}
            }
            if line.len() < 4 || !line.ends_with('\n') {
                return Err(());
            }
            all.push_str(&line);
            if line.as_bytes()[3] == b' ' {
                return Ok(all);
            }
        }
        Err(())
    }

    fn expect(&mut self, stage: &'static str, code: &str) -> Result<String, &'static str> {
        match self.reply() {
            Ok(r) if r.starts_with(code) => Ok(r),
            _ => Err(stage),
        }
    }

    fn command(
        &mut self,
        line: &str,
        stage: &'static str,
        code: &str,
    ) -> Result<String, &'static str> {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|_| stage)?;
        self.expect(stage, code)
    }

    /// One message, numbered `seq`, with `pad` KB of body text.
    fn transaction(&mut self, seed: u64, seq: u32, rcpts: &[&str], pad: usize) -> Outcome {
        if let Err(stage) = self.command(&format!("MAIL FROM:<{SENDER}>"), "MAIL", "250") {
            return Outcome::Broken(stage);
        }
        for r in rcpts {
            if let Err(stage) = self.command(&format!("RCPT TO:<{r}>"), "RCPT", "250") {
                return Outcome::Broken(stage);
            }
        }
        if let Err(stage) = self.command("DATA", "DATA", "354") {
            return Outcome::Broken(stage);
        }
        let mut msg = format!(
            "From: {SENDER}\r\n\
             To: {}\r\n\
             Subject: crash test {seed:x} message {seq}\r\n\
             Message-ID: <crash.{seed:x}.{seq}@sender.example>\r\n\
             X-Crash-Seq: {seed:x}/{seq}\r\n\
             \r\n\
             Message {seq} of run {seed:x}.\r\n",
            rcpts.join(", ")
        );
        for i in 0..pad * 16 {
            msg.push_str(&format!(
                "{i:05} padding so that a kill can land in the middle of DATA ........\r\n"
            ));
        }
        msg.push_str(".\r\n");
        // In two writes: a kill may come between them.
        let (a, b) = msg.as_bytes().split_at(msg.len() / 2);
        if self.stream.write_all(a).is_err() || self.stream.write_all(b).is_err() {
            return Outcome::Broken("message data");
        }
        match self.reply() {
            Ok(r) if r.starts_with("250") => Outcome::Acked(r.trim_end().to_string()),
            Ok(r) => Outcome::Refused(r.trim_end().to_string()),
            Err(()) => Outcome::Broken("reply after the final dot"),
        }
    }
}
