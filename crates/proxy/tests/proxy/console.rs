//! The web console: its page and assets come with their headers, and in a real browser
//! (headless Chromium, which runs the page's script: it reads `/v1/overview` and redraws the
//! page) it shows the members with their certificates' expiry, and what a peer says as text.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Pki, TestProxy, pair, start, within};

/// The longest the browser may take to load the page and run its script.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// A `peerClass` that would run if the console put it into the page as markup.
const HOSTILE: &str = "<script>alert(1)</script>";

const DAY: i64 = 86_400;

#[tokio::test]
async fn the_page_and_its_assets_come_with_their_headers() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let page = raw_get(&proxy, "/").await;
    let (head, body) = page.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    for header in [
        "content-type: text/html; charset=utf-8",
        "content-security-policy: default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
        "x-content-type-options: nosniff",
        "cache-control: no-store",
    ] {
        assert!(head.contains(header), "no {header:?} in\n{head}");
    }
    assert!(body.starts_with("<!DOCTYPE html>"), "{body}");
    for (path, content_type, content) in
        [("/console.css", "text/css", ".counters"), ("/console.js", "text/javascript", "/v1/overview")]
    {
        let answer = raw_get(&proxy, path).await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(head.contains(&format!("content-type: {content_type}; charset=utf-8")), "{path}: {head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{path}: {head}");
        assert!(body.contains(content), "{path}: {body}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_browser_shows_the_members_their_expiry_and_a_hostile_peer_class_as_text() {
    let browser = browser();
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (_a, _b) = pair(&proxy, "gw/1").await;
    // A device whose certificate expires within `tls.expiry_warning`, and whose HELLO says
    // something a careless page would run.
    let (cert, _) = pki.short_lived("lab-device", Duration::from_secs(5 * 86_400 + 3600));
    let mut hostile = proxy.connect_with(&cert, "lab").await;
    hostile
        .send_text(&format!(
            r#"{{"message": {{"messageId": 0, "messageType": "CONN:HELLO", "requiresResponse": false, "peerClass": "{HOSTILE}", "peerId": "lab-1"}}}}"#
        ))
        .await;
    let members = within("the three members are in", async {
        loop {
            let (_, body) = proxy.admin("GET", "/v1/rooms").await;
            let rooms: Value = serde_json::from_str(&body).unwrap();
            let members: Vec<Value> = rooms
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|room| room["members"].as_array().unwrap().clone())
                .collect();
            if members.len() == 3 {
                return members;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let before = now();
    let dom = dump_dom(&browser, &format!("http://{}/", proxy.admin)).await;
    let after = now();

    assert!(dom.contains("last refreshed "), "the script did not redraw the page:\n{dom}");
    assert!(!dom.contains("Could not refresh"), "the script could not read /v1/overview:\n{dom}");
    assert!(dom.contains(r#"class="state ok">ready<"#), "{dom}");
    for member in &members {
        let subject = text(member["subject"].as_str().unwrap());
        assert!(dom.contains(&subject), "no member {subject} in\n{dom}");
        let not_after = member["not_after"].as_i64().unwrap();
        let shown = [before, after].map(|now| {
            format!(
                r#"{}<div class="detail">{} days left</div>"#,
                date(not_after),
                (not_after - now).div_euclid(DAY)
            )
        });
        assert!(shown.iter().any(|s| dom.contains(s)), "no expiry {shown:?} for {subject} in\n{dom}");
    }
    assert!(dom.contains("CN=manager") && dom.contains("CN=gateway"), "{dom}");
    assert!(
        dom.contains(r#"<td class="expires soon">"#),
        "the lab device's certificate is within the window:\n{dom}"
    );
    assert!(dom.contains("CN=lab-device"), "{dom}");
    assert!(
        dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "the peerClass is not shown as text:\n{dom}"
    );
    assert!(!dom.contains("<script>alert"), "the peerClass became markup:\n{dom}");
    assert_eq!(dom.matches("<script").count(), 1, "only the console's own script:\n{dom}");
    proxy.stop().await;
}

/// `GET path` on the admin endpoint: the whole answer, head and body.
async fn raw_get(proxy: &TestProxy, path: &str) -> String {
    within("admin request", async {
        let mut tcp = TcpStream::connect(proxy.admin).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", proxy.admin);
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.unwrap();
        String::from_utf8(answer).unwrap()
    })
    .await
}

/// The Chromium on `PATH` (`chromium` on Debian, `chromium-browser` elsewhere). Its absence
/// fails the test: `scripts/test` installs it.
fn browser() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["chromium", "chromium-browser"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "neither chromium nor chromium-browser is on PATH: run scripts/test, which installs chromium"
            )
        })
}

/// The DOM `browser` ends with after loading `url` and running its scripts for three seconds
/// of virtual time. The browser runs with a fresh profile, and is killed past
/// [`BROWSER_TIMEOUT`]; meanwhile the proxy in this runtime keeps serving.
async fn dump_dom(browser: &Path, url: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let dom = dir.path().join("dom.html");
    let log = dir.path().join("stderr.txt");
    let mut child = Command::new(browser)
        .args([
            "--headless=new",
            // Root in CI has no sandbox to enter.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&dom).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", browser.display()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BROWSER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not finish within {BROWSER_TIMEOUT:?}; its log:\n{}",
                browser.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{} failed ({status}); its log:\n{stderr}", browser.display());
    let dom = std::fs::read_to_string(&dom).unwrap();
    assert!(dom.contains("</html>"), "no page from {url}; the browser's log:\n{stderr}");
    dom
}

/// `text` as a browser writes it out in an element: `&`, `<` and `>` escaped.
fn text(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The UTC date of `seconds` since the Unix epoch, as the console shows it (here from the
/// `time` crate, to check the console's own conversion).
fn date(seconds: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(seconds).unwrap().date();
    format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day())
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
