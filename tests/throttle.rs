//! Password guessing (issue 9): 10,000 wrong-password attempts from one
//! client address (127.0.0.2) through ponte's IMAP listener. ponte delays,
//! then refuses them itself with `NO [UNAVAILABLE]`: only a bounded number
//! reach Dovecot. Meanwhile a user from another address (127.0.0.1) logs
//! in normally, and so does the attacked account's owner from the address
//! they used before the attack.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::admin::Api;
use common::world::{World, ALICE, BOB};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

const ATTEMPTS: usize = 10_000;
/// Connections the attacker keeps busy at once.
const PARALLEL: usize = 8;
/// The whole attack must end by then (it takes a few seconds).
const LIMIT: Duration = Duration::from_secs(120);

/// Throttle settings that keep the test quick: delays of 10 ms doubling
/// to 40 ms, refusal from the 30th failure of an address.
const LIMITS: &str = r#"
[limits.throttle]
delay_after = 3
max_delay = "40ms"
refuse_after = 30
account_refuse_after = 50
"#;

/// One attacker connection from 127.0.0.2: wrong passwords until ponte
/// closes it (3 failures per connection); the tagged answers it got.
async fn attack_connection(target: SocketAddr, user: &str, tries: usize) -> Vec<String> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().unwrap())
        .expect("bind 127.0.0.2");
    let stream = socket.connect(target).await.expect("connect");
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut answers = Vec::new();
    let _greeting = lines.next_line().await;
    for i in 0..tries {
        let cmd = format!("t{i} LOGIN {user} wrong-{i}\r\n");
        if w.write_all(cmd.as_bytes()).await.is_err() {
            break;
        }
        loop {
            match lines.next_line().await {
                Ok(Some(l)) if l.starts_with(&format!("t{i} ")) => {
                    answers.push(l);
                    break;
                }
                Ok(Some(_)) => continue,
                _ => return answers,
            }
        }
    }
    answers
}

fn metric(text: &str, outcome: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.starts_with("ponte_logins_total{") && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn ten_thousand_wrong_passwords_from_one_address_are_throttled_and_others_log_in() {
    let w = World::start_with(LIMITS);
    // alice's owner logged in from 127.0.0.1 before: that address stays
    // open to her account whatever happens to it elsewhere.
    drop(w.login(&ALICE, ALICE.legacy_password));
    let imap = w.addr("imap");
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let attack = rt.spawn(async move {
        let mut answers = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut sent = 0;
        while sent < ATTEMPTS && started.elapsed() < LIMIT {
            while tasks.len() < PARALLEL && sent < ATTEMPTS {
                let user = if sent % 2 == 0 {
                    ALICE.address
                } else {
                    "carol@comune.example"
                };
                tasks.spawn(attack_connection(imap, user, 3));
                sent += 3;
            }
            if let Some(Ok(a)) = tasks.join_next().await {
                answers.extend(a);
            }
        }
        while let Some(r) = tasks.join_next().await {
            answers.extend(r.unwrap_or_default());
        }
        answers
    });

    // Meanwhile, from 127.0.0.1: bob, and alice herself, log in and work.
    let mut legit = Vec::new();
    while !attack.is_finished() && started.elapsed() < LIMIT {
        let t = Instant::now();
        // bob is migrated (the seed file), alice on legacy.
        for (user, password) in [(&BOB, BOB.new_password), (&ALICE, ALICE.legacy_password)] {
            let mut c = w.login(user, password);
            assert!(c.imap("s", "SELECT INBOX").is_ok());
        }
        legit.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    let answers = rt.block_on(attack).expect("attack task");
    let took = started.elapsed();

    let refused = answers
        .iter()
        .filter(|a| a.contains("[UNAVAILABLE]"))
        .count();
    let failed = answers
        .iter()
        .filter(|a| a.contains("[AUTHENTICATIONFAILED]"))
        .count();
    let (_, text) = Api::new(w.addr("admin")).get("/metrics");
    let text = text.as_str().unwrap_or_default().to_string();
    let at_backend = metric(&text, "auth_failed");
    let throttled = metric(&text, "throttled");
    eprintln!(
        "throttle: {} attempts answered in {took:.1?}: {failed} failed at the backend, \
         {refused} refused by ponte; metrics auth_failed {at_backend}, throttled {throttled}; \
         {} legitimate rounds, slowest {:?}",
        answers.len(),
        legit.len(),
        legit.iter().max()
    );
    assert!(
        answers.len() >= ATTEMPTS,
        "only {} attempts answered",
        answers.len()
    );
    assert_eq!(
        failed + refused,
        answers.len(),
        "every attempt got one of the two answers"
    );
    // The address's score reaches refuse_after after 30 failures; decay
    // over a couple of minutes lets a handful more through, not thousands.
    assert!(
        at_backend <= 40,
        "{at_backend} attempts reached the backend"
    );
    assert!(throttled as usize >= ATTEMPTS - 40);
    assert!(
        !legit.is_empty(),
        "the legitimate users were not served during the attack"
    );
    assert!(
        legit.iter().all(|t| *t < Duration::from_secs(5)),
        "legitimate logins were held up: {legit:?}"
    );
}
