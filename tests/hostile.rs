//! Hostile peers, all at once, while an honest room streams: half-open and garbage
//! connections, a bad request, broken, oversized and truncated frames, invalid UTF-8, JSON nested
//! a hundred thousand deep, a ping flood. The proxy answers each as the protocol says, the
//! honest room gets every message in order, memory stays bounded, and the proxy serves new
//! rooms afterwards.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::proxy::{dev_client, pair};
use crate::proxy_support::{Client, admin_request, sample, tls_connect, within};
use crate::support::{ProxyProcess, run_bin};

/// Messages the honest room relays while the attacks go on.
const HONEST: usize = 2_000;
/// Connections that never start TLS.
const HALF_OPEN: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_rooms_keep_every_message_while_hostile_peers_attack() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_bin(dir, "certgen", &["dev"]).success();
    let config = "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = \"certs/dev/micronets-ws-proxy.pkeycert.pem\"\nclient_ca = \"certs/dev/micronets-ws-root.cert.pem\"\nhandshake_timeout = \"2s\"\n[limits]\nmax_connections = 15000\n";
    std::fs::write(dir.join("p.toml"), config).unwrap();
    let proxy = ProxyProcess::start(dir, &["--config", "p.toml"], &[]);
    let (mut a, mut b) = pair(&proxy, dir).await;

    let sender = async move {
        for i in 0..HONEST {
            a.send_text(&format!(r#"{{"message": {{"messageId": {i}, "messageType": "EVENT:honest"}}}}"#))
                .await;
        }
        a
    };
    let receiver = async move {
        for i in 0..HONEST {
            let text = b.recv_text().await;
            assert!(text.contains(&format!("\"messageId\": {i},")), "message {i} out of order: {text}");
        }
        b
    };
    let honest = tokio::spawn(async move { futures_util::future::join(sender, receiver).await });

    let half_open = half_open_connections(&proxy).await;
    attack(&proxy, dir).await;

    let (mut a, mut b) = within("the honest room finishes", honest).await.unwrap();
    a.send_text(r#"{"message": {"messageId": "last", "messageType": "EVENT:honest"}}"#).await;
    assert!(b.recv_text().await.contains("\"last\""));
    drop(half_open);

    // Still serving: a new room relays.
    let mut c = dev_client(&proxy, dir, "ws-test-client", "after/attack").await;
    c.hello("c").await;
    let mut d = dev_client(&proxy, dir, "gateway", "after/attack").await;
    d.hello("d").await;
    assert!(c.recv_text().await.contains("CONN:HELLO"));
    let peak_kib = proxy.status_kib("VmHWM:");
    assert!(peak_kib < 256 * 1024, "peak RSS {peak_kib} KiB\n{}", proxy.log());
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}

/// TCP connections that never send a byte, held until dropped.
async fn half_open_connections(proxy: &ProxyProcess) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::with_capacity(HALF_OPEN);
    for _ in 0..HALF_OPEN {
        held.push(within("half-open connect", tokio::net::TcpStream::connect(proxy.addr)).await.unwrap());
    }
    held
}

/// Every other attack, each checked for the proxy's answer.
async fn attack(proxy: &ProxyProcess, dir: &Path) {
    let addr = proxy.addr;
    let ca = dir.join("certs/dev/micronets-ws-root.cert.pem");
    let cert = dir.join("certs/dev/micronets-ws-test-client.pkeycert.pem");

    // Garbage instead of a TLS ClientHello: the connection is dropped.
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff].repeat(800)).await.unwrap();
    let mut sink = Vec::new();
    let _ = within("garbage dropped", garbage.read_to_end(&mut sink)).await;

    // Garbage instead of the HTTP request, after a valid handshake: 400.
    let mut tls = within("tls", tls_connect(addr, &ca, Some(&cert))).await.unwrap();
    tls.write_all(b"\x00\xffNOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    let _ = within("400", tls.read_to_end(&mut response)).await;
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 400"));

    // A frame header announcing 2^40 bytes: 1009 at once, nothing reserved.
    let mut huge = dev_client(proxy, dir, "ws-test-client", "attack/huge").await;
    huge.hello("huge").await;
    let header = [0x82, 0xFF, 0, 0, 1, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    within("raw write", huge.ws.get_mut().write_all(&header)).await.unwrap();
    assert_eq!(huge.expect_close().await.0, 1009);

    // A truncated frame, then the connection ends.
    let mut cut = dev_client(proxy, dir, "ws-test-client", "attack/cut").await;
    cut.hello("cut").await;
    within("raw write", cut.ws.get_mut().write_all(&[0x81, 0xFE, 0x03, 0xE8, 1, 2, 3, 4, b'x']))
        .await
        .unwrap();
    drop(cut);

    // Invalid UTF-8 in a text frame: 1007.
    let mut bad_text = dev_client(proxy, dir, "ws-test-client", "attack/utf8").await;
    bad_text.hello("utf8").await;
    bad_text
        .send(Message::Frame(Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true)))
        .await;
    assert_eq!(bad_text.expect_close().await.0, 1007);

    // JSON nested 100,000 deep in the body: read without recursion (the body is skipped, not
    // built), so it is routed like any other message: alone, and asking for a response, 503.
    let mut nested = dev_client(proxy, dir, "ws-test-client", "attack/nested").await;
    nested.hello("nested").await;
    let deep = format!(
        r#"{{"message": {{"messageId": 9, "messageType": "EVENT:deep", "requiresResponse": true, "messageBody": {}{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    nested.send_text(&deep).await;
    let error = nested.recv_message().await;
    assert_eq!(
        (error["statusCode"].as_u64(), error["inResponseTo"].as_u64()),
        (Some(503), Some(9)),
        "{error}"
    );
    nested
        .send_text(r#"{"message": {"messageId": 10, "messageType": "EVENT:x", "requiresResponse": true}}"#)
        .await;
    assert_eq!(nested.recv_message().await["statusCode"], 503, "still served");

    // A ping flood from a peer that never reads: only the latest pong is kept.
    let mut flood = dev_client(proxy, dir, "ws-test-client", "attack/pings").await;
    flood.hello("pings").await;
    for _ in 0..20_000 {
        flood.send(Message::Ping(vec![7u8; 125].into())).await;
    }
    drop(flood);
}

/// The test PKI's proxy configuration in `dir`, with `extra` TOML after it.
fn proxy_config(dir: &Path, extra: &str) -> &'static str {
    let config = format!(
        "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = \"certs/dev/micronets-ws-proxy.pkeycert.pem\"\nclient_ca = \"certs/dev/micronets-ws-root.cert.pem\"\n{extra}"
    );
    std::fs::write(dir.join("p.toml"), config).unwrap();
    "p.toml"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_start_huge_messages_before_their_hello_are_closed_holding_little() {
    const PENDING: usize = 100;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_bin(dir, "certgen", &["dev"]).success();
    let proxy = ProxyProcess::start(dir, &["--config", proxy_config(dir, "")], &[]);
    let before_kib = proxy.status_kib("VmRSS:");
    let mut pending = Vec::with_capacity(PENDING);
    for i in 0..PENDING {
        pending.push(dev_client(&proxy, dir, "ws-test-client", &format!("pending/{i}")).await);
    }
    // Each starts a 1 MB text message in 1 KiB fragments and never says HELLO.
    let chunk = vec![b'x'; 1024];
    for client in &mut pending {
        for n in 0..1024 {
            let opcode = if n == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
            let frame = Frame::message(chunk.clone(), opcode, false);
            if within("fragment", futures_util::SinkExt::send(&mut client.ws, Message::Frame(frame)))
                .await
                .is_err()
            {
                break;
            }
        }
    }
    for client in &mut pending {
        let (code, reason) = client.expect_close().await;
        assert_eq!((code, reason.as_str()), (1008, "more than the 4096 allowed before CONN:HELLO"));
    }
    let grown_kib = proxy.status_kib("VmHWM:").saturating_sub(before_kib);
    assert!(grown_kib < 16 * 1024, "{PENDING} pending connections grew the proxy by {grown_kib} KiB");
    let metrics = admin_request(proxy_admin(&proxy), "GET", "/metrics").await.1;
    assert_eq!(
        sample(&metrics, "ws_proxy_connections_total{outcome=\"too_much_before_hello\"}"),
        PENDING as f64,
        "{metrics}"
    );
    assert!(proxy.log().contains("more than the 4096 allowed before CONN:HELLO"), "logged");
    let (mut a, mut b) = pair(&proxy, dir).await;
    a.send_text(r#"{"message": {"messageId": 1, "messageType": "EVENT:after"}}"#).await;
    assert!(b.recv_text().await.contains("EVENT:after"), "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_name_with_a_newline_and_an_escape_cannot_forge_a_log_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_bin(dir, "certgen", &["dev"]).success();
    let dev = micronets_certgen::dev::DevPki::new(dir.join("certs/dev"));
    let root = micronets_certgen::Authority::load(
        &dev.root_cert(),
        &dev.file(micronets_certgen::dev::ROOT, ".key.pem"),
    )
    .unwrap();
    let cn = "evil\n2026-12-06T00:00:00.000000Z  INFO ws_proxy: forged line\u{1b}[2J\u{1b}[31mred";
    let spec = micronets_certgen::LeafSpec {
        org: "Micronets".into(),
        common_name: cn.into(),
        days: 10,
        key_type: micronets_certgen::KeyType::P256,
        usage: micronets_certgen::Usage::Client,
        dns_names: vec![],
        ip_addresses: vec![],
    };
    let base = dir.join("evil");
    micronets_certgen::files::write_issued(&base, &root.issue_leaf(&spec).unwrap(), true, true).unwrap();
    let mut proxy = ProxyProcess::start(dir, &["--config", proxy_config(dir, "")], &[]);
    let path = "/micronets/v1/ws-proxy/gw/evil";
    let ca = dir.join("certs/dev/micronets-ws-root.cert.pem");
    let mut evil = within("connect", Client::connect(proxy.addr, &ca, &dir.join("evil.pkeycert.pem"), path))
        .await
        .unwrap();
    evil.hello("evil").await;
    evil.send_text(r#"{"message": {"messageId": 1, "messageType": "EVENT:x", "requiresResponse": true}}"#)
        .await;
    assert_eq!(evil.recv_message().await["statusCode"], 503);
    drop(evil);
    let log = proxy.wait_for("expires soon");
    assert!(log.contains("evil\\n2026"), "the name is in the line, escaped: {log}");
    let log = proxy.log();
    assert!(!log.contains('\u{1b}'), "no escape character reached the log:\n{log}");
    for line in log.lines() {
        assert!(!line.trim_start().starts_with("2026-12-06T00:00:00.000000Z"), "a forged line: {line}");
        assert!(
            !line.contains("forged line") || line.contains("evil\\n"),
            "the forged text stands alone: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_below_its_open_file_limit_says_so_refuses_past_it_and_stays_responsive() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_bin(dir, "certgen", &["dev"]).success();
    let config = proxy_config(dir, "handshake_timeout = \"3s\"\n");
    let mut command = std::process::Command::new("sh");
    command.arg("-c").arg("ulimit -n 300 && exec \"$0\" \"$@\"").arg(crate::support::bin("ws-proxy")).args([
        "--config",
        config,
        "--admin-bind",
        "127.0.0.1:0",
    ]);
    let mut proxy = ProxyProcess::spawn_command("ws-proxy", command, dir, "listening on ");
    let log = proxy.log();
    let warning =
        log.lines().find(|l| l.contains("open-file limit is below")).unwrap_or_else(|| panic!("{log}"));
    assert!(warning.contains("open_file_limit=300") && warning.contains("serving_at_most="), "{warning}");
    // A reload of the same file changes nothing that needs a restart: the lower limit is the
    // file's limit lowered the same way.
    proxy.signal("HUP");
    proxy.wait_for("reloaded:");
    assert!(!proxy.log().contains("they apply at the next restart"), "{}", proxy.log());
    let admin = proxy.admin();
    // Past the limit: more connections than it serves, none sending a byte.
    let mut held = Vec::new();
    for _ in 0..250 {
        held.push(within("connect", tokio::net::TcpStream::connect(proxy.addr)).await.unwrap());
    }
    let started = std::time::Instant::now();
    assert_eq!(admin_request(admin, "GET", "/healthz").await.0, 200);
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "healthz took {:?}", started.elapsed());
    let metrics = admin_request(admin, "GET", "/metrics").await.1;
    let refused = sample(&metrics, "ws_proxy_connections_total{outcome=\"refused\"}");
    assert!(refused >= 50.0, "the connections past the limit are refused at once: {refused}\n{metrics}");
    assert!(!proxy.log().contains("accept failed"), "{}", proxy.log());
    drop(held);
    let (mut a, mut b) = pair(&proxy, dir).await;
    a.send_text(r#"{"message": {"messageId": 1, "messageType": "EVENT:after"}}"#).await;
    assert!(b.recv_text().await.contains("EVENT:after"), "serving again");
}

fn proxy_admin(proxy: &ProxyProcess) -> std::net::SocketAddr {
    let line =
        proxy.log().lines().find(|l| l.contains("admin endpoint on http://")).map(str::to_owned).unwrap();
    line.split("http://").nth(1).unwrap().trim().parse().unwrap()
}
