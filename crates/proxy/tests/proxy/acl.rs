//! Authorization: the ACL's decision before the upgrade (403), the peerClass an allowing rule
//! requires at HELLO (1008), and rules changed by a reload (for new connections, and for the
//! members they no longer admit).

use crate::support::{Pki, start, upgrade_request};

/// The Micronets layout: the manager may join any `gw/*` room, each gateway only its own
/// (`gw/<its CN>`), with HELLO peerClass `gw-service`; nothing else is allowed.
const RULES: &str = r#"
[[acl.rules]]
room = "gw/*"
cn = "manager"
allow = true

[[acl.rules]]
room = "gw/{cn}"
peer_class = "gw-service"
allow = true
"#;

#[tokio::test]
async fn each_gateway_joins_only_its_own_room_and_the_manager_any_gateway_room() {
    let pki = Pki::new();
    let proxy = start(&pki, RULES).await;
    let (mut manager, _) = proxy.join("manager", "gw/gw-1", "m").await;

    let mut gateway = proxy.connect("gw-1", "gw/gw-1").await;
    let hello = r#"{"message": {"messageId": 0, "messageType": "CONN:HELLO", "peerClass": "gw-service", "peerId": "g1"}}"#;
    gateway.send_text(hello).await;
    assert_eq!(manager.recv_text().await, hello, "the gateway joined its own room");

    let elsewhere = proxy.raw_request("gw-1", &upgrade_request("gw/gw-2")).await;
    assert!(elsewhere.starts_with("HTTP/1.1 403"), "{elsewhere}");
    assert!(elsewhere.contains("this certificate may not join this room"), "{elsewhere}");
    let unlisted = proxy.raw_request("test-client", &upgrade_request("other")).await;
    assert!(unlisted.starts_with("HTTP/1.1 403"), "default deny: {unlisted}");
    assert_eq!(proxy.metrics.upgrade_refusals(403), 2);

    // Its own room, but a HELLO with another peerClass.
    let mut impostor = proxy.connect("gw-2", "gw/gw-2").await;
    impostor.hello("x").await;
    let (code, reason) = impostor.expect_close().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("peerClass must be \"gw-service\""), "{reason}");

    // The required peerClass, and another one before it: a parser that keeps the first name
    // would read the other, so the HELLO is refused (found by the envelope fuzz target).
    let mut doubled = proxy.connect("gw-2", "gw/gw-2").await;
    doubled
        .send_text(r#"{"message": {"messageType": "CONN:HELLO", "peerClass": "manager", "peerClass": "gw-service"}}"#)
        .await;
    let (code, reason) = doubled.expect_close().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("duplicate field `peerClass`"), "{reason}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_reload_applies_new_rules_to_new_connections_and_closes_the_members_they_refuse() {
    let pki = Pki::new();
    let proxy = start(&pki, RULES).await;
    let (mut manager, _) = proxy.join("manager", "gw/gw-1", "m").await;
    let (mut lab, _) = proxy.join("manager", "gw/lab", "m2").await;

    let config = std::fs::read_to_string(&proxy.file).unwrap();
    let tightened = config.replace("room = \"gw/*\"", "room = \"gw/lab\"");
    std::fs::write(&proxy.file, tightened).unwrap();
    proxy.proxy.reload().unwrap();

    let refused = proxy.raw_request("manager", &upgrade_request("gw/gw-9")).await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    // A member the new rules no longer let into its room is closed; the others stay.
    let (code, reason) = manager.expect_close().await;
    assert_eq!((code, reason.as_str()), (1008, "certificate no longer admitted"));
    lab.send_text(r#"{"message": {"messageId": 5, "messageType": "EVENT:alone", "requiresResponse": true}}"#)
        .await;
    assert_eq!(lab.recv_message().await["statusCode"], 503, "still connected, and answered");
    let mut gateway = proxy.connect("gw-1", "gw/gw-1").await;
    gateway
        .send_text(r#"{"message": {"messageId": 0, "messageType": "CONN:HELLO", "peerClass": "gw-service"}}"#)
        .await;
    gateway
        .send_text(r#"{"message": {"messageId": 6, "messageType": "EVENT:x", "requiresResponse": true}}"#)
        .await;
    assert_eq!(gateway.recv_message().await["statusCode"], 503, "the rules that did not change still admit");

    std::fs::write(&proxy.file, config.replace("room = \"gw/*\"", "room = \"gw/{serial}\"")).unwrap();
    let err = proxy.proxy.reload().unwrap_err().to_string();
    assert!(err.contains("acl.rules") && err.contains("rule 1"), "{err}");
    let still = proxy.raw_request("manager", &upgrade_request("gw/gw-9")).await;
    assert!(still.starts_with("HTTP/1.1 403"), "a failed reload keeps the last good rules: {still}");
    proxy.stop().await;
}
