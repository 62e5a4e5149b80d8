//! The REST tunnel end to end: an HTTP client -> `ws-client` bridge -> `ws-proxy` ->
//! `ws-client --forward-to` -> a local HTTP service written here, and back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::proxy_support::{admin_request, sample};
use crate::support::{Daemon, run_bin};

const ROOM: &str = "/micronets/v1/ws-proxy/gw/gateway";

/// The device's REST API: echoes the request as JSON; `/binary` answers PNG bytes, DELETE 204,
/// POST 201, `/slow` never answers. Every response carries `X-Device: mock-gw`.
async fn device(
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let header = |name: &str| parts.headers.get(name).and_then(|h| h.to_str().ok()).map(str::to_owned);
    let response = http::Response::builder().header("X-Device", "mock-gw");
    let response = match (parts.method.as_str(), parts.uri.path()) {
        (_, "/slow") => return std::future::pending().await,
        (_, "/binary") => response
            .header("Content-Type", "image/png")
            .body(Full::new(Bytes::from_static(&[0x89, b'P', 0, 0xff]))),
        ("DELETE", _) => response.status(204).body(Full::new(Bytes::new())),
        (method, _) => {
            let echo = serde_json::json!({
                "method": method,
                "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                "host": header("host"),
                "contentType": header("content-type"),
                "body": String::from_utf8_lossy(&body),
            });
            response
                .status(if method == "POST" { 201 } else { 200 })
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::from(echo.to_string())))
        }
    };
    Ok(response.unwrap())
}

/// Serves [`device`] on a free loopback port.
async fn start_device() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(device)),
            );
        }
    });
    addr
}

struct Tunnel {
    _dir: tempfile::TempDir,
    proxy: Daemon,
    _gateway: Option<Daemon>,
    bridge: Daemon,
}

fn client_args<'a>(dir: &'a Path, who: &str, url: &'a str) -> Vec<String> {
    let dev = dir.join("certs/dev");
    vec![
        "--client-cert".into(),
        dev.join(format!("micronets-{who}.pkeycert.pem")).display().to_string(),
        "--ca-cert".into(),
        dev.join("micronets-ws-root.cert.pem").display().to_string(),
        url.into(),
    ]
}

fn spawn_client(dir: &Path, args: Vec<String>, ready: &str) -> Daemon {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::spawn("ws-client", dir, &args, &[], ready)
}

/// Proxy, optionally a gateway forwarding to `device`, and a bridge; returns when all are up
/// (and, with a gateway, once the two peers have exchanged HELLOs).
fn tunnel(device: Option<SocketAddr>, extra_gateway: &[&str], extra_bridge: &[&str]) -> Tunnel {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Daemon::start(dir.path(), &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let url = format!("wss://localhost:{}{ROOM}", proxy.addr.port());
    let gateway = device.map(|device| {
        let mut args = client_args(dir.path(), "gateway", &url);
        args.extend(["--peer-class".into(), "micronets-gateway-service".into()]);
        args.extend(["--forward-to".into(), format!("http://{device}")]);
        args.extend(extra_gateway.iter().map(|s| (*s).to_owned()));
        spawn_client(dir.path(), args, "HELLO sent")
    });
    let mut args = client_args(dir.path(), "manager", &url);
    args.extend(["-p".into(), "0".into()]);
    args.extend(extra_bridge.iter().map(|s| (*s).to_owned()));
    let mut bridge = spawn_client(dir.path(), args, "bridge listening on");
    if gateway.is_some() {
        bridge.wait_for("peer HELLO received");
    } else {
        bridge.wait_for("HELLO sent");
    }
    Tunnel { _dir: dir, proxy, _gateway: gateway, bridge }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request through the bridge; returns status, headers and body.
async fn call(
    client: &HttpClient,
    bridge: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, http::HeaderMap, Bytes) {
    let mut builder = http::Request::builder().method(method).uri(format!("http://{bridge}{path}"));
    if let Some(media) = content_type {
        builder = builder.header("Content-Type", media);
    }
    let request = builder.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(request))
        .await
        .expect("no HTTP response within 10 s")
        .expect("HTTP request failed");
    let (parts, body) = response.into_parts();
    (parts.status.as_u16(), parts.headers, body.collect().await.unwrap().to_bytes())
}

fn json(bytes: &Bytes) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

// The children are awaited with blocking reads, so the test's own servers need other threads.
#[tokio::test(flavor = "multi_thread")]
async fn rest_calls_travel_the_tunnel_both_ways() {
    let device = start_device().await;
    let t = tunnel(Some(device), &[], &[]);
    let client = http_client();
    let bridge = t.bridge.addr;

    let (status, headers, body) =
        call(&client, bridge, "GET", "/micronets/v1/dhcp/subnets?subnet=a%20b&x=1", None, b"").await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-device"], "mock-gw", "a custom response header arrives");
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
    let echo = json(&body);
    assert_eq!(echo["path"], "/micronets/v1/dhcp/subnets?subnet=a%20b&x=1");
    assert_eq!(echo["host"], device.to_string(), "Host is the forward target");

    let subnet = r#"{"subnetId": "mocksubnet007", "ipv4Network": {"network": "192.168.1.0"}}"#;
    let (status, headers, body) = call(
        &client,
        bridge,
        "POST",
        "/micronets/v1/dhcp/subnets",
        Some("application/json"),
        subnet.as_bytes(),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(headers["content-type"], "application/json");
    let echo = json(&body);
    assert_eq!(echo["contentType"], "application/json");
    assert_eq!(json(&Bytes::from(echo["body"].as_str().unwrap().to_owned())), json(&Bytes::from(subnet)));

    let (status, _, body) =
        call(&client, bridge, "PUT", "/notes/1", Some("text/plain; charset=utf-8"), "héllo wörld".as_bytes())
            .await;
    assert_eq!(status, 200);
    let echo = json(&body);
    assert_eq!(echo["body"], "héllo wörld");
    assert_eq!(echo["contentType"], "text/plain; charset=utf-8");

    let (status, headers, body) =
        call(&client, bridge, "DELETE", "/micronets/v1/dhcp/subnets/mocksubnet007", None, b"").await;
    assert_eq!((status, body.len()), (204, 0));
    assert_eq!(headers["x-device"], "mock-gw");

    let (status, headers, body) =
        call(&client, bridge, "HEAD", "/micronets/v1/dhcp/subnets", None, b"").await;
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(headers["x-device"], "mock-gw");

    let (status, headers, body) = call(&client, bridge, "GET", "/binary", None, b"").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(&body[..], &[0x89, b'P', 0, 0xff], "binary bodies arrive intact");

    let upload: Vec<u8> = (0..=255u8).collect();
    let (status, _, body) =
        call(&client, bridge, "POST", "/upload", Some("application/octet-stream"), &upload).await;
    assert_eq!(status, 201);
    assert_eq!(json(&body)["contentType"], "application/octet-stream");
    drop(t.proxy);
}

// The children are awaited with blocking reads, so the test's own servers need other threads.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_requests_each_get_their_own_answer() {
    let device = start_device().await;
    let t = tunnel(Some(device), &[], &[]);
    let client = http_client();
    let bridge = t.bridge.addr;
    let calls = (0..50).map(|i| {
        let client = client.clone();
        async move {
            let (status, _, body) =
                call(&client, bridge, "GET", &format!("/item/{i}?n={i}"), None, b"").await;
            (i, status, json(&body)["path"].as_str().unwrap().to_owned())
        }
    });
    for (i, status, path) in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200);
        assert_eq!(path, format!("/item/{i}?n={i}"), "request {i} got its own answer");
    }
}

/// A body under the bridge's limit that JSON escaping makes larger than a frame is refused
/// 413 by the bridge, and the session (and every other request on it) goes on: sent, it would
/// have made the relay close the connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_too_large_once_escaped_is_refused_and_the_session_goes_on() {
    let device = start_device().await;
    let t = tunnel(Some(device), &[], &[]);
    let client = http_client();
    let bridge = t.bridge.addr;
    // 200 KiB of control characters: each is escaped to six bytes in the envelope.
    let body = vec![1u8; 200 << 10];
    let (status, _, answer) = call(&client, bridge, "POST", "/echo", Some("text/plain"), &body).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&answer));
    assert!(String::from_utf8_lossy(&answer).contains("once encoded"));
    assert_eq!(call(&client, bridge, "GET", "/item", None, b"").await.0, 200, "the session goes on");
}

/// A gateway serves at most 64 requests at a time: past that, requests are answered 503 at
/// once instead of held while the local service is slow.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_answers_503_past_the_requests_it_serves_at_once() {
    let device = start_device().await;
    let t = tunnel(Some(device), &["--forward-timeout", "5s"], &["--request-timeout", "8s"]);
    let client = http_client();
    let bridge = t.bridge.addr;
    // 70 requests the device never answers: 64 wait for the forwarder's 5 s, 6 are refused.
    let slow = (0..70).map(|_| {
        let client = client.clone();
        async move { call(&client, bridge, "GET", "/slow", None, b"").await.0 }
    });
    let statuses = futures_util::future::join_all(slow).await;
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    let timed_out = statuses.iter().filter(|&&s| s == 504).count();
    assert_eq!((refused, timed_out), (6, 64), "{statuses:?}");
    // The places are free again.
    assert_eq!(call(&client, bridge, "GET", "/item", None, b"").await.0, 200);
}

// The children are awaited with blocking reads, so the test's own servers need other threads.
#[tokio::test(flavor = "multi_thread")]
async fn failures_map_to_503_502_and_504() {
    let client = http_client();
    // No gateway in the room: the proxy answers 503, which passes through.
    let alone = tunnel(None, &[], &[]);
    let (status, _, body) = call(&client, alone.bridge.addr, "GET", "/x", None, b"").await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    drop(alone);

    // The gateway's local service is down: 502.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let down = tunnel(Some(closed), &[], &[]);
    let (status, _, body) = call(&client, down.bridge.addr, "GET", "/x", None, b"").await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    drop(down);

    // The local service never answers: the gateway gives up first, 504.
    let device = start_device().await;
    let slow = tunnel(Some(device), &["--forward-timeout", "300ms"], &["--request-timeout", "5s"]);
    let (status, _, _) = call(&client, slow.bridge.addr, "GET", "/slow", None, b"").await;
    assert_eq!(status, 504);
}

// The children are awaited with blocking reads, so the test's own servers need other threads.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_gateway_gives_504() {
    let client = http_client();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Daemon::start(dir.path(), &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let url = format!("wss://localhost:{}{ROOM}", proxy.addr.port());
    // A peer that says HELLO and then never answers anything.
    let dev = dir.path().join("certs/dev");
    let mut silent = crate::proxy_support::Client::connect(
        proxy.addr,
        &dev.join("micronets-ws-root.cert.pem"),
        &dev.join("micronets-gateway.pkeycert.pem"),
        ROOM,
    )
    .await
    .unwrap();
    silent.hello("silent").await;
    let mut args = client_args(dir.path(), "manager", &url);
    args.extend(["-p", "0", "--request-timeout", "300ms"].map(String::from));
    let mut bridge = spawn_client(dir.path(), args, "bridge listening on");
    bridge.wait_for("peer HELLO received");
    let (status, _, _) = call(&client, bridge.addr, "GET", "/x", None, b"").await;
    assert_eq!(status, 504);
    assert!(silent.recv_text().await.contains("CONN:HELLO"));
    assert!(silent.recv_text().await.contains("REST:REQUEST"), "the request did reach the gateway");
}

// The children are awaited with blocking reads, so the test's own servers need other threads.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_sends_prints_and_quits() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Daemon::start(dir.path(), &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let url = format!("wss://localhost:{}{ROOM}", proxy.addr.port());
    let mut a = spawn_client(dir.path(), client_args(dir.path(), "manager", &url), "HELLO sent");
    let mut args = client_args(dir.path(), "gateway", &url);
    args.extend(["--peer-id", "gw-1"].map(String::from));
    let mut b = spawn_client(dir.path(), args, "HELLO sent");
    let hello = a.stdout_line();
    assert!(hello.contains("\"peerId\":\"gw-1\""), "{hello}");
    b.stdout_line();

    a.type_line(r#"event leaseAcquired {"macAddress": "b8:27:eb:00:00:01"}"#);
    let event: serde_json::Value = serde_json::from_str(&b.stdout_line()).unwrap();
    assert_eq!(event["message"]["messageType"], "EVENT:leaseAcquired");
    assert_eq!(event["message"]["messageBody"]["macAddress"], "b8:27:eb:00:00:01");
    b.type_line(r#"{"message": {"messageId": 77, "messageType": "EVENT:raw"}}"#);
    assert_eq!(a.stdout_line().trim(), r#"{"message": {"messageId": 77, "messageType": "EVENT:raw"}}"#);
    a.type_line("this is not an envelope");
    a.wait_for("not sent");
    // A response nobody asked for is logged and ignored, not printed.
    b.type_line(r#"{"message": {"messageId": 78, "messageType": "REST:RESPONSE", "inResponseTo": 999, "statusCode": 200}}"#);
    a.wait_for("REST:RESPONSE for no pending request");
    b.type_line(r#"{"message": {"messageId": 79, "messageType": "EVENT:after"}}"#);
    assert!(a.stdout_line().contains("EVENT:after"), "the ignored response was not printed");

    a.type_line("quit");
    assert_eq!(a.wait_exit(), Some(0));
    let left: serde_json::Value = serde_json::from_str(&b.stdout_line()).unwrap();
    assert_eq!(left["message"]["messageType"], "CONN:PEER-LEFT");
    b.close_stdin();
    assert_eq!(b.wait_exit(), Some(0));
}

// The children are awaited with blocking reads, so the test's own servers need other threads.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_upgrade_is_reported_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Daemon::start(dir.path(), &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let url = format!("wss://localhost:{}/wrong/path", proxy.addr.port());
    // The original test client's short flags.
    let mut args = client_args(dir.path(), "manager", &url);
    args[0] = "-cc".into();
    args[2] = "-ca".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_bin(dir.path(), "ws-client", &args).code(1).stderr_has("HTTP 404").stderr_has("path must start with");
    run_bin(dir.path(), "ws-client", &["http://x/"]).code(64).stderr_has("only wss://");
}

/// An HTTP CONNECT proxy written here: accepts one tunnel, records the request line, and
/// splices bytes both ways.
async fn connect_proxy() -> (SocketAddr, tokio::sync::oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(client.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        let target = head.split_whitespace().nth(1).unwrap().to_owned();
        let _ = seen_tx.send(head.clone());
        let mut upstream = tokio::net::TcpStream::connect(target).await.unwrap();
        client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    (addr, seen)
}

// The children are awaited with blocking reads, so the test's own servers need other threads.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_through_an_http_connect_proxy_works() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Daemon::start(dir.path(), &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let (via, seen) = connect_proxy().await;
    let url = format!("wss://localhost:{}{ROOM}", proxy.addr.port());
    let mut args = client_args(dir.path(), "manager", &url);
    args.extend(["--via".into(), format!("http://{via}")]);
    let mut tunneled = spawn_client(dir.path(), args, "HELLO sent");
    let head = tokio::time::timeout(std::time::Duration::from_secs(10), seen).await.unwrap().unwrap();
    assert_eq!(
        head.lines().next(),
        Some(format!("CONNECT localhost:{} HTTP/1.1", proxy.addr.port()).as_str())
    );
    assert!(!head.contains("Proxy-Authorization"), "{head}");
    let mut peer = spawn_client(dir.path(), client_args(dir.path(), "gateway", &url), "HELLO sent");
    assert!(tunneled.stdout_line().contains("CONN:HELLO"));
    assert!(peer.stdout_line().contains("CONN:HELLO"));
}

/// A proxy URL's user and password go as `Proxy-Authorization: Basic`, decoded, and are
/// never written to the log.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_credentials_are_sent_and_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Daemon::start(dir.path(), &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let (via, seen) = connect_proxy().await;
    let url = format!("wss://localhost:{}{ROOM}", proxy.addr.port());
    let mut args = client_args(dir.path(), "manager", &url);
    args.extend(["--via".into(), format!("http://operator:p%40ss-w0rd@{via}"), "--trace".into()]);
    let tunneled = spawn_client(dir.path(), args, "HELLO sent");
    let head = tokio::time::timeout(std::time::Duration::from_secs(10), seen).await.unwrap().unwrap();
    // base64("operator:p@ss-w0rd")
    assert!(head.contains("Proxy-Authorization: Basic b3BlcmF0b3I6cEBzcy13MHJk\r\n"), "{head}");
    let log = tunneled.log();
    assert!(!log.contains("w0rd"), "{log}");
    // A proxy that cannot be reached: the error names it without the password.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut args = client_args(dir.path(), "manager", &url);
    args.extend(["--via".into(), format!("http://operator:p%40ss-w0rd@{closed}")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let failed = run_bin(dir.path(), "ws-client", &args).code(1).stderr_has("proxy http://***@127.0.0.1:");
    assert!(!failed.stderr().contains("w0rd"), "{}", failed.stderr());
}

// The children are awaited with blocking reads, so the test's own servers need other threads.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_reconnects_after_the_proxy_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Daemon::start(dir.path(), &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let port = proxy.addr.port();
    let url = format!("wss://localhost:{port}{ROOM}");
    let mut args = client_args(dir.path(), "manager", &url);
    args.push("--reconnect".into());
    let mut client = spawn_client(dir.path(), args, "HELLO sent");
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(), Some(0));
    client.wait_for("reconnecting");
    let bind = format!("127.0.0.1:{port}");
    let _proxy = Daemon::start(dir.path(), &["--dev", "--bind", &bind], &[]);
    client.wait_for("HELLO sent");
    let _peer = spawn_client(dir.path(), client_args(dir.path(), "gateway", &url), "HELLO sent");
    assert!(client.stdout_line().contains("CONN:HELLO"), "the reconnected client is in the room again");
}

/// After the relay restarts and both ends reconnect, an HTTP client's kept-alive connection to
/// the bridge is not left tied to the old session: the next request travels the new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_bridge_connection_does_not_outlive_its_session() {
    let device = start_device().await;
    let mut t = tunnel(Some(device), &[], &["--reconnect"]);
    let client = http_client();
    let bridge = t.bridge.addr;
    assert_eq!(call(&client, bridge, "GET", "/before", None, b"").await.0, 200);
    let port = t.proxy.addr.port();
    t.proxy.signal("TERM");
    assert_eq!(t.proxy.wait_exit(), Some(0));
    t.bridge.wait_for("reconnecting");
    let bind = format!("127.0.0.1:{port}");
    t.proxy = Daemon::start(t._dir.path(), &["--dev", "--bind", &bind], &[]);
    t.bridge.wait_for("peer HELLO received");
    assert_eq!(call(&client, bridge, "GET", "/after", None, b"").await.0, 200, "through the new session");
}

/// A relay that stops answering without closing (a dead uplink, a NAT that forgot the
/// connection; here the relay stopped with SIGSTOP) is noticed by the client's keepalive, and
/// the client reconnects once the relay answers again.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_relay_is_noticed_and_the_client_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Daemon::start(dir.path(), &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let url = format!("wss://localhost:{}{ROOM}", proxy.addr.port());
    let mut args = client_args(dir.path(), "manager", &url);
    args.extend(["--reconnect", "--keepalive", "300ms", "--max-retry-delay", "1s"].map(String::from));
    let mut client = spawn_client(dir.path(), args, "HELLO sent");
    proxy.signal("STOP");
    let dead = client.wait_for("the connection is dead");
    assert!(dead.contains("reconnecting") || dead.contains("connection"), "{dead}");
    proxy.signal("CONT");
    client.wait_for("HELLO sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_handshake_stops_retries_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Daemon::start(dir.path(), &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let url = format!("wss://localhost:{}/not/the/prefix", proxy.addr.port());
    let mut args = client_args(dir.path(), "manager", &url);
    args.extend(["--reconnect", "--no-retry-bad-handshake"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_bin(dir.path(), "ws-client", &args).code(1).stderr_has("HTTP 404");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_verification_options() {
    let dir = tempfile::tempdir().unwrap();
    run_bin(dir.path(), "certgen", &["dev"]).success();
    // A proxy certificate without any SAN, like the original deployment's.
    let ca = [
        "--ca-certfile",
        "certs/dev/micronets-ws-root.cert.pem",
        "--ca-keyfile",
        "certs/dev/micronets-ws-root.key.pem",
    ];
    let mut leaf =
        vec!["leaf", "--cert-basename", "nosan", "--subject-org-name", "Proxy", "--usage", "server"];
    leaf.extend(ca);
    run_bin(dir.path(), "certgen", &leaf).success();
    let proxy = Daemon::start(
        dir.path(),
        &[
            "--server-cert",
            "nosan.pkeycert.pem",
            "--ca-certs",
            "certs/dev/micronets-ws-root.cert.pem",
            "--bind",
            "127.0.0.1:0",
        ],
        &[],
    );
    let url = format!("wss://localhost:{}{ROOM}", proxy.addr.port());
    let strict = client_args(dir.path(), "manager", &url);
    let strict: Vec<&str> = strict.iter().map(String::as_str).collect();
    run_bin(dir.path(), "ws-client", &strict).code(1).stderr_has("not valid for");
    let mut lenient = client_args(dir.path(), "manager", &url);
    lenient.push("--skip-hostname-check".into());
    spawn_client(dir.path(), lenient, "HELLO sent");

    // A CA that did not issue the proxy's certificate: refused, unless --insecure.
    root_other(dir.path());
    let mut wrong_ca = client_args(dir.path(), "manager", &url);
    wrong_ca[3] = "other.cert.pem".into();
    let args: Vec<&str> = wrong_ca.iter().map(String::as_str).collect();
    run_bin(dir.path(), "ws-client", &args).code(1).stderr_has("UnknownIssuer");
    wrong_ca.push("--insecure".into());
    let insecure = spawn_client(dir.path(), wrong_ca, "HELLO sent");
    assert!(insecure.log().contains("NOT verified"), "--insecure warns loudly");

    // Without --ca-cert the system trust store is used, which does not know the private root.
    let cert = dir.path().join("certs/dev/micronets-manager.pkeycert.pem").display().to_string();
    let run = run_bin(dir.path(), "ws-client", &["--client-cert", &cert, &url]).code(1);
    assert!(
        run.stderr().contains("UnknownIssuer") || run.stderr().contains("no CA certificates"),
        "{}",
        run.stderr()
    );
}

fn root_other(dir: &Path) {
    run_bin(dir, "certgen", &["root", "--cert-basename", "other", "--subject-org-name", "Other"]).success();
}

#[tokio::test(flavor = "multi_thread")]
async fn https_proxy_from_the_environment_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Daemon::start(dir.path(), &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let (via, seen) = connect_proxy().await;
    let url = format!("wss://localhost:{}{ROOM}", proxy.addr.port());
    let args = client_args(dir.path(), "manager", &url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let via = format!("http://{via}");
    let _client = Daemon::spawn(
        "ws-client",
        dir.path(),
        &args,
        &[("HTTPS_PROXY", via.as_str()), ("NO_PROXY", "")],
        "HELLO sent",
    );
    let request_line = tokio::time::timeout(std::time::Duration::from_secs(10), seen).await.unwrap().unwrap();
    let request_line = request_line.lines().next().unwrap_or_default().to_owned();
    assert!(request_line.starts_with("CONNECT localhost:"), "{request_line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_with_one_certificate_settle_on_one_member_while_the_other_backs_off() {
    let device = start_device().await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Daemon::start(dir.path(), &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let admin = proxy.admin();
    let url = format!("wss://localhost:{}{ROOM}", proxy.addr.port());
    let gateway = |peer_id: &str, ready: &str| {
        let mut args = client_args(dir.path(), "gateway", &url);
        args.extend(["--peer-class".into(), "micronets-gateway-service".into()]);
        args.extend(["--peer-id".into(), peer_id.into(), "--forward-to".into(), format!("http://{device}")]);
        spawn_client(dir.path(), args, ready)
    };
    let first = gateway("gw-a", "HELLO sent");
    // --forward-to reconnects by default: the refusal is logged, and it backs off.
    let second = gateway("gw-b", "409");
    let observed = std::time::Instant::now();
    let mut polls = 0;
    while observed.elapsed() < std::time::Duration::from_secs(5) {
        let rooms = admin_request(admin, "GET", "/v1/rooms").await.1;
        let rooms: serde_json::Value = serde_json::from_str(&rooms).unwrap();
        let members = rooms[0]["members"].as_array().cloned().unwrap_or_default();
        assert_eq!(members.len(), 1, "{rooms}");
        assert_eq!(members[0]["peer_id"], "gw-a", "the first is never displaced: {rooms}");
        polls += 1;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(polls >= 10, "observed for the whole window");
    let metrics = admin_request(admin, "GET", "/metrics").await.1;
    let kept = sample(&metrics, "ws_proxy_identity_conflicts_total{outcome=\"kept\"}");
    assert!((1.0..=3.0).contains(&kept), "a bounded number of attempts in 5 s: {kept}\n{metrics}");
    assert_eq!(sample(&metrics, "ws_proxy_identity_conflicts_total{outcome=\"replaced\"}"), 0.0, "{metrics}");
    let refusals = second.log().lines().filter(|l| l.contains("409")).count();
    assert_eq!(refusals, 1, "each refusal logged once:\n{}", second.log());
    assert!(!first.log().contains("connection to the relay ended"), "{}", first.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_response_headers_leaves_headers_out_of_the_forwarders_responses() {
    let device = start_device().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Daemon::start(dir.path(), &["--dev", "--bind", "127.0.0.1:0"], &[]);
    let url = format!("wss://localhost:{}{ROOM}", proxy.addr.port());
    let mut args = client_args(dir.path(), "gateway", &url);
    args.extend(["--forward-to".into(), format!("http://{device}"), "--no-response-headers".into()]);
    let _gateway = spawn_client(dir.path(), args, "HELLO sent");
    let dev = dir.path().join("certs/dev");
    // The original test client's bridge, as far as the wire goes.
    let mut bridge = crate::proxy_support::Client::connect(
        proxy.addr,
        &dev.join("micronets-ws-root.cert.pem"),
        &dev.join("micronets-manager.pkeycert.pem"),
        ROOM,
    )
    .await
    .unwrap();
    bridge.hello("original-bridge").await;
    assert!(bridge.recv_text().await.contains("CONN:HELLO"));
    bridge
        .send_text(r#"{"message": {"messageId": 9, "messageType": "REST:REQUEST", "requiresResponse": true, "method": "GET", "path": "/leases"}}"#)
        .await;
    let response = bridge.recv_message().await;
    assert_eq!((response["statusCode"].as_u64(), response["inResponseTo"].as_u64()), (Some(200), Some(9)));
    assert!(response.get("headers").is_none(), "no headers: {response}");
    assert_eq!(response["messageBody"]["path"], "/leases", "the body still travels: {response}");
}
