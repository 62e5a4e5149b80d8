//! Revocation: a certificate on a configured CRL fails the handshake, and a reload that brings
//! a CRL listing a member's certificate closes that member with 1008.

use micronets_certgen::{Authority, crl, dev};

use crate::support::{Client, PREFIX, Pki, pair, start_toml, within};

fn revoke(pki: &Pki, crl_file: &std::path::Path, identity: &str) {
    let root = Authority::load(&pki.dev.root_cert(), &pki.dev.file(dev::ROOT, ".key.pem")).unwrap();
    let serial = crl::serial_of(&pki.client(identity)).unwrap();
    crl::revoke(&root, crl_file, &serial, 30).unwrap();
}

fn config(pki: &Pki, crl_file: &std::path::Path) -> String {
    format!(
        "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = {:?}\nclient_ca = {:?}\ncrl_files = [{:?}]\n[shutdown]\ndrain_window = \"100ms\"\n",
        pki.server("server").display().to_string(),
        pki.dev.root_cert().display().to_string(),
        crl_file.display().to_string(),
    )
}

#[tokio::test]
async fn a_revoked_certificate_fails_the_handshake() {
    let pki = Pki::new();
    let crl_file = pki.path("root.crl.pem");
    revoke(&pki, &crl_file, "stolen");
    let proxy = start_toml(&pki, &config(&pki, &crl_file)).await;
    let path = format!("{PREFIX}gw/1");
    let refused =
        within("revoked", Client::connect(proxy.addr, &pki.dev.root_cert(), &pki.client("stolen"), &path))
            .await;
    assert!(refused.is_err(), "a revoked certificate gets no WebSocket");
    within("counted", async {
        while proxy.metrics.handshake_failures("revoked") == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let (_a, _b) = pair(&proxy, "gw/1").await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_reload_with_a_new_crl_closes_the_revoked_member_with_1008() {
    let pki = Pki::new();
    let crl_file = pki.path("root.crl.pem");
    revoke(&pki, &crl_file, "long-gone");
    let proxy = start_toml(&pki, &config(&pki, &crl_file)).await;
    let (mut manager, _) = proxy.join("manager", "gw/1", "m").await;
    let (mut gateway, _) = proxy.join("gateway", "gw/1", "g").await;
    assert!(manager.recv_text().await.contains("CONN:HELLO"));

    revoke(&pki, &crl_file, "gateway");
    proxy.proxy.reload().unwrap();
    let (code, reason) = gateway.expect_close().await;
    assert_eq!((code, reason.as_str()), (1008, "certificate revoked"));
    let left = manager.recv_message().await;
    assert_eq!(left["messageType"], "CONN:PEER-LEFT", "{left}");
    let path = format!("{PREFIX}gw/1");
    let again =
        within("again", Client::connect(proxy.addr, &pki.dev.root_cert(), &pki.client("gateway"), &path))
            .await;
    assert!(again.is_err(), "nor can it come back");
    proxy.stop().await;
}

#[tokio::test]
async fn a_connection_waiting_for_its_hello_when_its_certificate_is_revoked_cannot_join() {
    let pki = Pki::new();
    let crl_file = pki.path("root.crl.pem");
    revoke(&pki, &crl_file, "long-gone");
    let proxy = start_toml(&pki, &config(&pki, &crl_file)).await;
    let mut waiting = proxy.connect("gateway", "gw/1").await;
    revoke(&pki, &crl_file, "gateway");
    proxy.proxy.reload().unwrap();
    waiting.hello("g").await;
    assert_eq!(waiting.expect_close().await, (1008, "certificate revoked".to_owned()));
    proxy.stop().await;
}
