//! The connector against a WebSocket server written here, which records the upgrade request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use micronets_certgen::dev::{self, DevPki};
use micronets_client::connect::{ConnectOptions, connect};
use micronets_client::tls::TlsOptions;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

#[tokio::test]
// The upgrade callback's signature (and its large error type) is tungstenite's.
#[allow(clippy::result_large_err)]
async fn extra_headers_travel_with_the_upgrade_request() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(dir.path());
    dev::ensure(&pki).unwrap();
    let server_pem = pki.pkeycert(&dev::PROXY);
    let chain: Vec<_> = CertificateDer::pem_file_iter(&server_pem).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(&server_pem).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let callback = move |request: &Request, response: Response| {
            let headers =
                request.headers().iter().map(|(n, v)| format!("{n}: {}", v.to_str().unwrap())).collect();
            *record.lock().unwrap() = headers;
            Ok(response)
        };
        let _ws = tokio_tungstenite::accept_hdr_async(tls, callback).await.unwrap();
    });

    let options = ConnectOptions {
        url: format!("wss://localhost:{port}/micronets/v1/ws-proxy/r"),
        tls: TlsOptions { ca_cert: Some(pki.root_cert()), ..TlsOptions::default() },
        via: None,
        headers: vec![("Authorization".into(), "Bearer t0ken".into()), ("X-Gateway".into(), "gw-1".into())],
        timeout: Duration::from_secs(5),
        max_frame_bytes: 1 << 20,
        local_address: None,
    };
    connect(&options).await.unwrap();
    let headers = seen.lock().unwrap().clone();
    assert!(headers.contains(&"authorization: Bearer t0ken".to_owned()), "{headers:?}");
    assert!(headers.contains(&"x-gateway: gw-1".to_owned()), "{headers:?}");
}
