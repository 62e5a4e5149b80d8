//! Fleet semantics: one live connection per certificate in a room, decided by liveness
//! (`rooms.same_identity`); answers only to those who asked; certificates enforced on every
//! path (a resumed TLS session, a certificate that expires while connected).

use std::time::{Duration, Instant, SystemTime};

use micronets_proxy::Metrics;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::{
    Client, Live, Pki, TestProxy, WAIT, pair, resuming_client, start, upgrade_over, upgrade_request, within,
};

fn same_identity(mode: &str, probe_timeout: &str) -> String {
    format!("[rooms]\nsame_identity = {mode:?}\nreplace_probe_timeout = {probe_timeout:?}\n")
}

/// The manager (plain) and a gateway that keeps reading (so it answers pings) in `gw/1`.
async fn manager_and_live_gateway(proxy: &TestProxy) -> (Client, Live) {
    let (mut manager, _) = proxy.join("manager", "gw/1", "m").await;
    let (gateway, _) = proxy.join("gateway", "gw/1", "g").await;
    assert!(manager.recv_text().await.contains("\"peerId\": \"g\""));
    let mut gateway = Live::new(gateway);
    assert!(
        matches!(gateway.recv().await, tokio_tungstenite::tungstenite::Message::Text(_)),
        "the manager's HELLO"
    );
    (manager, gateway)
}

#[tokio::test]
async fn a_second_live_device_with_one_certificate_is_refused_409_every_time_and_never_displaces_the_first() {
    let pki = Pki::new();
    let proxy = start(&pki, &same_identity("probe", "2s")).await;
    let (mut manager, mut gateway) = manager_and_live_gateway(&proxy).await;
    for attempt in 0..10 {
        let head = proxy.raw_request("gateway", &upgrade_request("gw/1")).await;
        assert!(head.starts_with("HTTP/1.1 409"), "attempt {attempt}: {head}");
        assert!(head.contains("Retry-After: 10\r\n"), "{head}");
        assert!(head.contains("identity already connected"), "{head}");
    }
    assert_eq!(proxy.metrics.identity_conflicts("kept"), 10);
    // The first is still the member: frames flow both ways, and nobody was told it left.
    manager.send_text(r#"{"message": {"messageId": 1, "messageType": "EVENT:still-there"}}"#).await;
    assert!(format!("{:?}", gateway.recv().await).contains("EVENT:still-there"));
    gateway.send_text(r#"{"message": {"messageId": 2, "messageType": "EVENT:yes"}}"#).await;
    assert!(manager.recv_text().await.contains("EVENT:yes"), "no PEER-LEFT came first");
    let (_, rooms) = proxy.admin("GET", "/v1/rooms/gw/1").await;
    let room: Value = serde_json::from_str(&rooms).unwrap();
    let member = room["members"].as_array().unwrap().iter().find(|m| m["peer_id"] == "g").unwrap().clone();
    assert_eq!(member["conflicts_survived"], 10, "{room}");
    assert!(member["address"].as_str().unwrap().starts_with("127.0.0.1:"), "{room}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_member_that_stops_answering_is_replaced_after_the_probe_timeout() {
    let pki = Pki::new();
    let proxy = start(&pki, &same_identity("probe", "300ms")).await;
    let (mut manager, _) = proxy.join("manager", "gw/1", "m").await;
    // Never read again: it cannot answer a ping, like a device whose link died.
    let (mut silent, _) = proxy.join("gateway", "gw/1", "old").await;
    manager.recv_text().await;
    let started = Instant::now();
    let (_new, hello_new) = proxy.join("gateway", "gw/1", "new").await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "the member had its probe time: {took:?}");
    assert!(
        took < Duration::from_millis(300) + Duration::from_secs(2),
        "replaced within the probe timeout: {took:?}"
    );
    let left = manager.recv_message().await;
    assert_eq!(
        (left["messageType"].as_str(), left["reason"].as_str()),
        (Some("CONN:PEER-LEFT"), Some("replaced"))
    );
    assert_eq!(manager.recv_text().await, hello_new);
    assert_eq!(silent.expect_close().await, (1008, "replaced by a newer connection".to_owned()));
    assert_eq!(proxy.metrics.identity_conflicts("replaced"), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn replace_mode_replaces_even_a_live_member_at_once() {
    let pki = Pki::new();
    let proxy = start(&pki, &same_identity("replace", "3s")).await;
    let (mut manager, mut gateway) = manager_and_live_gateway(&proxy).await;
    let started = Instant::now();
    let (_new, hello_new) = proxy.join("gateway", "gw/1", "new").await;
    assert!(started.elapsed() < Duration::from_secs(2), "no probe: {:?}", started.elapsed());
    assert_eq!(manager.recv_message().await["reason"], "replaced");
    assert_eq!(manager.recv_text().await, hello_new);
    match gateway.recv().await {
        tokio_tungstenite::tungstenite::Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1008)
        }
        other => panic!("expected the close frame, got {other:?}"),
    }
    assert_eq!(proxy.metrics.identity_conflicts("replaced"), 1);
    proxy.stop().await;
}

/// What a lone member sent is held for a peer, not handed to the member's own replacement:
/// the reconnected gateway's first frame is the manager's HELLO, and the manager gets the
/// held events after the new connection's HELLO.
#[tokio::test]
async fn what_a_lone_member_sent_stays_held_when_its_reconnect_replaces_it() {
    let pki = Pki::new();
    let proxy = start(&pki, &same_identity("replace", "3s")).await;
    let (mut old, _) = proxy.join("gateway", "gw/1", "old").await;
    let events: Vec<String> = (1..=2)
        .map(|i| format!(r#"{{"message": {{"messageId": {i}, "messageType": "EVENT:n"}}}}"#))
        .collect();
    for event in &events {
        old.send_text(event).await;
    }
    within("the events held", async {
        while proxy.metrics.held.load(std::sync::atomic::Ordering::Relaxed) < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let (mut new, hello_new) = proxy.join("gateway", "gw/1", "new").await;
    assert_eq!(old.expect_close().await.0, 1008);
    let (mut manager, hello_manager) = proxy.join("manager", "gw/1", "m").await;
    assert_eq!(manager.recv_text().await, hello_new);
    for event in &events {
        assert_eq!(&manager.recv_text().await, event);
    }
    assert_eq!(new.recv_text().await, hello_manager, "its own events are not echoed to it");
    proxy.stop().await;
}

#[tokio::test]
async fn refuse_mode_refuses_while_the_member_is_connected_even_a_silent_one() {
    let pki = Pki::new();
    let proxy = start(&pki, &same_identity("refuse", "3s")).await;
    let (mut manager, _) = proxy.join("manager", "gw/1", "m").await;
    let (_silent, _) = proxy.join("gateway", "gw/1", "old").await;
    manager.recv_text().await;
    let head = proxy.raw_request("gateway", &upgrade_request("gw/1")).await;
    assert!(head.starts_with("HTTP/1.1 409") && head.contains("Retry-After: 10\r\n"), "{head}");
    assert_eq!(proxy.metrics.identity_conflicts("refused"), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn a_response_whose_asker_left_is_answered_410_while_a_lone_event_is_still_held() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (mut manager, mut gateway) = pair(&proxy, "gw/1").await;
    manager
        .send_text(r#"{"message": {"messageId": 7, "messageType": "REST:REQUEST", "requiresResponse": true, "method": "GET", "path": "/leases"}}"#)
        .await;
    assert_eq!(gateway.recv_message().await["messageId"], 7);
    manager.close().await;
    assert_eq!(gateway.recv_message().await["messageType"], "CONN:PEER-LEFT");

    let late = r#"{"message": {"messageId": 70, "messageType": "REST:RESPONSE", "inResponseTo": 7, "statusCode": 200}}"#;
    gateway.send_text(late).await;
    let gone = gateway.recv_message().await;
    assert_eq!(gone["messageType"], "CONN:ERROR");
    assert_eq!((gone["statusCode"].as_u64(), gone["inResponseTo"].as_u64()), (Some(410), Some(70)));
    let event = r#"{"message": {"messageId": 71, "messageType": "EVENT:leaseAcquired"}}"#;
    gateway.send_text(event).await;

    let (mut next, _) = proxy.join("manager", "gw/1", "m2").await;
    assert!(next.recv_text().await.contains("CONN:HELLO"), "the gateway's HELLO first");
    assert_eq!(next.recv_text().await, event, "the held event, and not the late response");
    assert_eq!(proxy.metrics.conn_errors(410), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn a_member_is_closed_when_its_certificate_expires_and_its_peers_are_told() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (cert, not_after) = pki.short_lived("expiring-gw", Duration::from_secs(3));
    let (mut manager, _) = proxy.join("manager", "gw/1", "m").await;
    let mut gateway = proxy.connect_with(&cert, "gw/1").await;
    gateway.hello("g").await;
    manager.recv_text().await;
    let (code, reason) = gateway.expect_close().await;
    assert_eq!((code, reason.as_str()), (1008, "certificate expired"));
    assert!(SystemTime::now() >= not_after, "not before its notAfter");
    let left = manager.recv_message().await;
    assert_eq!((left["peerId"].as_str(), left["reason"].as_str()), (Some("g"), Some("certificate expired")));
    assert_eq!(Metrics::get(&proxy.metrics.expiry_warnings), 1, "within tls.expiry_warning: told once");
    proxy.stop().await;
}

#[tokio::test]
async fn a_resumed_session_of_an_expired_certificate_is_refused_like_a_full_handshake() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (cert, not_after) = pki.short_lived("resuming-gw", Duration::from_secs(3));
    let tls13 = resuming_client(&pki, &cert, &[&rustls::version::TLS13]);
    let tls12 = resuming_client(&pki, &cert, &[&rustls::version::TLS12]);
    for config in [&tls13, &tls12] {
        let (_, first) = upgrade_over(&proxy, config).await;
        assert!(first.starts_with("HTTP/1.1 101"), "{first}");
    }
    assert_eq!(Metrics::get(&proxy.metrics.expiry_warnings), 1, "one certificate, told once");
    while SystemTime::now() < not_after + Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (n, config) in [&tls13, &tls12].into_iter().enumerate() {
        let (resumed, answer) = upgrade_over(&proxy, config).await;
        assert!(resumed, "the client resumed its session");
        assert!(!answer.starts_with("HTTP/1.1 101"), "no upgrade for an expired certificate: {answer}");
        assert_eq!(
            proxy.metrics.handshake_failures("expired"),
            n as u64 + 1,
            "counted as a handshake would be"
        );
    }
    // A full handshake with the same certificate meets the same refusal, in TLS.
    let fresh = resuming_client(&pki, &cert, &[&rustls::version::TLS13]);
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let connector = TlsConnector::from(fresh);
    if let Ok(mut tls) = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await {
        // TLS 1.3: the verdict on the client's certificate arrives after the client is done.
        let mut byte = [0u8; 1];
        assert!(!matches!(within("alert", tls.read(&mut byte)).await, Ok(1)), "refused");
    }
    let deadline = Instant::now() + WAIT;
    while proxy.metrics.handshake_failures("expired") < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.metrics.handshake_failures("expired"), 3);
    proxy.stop().await;
}
