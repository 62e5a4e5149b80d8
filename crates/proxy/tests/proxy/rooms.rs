//! Room membership: HELLO exchange, pending connections, replacement, leaving, holding.

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Pki, pair, start, upgrade_request, within};

#[tokio::test]
async fn a_pair_exchanges_hellos_verbatim() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (mut a, hello_a) = proxy.join("manager", "gw/mock-gw", "a").await;
    let (mut b, hello_b) = proxy.join("gateway", "gw/mock-gw", "b").await;
    assert_eq!(b.recv_text().await, hello_a, "the newcomer gets the member's HELLO, byte for byte");
    assert_eq!(a.recv_text().await, hello_b, "the member gets the newcomer's HELLO");
    proxy.stop().await;
}

#[tokio::test]
async fn three_peers_receive_hellos_in_join_order() {
    let pki = Pki::new();
    let proxy = start(&pki, "[rooms]\nmax_peers = 3\n").await;
    let (mut a, hello_a) = proxy.join("manager", "group", "a").await;
    let (mut b, hello_b) = proxy.join("gateway", "group", "b").await;
    assert_eq!(b.recv_text().await, hello_a);
    assert_eq!(a.recv_text().await, hello_b);
    let (mut c, hello_c) = proxy.join("test-client", "group", "c").await;
    assert_eq!(c.recv_text().await, hello_a);
    assert_eq!(c.recv_text().await, hello_b);
    assert_eq!(a.recv_text().await, hello_c);
    assert_eq!(b.recv_text().await, hello_c);
    // A broadcast reaches both others, never the sender.
    a.send_text(r#"{"message": {"messageId": 1, "messageType": "EVENT:x"}}"#).await;
    assert!(b.recv_text().await.contains("EVENT:x"));
    assert!(c.recv_text().await.contains("EVENT:x"));
    // A fourth certificate finds the room full.
    let refused = proxy.raw_request(
        "d4",
        "GET /micronets/v1/ws-proxy/group HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert!(refused.await.starts_with("HTTP/1.1 409"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_pending_connection_receives_nothing() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    // The squatter connects first and stays silent.
    let mut squatter = proxy.connect("test-client", "victim-room").await;
    let (mut victim, hello_v) = proxy.join("gateway", "victim-room", "v").await;
    victim.send_text(r#"{"message": {"messageId": 1, "messageType": "EVENT:secret"}}"#).await;
    // Only once it says HELLO does the squatter become a member: its first frame is the
    // victim's HELLO, then what was held for it; nothing arrived before.
    squatter.hello("s").await;
    assert_eq!(squatter.recv_text().await, hello_v);
    assert!(squatter.recv_text().await.contains("EVENT:secret"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_same_certificate_newcomer_replaces_the_old_member() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (mut manager, _) = proxy.join("manager", "gw/1", "m").await;
    let (mut old, _) = proxy.join("gateway", "gw/1", "old").await;
    manager.recv_text().await;
    old.recv_text().await;
    // The room is full, but the same certificate is let in and replaces its old connection.
    let (mut new, hello_new) = proxy.join("gateway", "gw/1", "new").await;
    assert_eq!(old.expect_close().await, (1008, "replaced by a newer connection".to_owned()));
    let left = manager.recv_message().await;
    assert_eq!(left["messageType"], "CONN:PEER-LEFT");
    assert_eq!(left["peerId"], "old");
    assert_eq!(left["reason"], "replaced");
    assert!(left["messageId"].is_i64());
    assert_eq!(left["requiresResponse"], false);
    assert_eq!(manager.recv_text().await, hello_new);
    assert!(new.recv_text().await.contains("\"peerId\": \"m\""));
    proxy.stop().await;
}

#[tokio::test]
async fn a_leaving_member_is_announced_and_the_other_stays() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (mut a, b) = pair(&proxy, "r").await;
    b.close().await;
    let left = a.recv_message().await;
    assert_eq!(left["messageType"], "CONN:PEER-LEFT");
    assert_eq!(left["peerClass"], "test");
    assert_eq!(left["peerId"], "b");
    assert_eq!(left["reason"], "closed");
    // Still connected: a new peer joins and the exchange works again.
    let (mut c, hello_c) = proxy.join("test-client", "r", "c").await;
    assert_eq!(a.recv_text().await, hello_c);
    assert!(c.recv_text().await.contains("\"peerId\": \"a\""));
    proxy.stop().await;
}

#[tokio::test]
async fn no_hello_in_time_closes_with_1008() {
    let pki = Pki::new();
    let proxy = start(&pki, "[rooms]\nhello_timeout = \"200ms\"\n").await;
    let mut silent = proxy.connect("manager", "r").await;
    assert_eq!(silent.expect_close().await, (1008, "no CONN:HELLO received in time".to_owned()));
    proxy.stop().await;
}

#[tokio::test]
async fn a_first_frame_that_is_not_a_hello_closes_with_1008_and_says_why() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let cases = [
        ("not json", "invalid CONN:HELLO: invalid JSON"),
        (r#"{"message": {"messageType": "EVENT:x"}}"#, "expected CONN:HELLO first, got EVENT:x"),
        (r#"{"message": {"messageType": "CONN:HELLO", "messageId": 1.5}}"#, "messageId must be a string or"),
        (r#"{"message": {"messageType": "CONN:HELLO", "peerId": 7}}"#, "peerId must be a string"),
    ];
    for (frame, reason) in cases {
        let mut client = proxy.connect("manager", "r").await;
        client.send_text(frame).await;
        let (code, text) = client.expect_close().await;
        assert_eq!(code, 1008, "{frame}");
        assert!(text.contains(reason), "{frame}: {text}");
    }
    // A HELLO in a binary frame is accepted, as by the original.
    let mut binary = proxy.connect("manager", "bin").await;
    binary
        .send(Message::binary(
            br#"{"message": {"messageId": 0, "messageType": "CONN:HELLO", "peerId": "b"}}"#.to_vec(),
        ))
        .await;
    let (mut other, _) = proxy.join("gateway", "bin", "o").await;
    assert!(matches!(other.recv().await, Message::Binary(b) if b.starts_with(b"{\"message\"")));
    proxy.stop().await;
}

#[tokio::test]
async fn a_pending_connection_finding_the_room_full_at_hello_gets_1008() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let mut late = proxy.connect("test-client", "r").await;
    let (_a, _) = proxy.join("manager", "r", "a").await;
    let (_b, _) = proxy.join("gateway", "r", "b").await;
    late.hello("late").await;
    assert_eq!(late.expect_close().await, (1008, "room full".to_owned()));
    proxy.stop().await;
}

#[tokio::test]
async fn alone_a_request_needing_a_response_gets_503_at_once() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (mut a, _) = proxy.join("manager", "r", "a").await;
    a.send_text(r#"{"message": {"messageId": 7, "messageType": "REST:REQUEST", "requiresResponse": true, "method": "GET", "path": "/x"}}"#).await;
    let response = a.recv_message().await;
    assert_eq!(response["messageType"], "REST:RESPONSE");
    assert_eq!(response["statusCode"], 503);
    assert_eq!(response["inResponseTo"], 7);
    assert!(response["messageId"].is_i64());
    a.send_text(r#"{"message": {"messageId": "e1", "messageType": "EVENT:ping", "requiresResponse": true}}"#)
        .await;
    let error = a.recv_message().await;
    assert_eq!(error["messageType"], "CONN:ERROR");
    assert_eq!(error["statusCode"], 503);
    assert_eq!(error["inResponseTo"], "e1");
    proxy.stop().await;
}

#[tokio::test]
async fn held_messages_reach_the_next_member_in_order() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (mut a, hello_a) = proxy.join("manager", "r", "a").await;
    let frames: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"message": {{"messageId": {i}, "messageType": "EVENT:n"}}}}"#))
        .collect();
    for frame in &frames {
        a.send_text(frame).await;
    }
    a.send(Message::binary(vec![0u8, 159, 146, 150])).await;
    let (mut b, _) = proxy.join("gateway", "r", "b").await;
    assert_eq!(b.recv_text().await, hello_a);
    for frame in &frames {
        assert_eq!(&b.recv_text().await, frame);
    }
    assert_eq!(b.recv().await, Message::binary(vec![0u8, 159, 146, 150]));
    a.recv_text().await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_full_hold_buffer_refuses_with_conn_error() {
    let pki = Pki::new();
    let proxy = start(&pki, "[rooms]\nhold_max_messages = 2\n").await;
    let (mut a, _) = proxy.join("manager", "r", "a").await;
    for i in 0..3 {
        a.send_text(&format!(r#"{{"message": {{"messageId": {i}, "messageType": "EVENT:n"}}}}"#)).await;
    }
    let error = a.recv_message().await;
    assert_eq!(error["messageType"], "CONN:ERROR");
    assert_eq!(error["statusCode"], 503);
    assert_eq!(error["inResponseTo"], 2, "the third message is the one refused");
    let (mut b, _) = proxy.join("gateway", "r", "b").await;
    b.recv_text().await;
    let first: Value = serde_json::from_str(&b.recv_text().await).unwrap();
    assert_eq!(first["message"]["messageId"], 0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_held_message_that_expires_is_reported_to_its_sender() {
    let pki = Pki::new();
    let proxy = start(&pki, "[rooms]\nhold_max_age = \"200ms\"\n").await;
    let (mut a, _) = proxy.join("manager", "r", "a").await;
    a.send_text(r#"{"message": {"messageId": "late-1", "messageType": "EVENT:n"}}"#).await;
    let error = a.recv_message().await;
    assert_eq!(error["messageType"], "CONN:ERROR");
    assert_eq!(error["statusCode"], 503);
    assert_eq!(error["inResponseTo"], "late-1");
    let (mut b, hello_b) = proxy.join("gateway", "r", "b").await;
    assert_eq!(a.recv_text().await, hello_b, "the expired message is not delivered later");
    b.recv_text().await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_newcomer_that_would_open_a_room_past_max_rooms_is_refused_with_503() {
    let pki = Pki::new();
    let proxy = start(&pki, "[limits]\nmax_rooms = 1\n").await;
    let (mut first, _) = proxy.join("manager", "one", "m").await;
    let refused = proxy.raw_request("gateway", &upgrade_request("two")).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("too many rooms"), "{refused}");
    let (_second, hello) = proxy.join("gateway", "one", "g").await;
    assert_eq!(first.recv_text().await, hello, "an existing room still takes members");
    proxy.stop().await;
}

#[tokio::test]
async fn a_hello_over_max_hello_bytes_is_closed_with_1008() {
    let pki = Pki::new();
    let proxy = start(&pki, "[limits]\nmax_hello_bytes = 256\n").await;
    let mut client = proxy.connect("manager", "gw/1").await;
    let long_id = "x".repeat(300);
    client.hello(&long_id).await;
    let (code, reason) = client.expect_close().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("more than the 256 allowed"), "{reason}");
    proxy.stop().await;
}

#[tokio::test]
async fn hellos_that_would_open_rooms_past_max_rooms_are_closed_with_1013() {
    let pki = Pki::new();
    let proxy = start(&pki, "[limits]\nmax_rooms = 1\n").await;
    // Both pass the upgrade's check while no room exists; the second HELLO finds one.
    let mut first = proxy.connect("manager", "one").await;
    let mut second = proxy.connect("gateway", "two").await;
    first.hello("m").await;
    within("first joined", async {
        while proxy.admin("GET", "/v1/rooms").await.1 == "[]" {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    second.hello("g").await;
    assert_eq!(second.expect_close().await, (1013, "too many rooms: try again later".to_owned()));
    proxy.stop().await;
}
