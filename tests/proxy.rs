//! `ws-proxy` as an operator runs it: the real binary, its flags, signals and logs.

use std::path::Path;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::proxy_support::{Client, WAIT, within};
use crate::support::{ProxyProcess, run_bin};

/// A client of the dev PKI under `dir/certs/dev`.
pub(crate) async fn dev_client(proxy: &ProxyProcess, dir: &Path, who: &str, room: &str) -> Client {
    let dev = dir.join("certs/dev");
    let cert = dev.join(format!("micronets-{who}.pkeycert.pem"));
    let path = format!("/micronets/v1/ws-proxy/{room}");
    within("connect", Client::connect(proxy.addr, &dev.join("micronets-ws-root.cert.pem"), &cert, &path))
        .await
        .unwrap()
}

pub(crate) async fn pair(proxy: &ProxyProcess, dir: &Path) -> (Client, Client) {
    let mut a = dev_client(proxy, dir, "manager", "gw/gateway").await;
    let hello_a = a.hello("a").await;
    let mut b = dev_client(proxy, dir, "gateway", "gw/gateway").await;
    let hello_b = b.hello("b").await;
    assert_eq!(b.recv_text().await, hello_a);
    assert_eq!(a.recv_text().await, hello_b);
    (a, b)
}

#[tokio::test]
async fn dev_mode_makes_its_pki_serves_and_drains_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut proxy = ProxyProcess::start(dir, &["--dev", "--bind", "127.0.0.1:0"], &[]);
    assert!(proxy.addr.ip().is_loopback());
    proxy.wait_for("try: ws-client --client-cert certs/dev/micronets-manager.pkeycert.pem");
    for file in
        ["micronets-ws-root.cert.pem", "micronets-ws-proxy.pkeycert.pem", "micronets-gateway.pkeycert.pem"]
    {
        assert!(dir.join("certs/dev").join(file).is_file(), "{file}");
    }
    let (mut a, mut b) = pair(&proxy, dir).await;
    a.send_text(r#"{"message": {"messageId": 1, "messageType": "EVENT:x"}}"#).await;
    assert!(b.recv_text().await.contains("EVENT:x"));

    proxy.signal("TERM");
    let (ca, cb) = tokio::join!(a.expect_close(), b.expect_close());
    assert_eq!(ca, (1001, "server shutting down".to_owned()));
    assert_eq!(cb.0, 1001);
    assert_eq!(proxy.wait_exit(), Some(0), "{}", proxy.log());
    let log = proxy.log();
    assert!(
        log.contains("joined room") && log.contains("room=gw/gateway") && log.contains("CN=manager"),
        "{log}"
    );
    assert!(!log.contains("EVENT:x"), "message bodies are never logged");
}

#[tokio::test]
async fn the_original_flags_and_environment_variables_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_bin(dir, "certgen", &["dev"]).success();
    let dev = dir.join("certs/dev");
    let server = dev.join("micronets-ws-proxy.pkeycert.pem").display().to_string();
    let root = dev.join("micronets-ws-root.cert.pem").display().to_string();
    let proxy = ProxyProcess::start(
        dir,
        &["-sc", &server, "-cac", &root, "-a", "127.0.0.1", "-p", "0", "-sp", "/legacy/"],
        &[],
    );
    let mut client = within(
        "legacy prefix",
        Client::connect(
            proxy.addr,
            &dev.join("micronets-ws-root.cert.pem"),
            &dev.join("micronets-manager.pkeycert.pem"),
            "/legacy/r",
        ),
    )
    .await
    .unwrap();
    client.hello("x").await;
    drop(proxy);

    let env =
        [("MICRONETS_WSPROXY_SERVER_CERT", server.as_str()), ("MICRONETS_WSPROXY_CA_CERT", root.as_str())];
    let proxy = ProxyProcess::start(dir, &["--bind", "127.0.0.1:0", "--log-format", "json"], &env);
    let _c = dev_client(&proxy, dir, "manager", "r").await;
    let line = proxy.log().lines().find(|l| l.contains("listening on")).unwrap().to_owned();
    let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(json["level"], "INFO");
}

#[tokio::test]
async fn usage_and_config_errors_exit_64_and_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_bin(dir, "certgen", &["dev"]).success();
    let good = String::from(
        "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = \"certs/dev/micronets-ws-proxy.pkeycert.pem\"\nclient_ca = \"certs/dev/micronets-ws-root.cert.pem\"\n[rooms]\nmax_peers = 3\n",
    );
    std::fs::write(dir.join("good.toml"), &good).unwrap();
    run_bin(dir, "ws-proxy", &["check-config", "--config", "good.toml"])
        .success()
        .stdout_has("good.toml: OK");

    std::fs::write(dir.join("bad-key.toml"), format!("{good}[limits]\nmax_frame_bytes = 10\n")).unwrap();
    run_bin(dir, "ws-proxy", &["check-config", "--config", "bad-key.toml"])
        .code(64)
        .stderr_has("limits.max_frame_bytes");
    std::fs::write(dir.join("unknown.toml"), format!("{good}[rooms2]\n")).unwrap();
    run_bin(dir, "ws-proxy", &["check-config", "--config", "unknown.toml"]).code(64).stderr_has("rooms2");
    std::fs::write(dir.join("no-cert.toml"), good.replace("micronets-ws-proxy.pkeycert.pem", "missing.pem"))
        .unwrap();
    run_bin(dir, "ws-proxy", &["check-config", "--config", "no-cert.toml"])
        .code(64)
        .stderr_has("missing.pem");
    run_bin(dir, "ws-proxy", &["check-config", "--config", "nope.toml"]).code(64).stderr_has("nope.toml");
    run_bin(dir, "ws-proxy", &["--dev", "--config", "good.toml"]).code(64).stderr_has("cannot be used with");
    run_bin(dir, "ws-proxy", &["--bogus"]).code(64);
    run_bin(dir, "ws-proxy", &["--config", "good.toml", "--bind", "not-an-address"])
        .code(64)
        .stderr_has("listen.bind");
    let busy = ProxyProcess::start(dir, &["--config", "good.toml"], &[]);
    let taken = busy.addr.to_string();
    run_bin(dir, "ws-proxy", &["--config", "good.toml", "--bind", &taken])
        .code(1)
        .stderr_has("cannot listen");
}

/// A peer that never reads while another pushes 200 MB at it: the proxy's memory stays bounded
/// (its queue is bounded in frames and bytes; past slow_consumer_timeout the peer is closed).
#[tokio::test]
async fn memory_stays_bounded_when_a_peer_stops_reading() {
    const TOTAL: usize = 200 << 20;
    const FRAME: usize = 64 << 10;
    /// The stated bound on the proxy's peak RSS, for 200 MB pushed.
    const BOUND_KIB: u64 = 64 << 10;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_bin(dir, "certgen", &["dev"]).success();
    let config = "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = \"certs/dev/micronets-ws-proxy.pkeycert.pem\"\nclient_ca = \"certs/dev/micronets-ws-root.cert.pem\"\n[limits]\nslow_consumer_timeout = \"2s\"\n";
    std::fs::write(dir.join("p.toml"), config).unwrap();
    let proxy = ProxyProcess::start(dir, &["--config", "p.toml"], &[]);
    let (sender, _stalled) = pair(&proxy, dir).await;
    let start_kib = proxy.status_kib("VmRSS:");

    let (mut sink, mut stream) = sender.ws.split();
    // The sender reads what comes back (PEER-LEFT, then 503s once it is alone) so it is not a
    // slow consumer itself.
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let payload = Arc::new("z".repeat(FRAME - 80));
    let push = async {
        for i in 0..TOTAL / FRAME {
            let text = format!(
                r#"{{"message": {{"messageId": {i}, "messageType": "EVENT:bulk", "messageBody": "{payload}"}}}}"#
            );
            sink.send(Message::text(text)).await.unwrap();
        }
    };
    tokio::time::timeout(WAIT * 12, push).await.expect("pushing 200 MB took over a minute");
    let peak_kib = proxy.status_kib("VmHWM:");
    drain.abort();
    eprintln!(
        "proxy RSS: {start_kib} KiB at start, peak {peak_kib} KiB after pushing 200 MB at a peer that never reads"
    );
    assert!(peak_kib < BOUND_KIB, "peak RSS {peak_kib} KiB exceeds {BOUND_KIB} KiB\n{}", proxy.log());
    assert!(proxy.log().contains("slow consumer"), "{}", proxy.log());
}

/// SIGTERM starts a drain; a second signal during it exits at once with 128 + the signal.
/// The drain is kept busy by two peers that both send and neither reads: each one's delivery
/// waits for room in the other's full queue (up to the 60 s slow-consumer timeout).
#[tokio::test]
async fn a_second_signal_cuts_the_drain_short() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_bin(dir, "certgen", &["dev"]).success();
    let config = "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = \"certs/dev/micronets-ws-proxy.pkeycert.pem\"\nclient_ca = \"certs/dev/micronets-ws-root.cert.pem\"\n[limits]\nslow_consumer_timeout = \"60s\"\n[shutdown]\ngrace = \"60s\"\n";
    std::fs::write(dir.join("p.toml"), config).unwrap();
    let mut proxy = ProxyProcess::start(dir, &["--config", "p.toml"], &[]);
    let (mut a, mut b) = pair(&proxy, dir).await;
    let frame =
        format!(r#"{{"message": {{"messageType": "EVENT:fill", "messageBody": "{}"}}}}"#, "q".repeat(60_000));
    // Fill both queues and socket buffers; the last sends block.
    let both = futures_util::future::join(fill(&mut a, &frame), fill(&mut b, &frame));
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), both).await;
    proxy.signal("TERM");
    proxy.wait_for("stop signal received");
    proxy.signal("INT");
    assert_eq!(proxy.wait_exit(), Some(130), "{}", proxy.log());
}

/// Sends `frame` until the caller gives up waiting.
async fn fill(client: &mut Client, frame: &str) {
    loop {
        client.send_text(frame).await;
    }
}

/// TLS 1.2 and 1.3 are served; older versions are refused.
#[test]
fn only_tls_1_2_and_1_3_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let proxy = ProxyProcess::start(dir, &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let connect = proxy.addr.to_string();
    let s_client = |version: &str| {
        let mut args = vec![
            "s_client",
            "-connect",
            &connect,
            version,
            "-CAfile",
            "certs/dev/micronets-ws-root.cert.pem",
        ];
        args.extend([
            "-cert",
            "certs/dev/micronets-manager.cert.pem",
            "-key",
            "certs/dev/micronets-manager.key.pem",
        ]);
        if version == "-tls1_1" {
            args.extend(["-cipher", "DEFAULT@SECLEVEL=0"]);
        }
        crate::support::run_in(dir, Path::new("openssl"), &args)
    };
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = s_client(flag).stdout();
        assert!(
            out.contains(&format!("Protocol  : {name}")) || out.contains(&format!("New, {name},")),
            "{flag}\n{out}"
        );
        assert!(out.contains("Verify return code: 0 (ok)"), "{flag}\n{out}");
    }
    let old = s_client("-tls1_1").stdout();
    assert!(old.contains("no peer certificate available"), "TLS 1.1 must be refused\n{old}");
}

/// `check-access` says which rule decides, with exit 0 for allowed and 1 for denied; a bad
/// rule or room is a usage error.
#[test]
fn check_access_explains_the_deciding_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_bin(dir, "certgen", &["dev"]).success();
    let rules = "[[acl.rules]]\nroom = \"gw/*\"\ncn = \"manager\"\nallow = true\n[[acl.rules]]\nroom = \"gw/{cn}\"\npeer_class = \"gw-service\"\nallow = true\n";
    std::fs::write(dir.join("acl.toml"), rules).unwrap();
    let gateway = "certs/dev/micronets-gateway.pkeycert.pem";
    let check = |cert: &str, room: &str| {
        run_bin(dir, "ws-proxy", &["check-access", "--config", "acl.toml", "--cert", cert, "--room", room])
    };
    check(gateway, "gw/gateway")
        .success()
        .stdout_has("rule 2 (room = \"gw/{cn}\") matches and allows")
        .stdout_has("allowed, if its CONN:HELLO carries peerClass \"gw-service\"");
    check("certs/dev/micronets-manager.pkeycert.pem", "gw/gateway").success().stdout_has("rule 1");
    check(gateway, "gw/other").code(1).stdout_has("denied by default").stdout_has("HTTP 403");
    check(gateway, "gw/../x").code(64).stderr_has("room");
    std::fs::write(dir.join("bad.toml"), "[[acl.rules]]\nroom = \"gw/{serial}\"\nallow = true\n").unwrap();
    run_bin(dir, "ws-proxy", &["check-config", "--config", "bad.toml"])
        .code(64)
        .stderr_has("acl.rules: rule 1: room \"gw/{serial}\": unknown template field");
}
