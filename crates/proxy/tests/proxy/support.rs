//! Test harness: PKI, a running proxy, and a WebSocket client that speaks mTLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use micronets_certgen::dev::{self, DevPki};
use micronets_certgen::{Authority, KeyType, LeafSpec, Usage};
use micronets_proxy::{FileConfig, Metrics, Overrides, Proxy};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// Every await in a test is bounded by this.
pub(crate) const WAIT: Duration = Duration::from_secs(5);
pub(crate) const PREFIX: &str = "/micronets/v1/ws-proxy/";

/// A complete WebSocket upgrade request for `room`, for [`TestProxy::raw_request`].
pub(crate) fn upgrade_request(room: &str) -> String {
    format!(
        "GET {PREFIX}{room} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Awaits `f` for at most [`WAIT`], failing the test with `what` otherwise.
#[track_caller]
pub(crate) fn within<F: std::future::Future>(
    what: &str,
    f: F,
) -> impl std::future::Future<Output = F::Output> {
    let what = what.to_owned();
    async move { tokio::time::timeout(WAIT, f).await.unwrap_or_else(|_| panic!("timed out: {what}")) }
}

/// A dev PKI in a temp dir, and more identities on demand.
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) dev: DevPki,
}

impl Pki {
    pub(crate) fn new() -> Arc<Self> {
        let dir = tempfile::tempdir().unwrap();
        let dev = DevPki::new(dir.path().join("dev"));
        dev::ensure(&dev).unwrap();
        Arc::new(Pki { dir, dev })
    }

    /// The pkeycert of a client identity: a dev one (`manager`, `gateway`, `test-client`) or
    /// one issued now under the dev root with `name` as CN.
    pub(crate) fn client(&self, name: &str) -> PathBuf {
        if let Some(identity) = dev::CLIENTS.iter().find(|c| c.name == name) {
            return self.dev.pkeycert(identity);
        }
        self.issue(name, Usage::Client, vec![])
    }

    /// The pkeycert of a server identity for `localhost` issued now under the dev root, with
    /// `name` as CN.
    pub(crate) fn server(&self, name: &str) -> PathBuf {
        self.issue(name, Usage::Server, vec!["localhost".into()])
    }

    fn issue(&self, name: &str, usage: Usage, dns_names: Vec<String>) -> PathBuf {
        let base = self.dir.path().join(name);
        let path = micronets_certgen::files::with_suffix(&base, ".pkeycert.pem");
        if !path.exists() {
            let root_key = self.dev.file(dev::ROOT, ".key.pem");
            let ca = Authority::load(&self.dev.root_cert(), &root_key).unwrap();
            let issued = ca
                .issue_leaf(&LeafSpec {
                    org: "Test".into(),
                    common_name: name.into(),
                    days: 30,
                    key_type: KeyType::P256,
                    usage,
                    dns_names,
                    ip_addresses: vec![],
                })
                .unwrap();
            micronets_certgen::files::write_issued(&base, &issued, true, true).unwrap();
        }
        path
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The pkeycert of a client identity `name` under the dev root that expires `lifetime` from
    /// now (certgen issues whole days, so rcgen makes it), and its notAfter.
    pub(crate) fn short_lived(&self, name: &str, lifetime: Duration) -> (PathBuf, std::time::SystemTime) {
        let root_key = std::fs::read_to_string(self.dev.file(dev::ROOT, ".key.pem")).unwrap();
        let root_cert = std::fs::read_to_string(self.dev.root_cert()).unwrap();
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&root_cert, rcgen::KeyPair::from_pem(&root_key).unwrap())
                .unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Test");
        let now = time::OffsetDateTime::now_utc();
        let not_after = now + lifetime;
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = not_after;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let path = self.path(&format!("{name}.pkeycert.pem"));
        std::fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
        // X.509 keeps whole seconds.
        let seconds = u64::try_from(not_after.unix_timestamp()).unwrap();
        (path, std::time::UNIX_EPOCH + Duration::from_secs(seconds))
    }
}

/// A proxy serving in this process.
pub(crate) struct TestProxy {
    pub(crate) addr: SocketAddr,
    /// The admin endpoint.
    pub(crate) admin: SocketAddr,
    pub(crate) proxy: Proxy,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) pki: Arc<Pki>,
    /// Its configuration file, which a reload reads again.
    pub(crate) file: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts a proxy with the dev PKI and `extra` TOML (sections other than listen and tls).
pub(crate) async fn start(pki: &Arc<Pki>, extra: &str) -> TestProxy {
    start_with(pki, &pki.dev.pkeycert(&dev::PROXY), extra).await
}

/// Starts a proxy with a given server certificate file.
pub(crate) async fn start_with(pki: &Arc<Pki>, server_cert: &Path, extra: &str) -> TestProxy {
    // A short drain window, unless the test sets one: stopping spreads closes across it.
    let shutdown = if extra.contains("[shutdown]") { "" } else { "[shutdown]\ndrain_window = \"100ms\"\n" };
    let toml = format!(
        "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = {:?}\nclient_ca = {:?}\n{shutdown}{extra}",
        server_cert.display().to_string(),
        pki.dev.root_cert().display().to_string(),
    );
    start_toml(pki, &toml).await
}

/// Starts a proxy from a whole TOML configuration.
pub(crate) async fn start_toml(pki: &Arc<Pki>, toml: &str) -> TestProxy {
    // The proxy's log, captured per test and shown when one fails.
    let _ = tracing_subscriber::fmt().with_env_filter("micronets_proxy=debug").with_test_writer().try_init();
    // Written to a file, so that a reload reads it again.
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let file = pki.path(&format!("proxy-{}.toml", FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    std::fs::write(&file, toml).unwrap();
    let config = FileConfig::load(&file).unwrap().into_config(&Overrides::default()).unwrap();
    let listener = tokio::net::TcpListener::bind(config.bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let proxy =
        Proxy::from_file(config, file.clone(), Overrides::default()).unwrap().connect().await.unwrap();
    let metrics = proxy.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = proxy.clone();
    let task = tokio::spawn(async move {
        let serve = serving.serve(listener, async move {
            let _ = stopped.await;
        });
        tokio::select! {
            () = serve => {}
            () = serving.serve_admin(admin_listener) => {}
        }
    });
    TestProxy { addr, admin, proxy, metrics, pki: Arc::clone(pki), file, stop: Some(stop), task: Some(task) }
}

impl TestProxy {
    /// Connects as `identity` to `room` (completing TLS and the upgrade).
    pub(crate) async fn connect(&self, identity: &str, room: &str) -> Client {
        let cert = self.pki.client(identity);
        within(
            "connect",
            Client::connect(self.addr, &self.pki.dev.root_cert(), &cert, &format!("{PREFIX}{room}")),
        )
        .await
        .unwrap_or_else(|e| panic!("connect as {identity} to {room}: {e}"))
    }

    /// Connects with the certificate file `cert` to `room`.
    pub(crate) async fn connect_with(&self, cert: &Path, room: &str) -> Client {
        within(
            "connect",
            Client::connect(self.addr, &self.pki.dev.root_cert(), cert, &format!("{PREFIX}{room}")),
        )
        .await
        .unwrap_or_else(|e| panic!("connect with {} to {room}: {e}", cert.display()))
    }

    /// Connects and sends a HELLO with `peer_id`, returning the client and the HELLO text.
    pub(crate) async fn join(&self, identity: &str, room: &str, peer_id: &str) -> (Client, String) {
        let mut client = self.connect(identity, room).await;
        let hello = client.hello(peer_id).await;
        (client, hello)
    }

    /// Sends `raw` over a mutual-TLS connection and returns the whole HTTP response.
    pub(crate) async fn raw_request(&self, identity: &str, raw: &str) -> String {
        let cert = self.pki.client(identity);
        let mut tls = tls_connect(self.addr, &self.pki.dev.root_cert(), Some(&cert)).await.unwrap();
        tls.write_all(raw.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let _ = within("raw response", tls.read_to_end(&mut response)).await;
        String::from_utf8_lossy(&response).into_owned()
    }

    /// Sends `raw` over a mutual-TLS connection and returns the response head only (a 101
    /// leaves the connection open).
    pub(crate) async fn request_head(&self, identity: &str, raw: &str) -> String {
        let cert = self.pki.client(identity);
        let mut tls = tls_connect(self.addr, &self.pki.dev.root_cert(), Some(&cert)).await.unwrap();
        tls.write_all(raw.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        within("response head", async {
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).await.unwrap() == 1 {
                head.push(byte[0]);
            }
        })
        .await;
        String::from_utf8_lossy(&head).into_owned()
    }

    /// `method path` on the admin endpoint: the status code and the body.
    pub(crate) async fn admin(&self, method: &str, path: &str) -> (u16, String) {
        admin_request(self.admin, method, path).await
    }

    /// Stops the proxy and waits for it to drain.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within("proxy drain", task).await.unwrap();
        }
    }
}

/// A manager (`a`) and a gateway (`b`) in `room`, past the HELLO exchange.
pub(crate) async fn pair(proxy: &TestProxy, room: &str) -> (Client, Client) {
    let (mut a, _) = proxy.join("manager", room, "a").await;
    let (mut b, _) = proxy.join("gateway", room, "b").await;
    a.recv_text().await;
    b.recv_text().await;
    (a, b)
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The client side's TLS configuration, from the client library.
pub(crate) fn client_tls(ca: &Path, cert: Option<&Path>) -> Arc<rustls::ClientConfig> {
    tls_options(ca, cert, false)
}

/// A client configuration that verifies the chain but not the server's name, as the original
/// clients did (`check_hostname=False`).
pub(crate) fn client_tls_no_name_check(ca: &Path, cert: &Path) -> Arc<rustls::ClientConfig> {
    tls_options(ca, Some(cert), true)
}

fn tls_options(ca: &Path, cert: Option<&Path>, skip_hostname_check: bool) -> Arc<rustls::ClientConfig> {
    let options = micronets_client::tls::TlsOptions {
        client_cert: cert.map(Path::to_owned),
        ca_cert: Some(ca.to_owned()),
        skip_hostname_check,
        ..Default::default()
    };
    micronets_client::tls::client_config(&options).unwrap()
}

/// Opens a TLS connection and completes the handshake, including the client-certificate
/// verdict (with TLS 1.3 that arrives after the client's handshake is done, so we wait for
/// the server's first bytes or its alert).
pub(crate) async fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
    cert: Option<&Path>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = TlsConnector::from(client_tls(ca, cert));
    connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// A peer whose frames a task of its own reads as they come, so it answers the proxy's pings
/// as a live device does; the test takes the frames from a channel.
pub(crate) struct Live {
    sink: futures_util::stream::SplitSink<WebSocketStream<TlsStream<TcpStream>>, Message>,
    frames: tokio::sync::mpsc::UnboundedReceiver<Message>,
    reader: tokio::task::JoinHandle<()>,
}

impl Live {
    pub(crate) fn new(client: Client) -> Live {
        let (sink, mut stream) = client.ws.split();
        let (tx, frames) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if !matches!(message, Message::Ping(_) | Message::Pong(_)) && tx.send(message).is_err() {
                    return;
                }
            }
        });
        Live { sink, frames, reader }
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        within("send", self.sink.send(Message::text(text))).await.unwrap();
    }

    /// The next data or close frame.
    pub(crate) async fn recv(&mut self) -> Message {
        within("receive", self.frames.recv()).await.expect("the connection ended")
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A WebSocket peer.
pub(crate) struct Client {
    pub(crate) ws: WebSocketStream<TlsStream<TcpStream>>,
}

impl Client {
    pub(crate) async fn connect(
        addr: SocketAddr,
        ca: &Path,
        cert: &Path,
        path: &str,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let tls = tls_connect(addr, ca, Some(cert)).await?;
        let url = format!("wss://localhost:{}{path}", addr.port());
        let (ws, _) = tokio_tungstenite::client_async(url, tls).await?;
        Ok(Client { ws })
    }

    /// The DER of the certificate the proxy presented.
    pub(crate) fn server_cert(&self) -> Vec<u8> {
        let certs = self.ws.get_ref().get_ref().1.peer_certificates().unwrap();
        certs[0].to_vec()
    }

    pub(crate) async fn send(&mut self, message: Message) {
        within("send", self.ws.send(message)).await.unwrap();
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        self.send(Message::text(text)).await;
    }

    /// Sends a HELLO the way the original test client does; returns its text.
    pub(crate) async fn hello(&mut self, peer_id: &str) -> String {
        let text = format!(
            r#"{{"message": {{"messageId": 0, "messageType": "CONN:HELLO", "requiresResponse": false, "peerClass": "test", "peerId": "{peer_id}"}}}}"#
        );
        self.send_text(&text).await;
        text
    }

    /// The next data or close frame (pings and pongs are skipped).
    pub(crate) async fn recv(&mut self) -> Message {
        within("receive", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(message)) => return message,
                    Some(Err(e)) => panic!("receive failed: {e}"),
                    None => panic!("connection ended without a close frame"),
                }
            }
        })
        .await
    }

    /// The next frame, which must be text; returned as text.
    pub(crate) async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Message::Text(text) => text.as_str().to_owned(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame as JSON `message` object.
    pub(crate) async fn recv_message(&mut self) -> Value {
        let text = self.recv_text().await;
        let value: Value = serde_json::from_str(&text).unwrap();
        value["message"].clone()
    }

    /// Reads until the close frame; returns its code and reason.
    pub(crate) async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.recv().await {
                Message::Close(Some(frame)) => {
                    return (u16::from(frame.code), frame.reason.as_str().to_owned());
                }
                Message::Close(None) => return (1005, String::new()),
                _ => continue,
            }
        }
    }

    pub(crate) async fn close(mut self) {
        let _ = within("close", self.ws.close(None)).await;
    }
}

/// `method path` over HTTP/1.1 to `addr`: the status code and the body.
pub(crate) async fn admin_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    within("admin request", async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8(response).unwrap();
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
        (status, body)
    })
    .await
}

/// The value of the sample named `series` (name and labels as exposed) in a Prometheus text
/// exposition; 0 when absent.
pub(crate) fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// A certificate's DER bytes, from the first PEM block of a file.
pub(crate) fn cert_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path).unwrap().next().unwrap().unwrap().to_vec()
}

/// A TLS connection made with `config` (which keeps the session for resumption), the upgrade
/// request sent, and the whole answer read: whether the session was resumed, and the answer
/// (or the TLS error, when the handshake itself is refused, as TLS 1.2 refuses a certificate).
pub(crate) async fn upgrade_over(proxy: &TestProxy, config: &Arc<rustls::ClientConfig>) -> (bool, String) {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let handshake = within(
        "TLS",
        TlsConnector::from(Arc::clone(config)).connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await;
    let mut tls = match handshake {
        Ok(tls) => tls,
        Err(e) => return (false, format!("TLS: {e}")),
    };
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(upgrade_request("gw/1").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    // A 101 keeps the connection open: the head is enough; a refused session is closed.
    let _ = within("answer", async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && matches!(tls.read(&mut byte).await, Ok(1)) {
            head.push(byte[0]);
        }
    })
    .await;
    (resumed, String::from_utf8_lossy(&head).into_owned())
}

/// A client configuration for `versions` that keeps sessions to resume them.
pub(crate) fn resuming_client(
    pki: &Pki,
    cert: &std::path::Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.dev.root_cert()).unwrap();
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(der.unwrap()).unwrap();
    }
    let pem = std::fs::read(cert).unwrap();
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&pem).map(Result::unwrap).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// Waits (bounded) until `condition` holds: for counters updated by the proxy's task after the
/// client has already seen the outcome.
pub(crate) async fn eventually(what: &str, condition: impl Fn() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}
