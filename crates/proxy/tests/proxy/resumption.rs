//! TLS session resumption: a reconnect resumes with a session ticket (TLS 1.3) or a TLS 1.2
//! ticket; the ticket keys outlive a reload, and a restart when they come from
//! `tls.ticket_key_file`; a new CRL voids the sessions made before it, so a revoked certificate
//! meets a full handshake and its refusal; `tls.resumption = false` turns it off.

use std::os::unix::fs::PermissionsExt;

use micronets_certgen::{Authority, crl, dev};
use micronets_proxy::Metrics;

use crate::support::{Pki, resuming_client, start, start_toml, upgrade_over};

fn ticket_key(pki: &Pki) -> std::path::PathBuf {
    let path = pki.path("ticket.key");
    std::fs::write(&path, [0x5a; 48]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[tokio::test]
async fn a_reconnect_resumes_its_session_in_tls13_and_tls12() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let cert = pki.client("gateway");
    for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
        let config = resuming_client(&pki, &cert, versions);
        let (resumed, answer) = upgrade_over(&proxy, &config).await;
        assert!(!resumed && answer.starts_with("HTTP/1.1 101"), "{answer}");
        let (resumed, answer) = upgrade_over(&proxy, &config).await;
        assert!(resumed, "the second connection resumes: {versions:?}");
        assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    }
    assert_eq!(Metrics::get(&proxy.metrics.handshakes_full), 2);
    assert_eq!(Metrics::get(&proxy.metrics.handshakes_resumed), 2);
    let (_, metrics) = proxy.admin("GET", "/metrics").await;
    assert!(metrics.contains("ws_proxy_tls_handshakes_total{kind=\"resumed\"} 2"), "{metrics}");
    proxy.stop().await;
}

#[tokio::test]
async fn resumption_can_be_turned_off() {
    let pki = Pki::new();
    let toml = format!(
        "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = {:?}\nclient_ca = {:?}\nresumption = false\n[shutdown]\ndrain_window = \"100ms\"\n",
        pki.dev.pkeycert(&dev::PROXY).display().to_string(),
        pki.dev.root_cert().display().to_string(),
    );
    let proxy = start_toml(&pki, &toml).await;
    for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
        let config = resuming_client(&pki, &pki.client("gateway"), versions);
        for _ in 0..2 {
            let (resumed, answer) = upgrade_over(&proxy, &config).await;
            assert!(!resumed && answer.starts_with("HTTP/1.1 101"), "{answer}");
        }
    }
    assert_eq!(Metrics::get(&proxy.metrics.handshakes_resumed), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn tickets_outlive_a_reload_and_with_a_key_file_a_restart() {
    let pki = Pki::new();
    let key = ticket_key(&pki);
    let toml = |extra: &str| {
        format!(
            "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = {:?}\nclient_ca = {:?}\n{extra}[shutdown]\ndrain_window = \"100ms\"\n",
            pki.dev.pkeycert(&dev::PROXY).display().to_string(),
            pki.dev.root_cert().display().to_string(),
        )
    };
    let keyed = toml(&format!("ticket_key_file = {:?}\n", key.display().to_string()));
    let config = resuming_client(&pki, &pki.client("gateway"), &[&rustls::version::TLS13]);

    let first = start_toml(&pki, &keyed).await;
    assert!(!upgrade_over(&first, &config).await.0);
    first.proxy.reload().unwrap();
    let (resumed, answer) = upgrade_over(&first, &config).await;
    assert!(resumed && answer.starts_with("HTTP/1.1 101"), "after a reload: {answer}");
    first.stop().await;

    let restarted = start_toml(&pki, &keyed).await;
    let (resumed, answer) = upgrade_over(&restarted, &config).await;
    assert!(resumed && answer.starts_with("HTTP/1.1 101"), "after a restart, with the key file: {answer}");
    restarted.stop().await;

    let unkeyed = toml("");
    let fresh = resuming_client(&pki, &pki.client("gateway"), &[&rustls::version::TLS13]);
    let before = start_toml(&pki, &unkeyed).await;
    assert!(!upgrade_over(&before, &fresh).await.0);
    assert!(upgrade_over(&before, &fresh).await.0, "resumes while it runs");
    before.stop().await;
    let after = start_toml(&pki, &unkeyed).await;
    let (resumed, answer) = upgrade_over(&after, &fresh).await;
    assert!(!resumed, "without the key file a restart costs a full handshake");
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    after.stop().await;
}

#[tokio::test]
async fn a_session_whose_certificate_was_revoked_since_does_not_resume() {
    let pki = Pki::new();
    let crl_file = pki.path("root.crl.pem");
    let root = Authority::load(&pki.dev.root_cert(), &pki.dev.file(dev::ROOT, ".key.pem")).unwrap();
    let revoke = |name: &str| {
        let serial = crl::serial_of(&pki.client(name)).unwrap();
        crl::revoke(&root, &crl_file, &serial, 30).unwrap();
    };
    revoke("long-gone");
    let toml = format!(
        "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = {:?}\nclient_ca = {:?}\ncrl_files = [{:?}]\n[shutdown]\ndrain_window = \"100ms\"\n",
        pki.dev.pkeycert(&dev::PROXY).display().to_string(),
        pki.dev.root_cert().display().to_string(),
        crl_file.display().to_string(),
    );
    let proxy = start_toml(&pki, &toml).await;
    let tls13 = resuming_client(&pki, &pki.client("gateway"), &[&rustls::version::TLS13]);
    let tls12 = resuming_client(&pki, &pki.client("gateway"), &[&rustls::version::TLS12]);
    for config in [&tls13, &tls12] {
        let (resumed, answer) = upgrade_over(&proxy, config).await;
        assert!(!resumed && answer.starts_with("HTTP/1.1 101"), "{answer}");
    }
    revoke("gateway");
    proxy.proxy.reload().unwrap();
    for (n, config) in [&tls13, &tls12].into_iter().enumerate() {
        let (resumed, answer) = upgrade_over(&proxy, config).await;
        assert!(!resumed, "the new CRL voided the session: a full handshake checks the certificate");
        assert!(!answer.starts_with("HTTP/1.1 101"), "no upgrade for a revoked certificate: {answer}");
        crate::support::eventually("counted", || proxy.metrics.handshake_failures("revoked") == n as u64 + 1)
            .await;
    }
    // The other certificates resume again from their next session on.
    let other = resuming_client(&pki, &pki.client("manager"), &[&rustls::version::TLS13]);
    assert!(!upgrade_over(&proxy, &other).await.0);
    assert!(upgrade_over(&proxy, &other).await.0);
    proxy.stop().await;
}

#[tokio::test]
async fn the_clients_connector_resumes_when_it_reconnects() {
    use micronets_client::connect::{ConnectOptions, Connector};
    use micronets_client::tls::TlsOptions;
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let connector = Connector::new(ConnectOptions {
        url: format!("wss://localhost:{}{}gw/1", proxy.addr.port(), crate::support::PREFIX),
        tls: TlsOptions {
            client_cert: Some(pki.client("gateway")),
            ca_cert: Some(pki.dev.root_cert()),
            ..TlsOptions::default()
        },
        via: None,
        headers: Vec::new(),
        timeout: std::time::Duration::from_secs(10),
        max_frame_bytes: 1 << 20,
        local_address: None,
    })
    .unwrap();
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let ws = connector.connect().await.unwrap();
        kinds.push(ws.get_ref().get_ref().1.handshake_kind());
    }
    assert_eq!(kinds, [Some(rustls::HandshakeKind::Full), Some(rustls::HandshakeKind::Resumed)]);
    proxy.stop().await;
}
