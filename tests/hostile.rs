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
use crate::proxy_support::{tls_connect, within};
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
