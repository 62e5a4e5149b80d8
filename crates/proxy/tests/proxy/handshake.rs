//! What happens before any frame flows: TLS, the upgrade request, the connection limit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use micronets_certgen::{KeyType, RootSpec, issue_root};
use rcgen::{CertificateParams, DnType, Issuer, KeyPair};
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;

use crate::support::{
    Client, PREFIX, Pki, TestProxy, eventually, start, start_with, tls_connect, upgrade_request, within,
};

/// Connects with the given client certificate (or none) and expects the proxy to refuse it
/// during or right after the handshake.
async fn expect_refused(proxy: &TestProxy, cert: Option<&Path>) {
    let result = within("handshake", async {
        let mut tls = tls_connect(proxy.addr, &proxy.pki.dev.root_cert(), cert).await?;
        // With TLS 1.3 the server's verdict on the client certificate arrives after the
        // client finished its side: read to see the alert.
        let mut byte = [0u8; 1];
        tls.read(&mut byte).await
    })
    .await;
    match result {
        Err(_) | Ok(0) => {}
        Ok(n) => panic!("the proxy accepted the connection and sent {n} bytes"),
    }
}

fn write_pem(path: &Path, parts: &[String]) -> PathBuf {
    std::fs::write(path, parts.concat()).unwrap();
    path.to_owned()
}

#[tokio::test]
async fn bad_client_certificates_fail_the_handshake_and_are_counted() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;

    expect_refused(&proxy, None).await;
    eventually("no-cert counter", || proxy.metrics.handshake_failures("no_client_certificate") == 1).await;

    let other_root =
        issue_root(&RootSpec { org: "Other".into(), common_name: None, days: 30, key_type: KeyType::P256 })
            .unwrap();
    let other_dir = pki.path("other");
    std::fs::create_dir(&other_dir).unwrap();
    micronets_certgen::files::write_issued(&other_dir.join("root"), &other_root, false, false).unwrap();
    let foreign =
        micronets_certgen::Authority::load(&other_dir.join("root.cert.pem"), &other_dir.join("root.key.pem"))
            .unwrap()
            .issue_leaf(&micronets_certgen::LeafSpec {
                org: "Other".into(),
                common_name: "intruder".into(),
                days: 30,
                key_type: KeyType::P256,
                usage: micronets_certgen::Usage::Client,
                dns_names: vec![],
                ip_addresses: vec![],
            })
            .unwrap();
    let foreign = write_pem(&pki.path("foreign.pem"), &[foreign.cert_pem.clone(), foreign.key_pem.clone()]);
    expect_refused(&proxy, Some(&foreign)).await;

    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "self");
    let selfsigned = params.self_signed(&key).unwrap();
    let selfsigned = write_pem(&pki.path("self.pem"), &[selfsigned.pem(), key.serialize_pem()]);
    expect_refused(&proxy, Some(&selfsigned)).await;
    eventually("unknown-CA counter", || proxy.metrics.handshake_failures("unknown_ca") == 2).await;

    let root_pem = std::fs::read_to_string(pki.dev.root_cert()).unwrap();
    let root_key = KeyPair::from_pem(
        &std::fs::read_to_string(pki.dev.file(micronets_certgen::dev::ROOT, ".key.pem")).unwrap(),
    )
    .unwrap();
    let issuer = Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "expired");
    params.not_before = OffsetDateTime::now_utc() - time::Duration::days(10);
    params.not_after = OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = params.signed_by(&key, &issuer).unwrap();
    let expired = write_pem(&pki.path("expired.pem"), &[expired.pem(), key.serialize_pem()]);
    expect_refused(&proxy, Some(&expired)).await;
    eventually("expired counter", || proxy.metrics.handshake_failures("expired") == 1).await;

    // The honest peers are not affected.
    let (mut a, mut b) = crate::support::pair(&proxy, "r").await;
    a.send_text(r#"{"message": {"messageType": "EVENT:fine"}}"#).await;
    assert!(b.recv_text().await.contains("EVENT:fine"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_silent_tcp_connection_is_closed_after_the_handshake_timeout() {
    let pki = Pki::new();
    let toml_server = pki.dev.pkeycert(&micronets_certgen::dev::PROXY);
    let proxy = start_with_handshake_timeout(&pki, &toml_server).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = within("silent connection closed", tcp.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "the proxy closes a silent connection without sending anything");
    eventually("timeout counter", || proxy.metrics.handshake_failures("timeout") == 1).await;
    proxy.stop().await;
}

async fn start_with_handshake_timeout(pki: &Arc<Pki>, server_cert: &Path) -> TestProxy {
    let toml = format!(
        "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = {:?}\nclient_ca = {:?}\nhandshake_timeout = \"200ms\"\n",
        server_cert.display().to_string(),
        pki.dev.root_cert().display().to_string(),
    );
    crate::support::start_toml(pki, &toml).await
}

#[tokio::test]
async fn excess_connections_are_refused_before_tls() {
    let pki = Pki::new();
    let proxy = start(&pki, "[limits]\nmax_connections = 2\n").await;
    let (_a, _) = proxy.join("manager", "r1", "a").await;
    let (_b, _) = proxy.join("gateway", "r2", "b").await;
    let refused = within(
        "refused",
        Client::connect(proxy.addr, &pki.dev.root_cert(), &pki.client("test-client"), &format!("{PREFIX}r3")),
    )
    .await;
    assert!(refused.is_err(), "a third connection is refused");
    eventually("refusal counter", || micronets_proxy::Metrics::get(&proxy.metrics.connections_refused) == 1)
        .await;
    proxy.stop().await;
}

#[tokio::test]
async fn bad_paths_and_plain_requests_get_http_errors() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let upgrade = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let cases = [
        (upgrade("/wrong/prefix"), "404 Not Found", "path must start with /micronets/v1/ws-proxy/"),
        (upgrade("/micronets/v1/ws-proxy/"), "404 Not Found", "empty room id"),
        (upgrade("/micronets/v1/ws-proxy/a//b"), "404 Not Found", "empty segment"),
        (upgrade("/micronets/v1/ws-proxy/a/%2e%2e"), "404 Not Found", "may only hold"),
        (
            "GET /micronets/v1/ws-proxy/r HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned(),
            "400 Bad Request",
            "not a WebSocket upgrade",
        ),
    ];
    for (request, status, reason) in cases {
        let response = proxy.raw_request("manager", &request).await;
        assert!(response.starts_with(&format!("HTTP/1.1 {status}")), "{request}\n=> {response}");
        assert!(response.contains(reason), "{request}\n=> {response}");
    }
    assert_eq!(proxy.metrics.upgrade_refusals(404), 4);
    assert_eq!(proxy.metrics.upgrade_refusals(400), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn a_full_room_answers_409_before_the_upgrade() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (_a, _b) = crate::support::pair(&proxy, "pair").await;
    let request = "GET /micronets/v1/ws-proxy/pair HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let response = proxy.raw_request("test-client", request).await;
    assert!(response.starts_with("HTTP/1.1 409 Conflict"), "{response}");
    assert!(response.contains("room full"), "{response}");
    proxy.stop().await;
}

/// The original scripts' files: a pkeycert of cert + `EC PARAMETERS` + SEC1 key as the server
/// identity, and client certificates with only O= in the subject, no SAN and no EKU.
#[tokio::test]
async fn the_original_scripts_files_work() {
    let pki = Pki::new();
    let dir = pki.path("orig");
    std::fs::create_dir(&dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(&dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let root_cert = pki.dev.root_cert().display().to_string();
    let root_key = pki.dev.file(micronets_certgen::dev::ROOT, ".key.pem").display().to_string();
    std::fs::write(dir.join("leaf.ext"), "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment,keyAgreement\n").unwrap();
    for (name, org) in [("proxy", "Micronets Websocket Proxy Cert"), ("client", "Micronets Manager Cert")] {
        openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-out", &format!("{name}.key.pem")]);
        openssl(&[
            "req",
            "-new",
            "-sha256",
            "-batch",
            "-subj",
            &format!("/O={org}"),
            "-key",
            &format!("{name}.key.pem"),
            "-out",
            &format!("{name}.csr.pem"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr.pem"),
            "-CA",
            &root_cert,
            "-CAkey",
            &root_key,
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "leaf.ext",
            "-out",
            &format!("{name}.cert.pem"),
        ]);
        let pkeycert = std::fs::read_to_string(dir.join(format!("{name}.cert.pem"))).unwrap()
            + &std::fs::read_to_string(dir.join(format!("{name}.key.pem"))).unwrap();
        assert!(pkeycert.contains("BEGIN EC PARAMETERS") && pkeycert.contains("BEGIN EC PRIVATE KEY"));
        std::fs::write(dir.join(format!("{name}.pkeycert.pem")), pkeycert).unwrap();
    }
    let proxy = start_with(&pki, &dir.join("proxy.pkeycert.pem"), "").await;
    // The original clients do not check host names (the certificate has no SAN); webpki
    // clients cannot skip that, so this client checks the chain through a raw read instead.
    let result = within("original client", async {
        let config =
            crate::support::client_tls_no_name_check(&pki.dev.root_cert(), &dir.join("client.pkeycert.pem"));
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        let url = format!("wss://localhost:{}{PREFIX}orig", proxy.addr.port());
        tokio_tungstenite::client_async(url, tls).await.map_err(std::io::Error::other)
    })
    .await;
    let (ws, _) = result.expect("the original files connect");
    let mut original = Client { ws };
    original.hello("orig").await;
    let gateway = pki.client("gateway");
    let config = crate::support::client_tls_no_name_check(&pki.dev.root_cert(), &gateway);
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let url = format!("wss://localhost:{}{PREFIX}orig", proxy.addr.port());
    let (ws, _) = within("gateway connect", tokio_tungstenite::client_async(url, tls)).await.unwrap();
    let mut peer = Client { ws };
    peer.hello("gw").await;
    assert!(peer.recv_text().await.contains("\"peerId\": \"orig\""));
    assert!(original.recv_text().await.contains("\"peerId\": \"gw\""));
    proxy.stop().await;
}

#[tokio::test]
async fn connections_past_max_handshakes_per_second_are_dropped_before_tls() {
    let pki = Pki::new();
    let proxy = start(&pki, "[limits]\nmax_handshakes_per_second = 1\n").await;
    let _first = proxy.connect("manager", "gw/1").await;
    let path = format!("{PREFIX}gw/1");
    let second =
        within("second", Client::connect(proxy.addr, &pki.dev.root_cert(), &pki.client("gateway"), &path))
            .await;
    assert!(second.is_err(), "the second connection within the second is dropped");
    let (_, metrics) = proxy.admin("GET", "/metrics").await;
    assert!(
        metrics.contains("ws_proxy_connections_total{outcome=\"handshake_rate_limited\"} 1"),
        "{metrics}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn connections_past_the_per_address_and_per_certificate_limits_are_refused() {
    let pki = Pki::new();
    let proxy = start(&pki, "[limits]\nmax_connections_per_identity = 1\n").await;
    let manager = proxy.connect("manager", "gw/1").await;
    let refused = proxy.raw_request("manager", &upgrade_request("gw/2")).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(refused.contains("too many connections with this certificate"), "{refused}");
    let _other_certificate = proxy.connect("gateway", "gw/2").await;
    drop(manager);
    proxy.stop().await;

    let proxy = start(&pki, "[limits]\nmax_connections_per_ip = 1\n").await;
    let first = proxy.connect("manager", "gw/1").await;
    let path = format!("{PREFIX}gw/1");
    let second =
        within("second", Client::connect(proxy.addr, &pki.dev.root_cert(), &pki.client("gateway"), &path))
            .await;
    assert!(second.is_err(), "a second connection from 127.0.0.1 is dropped");
    first.close().await;
    // Its place comes back when it ends.
    let metrics_say_dropped =
        |text: &str| text.contains("ws_proxy_connections_total{outcome=\"ip_limited\"} 1");
    assert!(metrics_say_dropped(&proxy.admin("GET", "/metrics").await.1));
    within("the place comes back", async {
        loop {
            if Client::connect(proxy.addr, &pki.dev.root_cert(), &pki.client("gateway"), &path).await.is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn past_the_handshake_slots_connections_wait_their_turn_then_are_closed_before_tls() {
    let pki = Pki::new();
    let toml = format!(
        "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = {:?}\nclient_ca = {:?}\nhandshake_timeout = \"1s\"\n[limits]\nmax_handshakes_in_flight = 1\n[shutdown]\ndrain_window = \"100ms\"\n",
        pki.dev.pkeycert(&micronets_certgen::dev::PROXY).display().to_string(),
        pki.dev.root_cert().display().to_string(),
    );
    let proxy = crate::support::start_toml(&pki, &toml).await;
    let (mut a, mut b) = crate::support::pair(&proxy, "r").await;
    let gauge = |m: &AtomicU64| micronets_proxy::Metrics::get(m);
    // Two connections that never say a word: the first takes the one slot until its
    // handshake_timeout, the second waits for it, and gets it next.
    let _first = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    eventually("the first in flight", || gauge(&proxy.metrics.handshakes_in_flight) == 1).await;
    let _second = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    eventually("the second queued", || gauge(&proxy.metrics.handshakes_queued) == 1).await;
    // Meanwhile the node answers its health checks and the open room relays.
    assert_eq!(proxy.admin("GET", "/healthz").await.0, 200);
    a.send_text(r#"{"message": {"messageType": "EVENT:during"}}"#).await;
    assert!(b.recv_text().await.contains("EVENT:during"));
    // A client behind them waits longer than handshake_timeout: closed before any TLS work,
    // counted, and free to retry.
    let path = format!("{PREFIX}r2");
    let refused = within(
        "queued client",
        Client::connect(proxy.addr, &pki.dev.root_cert(), &pki.client("gw-3"), &path),
    )
    .await;
    assert!(refused.is_err(), "no WebSocket for a connection that waited past its time");
    let (_, metrics) = proxy.admin("GET", "/metrics").await;
    assert_eq!(
        crate::support::sample(&metrics, "ws_proxy_connections_total{outcome=\"handshake_queue_timeout\"}"),
        1.0,
        "{metrics}"
    );
    // Once the silent ones are gone, its retry goes through.
    eventually("the slot free", || gauge(&proxy.metrics.handshakes_in_flight) == 0).await;
    let retried = proxy.connect("gw-3", "r2").await;
    drop(retried);
    proxy.stop().await;
}
