//! The cluster page's sign-in and its refusals, over real HTTPS (curl,
//! verifying the cluster CA) from another host, against a real master: a
//! link signs in once; a reused, expired or malformed link is refused; no
//! session, no page; a change without the session's CSRF token, or from
//! another origin, is refused; sign-out ends the session everywhere.

mod support;

use support::*;

/// What curl got: status, headers (lower-cased names), body.
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn curl(from: &Host, master: &Host, args: &[&str]) -> Got {
    let ca = master.pki("ca.crt").display().to_string();
    let mut all = vec!["-s", "-i", "--cacert", ca.as_str(), "--max-time", "20"];
    all.extend_from_slice(args);
    let out = from.exec("curl", &all);
    assert_ok(&out, &format!("curl {args:?}"));
    let text = stdout(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Got { status, headers, body: body.to_owned() }
}

fn page(m: &Host) -> String {
    format!("https://{}:9443/console", m.addr)
}

/// The link `hakube console` printed.
fn link(m: &Host) -> String {
    let out = m.hakube(&["console"]);
    assert_ok(&out, "hakube console");
    let text = stdout(&out);
    let link = text.split_whitespace().find(|w| w.contains("/console/signin?code=")).map(str::to_owned);
    link.unwrap_or_else(|| panic!("no link in: {text}"))
}

fn code_of(link: &str) -> &str {
    link.rsplit_once("code=").unwrap().1
}

fn sign_in(c: &Host, m: &Host, code: &str, jar: &str) -> Got {
    let form = format!("code={code}");
    let url = format!("{}/signin", page(m));
    curl(c, m, &["-c", jar, "--data", &form, &url])
}

#[test]
fn the_page_signs_in_once_by_link_and_refuses_what_it_must() {
    let net = Network::new();
    let m1 = net.host("m1");
    m1.install(&["ha"]);
    let c = net.host("c1");
    let dir = tempfile::tempdir().unwrap();
    let jar = dir.path().join("jar").display().to_string();
    let state = format!("{}/api/state", page(&m1));

    // The link opens a form: a GET (a preview, a prefetch) spends nothing.
    let link = link(&m1);
    assert!(link.starts_with(&format!("https://{}:9443/console/signin?code=", m1.addr)), "{link}");
    let form = curl(&c, &m1, &[&link]);
    assert_eq!(form.status, 200, "{}", form.body);
    assert!(form.body.contains("method=\"post\"") && form.body.contains(code_of(&link)), "{}", form.body);
    let csp = form.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");

    // No session: no page, no view.
    assert_eq!(curl(&c, &m1, &[&page(&m1)]).status, 401);
    assert_eq!(curl(&c, &m1, &[&state]).status, 401);

    // The trade: a session cookie that scripts cannot read and other sites cannot send.
    let signed = sign_in(&c, &m1, code_of(&link), &jar);
    assert_eq!(signed.status, 303, "{}", signed.body);
    assert_eq!(signed.header("location"), Some("/console"));
    let cookie = signed.header("set-cookie").unwrap_or_default().to_owned();
    for part in ["__Host-hakube_session=", "Secure", "HttpOnly", "SameSite=Strict", "Path=/;"] {
        assert!(cookie.contains(part), "{part} in {cookie}");
    }
    let opened = curl(&c, &m1, &["-b", &jar, &page(&m1)]);
    assert_eq!(opened.status, 200);
    assert!(opened.body.contains("<script src=\"/console/app.js\"></script>"), "{}", opened.body);
    let view = curl(&c, &m1, &["-b", &jar, &state]);
    assert_eq!(view.status, 200, "{}", view.body);
    let v: serde_json::Value = serde_json::from_str(&view.body).unwrap();
    assert_eq!(v["servedBy"], "m1");
    assert!(v["signedInBy"].as_str().unwrap().ends_with("@m1"), "{v}");
    assert_eq!(v["etcd"]["voters"], 1, "{v}");
    assert_eq!(v["cluster"]["nodes"][0]["name"], "m1", "{v}");
    let csrf = v["csrf"].as_str().unwrap().to_owned();

    // Once only: the same link again is refused, and opens nothing.
    let again = sign_in(&c, &m1, code_of(&link), &dir.path().join("jar2").display().to_string());
    assert_eq!(again.status, 403);
    assert!(again.body.contains("used already, has expired, or never existed"), "{}", again.body);
    // Malformed: refused before any lookup.
    assert_eq!(sign_in(&c, &m1, "../../etc", &dir.path().join("jar4").display().to_string()).status, 400);
    // Expired (its record still in etcd, as in the lease's last second).
    let expired = "ab".repeat(32);
    let key = format!("/hakube/console/links/{}", hakube::console::session::Secret::parse(&expired).unwrap().hash());
    let record = r#"{"by":"root@m1","createdAt":1,"expiresAt":2}"#;
    assert_ok(&m1.etcdctl(Some("apiserver-etcd-client"), &["put", &key, record]), "put an expired link");
    let late = sign_in(&c, &m1, &expired, &dir.path().join("jar3").display().to_string());
    assert_eq!(late.status, 403);
    assert!(late.body.contains("expired at 2"), "{}", late.body);

    // A change without the session's CSRF token, or from another origin, is refused.
    let signout = format!("{}/signout", page(&m1));
    let forged = curl(&c, &m1, &["-b", &jar, "--data", &format!("csrf={}", "0".repeat(64)), &signout]);
    assert_eq!(forged.status, 403);
    assert!(forged.body.contains("CSRF token is missing or wrong"), "{}", forged.body);
    assert_eq!(curl(&c, &m1, &["-b", &jar, "--data", "", &signout]).status, 403, "no token");
    let other =
        curl(&c, &m1, &["-b", &jar, "-H", "Origin: https://evil.example", "--data", &format!("csrf={csrf}"), &signout]);
    assert_eq!(other.status, 403, "another origin");
    assert_eq!(curl(&c, &m1, &["-b", &jar, &state]).status, 200, "the session survived the refusals");
    // Nothing changes by GET.
    assert_eq!(curl(&c, &m1, &["-b", &jar, &signout]).status, 405);

    // Sign-out ends the session in etcd, not only in this browser.
    let out = curl(&c, &m1, &["-b", &jar, "--data", &format!("csrf={csrf}"), &signout]);
    assert_eq!(out.status, 303, "{}", out.body);
    let stolen = format!("__Host-hakube_session={}", cookie.split(';').next().unwrap().split_once('=').unwrap().1);
    assert_eq!(curl(&c, &m1, &["-b", &stolen, &state]).status, 401);
    // A cookie that opens nothing is cleared.
    let gone = curl(&c, &m1, &["-b", &stolen, &page(&m1)]);
    assert!(gone.header("set-cookie").is_some_and(|v| v.contains("Max-Age=0")), "{:?}", gone.headers);

    // Signing in again in the same browser ends its previous session.
    let browser = dir.path().join("browser").display().to_string();
    let (first, second) = (self::link(&m1), self::link(&m1));
    assert_eq!(sign_in(&c, &m1, code_of(&first), &browser).status, 303);
    let jar_value = |jar: &str| {
        let text = std::fs::read_to_string(jar).unwrap();
        let line = text.lines().find(|l| l.contains("__Host-hakube_session")).unwrap().to_owned();
        line.rsplit('\t').next().unwrap().to_owned()
    };
    let before = jar_value(&browser);
    let form = format!("code={}", code_of(&second));
    let url = format!("{}/signin", page(&m1));
    assert_eq!(curl(&c, &m1, &["-b", &browser, "-c", &browser, "--data", &form, &url]).status, 303);
    assert_ne!(jar_value(&browser), before, "a new session");
    assert_eq!(curl(&c, &m1, &["-b", &browser, &state]).status, 200);
    let earlier = format!("__Host-hakube_session={before}");
    assert_eq!(curl(&c, &m1, &["-b", &earlier, &state]).status, 401, "the one before is over");

    // Root on a master sees the sessions, and ends them all with the links not yet used.
    let spare = self::link(&m1);
    let listed = m1.hakube(&["console", "--sessions"]);
    assert_ok(&listed, "console --sessions");
    let listed = stdout(&listed);
    assert_eq!(listed.lines().count(), 2, "one open session: {listed}");
    assert!(listed.contains(&format!(" {} ", c.addr)) && listed.contains("@m1"), "{listed}");
    assert!(!listed.contains(&jar_value(&browser)), "never the secret: {listed}");
    let ended = m1.hakube(&["console", "--end-sessions"]);
    assert_ok(&ended, "console --end-sessions");
    assert!(stdout(&ended).contains("Ended 1 session(s)"), "{}", stdout(&ended));
    assert_eq!(curl(&c, &m1, &["-b", &browser, &state]).status, 401, "signed out by root");
    let refused = sign_in(&c, &m1, code_of(&spare), &dir.path().join("jar5").display().to_string());
    assert_eq!(refused.status, 403, "the unused link ended too: {}", refused.body);
    assert!(stdout(&m1.hakube(&["console", "--sessions"])).contains("No session is open"));

    // Every decision is in the agent's log, with who and from where.
    let log = std::fs::read_to_string(m1.root().join("var/lib/hakube/logs/agent.log")).unwrap();
    let from = format!("remote={}:", c.addr);
    for decision in ["accepted", "refused"] {
        assert!(
            log.lines().any(|l| l.contains("console sign-in") && l.contains(decision) && l.contains(&from)),
            "a {decision} sign-in from {} in the log",
            c.addr
        );
    }
    assert!(log.lines().any(|l| l.contains("console sign-out") && l.contains("accepted") && l.contains("by=")));
}

/// A signed-in session on `m`'s page: the cookie jar and the CSRF token.
fn session(c: &Host, m: &Host, dir: &std::path::Path) -> (String, String) {
    let jar = dir.join("jar").display().to_string();
    assert_eq!(sign_in(c, m, code_of(&link(m)), &jar).status, 303);
    let view = curl(c, m, &["-b", &jar, &format!("{}/api/state", page(m))]);
    let v: serde_json::Value = serde_json::from_str(&view.body).unwrap();
    (jar, v["csrf"].as_str().unwrap().to_owned())
}

#[test]
fn the_page_removes_no_live_node_and_none_whose_removal_costs_quorum() {
    let net = Network::new();
    let m1 = net.host("m1");
    m1.install(&["ha"]);
    let (_d, join) = join_script(&m1, true, &[]);
    let (m2, m3) = (net.host("m2"), net.host("m3"));
    assert_ok(&run_join(&m2, &join, "etcd", &[bin()]), "m2");
    assert_ok(&run_join(&m3, &join, "etcd", &[bin()]), "m3");
    let c = net.host("c1");
    let dir = tempfile::tempdir().unwrap();
    let (jar, csrf) = session(&c, &m1, dir.path());
    let remove = |name: &str| {
        let body = format!(r#"{{"name":"{name}"}}"#);
        let url = format!("{}/api/nodes/remove", page(&m1));
        let header = format!("x-csrf-token: {csrf}");
        curl(&c, &m1, &["-b", &jar, "-H", "content-type: application/json", "-H", &header, "--data", &body, &url])
    };
    let before = stdout(&m1.etcdctl(Some("apiserver-etcd-client"), &["member", "list"]));

    // Alive: refused, whatever etcd could spare.
    let alive = remove("m2");
    assert_eq!(alive.status, 409, "{}", alive.body);
    assert!(alive.body.contains("m2 is alive"), "{}", alive.body);

    // m3 dies; m2's agent hangs, so its heartbeat stops while its etcd
    // member still votes. Removing m2 would leave m1 and the dead m3: 1 of
    // 2 voters, no quorum.
    m3.kill_all();
    let agent = support::vip::agent(&m2).to_string();
    assert_ok(&m2.exec("kill", &["-STOP", &agent]), "stop m2's agent");
    std::thread::sleep(std::time::Duration::from_secs(17));
    let costly = remove("m2");
    assert_eq!(costly.status, 409, "{}", costly.body);
    assert!(costly.body.contains("removing m2 would cost etcd its quorum"), "{}", costly.body);
    assert!(costly.body.contains("nothing was changed"), "{}", costly.body);
    assert_eq!(stdout(&m1.etcdctl(Some("apiserver-etcd-client"), &["member", "list"])), before, "members unchanged");
    let log = std::fs::read_to_string(m1.root().join("var/lib/hakube/logs/agent.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("action=\"remove node\"") && l.contains("refused") && l.contains("quorum")),
        "the refusal is audited"
    );
}

/// The cluster CA's public-key hash, base64: what Chromium is told to trust.
fn ca_spki_base64(m: &Host) -> String {
    use base64::Engine as _;
    use rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(m.pki("ca.crt")).unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    let hex = hakube::join::tls::spki_hash(&der).unwrap();
    let bytes: Vec<u8> =
        (0..64).step_by(2).map(|i| u8::from_str_radix(&hex["sha256:".len()..][i..i + 2], 16).unwrap()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn wait_for(path: &std::path::Path, child: &mut std::process::Child) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read as _;
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("the browser stopped ({status}) before writing {}: {err}", path.display());
        }
        assert!(std::time::Instant::now() < end, "no {} within 300 s", path.display());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn an_operator_adds_and_removes_a_node_from_a_browser() {
    let driver = repo().join("dev/browser/console.mjs");
    let modules = repo().join("dev/browser/node_modules/playwright-core");
    assert!(
        modules.is_dir() && std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Debian's chromium and playwright-core: scripts/test.sh installs both \
         (or: apt-get install chromium; cd dev/browser && npm ci)"
    );
    let net = Network::new();
    let m1 = net.host("m1");
    m1.install(&["ha"]);
    let (c, w1, w2) = (net.host("c1"), net.host("w1"), net.host("w2"));
    let link = link(&m1);
    let dir = tempfile::tempdir().unwrap();
    let spki = ca_spki_base64(&m1);
    let mut browser = std::process::Command::new("ip")
        .args(["netns", "exec", &c.ns, "node"])
        .arg(&driver)
        .args([link.as_str(), spki.as_str(), "m1"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // The script the page showed joins a new host.
    wait_for(&dir.path().join("w1.sh"), &mut browser);
    assert_ok(&run_join(&w1, &dir.path().join("w1.sh"), "none", &[bin()]), "w1, by the page's script");
    // The script whose token the page revoked is refused.
    wait_for(&dir.path().join("w2.sh"), &mut browser);
    let refused = run_join(&w2, &dir.path().join("w2.sh"), "none", &[bin()]);
    assert!(!refused.status.success() && stderr(&refused).contains("unknown join token"), "{}", stderr(&refused));
    assert!(untouched(&w2), "nothing written on w2");
    // w1 goes for good; the page removes it.
    wait_for(&dir.path().join("w1.up"), &mut browser);
    w1.kill_all();
    std::fs::write(dir.path().join("w1.down"), "").unwrap();

    let out = browser.wait_with_output().unwrap();
    assert_ok(&out, "the browser");
    let seen: serde_json::Value = serde_json::from_str(stdout(&out).trim().lines().last().unwrap()).unwrap();
    assert_eq!(seen["servedBy"], "m1", "{seen}");
    assert!(seen["etcd"].as_str().unwrap().contains("1 voters, quorum 1"), "{seen}");
    assert_eq!(seen["cookie"][0]["name"], "__Host-hakube_session", "{seen}");
    assert_eq!(seen["cookie"][0]["httpOnly"], true, "{seen}");
    assert_eq!(seen["cookie"][0]["secure"], true, "{seen}");
    assert_eq!(seen["cookie"][0]["sameSite"], "Strict", "{seen}");
    assert_eq!(seen["scriptSeesCookie"], false, "{seen}");
    assert!(seen["w1Row"].as_str().unwrap().contains("worker"), "{seen}");
    assert_eq!(seen["lastJoin"], "w1", "the newest of the recent joins: {seen}");
    assert_eq!(seen["removed"], "w1", "{seen}");
    assert_eq!(seen["actionError"], false, "{seen}");
    assert!(seen["reuse"].as_str().unwrap().contains("used already"), "{seen}");
    assert!(seen["afterSignOut"].as_str().unwrap().contains("Not signed in"), "{seen}");
    assert_eq!(seen["consoleErrors"], serde_json::json!([]), "the page's own errors");
    // What the page did is what the cluster holds.
    let reg = stdout(&m1.etcdctl(Some("apiserver-etcd-client"), &["get", "/hakube/nodes/w1", "--print-value-only"]));
    assert!(reg.trim().is_empty(), "the registry still has w1: {reg}");
    let tokens = stdout(&m1.hakube(&["token", "list"]));
    assert!(!tokens.contains(seen["revoked"].as_str().unwrap()), "{tokens}");
    let shot = dir.path().join("console.png");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a screenshot");
    let _ = std::fs::copy(&shot, repo().join("target/console.png"));
    // Every action is audited with who and from where.
    let log = std::fs::read_to_string(m1.root().join("var/lib/hakube/logs/agent.log")).unwrap();
    for action in ["add node", "revoke token", "remove node"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("action=\"{action}\"")) && l.contains(&format!("remote={}:", c.addr))),
            "{action} audited"
        );
    }
}

#[test]
fn a_client_that_trickles_its_headers_is_dropped() {
    use std::io::Write as _;
    let net = Network::new();
    let m1 = net.host("m1");
    m1.install(&["ha"]);
    let c = net.host("c1");
    let to = format!("{}:9443", m1.addr);
    let mut client = std::process::Command::new("ip")
        .args(["netns", "exec", &c.ns, "openssl", "s_client", "-quiet", "-connect", &to])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    // A request line and one header, and never the blank line that ends them.
    stdin.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    stdin.flush().unwrap();
    let t = std::time::Instant::now();
    let closed = loop {
        if let Ok(Some(_)) = client.try_wait() {
            break Some(t.elapsed());
        }
        if t.elapsed() > std::time::Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = client.kill();
    drop(stdin);
    let _ = client.wait();
    let closed = closed.expect("the server still holds the connection after 30 s");
    assert!(closed < std::time::Duration::from_secs(20), "dropped after {closed:?}");
    eprintln!("a client that trickled its headers was dropped after {:.1}s", closed.as_secs_f64());
}
