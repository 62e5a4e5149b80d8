//! `ws-proxy` under operations: systemd notifications, journald-friendly logs, SIGHUP reload,
//! the drain, the admin endpoint and `ws-proxy status`, with the real binary.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use crate::proxy_support::{Client, admin_request, cert_der, sample, within};
use crate::support::{ProxyProcess, run_bin};

/// A client of the dev PKI under `dir/certs/dev`, joined to `room` as `peer`.
async fn member(proxy: &ProxyProcess, dir: &Path, who: &str, room: &str, peer: &str) -> Client {
    let dev = dir.join("certs/dev");
    let cert = dev.join(format!("micronets-{who}.pkeycert.pem"));
    let path = format!("/micronets/v1/ws-proxy/{room}");
    let mut client =
        within("connect", Client::connect(proxy.addr, &dev.join("micronets-ws-root.cert.pem"), &cert, &path))
            .await
            .unwrap();
    client.hello(peer).await;
    client
}

async fn pair(proxy: &ProxyProcess, dir: &Path) -> (Client, Client) {
    let mut a = member(proxy, dir, "manager", "gw/gateway", "a").await;
    let mut b = member(proxy, dir, "gateway", "gw/gateway", "b").await;
    b.recv_text().await;
    a.recv_text().await;
    (a, b)
}

/// A config file `name` serving the dev PKI (server certificate `server_cert`) on free ports.
fn config(dir: &Path, name: &str, server_cert: &str, extra: &str) {
    let text = format!(
        "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = \"{server_cert}\"\nclient_ca = \"certs/dev/micronets-ws-root.cert.pem\"\n[admin]\nbind = \"127.0.0.1:0\"\n{extra}"
    );
    std::fs::write(dir.join(name), text).unwrap();
}

/// Reads notification datagrams until one holds `wanted`; returns everything read.
#[track_caller]
fn expect_notification(socket: &UnixDatagram, wanted: &str) -> String {
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while !seen.lines().any(|l| l == wanted) {
        let n = socket.recv(&mut buffer).unwrap_or_else(|e| panic!("no {wanted:?} (got {seen:?}): {e}"));
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    seen
}

#[test]
fn systemd_hears_ready_watchdog_pings_and_stopping_and_logs_have_no_timestamps() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let env = [
        ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "200000"),
        ("JOURNAL_STREAM", "8:12345"),
    ];
    let mut proxy = ProxyProcess::start(dir, &["--dev", "--bind", "127.0.0.1:0"], &env);
    let ready = expect_notification(&socket, "READY=1");
    assert!(!ready.contains("WATCHDOG=1"), "READY comes first: {ready}");
    expect_notification(&socket, "WATCHDOG=1");
    expect_notification(&socket, "WATCHDOG=1");

    proxy.signal("HUP");
    expect_notification(&socket, "RELOADING=1");
    expect_notification(&socket, "READY=1");

    proxy.signal("TERM");
    expect_notification(&socket, "STOPPING=1");
    assert_eq!(proxy.wait_exit(), Some(0), "{}", proxy.log());
    let log = proxy.log();
    let listening = log.lines().find(|l| l.contains("listening on")).unwrap();
    assert!(listening.trim_start().starts_with("INFO"), "no timestamp under journald: {listening:?}");
}

#[tokio::test]
async fn sighup_rotates_the_server_certificate_while_a_room_relays() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_bin(dir, "certgen", &["dev"]).success();
    let dev = dir.join("certs/dev");
    std::fs::copy(dev.join("micronets-ws-proxy.pkeycert.pem"), dir.join("served.pem")).unwrap();
    config(dir, "p.toml", "served.pem", "");
    let mut proxy = ProxyProcess::start(dir, &["--config", "p.toml"], &[]);
    let (mut a, mut b) = pair(&proxy, dir).await;
    assert_eq!(a.server_cert(), cert_der(&dir.join("served.pem")));

    run_bin(
        dir,
        "certgen",
        &[
            "leaf",
            "--cert-basename",
            "rotated",
            "--subject-org-name",
            "Rotated",
            "--usage",
            "server",
            "--san-dns",
            "localhost",
            "--ca-certfile",
            "certs/dev/micronets-ws-root.cert.pem",
            "--ca-keyfile",
            "certs/dev/micronets-ws-root.key.pem",
        ],
    )
    .success();
    std::fs::copy(dir.join("rotated.pkeycert.pem"), dir.join("served.pem")).unwrap();
    proxy.signal("HUP");
    proxy.wait_for("reloaded: new handshakes use the new TLS material");

    let fresh = member(&proxy, dir, "ws-test-client", "elsewhere", "c").await;
    assert_eq!(
        fresh.server_cert(),
        cert_der(&dir.join("rotated.cert.pem")),
        "new connections get the new cert"
    );
    let event = r#"{"message": {"messageId": 7, "messageType": "EVENT:after-reload"}}"#;
    a.send_text(event).await;
    assert_eq!(b.recv_text().await, event, "the established pair keeps relaying");

    std::fs::write(dir.join("served.pem"), "garbage").unwrap();
    proxy.signal("HUP");
    let failed = proxy.wait_for("reload failed");
    assert!(failed.contains("served.pem"), "the log says why: {failed}");
    let after = member(&proxy, dir, "ws-test-client", "elsewhere2", "d").await;
    assert_eq!(
        after.server_cert(),
        cert_der(&dir.join("rotated.cert.pem")),
        "a failed reload keeps the old state"
    );
    b.send_text(event).await;
    assert_eq!(a.recv_text().await, event);
}

#[tokio::test]
async fn sigterm_turns_readyz_503_then_closes_members_with_1001_across_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_bin(dir, "certgen", &["dev"]).success();
    config(dir, "p.toml", "certs/dev/micronets-ws-proxy.pkeycert.pem", "[shutdown]\ndrain_window = \"2s\"\n");
    let mut proxy = ProxyProcess::start(dir, &["--config", "p.toml"], &[]);
    let admin = proxy.admin();
    assert_eq!(admin_request(admin, "GET", "/readyz").await.0, 200);
    let (mut a, mut b) = pair(&proxy, dir).await;

    proxy.signal("TERM");
    within("readyz turns 503", async {
        while admin_request(admin, "GET", "/readyz").await.0 != 503 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (ca, cb) = tokio::join!(a.expect_close(), b.expect_close());
    assert_eq!(ca, (1001, "server shutting down".to_owned()));
    assert_eq!(cb, (1001, "server shutting down".to_owned()));
    assert_eq!(proxy.wait_exit(), Some(0), "{}", proxy.log());
    assert!(proxy.log().contains("closing members across the drain window"), "{}", proxy.log());
}

#[tokio::test]
async fn status_prints_the_rooms_and_the_certificates_about_to_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut proxy = ProxyProcess::start(dir, &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let admin = proxy.admin().to_string();
    let (_a, _b) = pair(&proxy, dir).await;
    let table = run_bin(dir, "ws-proxy", &["status", "--admin", &admin]).success().stdout();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ROOM"), "{table}");
    assert!(lines.iter().any(|l| l.contains("gw/gateway") && l.contains("CN=manager")), "{table}");
    assert!(lines.iter().any(|l| l.contains("gw/gateway") && l.contains("CN=gateway")), "{table}");
    assert_eq!(lines.last(), Some(&"1 rooms, 2 members, 0 messages held"), "{table}");
    // Certificates: within ten years both members' are listed, as connected; within a minute none.
    let expiring =
        run_bin(dir, "ws-proxy", &["status", "--admin", &admin, "--expiring", "3650d"]).success().stdout();
    assert!(expiring.starts_with("SUBJECT"), "{expiring}");
    for subject in ["CN=manager", "CN=gateway"] {
        assert!(
            expiring
                .lines()
                .any(|l| l.contains(subject) && l.contains("gw/gateway") && l.contains("connected")),
            "{expiring}"
        );
    }
    assert!(expiring.ends_with("2 certificates expire within 3650d\n"), "{expiring}");
    let none =
        run_bin(dir, "ws-proxy", &["status", "--admin", &admin, "--expiring", "1m"]).success().stdout();
    assert!(none.ends_with("0 certificates expire within 1m\n"), "{none}");
    run_bin(dir, "ws-proxy", &["status", "--admin", &admin, "--expiring", "soon"])
        .code(64)
        .stderr_has("--expiring");

    let metrics = admin_request(proxy.admin(), "GET", "/metrics").await.1;
    assert_eq!(sample(&metrics, "ws_proxy_members"), 2.0, "{metrics}");
    drop(proxy);
    run_bin(dir, "ws-proxy", &["status", "--admin", &admin]).code(1).stderr_has(&admin);
    std::fs::write(dir.join("off.toml"), "[admin]\nbind = \"\"\n").unwrap();
    run_bin(dir, "ws-proxy", &["status", "--config", "off.toml"]).code(64).stderr_has("admin.bind");
}

#[tokio::test]
async fn a_storm_of_identical_bad_handshakes_is_rate_limited_in_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut proxy = ProxyProcess::start(dir, &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let admin = proxy.admin();
    for _ in 0..40 {
        // Connect and hang up before any TLS: an identical failure each time.
        drop(within("connect", tokio::net::TcpStream::connect(proxy.addr)).await.unwrap());
    }
    within("40 failures counted", async {
        loop {
            let metrics = admin_request(admin, "GET", "/metrics").await.1;
            if sample(&metrics, "ws_proxy_tls_handshake_failures_total{reason=\"eof\"}") >= 40.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The suppressed lines are reported, with their count, once the window ends.
    let logged = proxy.log().lines().filter(|l| l.contains("TLS handshake failed reason")).count();
    assert!(logged <= micronets_proxy::logging::BURST as usize, "{logged} lines\n{}", proxy.log());
    assert!(logged > 0, "{}", proxy.log());
}

#[tokio::test]
async fn the_admin_endpoint_is_never_open_off_loopback_and_status_brings_the_token() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Refused before anything binds: an open admin endpoint on every address.
    run_bin(dir, "ws-proxy", &["--dev", "--bind", "127.0.0.1:0", "--admin-bind", "0.0.0.0:0"])
        .code(64)
        .stderr_has("admin.bind")
        .stderr_has("admin.token_file");
    std::fs::write(dir.join("open.toml"), "[admin]\nbind = \"0.0.0.0:9090\"\n").unwrap();
    run_bin(dir, "ws-proxy", &["check-config", "--config", "open.toml"])
        .code(64)
        .stderr_has("not a loopback address");

    // A token, and client certificates for the managers: TLS, even on loopback.
    run_bin(dir, "certgen", &["dev"]).success();
    std::fs::write(dir.join("admin.token"), "0123456789abcdef-operators\n").unwrap();
    std::fs::set_permissions(dir.join("admin.token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = \"certs/dev/micronets-ws-proxy.pkeycert.pem\"\nclient_ca = \"certs/dev/micronets-ws-root.cert.pem\"\n[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n[[admin.allow]]\ncn = \"manager\"\n";
    std::fs::write(dir.join("p.toml"), config).unwrap();
    let mut proxy = ProxyProcess::start(dir, &["--config", "p.toml", "--admin-bind", "127.0.0.1:0"], &[]);
    let admin = proxy.admin().to_string();
    assert!(proxy.log().contains(&format!("admin endpoint on https://{admin}")), "{}", proxy.log());
    // status reads the token and trusts the proxy's own certificate from the configuration.
    let table =
        run_bin(dir, "ws-proxy", &["status", "--admin", &admin, "--config", "p.toml"]).success().stdout();
    assert!(table.ends_with("0 rooms, 0 members, 0 messages held\n"), "{table}");
    // Without the configuration it has neither: refused.
    run_bin(dir, "ws-proxy", &["status", "--admin", &admin]).code(1).stderr_has(&admin);
    drop(proxy);
}
