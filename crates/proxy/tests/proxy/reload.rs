//! Hot reload: new handshakes get the new certificate, established connections keep relaying
//! while their certificates are still admitted, and a reload that fails changes nothing.

use crate::support::{Client, PREFIX, Pki, cert_der, pair, start_toml, start_with, within};

#[tokio::test]
async fn a_reload_serves_the_new_certificate_while_a_room_keeps_relaying() {
    let pki = Pki::new();
    let served = pki.path("served.pkeycert.pem");
    std::fs::copy(pki.server("first-server"), &served).unwrap();
    let proxy = start_with(&pki, &served, "").await;
    let (mut a, mut b) = pair(&proxy, "gw/1").await;
    assert_eq!(a.server_cert(), cert_der(&served));

    let rotated = pki.server("second-server");
    std::fs::copy(&rotated, &served).unwrap();
    proxy.proxy.reload().unwrap();

    let fresh = proxy.connect("test-client", "other").await;
    assert_eq!(fresh.server_cert(), cert_der(&rotated), "a new connection gets the new certificate");
    for i in 0..3 {
        let event = format!(r#"{{"message": {{"messageId": {i}, "messageType": "EVENT:after-reload"}}}}"#);
        a.send_text(&event).await;
        assert_eq!(b.recv_text().await, event);
        b.send_text(&event).await;
        assert_eq!(a.recv_text().await, event);
    }

    std::fs::write(&served, "not a certificate").unwrap();
    let err = proxy.proxy.reload().unwrap_err().to_string();
    assert!(err.contains("served.pkeycert.pem"), "{err}");
    let after_failure = proxy.connect("test-client", "other").await;
    assert_eq!(after_failure.server_cert(), cert_der(&rotated), "a failed reload keeps the last good state");
    a.send_text(r#"{"message": {"messageType": "EVENT:still"}}"#).await;
    assert!(b.recv_text().await.contains("EVENT:still"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_reload_takes_a_new_client_ca_and_closes_the_members_of_the_old_one() {
    let pki = Pki::new();
    let other = Pki::new();
    let clients_ca = pki.path("clients-ca.pem");
    std::fs::copy(pki.dev.root_cert(), &clients_ca).unwrap();
    let toml = format!(
        "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = {:?}\nclient_ca = {:?}\n[shutdown]\ndrain_window = \"100ms\"\n",
        pki.server("server").display().to_string(),
        clients_ca.display().to_string(),
    );
    let proxy = start_toml(&pki, &toml).await;
    let (mut a, mut b) = pair(&proxy, "gw/1").await;

    std::fs::copy(other.dev.root_cert(), &clients_ca).unwrap();
    proxy.proxy.reload().unwrap();

    let path = format!("{PREFIX}other");
    let server_ca = pki.dev.root_cert();
    let newcomer =
        within("new CA", Client::connect(proxy.addr, &server_ca, &other.client("manager"), &path)).await;
    assert!(newcomer.is_ok(), "a client of the new CA is accepted: {:?}", newcomer.err());
    let old = within("old CA", Client::connect(proxy.addr, &server_ca, &pki.client("gateway"), &path)).await;
    assert!(old.is_err(), "a client of the old CA is refused");
    for member in [&mut a, &mut b] {
        let (code, reason) = member.expect_close().await;
        assert_eq!(
            (code, reason.as_str()),
            (1008, "certificate no longer admitted"),
            "its CA is no longer trusted"
        );
    }
    proxy.stop().await;
}
