//! The external authorization hook, against an HTTP service written here: what it is shown,
//! how its answers (and its silence) decide, and its cache.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::support::{PREFIX, Pki, TestProxy, start, upgrade_request};

/// The test's authorization service. It allows the manager and gateway certificates, and any request
/// with `Authorization: Bearer good`; `Bearer broken` gets a 500, `Bearer slow` an answer
/// after 3 s; everything else a 401. It keeps the headers of every request it gets.
struct Hook {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Hook {
    async fn start() -> Hook {
        Hook::serve(None).await
    }

    /// The service over TLS, with a certificate for `localhost` from the test PKI.
    async fn start_tls(pki: &Pki) -> Hook {
        let pem = std::fs::read(pki.server("hook")).unwrap();
        let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(&pem).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        Hook::serve(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let log = Arc::clone(&log);
                        async move { Ok::<_, Infallible>(answer(&log, request).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        Hook { addr, seen, task }
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> HeaderMap {
        self.seen.lock().unwrap().last().cloned().expect("the hook was called")
    }

    fn config(&self, extra: &str) -> String {
        format!("[auth_hook]\nurl = \"http://{}/authorize\"\ntimeout = \"500ms\"\n{extra}", self.addr)
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(log: &Mutex<Vec<HeaderMap>>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let headers = request.headers().clone();
    log.lock().unwrap().push(headers.clone());
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let status = match (header("x-client-cert-cn").as_str(), header("authorization").as_str()) {
        ("manager" | "gateway", _) | (_, "Bearer good") => StatusCode::NO_CONTENT,
        (_, "Bearer broken") => StatusCode::INTERNAL_SERVER_ERROR,
        (_, "Bearer slow") => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            StatusCode::OK
        }
        _ => StatusCode::UNAUTHORIZED,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(b"decided\n")));
    *response.status_mut() = status;
    response
}

/// An upgrade request for `room` with extra header lines.
fn with_headers(room: &str, lines: &str) -> String {
    upgrade_request(room).replacen("\r\n\r\n", &format!("\r\n{lines}\r\n\r\n"), 1)
}

fn bearer(room: &str, token: &str) -> String {
    with_headers(room, &format!("Authorization: Bearer {token}"))
}

async fn status(proxy: &TestProxy, identity: &str, raw: &str) -> String {
    let head = proxy.request_head(identity, raw).await;
    head.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_hook_decides_with_the_request_headers_and_the_certificate_identity() {
    let pki = Pki::new();
    let hook = Hook::start().await;
    let proxy = start(&pki, &hook.config("")).await;

    let forged =
        with_headers("gw/gw-1?v=2", "Authorization: Bearer good\r\nX-Client-Cert-CN: manager\r\nX-Trace: 7");
    assert_eq!(status(&proxy, "gw-1", &forged).await, "HTTP/1.1 101 Switching Protocols");
    let seen = hook.last();
    let get = |name: &str| seen.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(get("authorization").as_deref(), Some("Bearer good"));
    assert_eq!(get("x-trace").as_deref(), Some("7"));
    assert_eq!(get("x-client-cert-cn").as_deref(), Some("gw-1"), "the client's forged header is dropped");
    assert_eq!(seen.get_all("x-client-cert-cn").iter().count(), 1);
    assert_eq!(get("x-original-uri"), Some(format!("{PREFIX}gw/gw-1?v=2")));
    assert_eq!(get("x-micronets-room").as_deref(), Some("gw/gw-1"));
    assert_eq!(get("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(get("x-forwarded-host").as_deref(), Some("localhost"));
    assert!(get("x-client-cert-subject").unwrap().contains("CN=gw-1"));
    let fingerprint = get("x-client-cert-fingerprint").unwrap();
    assert_eq!(fingerprint.len(), 64, "{fingerprint}");
    assert!(get("x-client-cert-serial").is_some() && get("x-client-cert-not-after").is_some());
    assert_eq!(get("host"), Some(hook.addr.to_string()));
    for gone in ["upgrade", "sec-websocket-key", "sec-websocket-version"] {
        assert!(seen.get(gone).is_none(), "{gone} is not passed on");
    }

    let refused = proxy.raw_request("gw-1", &bearer("gw/gw-1", "wrong")).await;
    assert!(refused.starts_with("HTTP/1.1 403 Forbidden"), "{refused}");
    assert!(refused.contains("refused by the authorization service"), "{refused}");
    assert_eq!(proxy.metrics.auth_hook_checks("allowed"), 1);
    assert_eq!(proxy.metrics.auth_hook_checks("denied"), 1);
    assert_eq!(proxy.metrics.upgrade_refusals(403), 1);

    // Admitted peers relay as usual.
    let (mut manager, _) = proxy.join("manager", "gw/gw-2", "m").await;
    let (mut other, hello) = proxy.join("gateway", "gw/gw-2", "g").await;
    assert_eq!(manager.recv_text().await, hello);
    other.send_text(r#"{"message": {"messageId": 1, "messageType": "EVENT:x"}}"#).await;
    assert!(manager.recv_text().await.contains("EVENT:x"));
    proxy.stop().await;
}

#[tokio::test]
async fn no_usable_answer_refuses_with_503() {
    let pki = Pki::new();
    let hook = Hook::start().await;
    let proxy = start(&pki, &hook.config("")).await;

    let broken = proxy.raw_request("gw-1", &bearer("gw/gw-1", "broken")).await;
    assert!(broken.starts_with("HTTP/1.1 503"), "a 500 from the hook: {broken}");
    assert!(broken.contains("authorization service unavailable"), "{broken}");

    let started = std::time::Instant::now();
    let slow = proxy.raw_request("gw-1", &bearer("gw/gw-1", "slow")).await;
    assert!(slow.starts_with("HTTP/1.1 503"), "no answer within the timeout: {slow}");
    assert!(started.elapsed() < Duration::from_secs(3), "refused at the timeout, not after the answer");

    // Failures are never cached: the same request asks again.
    let again = proxy.raw_request("gw-1", &bearer("gw/gw-1", "broken")).await;
    assert!(again.starts_with("HTTP/1.1 503"), "{again}");
    assert_eq!(hook.calls(), 3);
    assert_eq!(proxy.metrics.auth_hook_checks("unavailable"), 3);
    assert_eq!(proxy.metrics.upgrade_refusals(503), 3);
    proxy.stop().await;

    // A hook nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let proxy = start(&pki, &format!("[auth_hook]\nurl = \"http://127.0.0.1:{port}/\"\n")).await;
    let unreachable = proxy.raw_request("manager", &upgrade_request("gw/gw-1")).await;
    assert!(unreachable.starts_with("HTTP/1.1 503"), "{unreachable}");
    proxy.stop().await;
}

#[tokio::test]
async fn answers_are_cached_per_certificate_and_headers() {
    let pki = Pki::new();
    let hook = Hook::start().await;
    let proxy = start(&pki, &hook.config("cache_ttl = \"1m\"")).await;

    for _ in 0..3 {
        assert_eq!(
            status(&proxy, "gw-1", &bearer("gw/gw-1", "good")).await,
            "HTTP/1.1 101 Switching Protocols"
        );
        let refused = status(&proxy, "gw-1", &bearer("gw/gw-1", "wrong")).await;
        assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    }
    assert_eq!(hook.calls(), 2, "one call per distinct request");
    assert_eq!(proxy.metrics.auth_hook_checks("allowed_cached"), 2);
    assert_eq!(proxy.metrics.auth_hook_checks("denied_cached"), 2);

    // Another certificate with the same headers, or another room, is asked about afresh.
    status(&proxy, "gw-2", &bearer("gw/gw-1", "good")).await;
    status(&proxy, "gw-1", &bearer("gw/gw-3", "good")).await;
    assert_eq!(hook.calls(), 4);
    proxy.stop().await;
}

#[tokio::test]
async fn the_acl_refuses_before_the_hook_is_asked() {
    let pki = Pki::new();
    let hook = Hook::start().await;
    let rules = "[[acl.rules]]\nroom = \"gw/{cn}\"\nallow = true\n";
    let proxy = start(&pki, &format!("{}{rules}", hook.config(""))).await;
    let refused = proxy.raw_request("gw-1", &bearer("gw/gw-2", "good")).await;
    assert!(refused.contains("this certificate may not join this room"), "{refused}");
    assert_eq!(hook.calls(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn an_https_hook_is_verified_with_its_ca_file() {
    let pki = Pki::new();
    let hook = Hook::start_tls(&pki).await;
    let url = format!("https://localhost:{}/authorize", hook.addr.port());
    let trusted =
        format!("[auth_hook]\nurl = {url:?}\nca_file = {:?}\n", pki.dev.root_cert().display().to_string());
    let proxy = start(&pki, &trusted).await;
    assert_eq!(status(&proxy, "gw-1", &bearer("gw/gw-1", "good")).await, "HTTP/1.1 101 Switching Protocols");
    assert!(status(&proxy, "gw-1", &bearer("gw/gw-1", "wrong")).await.starts_with("HTTP/1.1 403"));
    proxy.stop().await;

    // A hook whose certificate the CA file does not vouch for is never asked.
    let other = micronets_certgen::dev::DevPki::new(pki.path("other-ca"));
    micronets_certgen::dev::ensure(&other).unwrap();
    let untrusted =
        format!("[auth_hook]\nurl = {url:?}\nca_file = {:?}\n", other.root_cert().display().to_string());
    let proxy = start(&pki, &untrusted).await;
    let refused = proxy.raw_request("gw-1", &bearer("gw/gw-1", "good")).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert_eq!(hook.calls(), 2);
    proxy.stop().await;
}
