//! Hot reload: new handshakes get the new certificate, established connections keep relaying,
//! and a reload that fails changes nothing.

use crate::support::{Pki, cert_der, pair, start_with};

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
