//! The admin dashboard end to end: a real headless Chromium signs in
//! through the login form, flips a domain through the review and
//! confirmation pages, and the next IMAP login through ponte lands on the
//! new backend; a CSV with bad rows gets its per-row report. Screenshots
//! go to `target/test-artifacts/dashboard/`. With curl: without a session
//! nothing is shown or done, and a cross-site or token-less POST changes
//! nothing. Accessibility: axe-core (installed by `.ci/install`) audits
//! each kind of page against WCAG 2.1 A and AA; on a phone-sized window
//! nothing scrolls sideways; a keyboard alone reaches and submits a form.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use common::admin::Api;
use common::clients::curl;
use common::net::LineConn;
use common::ponte::Ponte;
use common::postgres::Postgres;
use common::webdriver::{Browser, ENTER, TAB};
use common::world::{marker, World, ADMIN_TOKEN, ALICE, CAROL, DAVE};
use serde_json::Value;

/// Where screenshots are kept after the run.
fn artefacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let target = if target.is_relative() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(target)
    } else {
        target
    };
    target.join("test-artifacts").join("dashboard")
}

/// A world whose dashboard samples its charts every second.
fn world() -> World {
    let mut w = World::backends_only("");
    let config = w
        .config()
        .replacen("[limits]", "history_interval = \"1s\"\n\n[limits]", 1);
    w.start_config(&config);
    w
}

#[track_caller]
fn assert_png(png: &[u8], what: &str) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{what} is not a PNG");
    assert!(png.len() > 10_000, "{what}: only {} bytes", png.len());
}

fn login(c: &mut LineConn<TcpStream>, user: &str, pw: &str) {
    let greeting = c.read_line();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let r = c.imap("a", &format!("LOGIN \"{user}\" \"{pw}\""));
    assert!(r.status.starts_with("OK"), "login {user}: {}", r.status);
}

/// The subject of the first INBOX message, logged in through ponte.
fn first_subject(w: &World, user: &str, pw: &str) -> String {
    let mut c = LineConn::tcp(w.addr("imap"));
    login(&mut c, user, pw);
    assert!(c.imap("b", "EXAMINE INBOX").is_ok());
    let r = c.imap("c", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])");
    assert!(r.is_ok(), "{}", r.status);
    c.imap("z", "LOGOUT");
    r.text()
}

fn domain_state(api: &Api, name: &str) -> String {
    let (code, status) = api.get("/api/status");
    assert_eq!(code, 200, "{status}");
    status["domains"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == name))
        .and_then(|d| d["state"].as_str())
        .unwrap_or_else(|| panic!("no domain {name}: {status}"))
        .to_string()
}

fn audit(api: &Api) -> Vec<Value> {
    let (code, v) = api.get("/api/audit?limit=100");
    assert_eq!(code, 200, "{v}");
    v["audit"].as_array().cloned().unwrap_or_default()
}

/// Reads the line an open IMAP session gets when it is closed, within
/// `secs`: it must be `* BYE`. Returns it.
fn expect_bye(c: &mut LineConn<TcpStream>, secs: u64) -> String {
    c.get_mut()
        .set_read_timeout(Some(Duration::from_secs(secs)))
        .expect("read timeout");
    let bye = c.read_line();
    assert!(bye.starts_with("* BYE"), "{bye}");
    bye
}

/// Waits until the element's text contains `needle`.
fn wait_for_text(b: &Browser, css: &str, needle: &str) {
    let start = std::time::Instant::now();
    loop {
        let text = b.text(css);
        if text.contains(needle) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{needle:?} not in {css}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_browser_signs_in_flips_a_domain_and_the_next_imap_login_follows() {
    let w = world();
    let api = Api::new(w.addr("admin"));
    let base = format!("http://{}", w.addr("admin"));
    let b = Browser::start(1280, 1400);

    // No session: the page sends the browser to the login form.
    b.goto(&format!("{base}/dashboard"));
    assert!(b.url().ends_with("/dashboard/login"), "{}", b.url());
    b.type_into("#token", "not-the-token-0123456789");
    b.click("form.login button");
    b.wait_text("Wrong token.");

    b.type_into("#token", ADMIN_TOKEN);
    b.click("form.login button");
    b.wait_text("signed in as ops");
    assert!(b.url().ends_with("/dashboard"), "{}", b.url());
    assert!(!b.url().contains(ADMIN_TOKEN));
    // The session cookie is kept on http://127.0.0.1 (a secure context)
    // although it is Secure, and scripts cannot read it.
    let cookies = b.cookies();
    let cookie = cookies
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "ponte_dashboard"))
        .unwrap_or_else(|| panic!("no session cookie: {cookies}"));
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["secure"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert_eq!(cookie["path"], "/dashboard", "{cookie}");
    assert!(!cookie["value"].as_str().unwrap().contains(ADMIN_TOKEN));
    assert_eq!(b.execute("return document.cookie;"), "");

    // Alice is on the legacy store, with a session open.
    assert!(
        first_subject(&w, ALICE.address, ALICE.legacy_password.unwrap())
            .contains(&marker("legacy", ALICE.address))
    );
    let mut open = w.login(&ALICE, ALICE.legacy_password);
    b.goto(&format!("{base}/dashboard"));
    b.wait_text("Sessions open");

    // Flip pec.example to migrated: the form, the review, the confirmation.
    b.click("#fd-domain option[value=\"pec.example\"]");
    b.click("#fd-state option[value=\"migrated\"]");
    b.click("#flip-domain button");
    let review = b.wait_text("Flip domain pec.example from legacy to migrated");
    assert!(
        review.contains("1 open session(s) of this domain; 1 will be closed"),
        "{review}"
    );
    assert_eq!(
        domain_state(&api, "pec.example"),
        "legacy",
        "the review changed nothing"
    );
    let shot = b.screenshot(&artefacts().join("confirm.png"));
    assert_png(&shot, "review page screenshot");
    b.click("form.confirm button");
    b.wait_text("Domain pec.example: legacy → migrated; 1 session closed.");
    assert!(b.url().ends_with("/dashboard"), "{}", b.url());
    assert_eq!(domain_state(&api, "pec.example"), "migrated");

    // The open session was told to go; the next login lands on the new store.
    expect_bye(&mut open, 10);
    assert!(
        first_subject(&w, ALICE.address, ALICE.new_password.unwrap())
            .contains(&marker("new", ALICE.address))
    );

    // Audited under the token's name, as `ponte ctl` would be.
    let entries = audit(&api);
    assert!(
        entries.iter().any(|a| a["who"] == "ops"
            && a["what"] == "domain pec.example"
            && a["new"] == "migrated"),
        "{entries:?}"
    );

    // Live updates over server-sent events refresh the page in place: the
    // login on the new backend shows up without a reload; the charts fill in.
    b.wait_text("Live: updated at");
    wait_for_text(&b, "#backends-live", "new 20");
    wait_for_text(&b, "#summary-live", "Logins ok since start\n3");
    b.wait_text("Sessions open:");
    assert!(b.source().contains("<polyline"), "no chart");
    // The whole page in one picture.
    b.set_window(1280, 3200);
    let main = b.screenshot(&artefacts().join("main.png"));
    assert_png(&main, "main page screenshot");

    // The same page on a phone-sized window.
    b.set_window(1280, 1400);
    b.emulate_phone(Some((390, 1200)));
    let phone = b.screenshot(&artefacts().join("main-phone.png"));
    assert_png(&phone, "phone screenshot");
    b.emulate_phone(None);

    // A list with bad rows: refused as a whole, each bad row reported.
    b.type_into(
        "#im-csv",
        "address,state\ndave@pec.example,blackout\nnobody@elsewhere.example,migrated\ndave@pec.example,flying\n",
    );
    b.click("#import button");
    let report = b.wait_text("Nothing was imported: 2 bad row(s)");
    assert!(report.contains("line 3"), "{report}");
    assert!(
        report.contains("elsewhere.example is not a configured domain"),
        "{report}"
    );
    assert!(report.contains("line 4"), "{report}");
    assert!(report.contains("unknown state \"flying\""), "{report}");
    let shot = b.screenshot(&artefacts().join("import-errors.png"));
    assert_png(&shot, "import report screenshot");
    let kept = b.execute("return document.getElementById('im-csv').value;");
    assert!(
        kept.as_str()
            .unwrap_or_default()
            .contains("dave@pec.example,flying"),
        "{kept}"
    );
    let (_, mb) = api.get("/api/mailboxes/dave@pec.example");
    assert_eq!(mb["state"], "migrated", "nothing imported: {mb}");

    // A good list: reviewed, then imported.
    b.goto(&format!("{base}/dashboard"));
    b.type_into("#im-csv", "dave@pec.example,blackout\n");
    b.click("#import button");
    b.wait_text("Import 1 row(s):");
    b.click("form.confirm button");
    b.wait_text("Imported 1 row(s): 1 mailbox(es) changed");
    let (_, mb) = api.get(&format!("/api/mailboxes/{}", DAVE.address));
    assert_eq!(mb["state"], "blackout", "{mb}");

    // Signing out ends the session: the page asks for the token again.
    b.click("header form button");
    b.wait_text("Admin token");
    b.goto(&format!("{base}/dashboard"));
    assert!(b.url().ends_with("/dashboard/login"), "{}", b.url());
}

/// A curl response: status, headers (lower-case names), body.
struct Reply {
    status: u16,
    headers: String,
    body: String,
}

/// `curl -i` with extra arguments against the admin listener.
fn http(w: &World, args: &[&str], path: &str) -> Reply {
    http_at(w.addr("admin"), args, path)
}

/// `curl -i` with extra arguments against the admin listener at `admin`.
fn http_at(admin: SocketAddr, args: &[&str], path: &str) -> Reply {
    let url = format!("http://{admin}{path}");
    let mut all = vec!["-i"];
    all.extend_from_slice(args);
    all.push(&url);
    let out = curl(&all).expect_ok(path).stdout;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// A form POST with the session cookie (if any) and extra headers.
fn post(w: &World, path: &str, cookie: Option<&str>, extra: &[&str], form: &str) -> Reply {
    post_at(w.addr("admin"), path, cookie, extra, form)
}

fn post_at(
    admin: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    extra: &[&str],
    form: &str,
) -> Reply {
    let cookie_header = cookie.map(|c| format!("Cookie: ponte_dashboard={c}"));
    let mut args: Vec<&str> = vec!["-X", "POST", "--data", form];
    if let Some(c) = &cookie_header {
        args.extend(["-H", c]);
    }
    for h in extra {
        args.extend(["-H", h]);
    }
    http_at(admin, &args, path)
}

#[test]
fn without_a_session_or_from_another_site_nothing_is_shown_or_changed() {
    let w = world();
    let api = Api::new(w.addr("admin"));
    let flip = "action=domain&domain=pec.example&state=excluded";

    // No session: pages send to the login form, actions are refused.
    for path in [
        "/dashboard",
        "/dashboard/events",
        "/dashboard/confirm?action=domain&domain=pec.example&state=excluded",
    ] {
        let r = http(&w, &[], path);
        assert_eq!(r.status, 303, "{path}");
        assert!(
            r.headers.contains("location: /dashboard/login"),
            "{path}: {}",
            r.headers
        );
        assert!(!r.body.contains("pec.example"), "{path}");
    }
    // The API's bearer token does not open the dashboard either.
    let bearer = format!("Authorization: Bearer {ADMIN_TOKEN}");
    assert_eq!(http(&w, &["-H", &bearer], "/dashboard").status, 303);
    for path in ["/dashboard/do", "/dashboard/import", "/dashboard/logout"] {
        let r = post(&w, path, None, &[], &format!("{flip}&csv=a"));
        assert_eq!(r.status, 401, "{path}");
    }
    let r = post(&w, "/dashboard/do", Some("0123abcd"), &[], flip);
    assert_eq!(r.status, 401, "a made-up session");

    // A wrong token at the login form: no session. The token is never
    // taken from the URL.
    let r = post(
        &w,
        "/dashboard/login",
        None,
        &[],
        "token=wrong-token-0123456789",
    );
    assert_eq!(r.status, 401);
    assert!(!r.headers.contains("set-cookie"));
    let r = post(
        &w,
        &format!("/dashboard/login?token={ADMIN_TOKEN}"),
        None,
        &[],
        "x=1",
    );
    assert_eq!(r.status, 401);
    // A login form posted from another site is refused too.
    let r = post(
        &w,
        "/dashboard/login",
        None,
        &["Origin: http://evil.example"],
        &format!("token={ADMIN_TOKEN}"),
    );
    assert_eq!(r.status, 403);
    assert!(!r.headers.contains("set-cookie"));

    // Sign in; the cookie carries a session id, never the token.
    let r = post(
        &w,
        "/dashboard/login",
        None,
        &[],
        &format!("token={ADMIN_TOKEN}"),
    );
    assert_eq!(r.status, 303, "{}", r.headers);
    let set = r
        .headers
        .lines()
        .find(|l| l.starts_with("set-cookie: ponte_dashboard="))
        .unwrap_or_else(|| panic!("no cookie: {}", r.headers))
        .to_string();
    for flag in ["httponly", "secure", "samesite=strict", "path=/dashboard"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains(&ADMIN_TOKEN.to_ascii_lowercase()));
    let id = set["set-cookie: ponte_dashboard=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let cookie = format!("Cookie: ponte_dashboard={id}");
    let page = http(&w, &["-H", &cookie], "/dashboard");
    assert_eq!(page.status, 200);
    assert!(page
        .headers
        .contains("content-security-policy: default-src 'none'"));
    assert!(page.headers.contains("x-frame-options: deny"));
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a CSRF token in the page")
        .to_string();
    assert_eq!(csrf.len(), 64);

    // Signed in, but from another site, or without the form's token:
    // refused, and nothing changes.
    let with_csrf = format!("{flip}&csrf={csrf}");
    for (extra, form) in [
        (vec!["Origin: http://evil.example"], with_csrf.as_str()),
        (vec!["Origin: null"], with_csrf.as_str()),
        (vec!["Sec-Fetch-Site: cross-site"], with_csrf.as_str()),
        (vec!["Sec-Fetch-Site: same-site"], with_csrf.as_str()),
        (vec![], flip),
        (vec![], &format!("{flip}&csrf={}", "0".repeat(64))),
    ] {
        let r = post(&w, "/dashboard/do", Some(&id), &extra, form);
        assert_eq!(r.status, 403, "{extra:?} {form}");
    }
    let r = post(
        &w,
        "/dashboard/import",
        Some(&id),
        &["Origin: http://evil.example"],
        &format!("csrf={csrf}&csv=alice%40pec.example%2Cexcluded"),
    );
    assert_eq!(r.status, 403);
    assert_eq!(domain_state(&api, "pec.example"), "legacy");
    let (_, alice) = api.get("/api/mailboxes/alice@pec.example");
    assert_eq!(alice["source"], "domain", "{alice}");
    assert!(
        audit(&api).iter().all(|a| a["new"] != "excluded"),
        "a refused request left an audit entry"
    );

    // The same request from the dashboard's own page is done and audited.
    let own = format!("Origin: http://{}", w.addr("admin"));
    let r = post(
        &w,
        "/dashboard/do",
        Some(&id),
        &[&own, "Sec-Fetch-Site: same-origin"],
        &with_csrf,
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(domain_state(&api, "pec.example"), "excluded");
    assert!(audit(&api)
        .iter()
        .any(|a| a["who"] == "ops" && a["what"] == "domain pec.example" && a["new"] == "excluded"));

    // Signed out, the old cookie opens nothing.
    let r = post(
        &w,
        "/dashboard/logout",
        Some(&id),
        &[],
        &format!("csrf={csrf}"),
    );
    assert_eq!(r.status, 303);
    assert_eq!(http(&w, &["-H", &cookie], "/dashboard").status, 303);
    assert_eq!(
        post(&w, "/dashboard/do", Some(&id), &[], &with_csrf).status,
        401
    );

    // The bearer-token API is as it was.
    assert_eq!(api.get("/api/status").0, 200);
    let anonymous = Api {
        addr: w.addr("admin"),
        token: None,
    };
    assert_eq!(anonymous.get("/api/status").0, 401);
}

/// Signs in with curl; the session id and the page's CSRF token.
fn sign_in(w: &World) -> (String, String) {
    sign_in_at(w.addr("admin"))
}

/// Signs in with curl at the admin listener `admin`.
fn sign_in_at(admin: SocketAddr) -> (String, String) {
    let token = format!("token={ADMIN_TOKEN}");
    let r = http_at(admin, &["-X", "POST", "--data", &token], "/dashboard/login");
    assert_eq!(r.status, 303, "{}", r.headers);
    let id = r
        .headers
        .split("set-cookie: ponte_dashboard=")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .expect("session cookie")
        .to_string();
    let page = get_at(admin, &id, "/dashboard");
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("CSRF token")
        .to_string();
    (id, csrf)
}

fn get(w: &World, id: &str, path: &str) -> Reply {
    get_at(w.addr("admin"), id, path)
}

fn get_at(admin: SocketAddr, id: &str, path: &str) -> Reply {
    let cookie = format!("Cookie: ponte_dashboard={id}");
    http_at(admin, &["-H", &cookie], path)
}

/// Reviews `query` (must be 200 and contain `expect`), then confirms it;
/// returns the flash the dashboard shows next.
fn review_and_do(w: &World, id: &str, csrf: &str, query: &str, expect: &str) -> String {
    review_and_do_at(w.addr("admin"), id, csrf, query, expect)
}

fn review_and_do_at(admin: SocketAddr, id: &str, csrf: &str, query: &str, expect: &str) -> String {
    let review = get_at(admin, id, &format!("/dashboard/confirm?{query}"));
    assert_eq!(review.status, 200, "{query}: {}", review.body);
    assert!(
        review.body.contains(expect),
        "{query}: {expect:?} not in\n{}",
        review.body
    );
    // The confirmation carries the review's own hidden fields.
    let confirm = review
        .body
        .split("class=\"confirm\">")
        .nth(1)
        .expect("a confirmation form");
    let form = confirm
        .split("</form>")
        .next()
        .unwrap_or_default()
        .split("<input type=\"hidden\" name=\"")
        .skip(1)
        .filter_map(|f| {
            let (name, rest) = f.split_once("\" value=\"")?;
            let value = rest.split('"').next()?;
            Some(format!(
                "{name}={}",
                value
                    .replace("&amp;", "&")
                    .replace('%', "%25")
                    .replace('+', "%2B")
                    .replace('&', "%26")
            ))
        })
        .collect::<Vec<_>>()
        .join("&");
    assert!(form.contains(&format!("csrf={csrf}")), "{form}");
    let done = post_at(admin, "/dashboard/do", Some(id), &[], &form);
    assert_eq!(done.status, 303, "{query}: {}", done.body);
    let page = get_at(admin, id, "/dashboard");
    page.body
        .split("id=\"flash\">")
        .nth(1)
        .and_then(|s| s.split("</div>").next())
        .unwrap_or_else(|| panic!("no flash after {query}"))
        .to_string()
}

/// Sends one message to `rcpt` through the inbound listener.
fn send_mail(w: &World, rcpt: &str) {
    let mut c = LineConn::tcp(w.addr("inbound"));
    assert!(c.read_line().starts_with("220 "));
    for (line, want) in [
        ("HELO mx.sender.example".to_string(), "250 "),
        ("MAIL FROM:<x@sender.example>".to_string(), "250 "),
        (format!("RCPT TO:<{rcpt}>"), "250 "),
        ("DATA".to_string(), "354 "),
    ] {
        c.send(&line);
        let reply = c.read_line();
        assert!(reply.starts_with(want), "{line}: {reply}");
    }
    c.send_raw(b"From: x@sender.example\r\nSubject: held\r\nMessage-ID: <held@sender.example>\r\n\r\nbody\r\n.\r\n");
    let reply = c.read_line();
    assert!(reply.starts_with("250 "), "{reply}");
    c.send("QUIT");
}

#[test]
fn each_action_is_reviewed_first_then_done_and_audited_under_the_token_name() {
    let w = world();
    let api = Api::new(w.addr("admin"));
    let (id, csrf) = sign_in(&w);

    // A mailbox flip: the review changes nothing, the confirmation does.
    let q = "action=mailbox&mailbox=dave%40pec.example&state=migrated&backend=";
    let review = get(&w, &id, &format!("/dashboard/confirm?{q}"));
    assert!(review
        .body
        .contains("Set mailbox <strong>dave@pec.example</strong> from"));
    let (_, dave) = api.get("/api/mailboxes/dave@pec.example");
    assert_eq!(dave["source"], "domain", "{dave}");
    let flash = review_and_do(&w, &id, &csrf, q, "New logins go to: <strong>new</strong>");
    assert!(
        flash.contains("Mailbox dave@pec.example: domain&#39;s state → migrated"),
        "{flash}"
    );
    let (_, dave) = api.get("/api/mailboxes/dave@pec.example");
    assert_eq!(
        (dave["state"].as_str(), dave["source"].as_str()),
        (Some("migrated"), Some("mailbox"))
    );

    // A schedule, in the admin's local time with its offset; then cancelled.
    let q = "action=schedule&kind=domain&target=comune.example&state=blackout&at=2030-01-01T08%3A00&tz=%2B01%3A00";
    let flash = review_and_do(&w, &id, &csrf, q, "2030-01-01 07:00:00Z");
    assert!(
        flash.contains("comune.example to blackout at 2030-01-01T07:00:00Z"),
        "{flash}"
    );
    let (_, list) = api.get("/api/schedules");
    let s = &list["schedules"][0];
    assert_eq!(
        (s["by"].as_str(), s["at"].as_str()),
        (Some("ops"), Some("2030-01-01T07:00:00Z")),
        "{list}"
    );
    let sid = s["id"].as_u64().unwrap();
    let flash = review_and_do(
        &w,
        &id,
        &csrf,
        &format!("action=unschedule&id={sid}"),
        "Cancel schedule",
    );
    assert!(
        flash.contains(&format!("Schedule {sid} cancelled.")),
        "{flash}"
    );
    assert_eq!(
        api.get("/api/schedules").1["schedules"],
        serde_json::json!([])
    );

    // Closing a mailbox's sessions.
    let mut open = w.login(&ALICE, ALICE.legacy_password);
    let flash = review_and_do(
        &w,
        &id,
        &csrf,
        "action=kick&kind=mailbox&target=alice%40pec.example",
        "<strong>1</strong> now",
    );
    assert!(flash.contains("1 session closed."), "{flash}");
    expect_bye(&mut open, 10);

    // Holding and releasing a message spooled during a blackout.
    let (code, _) = api.send_json(
        "PUT",
        "/api/domains/pec.example",
        &serde_json::json!({"state": "blackout"}),
    );
    assert_eq!(code, 200);
    send_mail(&w, ALICE.address);
    let (_, list) = api.get("/api/queue/messages");
    let mid = list["messages"][0]["id"]
        .as_str()
        .expect("a queued message")
        .to_string();
    let page = get(&w, &id, "/dashboard");
    assert!(page.body.contains(&mid), "the queue section lists it");
    let flash = review_and_do(
        &w,
        &id,
        &csrf,
        &format!("action=hold&id={mid}"),
        "Hold message",
    );
    assert_eq!(flash, format!("Message {mid} held."));
    assert_eq!(api.get(&format!("/api/queue/{mid}")).1["held"], true);
    let flash = review_and_do(
        &w,
        &id,
        &csrf,
        &format!("action=release&id={mid}"),
        "Release message",
    );
    assert_eq!(flash, format!("Message {mid} released."));

    // Every change is in the audit log under the token's name.
    let entries = audit(&api);
    for what in [
        "mailbox dave@pec.example",
        "schedule",
        "queue",
        "sessions of mailbox alice@pec.example",
    ] {
        assert!(
            entries
                .iter()
                .any(|a| a["who"] == "ops" && a["what"].as_str().unwrap_or("").starts_with(what)),
            "{what}: {entries:?}"
        );
    }

    // What cannot be done is said, with the API's status; what is shown
    // is escaped.
    let r = get(
        &w,
        &id,
        "/dashboard/confirm?action=domain&domain=nowhere.example&state=legacy",
    );
    assert_eq!(r.status, 404);
    assert!(r.body.contains("nowhere.example is not a managed domain"));
    assert_eq!(
        get(&w, &id, "/dashboard/confirm?action=hold&id=zz").status,
        400
    );
    let r = get(&w, &id, "/dashboard/confirm?action=mailbox&mailbox=%3Cscript%3Ealert(1)%3C%2Fscript%3E%40pec.example&state=legacy");
    assert_eq!(r.status, 200);
    assert!(r
        .body
        .contains("&lt;script&gt;alert(1)&lt;/script&gt;@pec.example"));
    assert!(!r.body.contains("<script>alert"));
}

/// The open sessions of `address`: (listener, route) each.
fn sessions_of(api: &Api, address: &str) -> Vec<(String, String)> {
    let (code, v) = api.get("/api/sessions");
    assert_eq!(code, 200, "{v}");
    v["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["address"] == address)
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (text("listener"), text("route"))
        })
        .collect()
}

#[track_caller]
fn assert_contains(body: &str, needles: &[&str]) {
    for n in needles {
        assert!(body.contains(n), "{n:?} not in\n{body}");
    }
}

#[test]
fn a_mailbox_follows_its_domain_again_and_its_own_tempmail_deadline_is_set_and_cleared() {
    // pec.example's read-only view closes at the end of 2030.
    let mut w = World::backends_only("");
    let config = w.config().replacen(
        "[domain.\"pec.example\"]\nstate = \"legacy\"",
        "[domain.\"pec.example\"]\nstate = \"legacy\"\ntempmail_until = \"2031-01-01T00:00:00+01:00\"",
        1,
    );
    assert!(config.contains("tempmail_until = \"2031"), "{config}");
    w.start_config(&config);
    let api = Api::new(w.addr("admin"));
    let (id, csrf) = sign_in(&w);
    let mailbox = |a: &str| api.get(&format!("/api/mailboxes/{a}")).1;

    // Migration day: alice was set to blackout by hand; her client is on
    // the read-only route.
    let flash = review_and_do(
        &w,
        &id,
        &csrf,
        "action=mailbox&mailbox=alice%40pec.example&state=blackout&backend=",
        "New logins go to: <strong>read-only</strong>",
    );
    assert!(flash.contains("domain&#39;s state → blackout"), "{flash}");
    let mut open = w.login(&ALICE, ALICE.legacy_password);
    assert_eq!(
        sessions_of(&api, ALICE.address),
        [("imap".to_string(), "read-only".to_string())]
    );

    // Without the form's token nothing is done.
    let follow = "action=follow&mailbox=alice%40pec.example";
    let set = "action=tempmail&mailbox=dave%40pec.example&at=2030-06-30T18%3A00&tz=%2B02%3A00";
    let clear = "action=tempmail-clear&mailbox=dave%40pec.example";
    let stale = format!("csrf={}", "0".repeat(64));
    for form in [follow, set, clear] {
        for token in ["", stale.as_str()] {
            let r = post(
                &w,
                "/dashboard/do",
                Some(&id),
                &[],
                &format!("{form}&{token}"),
            );
            assert_eq!(r.status, 403, "{form} {token}");
        }
    }
    let alice = mailbox(ALICE.address);
    assert_eq!(
        (alice["state"].as_str(), alice["source"].as_str()),
        (Some("blackout"), Some("mailbox")),
        "{alice}"
    );
    assert_eq!(
        mailbox(DAVE.address)["tempmail_until"],
        "2030-12-31T23:00:00Z"
    );
    assert!(
        open.imap("n", "NOOP").is_ok(),
        "alice's session is still open"
    );

    // Follow the domain: the review says what she becomes and which
    // sessions close, and changes nothing yet.
    let review = get(&w, &id, &format!("/dashboard/confirm?{follow}"));
    assert_eq!(review.status, 200, "{}", review.body);
    assert_contains(
        &review.body,
        &[
            "Let mailbox <strong>alice@pec.example</strong> follow its domain again: from <span class=\"state s-blackout\">blackout</span> (its own state, route read-only) to the domain&#39;s <span class=\"state s-legacy\">legacy</span>.",
            "New logins go to: <strong>legacy</strong>.",
            "1 open session(s); <strong>1</strong> will be closed.",
        ],
    );
    assert_eq!(mailbox(ALICE.address)["source"], "mailbox");
    let flash = review_and_do(
        &w,
        &id,
        &csrf,
        follow,
        "Let alice@pec.example follow the domain",
    );
    assert_eq!(
        flash,
        "Mailbox alice@pec.example: its own state dropped, it follows its domain again: now legacy (route legacy); 1 session closed."
    );
    let alice = mailbox(ALICE.address);
    assert_eq!(
        (
            alice["state"].as_str(),
            alice["source"].as_str(),
            alice["route"].as_str()
        ),
        (Some("legacy"), Some("domain"), Some("legacy")),
        "{alice}"
    );
    expect_bye(&mut open, 10);
    assert!(
        first_subject(&w, ALICE.address, ALICE.legacy_password.unwrap())
            .contains(&marker("legacy", ALICE.address))
    );
    let entries = audit(&api);
    assert!(
        entries.iter().any(|a| a["who"] == "ops"
            && a["what"] == "mailbox alice@pec.example"
            && a["old"] == "blackout"
            && a["new"].is_null()),
        "{entries:?}"
    );
    // Again: it already follows its domain, and the review says so.
    let flash = review_and_do(&w, &id, &csrf, follow, "It has no state of its own");
    assert!(
        flash.contains("it had no state of its own and already followed its domain"),
        "{flash}"
    );

    // Dave's own tempmail deadline, with a read-only tempmail session open.
    let mut tm = LineConn::tcp(w.addr("tempmail"));
    login(&mut tm, DAVE.address, DAVE.legacy_password.unwrap());
    let review = get(&w, &id, &format!("/dashboard/confirm?{set}"));
    assert_contains(
        &review.body,
        &[
            "to <time datetime=\"2030-06-30T16:00:00Z\">2030-06-30 16:00:00Z</time> (UTC)",
            "In force now: the domain&#39;s, <time datetime=\"2030-12-31T23:00:00Z\">",
            "<strong>1</strong> open tempmail session(s) will be closed",
        ],
    );
    assert_eq!(
        mailbox(DAVE.address)["tempmail_until"],
        "2030-12-31T23:00:00Z"
    );
    let flash = review_and_do(&w, &id, &csrf, set, "Set the deadline of dave@pec.example");
    assert_eq!(
        flash,
        "Mailbox dave@pec.example: tempmail deadline set to 2030-06-30T16:00:00Z. Its open tempmail sessions were closed to take it."
    );
    assert_eq!(
        mailbox(DAVE.address)["tempmail_until"],
        "2030-06-30T16:00:00Z"
    );
    expect_bye(&mut tm, 10);

    // Cleared: back to the domain's deadline.
    let flash = review_and_do(
        &w,
        &id,
        &csrf,
        clear,
        "it follows its domain&#39;s again (<time datetime=\"2030-12-31T23:00:00Z\">",
    );
    assert_eq!(
        flash,
        "Mailbox dave@pec.example: own tempmail deadline cleared; it follows its domain&#39;s, 2030-12-31T23:00:00Z. Its open tempmail sessions were closed to take it."
    );
    assert_eq!(
        mailbox(DAVE.address)["tempmail_until"],
        "2030-12-31T23:00:00Z"
    );
    let entries = audit(&api);
    for (old, new) in [
        (None, Some("tempmail until 2030-06-30T16:00:00Z")),
        (Some("tempmail until 2030-06-30T16:00:00Z"), None),
    ] {
        assert!(
            entries.iter().any(|a| a["who"] == "ops"
                && a["what"] == "mailbox dave@pec.example"
                && a["old"].as_str() == old
                && a["new"].as_str() == new),
            "{old:?} → {new:?}: {entries:?}"
        );
    }

    // A time the form leaves blank is refused, never taken for a clear;
    // what is shown is escaped.
    let r = get(
        &w,
        &id,
        "/dashboard/confirm?action=tempmail&mailbox=dave%40pec.example&at=&tz=%2B02%3A00",
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("time is missing"), "{}", r.body);
    let r = get(
        &w,
        &id,
        "/dashboard/confirm?action=follow&mailbox=%3Cb%3Ex%3C%2Fb%3E%40pec.example",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("&lt;b&gt;x&lt;/b&gt;@pec.example"));
    assert!(!r.body.contains("<b>x"));
    assert_eq!(
        get(
            &w,
            &id,
            "/dashboard/confirm?action=follow&mailbox=x%40nowhere.example"
        )
        .status,
        404
    );

    // The main page offers both forms, labelled.
    let page = get(&w, &id, "/dashboard");
    assert_contains(
        &page.body,
        &[
            "<label for=\"fo-mailbox\">Address</label>",
            "<label for=\"tm-at\">Closes at (local time)</label>",
            "<label for=\"tm-tz\">UTC offset</label>",
            "value=\"tempmail-clear\" formnovalidate",
        ],
    );
}

#[test]
fn an_open_live_page_gets_updates_and_does_not_hold_up_shutdown() {
    use std::process::{Command, Stdio};

    let mut w = world();
    let (id, _) = sign_in(&w);
    let mut stream = Command::new("timeout")
        .args(["30", "curl", "-sS", "-N", "-H"])
        .arg(format!("Cookie: ponte_dashboard={id}"))
        .arg(format!("http://{}/dashboard/events", w.addr("admin")))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let mut out = stream.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("summary-live") {
        let n = out.read(&mut buf).expect("read the event stream");
        assert!(n > 0, "stream ended: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("event: update\ndata: {"));

    // Shutdown ends the stream instead of waiting for the page to close.
    let started = std::time::Instant::now();
    w.stop();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let status = stream.wait().expect("curl ends");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_ne!(
        status.code(),
        Some(124),
        "curl timed out: the stream stayed open"
    );
}

/// Signs the browser in through the login form.
fn browser_sign_in(b: &Browser, base: &str) {
    b.goto(&format!("{base}/dashboard/login"));
    b.type_into("#token", ADMIN_TOKEN);
    b.click("form.login button");
    b.wait_text("signed in as ops");
}

/// Sets the schedule form's local time as a script would, with or
/// without the change event a user's input fires; the offset shown then.
fn set_schedule_time(b: &Browser, value: &str, event: bool) -> String {
    set_time(b, "sc", value, event)
}

/// The same for the form whose fields are `{prefix}-at` and `{prefix}-tz`.
fn set_time(b: &Browser, prefix: &str, value: &str, event: bool) -> String {
    let script = format!(
        "var at = document.getElementById('{prefix}-at'); at.value = '{value}'; \
         if ({event}) {{ at.dispatchEvent(new Event('change', {{bubbles: true}})); }} \
         return document.getElementById('{prefix}-tz').value;"
    );
    b.execute(&script).as_str().unwrap_or_default().to_string()
}

#[test]
fn a_schedule_takes_the_offset_of_its_own_date_and_a_mailbox_schedule_is_cancelled_from_the_page() {
    let w = world();
    let api = Api::new(w.addr("admin"));
    let base = format!("http://{}", w.addr("admin"));
    // Rome: +01:00 in winter, +02:00 in summer; the machine is in UTC.
    let b = Browser::start_in_zone(1280, 1400, "Europe/Rome");
    browser_sign_in(&b, &base);
    assert_eq!(
        b.execute("return new Date('2030-07-01T08:00').getTimezoneOffset();"),
        -120,
        "the browser is not in the Rome time zone"
    );

    // The browser checks an offset typed by hand (a pattern valid under
    // the `v` flag browsers compile it with: an invalid one is ignored).
    for (id, typed, bad) in [
        ("sc-tz", "+0100", true),
        ("sc-tz", "-05:00", false),
        ("tm-tz", "1:00", true),
    ] {
        let mismatch = b.execute(&format!(
            "var f = document.getElementById('{id}'); var was = f.value; f.value = '{typed}'; \
             var m = f.validity.patternMismatch; f.value = was; return m;"
        ));
        assert_eq!(mismatch, bad, "{id} = {typed:?}");
    }

    // The offset follows the chosen date, not today's.
    assert_eq!(set_schedule_time(&b, "2030-07-01T08:00", true), "+02:00");
    assert_eq!(set_schedule_time(&b, "2030-01-01T08:00", true), "+01:00");
    assert_eq!(
        set_schedule_time(&b, "2030-07-01T08:00:00.000", true),
        "+02:00"
    );

    // A mailbox flip at 08:00 summer time; the time set without an event
    // (the winter offset still in the field) is corrected on submit.
    assert_eq!(set_schedule_time(&b, "2030-01-01T08:00", true), "+01:00");
    b.click("#sc-kind option[value=\"mailbox\"]");
    b.type_into("#sc-target", DAVE.address);
    b.click("#sc-state option[value=\"migrated\"]");
    set_schedule_time(&b, "2030-07-01T08:00", false);
    b.click("#schedule button");
    b.wait_text("At 2030-07-01 06:00:00Z (UTC) set mailbox dave@pec.example to migrated.");
    b.click("form.confirm button");
    b.wait_text("to migrated at 2030-07-01T06:00:00Z.");
    let (_, list) = api.get("/api/schedules");
    let sid = list["schedules"][0]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no schedule: {list}"));
    assert_eq!(
        list["schedules"][0]["subject"],
        serde_json::json!({"kind": "mailbox", "name": "dave@pec.example"}),
        "{list}"
    );

    // Listed on the page with its cancel link; the review, then the cancel.
    let table = b.text("#domains-live");
    assert!(table.contains("Scheduled mailbox flips"), "{table}");
    assert!(table.contains("dave@pec.example"), "{table}");
    // Followed by its address: a live update may replace the link between
    // finding and clicking it.
    let link = b.execute(&format!(
        "return document.querySelector('a[aria-label^=\"Cancel schedule {sid} \"]').href;"
    ));
    b.goto(
        link.as_str()
            .unwrap_or_else(|| panic!("no cancel link: {link}")),
    );
    b.wait_text(&format!(
        "Cancel schedule {sid}: set mailbox dave@pec.example to migrated"
    ));
    assert_eq!(
        api.get("/api/schedules").1["schedules"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    b.click("form.confirm button");
    b.wait_text(&format!("Schedule {sid} cancelled."));
    assert_eq!(
        api.get("/api/schedules").1["schedules"],
        serde_json::json!([])
    );
    assert!(!b.text("#domains-live").contains("Scheduled mailbox flips"));

    // A mailbox's own tempmail deadline takes the offset of its own date
    // the same way; then it is cleared from the same form.
    b.goto(&format!("{base}/dashboard"));
    assert_eq!(set_time(&b, "tm", "2030-01-01T08:00", true), "+01:00");
    b.type_into("#tm-mailbox", DAVE.address);
    set_time(&b, "tm", "2030-07-01T18:00", false);
    b.click("#tempmail button[value=\"tempmail\"]");
    b.wait_text(
        "Set the tempmail deadline of mailbox dave@pec.example to 2030-07-01 16:00:00Z (UTC)",
    );
    b.click("form.confirm button");
    b.wait_text("Mailbox dave@pec.example: tempmail deadline set to 2030-07-01T16:00:00Z.");
    let (_, dave) = api.get("/api/mailboxes/dave@pec.example");
    assert_eq!(dave["tempmail_until"], "2030-07-01T16:00:00Z", "{dave}");
    b.type_into("#tm-mailbox", DAVE.address);
    b.click("#tempmail button[value=\"tempmail-clear\"]");
    b.wait_text("Clear the own tempmail deadline of mailbox dave@pec.example");
    b.click("form.confirm button");
    b.wait_text("own tempmail deadline cleared");
    let (_, dave) = api.get("/api/mailboxes/dave@pec.example");
    assert!(dave["tempmail_until"].is_null(), "{dave}");
}

/// Serves `html` to every request on a new loopback port (another origin
/// than the dashboard's); its address.
fn serve_page(html: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
        }
    });
    addr
}

#[test]
fn a_page_of_another_origin_cannot_post_a_flip_with_the_signed_in_browser() {
    let w = world();
    let api = Api::new(w.addr("admin"));
    let base = format!("http://{}", w.addr("admin"));
    let b = Browser::start(1280, 1000);
    browser_sign_in(&b, &base);
    // The worst case: the other page even knows the session's form token.
    let csrf = b.execute("return document.querySelector('input[name=csrf]').value;");
    let csrf = csrf.as_str().expect("a CSRF token").to_string();

    // Another port of the same host: same-site for the browser, so it
    // sends the SameSite=Strict cookie; only the origin check stands.
    let evil = serve_page(format!(
        "<!doctype html><html><body><form id=\"f\" method=\"post\" action=\"{base}/dashboard/do\">\
         <input type=\"hidden\" name=\"action\" value=\"domain\">\
         <input type=\"hidden\" name=\"domain\" value=\"pec.example\">\
         <input type=\"hidden\" name=\"state\" value=\"excluded\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"></form>\
         <script>document.getElementById('f').submit();</script></body></html>"
    ));
    b.goto(&format!("http://{evil}/"));
    b.wait_text("Cross-site request refused.");
    assert_eq!(b.url(), format!("{base}/dashboard/do"));
    let status = b.execute("return performance.getEntriesByType('navigation')[0].responseStatus;");
    assert_eq!(status, 403);
    assert_eq!(domain_state(&api, "pec.example"), "legacy");
    assert!(
        audit(&api).iter().all(|a| a["new"] != "excluded"),
        "a refused post left an audit entry"
    );

    // The session itself is untouched: the dashboard's own form works.
    b.goto(&format!("{base}/dashboard"));
    b.wait_text("signed in as ops");
    b.click("#fd-domain option[value=\"pec.example\"]");
    b.click("#fd-state option[value=\"excluded\"]");
    b.click("#flip-domain button");
    b.click("form.confirm button");
    b.wait_text("Domain pec.example: legacy → excluded");
    assert_eq!(domain_state(&api, "pec.example"), "excluded");
}

#[track_caller]
fn assert_dashboard_page(r: &Reply, status: u16, text: &str) {
    assert_eq!(r.status, status, "{}{}", r.headers, r.body);
    assert!(
        r.headers.contains("content-type: text/html"),
        "{}",
        r.headers
    );
    assert!(r.body.contains(text), "{text:?} not in {}", r.body);
    assert!(r.body.contains("Back to the dashboard"), "{}", r.body);
}

#[test]
fn a_malformed_or_oversized_form_gets_the_dashboard_page_with_its_status() {
    let w = world();
    let api = Api::new(w.addr("admin"));
    let (id, csrf) = sign_in(&w);

    // A repeated field, in a review's query or an action's form.
    let r = get(
        &w,
        &id,
        "/dashboard/confirm?action=domain&action=mailbox&domain=pec.example&state=excluded",
    );
    assert_dashboard_page(&r, 400, "The form could not be read");
    assert!(r.body.contains("duplicate field"), "{}", r.body);
    let flip = format!("action=domain&domain=pec.example&state=excluded&csrf={csrf}");
    let r = post(
        &w,
        "/dashboard/do",
        Some(&id),
        &[],
        &format!("{flip}&state=legacy"),
    );
    assert_dashboard_page(&r, 422, "duplicate field");
    // Not a form at all.
    let r = post(
        &w,
        "/dashboard/do",
        Some(&id),
        &["Content-Type: application/json"],
        &flip,
    );
    assert_dashboard_page(&r, 415, "The form could not be read");
    let r = post(
        &w,
        "/dashboard/import",
        Some(&id),
        &[],
        &format!("csrf={csrf}&csv=a&csv=b"),
    );
    assert_dashboard_page(&r, 422, "duplicate field");
    assert_eq!(domain_state(&api, "pec.example"), "legacy");

    // A list whose text is under the limit but whose URL-encoded form is
    // over it (each `@`, `,` and line break is sent as three bytes).
    let mut body = format!("csrf={csrf}&csv=");
    let mut text = 0;
    for i in 0.. {
        let row = format!("u{i:07}@pec.example,legacy\n");
        text += row.len();
        if text > 14 * 1024 * 1024 {
            break;
        }
        body.extend(url::form_urlencoded::byte_serialize(row.as_bytes()));
    }
    assert!(body.len() > 16 * 1024 * 1024 + 64 * 1024, "{}", body.len());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("import.form");
    std::fs::write(&file, &body).expect("write the form");
    let cookie = format!("Cookie: ponte_dashboard={id}");
    let data = format!("@{}", file.display());
    // No `Expect: 100-continue`: one response head to read.
    let r = http(
        &w,
        &[
            "-X",
            "POST",
            "-H",
            &cookie,
            "-H",
            "Expect:",
            "--data-binary",
            &data,
        ],
        "/dashboard/import",
    );
    assert_dashboard_page(&r, 413, "at most 16 MiB as the browser sends it");
    assert!(r.body.contains("ponte ctl import"), "{}", r.body);
    let (_, dave) = api.get("/api/mailboxes/dave@pec.example");
    assert_eq!(dave["source"], "domain", "{dave}");

    // On the embedded store there is no fleet to show.
    let page = get(&w, &id, "/dashboard");
    assert!(!page.body.contains("id=\"fleet\""), "a fleet section");
}

#[test]
fn in_a_fleet_the_dashboard_lists_every_node_and_its_kicks_reach_them_all() {
    // Dropped in reverse: the nodes first, then the backends, PostgreSQL.
    let pg = Postgres::start();
    let w = World::backends_only("");
    let a = Ponte::start(&w.fleet_config(&pg.url(), "node-a"));
    let b = Ponte::start(&w.fleet_config(&pg.url(), "node-b"));
    let admin = a.addr("admin");
    let (id, csrf) = sign_in_at(admin);
    let start = std::time::Instant::now();
    let fleet = loop {
        let page = get_at(admin, &id, "/dashboard");
        assert_eq!(page.status, 200, "{}", page.body);
        let fleet = page
            .body
            .split("<section id=\"fleet\"")
            .nth(1)
            .and_then(|s| s.split("</section>").next())
            .unwrap_or_default()
            .to_string();
        if fleet.contains("node-b") || start.elapsed() > Duration::from_secs(20) {
            break fleet;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(fleet.contains("<h2 id=\"fleet-h\">Fleet</h2>"), "{fleet}");
    assert!(
        fleet.contains("node-a <span class=\"muted\">(this node)</span>"),
        "{fleet}"
    );
    assert!(fleet.contains(">node-b<"), "{fleet}");
    assert!(fleet.contains(&admin.to_string()), "{fleet}");
    assert!(fleet.contains(" s ago<"), "{fleet}");
    assert!(!fleet.contains("silent"), "{fleet}");

    // Closing a mailbox's sessions from node A's page closes them on node B.
    let mut idle = LineConn::tcp(b.addr("imap"));
    let greeting = idle.read_line();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let login = format!("LOGIN {} {}", ALICE.address, ALICE.legacy_password.unwrap());
    assert!(idle.imap("a", &login).is_ok());
    assert!(idle.imap("b", "SELECT INBOX").is_ok());
    idle.send("c IDLE");
    assert!(idle.read_line().starts_with('+'));
    let flash = review_and_do_at(
        admin,
        &id,
        &csrf,
        "action=kick&kind=mailbox&target=alice%40pec.example",
        "every other node of the fleet closes its own",
    );
    println!("fleet kick from node-a's dashboard: {flash}");
    // The count is the fleet's: node B answered with its one session.
    assert!(
        flash.contains("1 session closed: 0 on this node, 1 on node-b."),
        "{flash}"
    );
    expect_bye(&mut idle, 2);
}

/// Where `.ci/install` puts axe-core's script; `PONTE_AXE_JS` overrides.
const AXE_JS: &str = "/opt/ponte-test/node_modules/axe-core/axe.min.js";

/// axe-core's script. Missing, the audit fails: an accessibility check
/// that skips itself would pass on every machine that lacks it.
fn axe_script() -> String {
    let path = std::env::var_os("PONTE_AXE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(AXE_JS));
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "axe-core not found at {}: {e}\nrun .ci/install (as root) to install it, \
             or set PONTE_AXE_JS to an axe.min.js",
            path.display()
        )
    })
}

/// The WCAG 2.0 and 2.1 level A and AA rules axe-core finds broken on
/// the browser's page, one line per rule with the elements that fail it.
fn axe_violations(b: &Browser, axe: &str) -> Vec<String> {
    b.execute(&format!("{axe}\n;return typeof axe;"));
    let found = b.execute_async(
        "var done = arguments[arguments.length - 1];\
         axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})\
           .then(function (r) {\
             done({violations: r.violations.map(function (v) {\
               return v.id + ' (' + v.impact + '): ' + v.help + '\\n' + v.nodes.map(function (n) {\
                 return '    ' + n.target.join(' ') + ': ' + (n.failureSummary || '').replace(/\\n\\s*/g, ' ');\
               }).join('\\n');\
             }), passes: r.passes.length});\
           }, function (e) { done({error: String(e)}); });",
    );
    assert!(found["error"].is_null(), "axe-core failed: {found}");
    assert!(
        found["passes"].as_u64().unwrap_or(0) > 0,
        "axe-core checked nothing: {found}"
    );
    found["violations"]
        .as_array()
        .unwrap_or_else(|| panic!("no violations list: {found}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Something in each section: open sessions, a domain's and a mailbox's
/// schedule, a message spooled during a blackout. The sessions are
/// returned: they stay open while they are kept.
fn populate(w: &World, api: &Api) -> Vec<LineConn<TcpStream>> {
    let (code, v) = api.send_json(
        "PUT",
        "/api/domains/pec.example",
        &serde_json::json!({"state": "blackout"}),
    );
    assert_eq!(code, 200, "{v}");
    send_mail(w, ALICE.address);
    for body in [
        serde_json::json!({"domain": "comune.example", "state": "legacy", "at": "2030-01-01T07:00:00Z"}),
        serde_json::json!({"mailbox": DAVE.address, "state": "migrated", "at": "2030-02-01T07:00:00Z"}),
    ] {
        let (code, v) = api.send_json("POST", "/api/schedules", &body);
        assert_eq!(code, 201, "{v}");
    }
    vec![
        w.login(&ALICE, ALICE.legacy_password),
        w.login(&CAROL, CAROL.new_password),
    ]
}

#[test]
fn every_dashboard_page_passes_the_wcag_2_1_aa_audit_of_axe_core() {
    let axe = axe_script();
    let w = world();
    let api = Api::new(w.addr("admin"));
    let base = format!("http://{}", w.addr("admin"));
    let _open = populate(&w, &api);
    let b = Browser::start(1280, 1400);
    let mut failed = Vec::new();
    let mut check = |page: &str| {
        for v in axe_violations(&b, &axe) {
            failed.push(format!("{page}: {v}"));
        }
    };

    b.goto(&format!("{base}/dashboard/login"));
    b.wait_text("Admin token");
    check("sign-in page");
    b.type_into("#token", "not-the-token-0123456789");
    b.click("form.login button");
    b.wait_text("Wrong token.");
    check("sign-in page, refused");

    browser_sign_in(&b, &base);
    // Audited as the live updates leave it, with the queue, the schedules
    // and the sessions listed and the charts drawn.
    b.wait_text("Live: updated at");
    let page = b.wait_text("Scheduled mailbox flips");
    assert!(page.contains("Sessions, newest last"), "{page}");
    assert!(
        page.contains("x@sender.example"),
        "no spooled message:\n{page}"
    );
    check("main page");

    b.goto(&format!(
        "{base}/dashboard/confirm?action=domain&domain=pec.example&state=migrated"
    ));
    b.wait_text("Flip domain pec.example from blackout to migrated");
    check("review page");
    b.click("form.confirm button");
    b.wait_text("Domain pec.example: blackout → migrated");
    check("main page with the outcome");

    b.goto(&format!(
        "{base}/dashboard/confirm?action=domain&domain=nowhere.example&state=legacy"
    ));
    b.wait_text("nowhere.example is not a managed domain");
    check("refused review");

    b.goto(&format!("{base}/dashboard"));
    b.type_into(
        "#im-csv",
        "address,state\nnobody@elsewhere.example,migrated\ndave@pec.example,flying\n",
    );
    b.click("#import button");
    b.wait_text("Nothing was imported: 2 bad row(s)");
    check("import error report");

    assert!(
        failed.is_empty(),
        "axe-core found {} violation(s):\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// On a phone-sized window: the page fits its width (nothing scrolls
/// sideways), its tables are shown as cards, and a screenshot is kept.
fn assert_fits_a_phone(b: &Browser, shot: &str) -> Value {
    let fit = b.execute(
        "var rows = document.querySelectorAll('main tbody tr');\
         return {width: window.innerWidth, scroll: document.documentElement.scrollWidth,\
                 rows: rows.length,\
                 tables: Array.prototype.filter.call(rows, function (r) {\
                   return getComputedStyle(r).display !== 'block'; }).length,\
                 wide: Array.prototype.filter.call(document.querySelectorAll('main *'), function (e) {\
                   return e.getBoundingClientRect().right > window.innerWidth + 0.5; })\
                   .slice(0, 5).map(function (e) { return e.tagName + '#' + e.id + '.' + e.className; })};",
    );
    assert!(
        fit["width"].as_u64() <= Some(400),
        "not a phone's width: {fit}"
    );
    assert!(
        fit["scroll"].as_u64() <= fit["width"].as_u64(),
        "{shot}: the page scrolls sideways: {fit}"
    );
    assert_eq!(fit["tables"], 0, "{shot}: rows not shown as cards: {fit}");
    let png = b.screenshot(&artefacts().join(shot));
    assert_png(&png, shot);
    fit
}

/// What has the keyboard focus: its tag, id and text, and whether a focus
/// style shows it (an outline or a shadow).
fn focused(b: &Browser) -> Value {
    b.execute(
        "var e = document.activeElement, s = getComputedStyle(e);\
         return {tag: e.tagName.toLowerCase(), id: e.id, form: e.form ? e.form.id : '',\
                 text: (e.textContent || '').trim().slice(0, 40), value: e.value || '',\
                 shown: (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0)\
                        || s.boxShadow !== 'none'};",
    )
}

/// Presses Tab until `wanted` has the focus; every element passed on the
/// way must show that it has it.
fn tab_to(b: &Browser, wanted: impl Fn(&Value) -> bool, what: &str) -> Value {
    for _ in 0..300 {
        b.press(TAB);
        let f = focused(b);
        assert_eq!(f["shown"], true, "no visible focus style on {f}");
        if wanted(&f) {
            return f;
        }
    }
    panic!("Tab never reached {what} on {}", b.url());
}

#[test]
fn on_a_phone_nothing_scrolls_sideways_and_a_keyboard_alone_reviews_and_confirms_a_flip() {
    let w = world();
    let api = Api::new(w.addr("admin"));
    let base = format!("http://{}", w.addr("admin"));
    let _open = populate(&w, &api);
    let b = Browser::start(1280, 1400);
    b.emulate_phone(Some((390, 844)));
    browser_sign_in(&b, &base);
    b.wait_text("Live: updated at");
    b.wait_text("Scheduled mailbox flips");
    let fit = assert_fits_a_phone(&b, "phone-main.png");
    assert!(fit["rows"].as_u64() > Some(5), "too few table rows: {fit}");
    // The cards are the same tables restyled: audited as a phone shows them.
    let violations = axe_violations(&b, &axe_script());
    assert!(
        violations.is_empty(),
        "on a phone:\n{}",
        violations.join("\n")
    );
    b.execute("document.getElementById('sessions').scrollIntoView();");
    let png = b.screenshot(&artefacts().join("phone-sessions.png"));
    assert_png(&png, "phone screenshot of the sessions");
    b.goto(&format!(
        "{base}/dashboard/confirm?action=domain&domain=pec.example&state=migrated"
    ));
    b.wait_text("Flip domain pec.example from blackout to migrated");
    assert_fits_a_phone(&b, "phone-review.png");

    // The keyboard: from the top of the main page, Tab to the mailbox
    // flip form, type into it, pick a state by its initial, submit it
    // with Enter; on the review page, Tab to the confirmation and press
    // Enter.
    b.emulate_phone(None);
    b.goto(&format!("{base}/dashboard"));
    b.wait_text("Live: updated at");
    tab_to(&b, |f| f["id"] == "fm-mailbox", "the mailbox field");
    b.press(DAVE.address);
    b.press(TAB);
    assert_eq!(focused(&b)["id"], "fm-state");
    b.press("m");
    assert_eq!(focused(&b)["value"], "migrated");
    let button = tab_to(
        &b,
        |f| f["tag"] == "button" && f["form"] != "",
        "a submit button",
    );
    assert_eq!(button["form"], "flip-mailbox", "{button}");
    b.press(ENTER);
    b.wait_text("Set mailbox dave@pec.example from");
    tab_to(
        &b,
        |f| f["tag"] == "button" && f["text"] != "Sign out",
        "the confirmation",
    );
    b.press(ENTER);
    b.wait_text("Mailbox dave@pec.example:");
    let (_, dave) = api.get(&format!("/api/mailboxes/{}", DAVE.address));
    assert_eq!(dave["state"], "migrated", "{dave}");
}
