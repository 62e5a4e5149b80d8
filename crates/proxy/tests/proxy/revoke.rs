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

/// A root CA of its own, beside the dev one: its certificate and an Authority to issue with.
fn second_root(pki: &Pki, name: &str) -> (std::path::PathBuf, Authority) {
    let base = pki.path(name);
    let spec = micronets_certgen::RootSpec {
        org: name.into(),
        common_name: None,
        days: 30,
        key_type: micronets_certgen::KeyType::P256,
    };
    let issued = micronets_certgen::issue_root(&spec).unwrap();
    micronets_certgen::files::write_issued(&base, &issued, false, true).unwrap();
    let cert = micronets_certgen::files::with_suffix(&base, ".cert.pem");
    let authority =
        Authority::load(&cert, &micronets_certgen::files::with_suffix(&base, ".key.pem")).unwrap();
    (cert, authority)
}

fn leaf_of(pki: &Pki, ca: &Authority, name: &str) -> std::path::PathBuf {
    let base = pki.path(name);
    let spec = micronets_certgen::LeafSpec {
        org: "Second".into(),
        common_name: name.into(),
        days: 30,
        key_type: micronets_certgen::KeyType::P256,
        usage: micronets_certgen::Usage::Client,
        dns_names: vec![],
        ip_addresses: vec![],
    };
    micronets_certgen::files::write_issued(&base, &ca.issue_leaf(&spec).unwrap(), true, true).unwrap();
    micronets_certgen::files::with_suffix(&base, ".pkeycert.pem")
}

#[tokio::test]
async fn a_crl_revokes_only_its_own_issuers_certificates() {
    let pki = Pki::new();
    let (second_cert, second) = second_root(&pki, "second-ca");
    let bundle = pki.path("both-roots.pem");
    let roots = [
        std::fs::read_to_string(pki.dev.root_cert()).unwrap(),
        std::fs::read_to_string(&second_cert).unwrap(),
    ];
    std::fs::write(&bundle, roots.concat()).unwrap();
    let device = leaf_of(&pki, &second, "device-2");
    // The dev root's CRL lists the serial of the second CA's device: a different certificate.
    let crl_file = pki.path("root.crl.pem");
    let dev_root = Authority::load(&pki.dev.root_cert(), &pki.dev.file(dev::ROOT, ".key.pem")).unwrap();
    crl::revoke(&dev_root, &crl_file, &crl::serial_of(&device).unwrap(), 30).unwrap();
    let toml = config(&pki, &crl_file).replace(
        &format!("client_ca = {:?}", pki.dev.root_cert().display().to_string()),
        &format!("client_ca = {:?}", bundle.display().to_string()),
    );
    let proxy = start_toml(&pki, &toml).await;
    let (mut manager, _) = proxy.join("manager", "gw/1", "m").await;
    let mut other = proxy.connect_with(&device, "gw/1").await;
    other.hello("second").await;
    assert!(manager.recv_text().await.contains("second"), "admitted: the CRL is not its issuer's");
    revoke(&pki, &crl_file, "long-gone");
    proxy.proxy.reload().unwrap();
    other.send_text(r#"{"message": {"messageId": 1, "messageType": "EVENT:still-here"}}"#).await;
    assert!(manager.recv_text().await.contains("EVENT:still-here"), "a reload does not close it either");
    assert_eq!(proxy.metrics.handshake_failures("revoked"), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_crl_of_a_ca_that_is_not_trusted_is_a_configuration_error_naming_the_file() {
    let pki = Pki::new();
    let (_, stranger) = second_root(&pki, "stranger-ca");
    let crl_file = pki.path("stranger.crl.pem");
    crl::revoke(&stranger, &crl_file, &[1, 2, 3], 30).unwrap();
    let config = micronets_proxy::FileConfig::parse(&config(&pki, &crl_file))
        .unwrap()
        .into_config(&micronets_proxy::Overrides::default())
        .unwrap();
    let error = match micronets_proxy::Proxy::new(config) {
        Ok(_) => panic!("a CRL of an untrusted CA was taken"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("stranger.crl.pem") && error.contains("not a CA of tls.client_ca"), "{error}");
}
