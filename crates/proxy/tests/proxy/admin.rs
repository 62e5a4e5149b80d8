//! The admin endpoint: health and readiness, the rooms API, and the Prometheus metrics moving
//! with what the proxy does.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Pki, pair, sample, start, start_toml, tls_connect, within};

#[tokio::test]
async fn health_readiness_and_bad_requests() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    assert_eq!(proxy.admin("GET", "/healthz").await, (200, "ok\n".into()));
    assert_eq!(proxy.admin("GET", "/readyz").await.0, 200);
    let (status, body) = proxy.admin("GET", "/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("/metrics"), "{body}");
    assert_eq!(proxy.admin("POST", "/metrics").await.0, 405);
    assert_eq!(proxy.admin("DELETE", "/v1/rooms/x").await.0, 405);
    let (status, body) = proxy.admin("GET", "/v1/rooms/not/there").await;
    assert_eq!(status, 404);
    assert!(body.contains("not/there"), "{body}");
    proxy.stop().await;
}

#[tokio::test]
async fn the_rooms_api_matches_what_is_connected() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    assert_eq!(proxy.admin("GET", "/v1/rooms").await, (200, "[]".into()));
    let (mut a, mut b) = pair(&proxy, "gw/1").await;
    let (_lone, _) = proxy.join("test-client", "lone", "c").await;
    for i in 0..3 {
        a.send_text(&format!(r#"{{"message": {{"messageId": {i}, "messageType": "EVENT:x"}}}}"#)).await;
        b.recv_text().await;
    }

    let (status, body) = proxy.admin("GET", "/v1/rooms").await;
    assert_eq!(status, 200);
    let rooms: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = rooms.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["gw/1", "lone"]);

    // A frame is counted as out once written and as in once its sender's connection has
    // nothing more to read, either of which may be just after the receiver read it.
    let room = within("counters settle", async {
        loop {
            let (status, body) = proxy.admin("GET", "/v1/rooms/gw/1").await;
            assert_eq!(status, 200);
            let room: Value = serde_json::from_str(&body).unwrap();
            if room["members"][1]["frames_out"] == 4 && room["members"][0]["frames_in"] == 3 {
                return room;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let members = room["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{room}");
    let (ma, mb) = (&members[0], &members[1]);
    assert_eq!(ma["peer_id"], "a");
    assert_eq!(ma["peer_class"], "test");
    assert!(ma["subject"].as_str().unwrap().contains("CN=manager"), "{ma}");
    assert_eq!(ma["fingerprint"].as_str().unwrap().len(), 64);
    assert!(ma["connected_since"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(ma["frames_in"], 3);
    assert_eq!(mb["peer_id"], "b");
    assert!(mb["subject"].as_str().unwrap().contains("CN=gateway"), "{mb}");
    assert_eq!(mb["frames_in"], 0);
    assert_eq!(mb["frames_out"], 4, "a's HELLO and its three events");
    assert_eq!(mb["bytes_out"].as_u64(), Some(ma["bytes_in"].as_u64().unwrap() + first_hello_len()));

    b.close().await;
    within("b leaves", async {
        loop {
            let (_, body) = proxy.admin("GET", "/v1/rooms/gw/1").await;
            let room: Value = serde_json::from_str(&body).unwrap();
            if room["members"].as_array().unwrap().len() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    proxy.stop().await;
}

/// The length of the HELLO the test client sends as peer `a`.
fn first_hello_len() -> u64 {
    r#"{"message": {"messageId": 0, "messageType": "CONN:HELLO", "requiresResponse": false, "peerClass": "test", "peerId": "a"}}"#.len() as u64
}

#[tokio::test]
async fn every_metric_appears_and_moves() {
    let pki = Pki::new();
    let proxy = start(&pki, "[rooms]\nhold_max_messages = 1\n").await;
    let scrape = || async { proxy.admin("GET", "/metrics").await.1 };
    let before = scrape().await;
    for name in [
        "ws_proxy_build_info{version=",
        "ws_proxy_connections_open ",
        "ws_proxy_connections_accepted_total ",
        "ws_proxy_rooms ",
        "ws_proxy_members ",
        "ws_proxy_joins_total ",
        "ws_proxy_replies_total ",
        "ws_proxy_slow_consumer_disconnects_total ",
        "ws_proxy_held_messages ",
        "ws_proxy_held_bytes ",
        "ws_proxy_held_total ",
        "ws_proxy_held_refused_total ",
        "ws_proxy_held_discarded_total ",
        "ws_proxy_relay_latency_seconds_count ",
        "# HELP ws_proxy_relay_latency_seconds ",
        "# TYPE ws_proxy_frames_total counter",
    ] {
        assert!(before.contains(name), "missing {name:?} in\n{before}");
    }
    assert!(before.contains("sampled: one frame in 64"), "{before}");

    // A lone member holds a message and is refused a second (503); a handshake without a
    // certificate fails; a bad path is refused; then a pair relays text and binary frames and
    // one invalid envelope (400).
    let (mut lone, _) = proxy.join("test-client", "lone", "c").await;
    lone.send_text(r#"{"message": {"messageId": 1, "messageType": "EVENT:held"}}"#).await;
    lone.send_text(r#"{"message": {"messageId": 2, "messageType": "EVENT:refused"}}"#).await;
    assert_eq!(lone.recv_message().await["statusCode"], 503);
    let mut tls = within("handshake", tls_connect(proxy.addr, &pki.dev.root_cert(), None)).await.unwrap();
    let _ = within("refusal", tls.read(&mut [0u8; 1])).await;
    let response = proxy.raw_request("manager", "GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    let (mut a, mut b) = pair(&proxy, "gw/1").await;
    a.send_text(r#"{"message": {"messageId": 1, "messageType": "EVENT:x"}}"#).await;
    b.recv_text().await;
    a.send(Message::binary(vec![7u8; 100])).await;
    b.recv().await;
    a.send_text("not json").await;
    assert_eq!(a.recv_message().await["statusCode"], 400);

    // The proxy counts some events just after the client has seen their effect (a relayed
    // frame is counted once queued to every receiver; a refused connection once its task
    // ends): scrape until every series has moved, or give up and show which did not.
    let expected = [
        ("ws_proxy_connections_open", 3.0),
        ("ws_proxy_connections_accepted_total", 5.0),
        ("ws_proxy_connections_total{outcome=\"tls_failed\"}", 1.0),
        ("ws_proxy_connections_total{outcome=\"upgrade_refused\"}", 1.0),
        ("ws_proxy_tls_handshake_failures_total{reason=\"no_client_certificate\"}", 1.0),
        ("ws_proxy_upgrade_refusals_total{status=\"404\"}", 1.0),
        ("ws_proxy_rooms", 2.0),
        ("ws_proxy_members", 3.0),
        ("ws_proxy_joins_total", 3.0),
        ("ws_proxy_held_messages", 1.0),
        ("ws_proxy_held_total", 1.0),
        ("ws_proxy_held_refused_total", 1.0),
        ("ws_proxy_frames_total{direction=\"in\",type=\"text\"}", 4.0),
        ("ws_proxy_frames_total{direction=\"in\",type=\"binary\"}", 1.0),
        ("ws_proxy_frames_total{direction=\"out\",type=\"text\"}", 1.0),
        ("ws_proxy_frames_total{direction=\"out\",type=\"binary\"}", 1.0),
        ("ws_proxy_bytes_total{direction=\"in\",type=\"binary\"}", 100.0),
        ("ws_proxy_bytes_total{direction=\"out\",type=\"binary\"}", 100.0),
        ("ws_proxy_conn_errors_total{status=\"400\"}", 1.0),
        ("ws_proxy_conn_errors_total{status=\"503\"}", 1.0),
        ("ws_proxy_replies_total", 2.0),
        // The first frame of each connection is timed: the lone one's and a's.
        ("ws_proxy_relay_latency_seconds_count", 2.0),
    ];
    let moved = |after: &str, series: &str| sample(after, series) - sample(&before, series);
    let mut after = scrape().await;
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    while expected.iter().any(|(series, by)| moved(&after, series) != *by)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        after = scrape().await;
    }
    for (series, by) in expected {
        assert_eq!(moved(&after, series), by, "{series}\n{after}");
    }
    assert!(sample(&after, "ws_proxy_held_bytes") > 0.0);

    lone.close().await;
    a.close().await;
    b.close().await;
    within("connections end", async {
        while sample(&scrape().await, "ws_proxy_connections_total{outcome=\"peer_closed\"}") < 3.0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let last = scrape().await;
    assert_eq!(sample(&last, "ws_proxy_held_discarded_total"), 1.0, "{last}");
    assert_eq!(sample(&last, "ws_proxy_connections_open"), 0.0, "{last}");
    proxy.stop().await;
}

/// An open endpoint (loopback, no token) answers only requests that name this machine: a web
/// page that rebinds a name of its own to 127.0.0.1 cannot read the rooms through the
/// operator's browser.
#[tokio::test]
async fn an_open_endpoint_answers_only_requests_to_this_machine() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let get = |path: &'static str, host: String| {
        let admin = proxy.admin;
        async move {
            within("admin request", async {
                let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
                let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
                tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes()).await.unwrap();
                let mut response = String::new();
                tcp.read_to_string(&mut response).await.unwrap();
                response.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()).unwrap_or(0)
            })
            .await
        }
    };
    let port = proxy.admin.port();
    assert_eq!(get("/v1/rooms", "rebound.example:9090".into()).await, 421);
    assert_eq!(get("/healthz", "rebound.example".into()).await, 200, "health checks answer everyone");
    for host in
        [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}"), "10.1.2.3".into()]
    {
        assert_eq!(get("/v1/rooms", host.clone()).await, 200, "{host}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn idle_admin_connections_cannot_starve_the_health_checks() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    // More idle connections than the endpoint serves in all, from one address (not the
    // probes' 127.0.0.1): it keeps 16 of them and closes the rest at once.
    let mut idle = Vec::new();
    for _ in 0..200 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(within("idle connect", socket.connect(proxy.admin)).await.unwrap());
    }
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(3), idle[199].read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "past 16 from one address: closed at once: {closed:?}");
    // A half-sent request head holds its connection too.
    let mut slow = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut slow, b"GET /healthz HTTP/1.1\r\nHost: a").await.unwrap();
    for path in ["/healthz", "/readyz"] {
        let started = std::time::Instant::now();
        assert_eq!(proxy.admin("GET", path).await.0, 200);
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{path} took {:?}", started.elapsed());
    }
    // The idle ones kept are cut after the header timeout (5 s), not kept for ever.
    let cut = tokio::time::timeout(std::time::Duration::from_secs(8), idle[0].read(&mut byte)).await;
    assert!(matches!(cut, Ok(Ok(0) | Err(_))), "an idle admin connection is closed: {cut:?}");
    let cut = tokio::time::timeout(std::time::Duration::from_secs(3), slow.read(&mut byte)).await;
    assert!(cut.is_ok(), "so is one whose head never ends");
    proxy.stop().await;
}

#[tokio::test]
async fn certificates_about_to_expire_are_listed_connected_or_seen_and_measured() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let day = 86_400u64;
    let (soon, soon_after) = pki.short_lived("gw-soon", Duration::from_secs(5 * day));
    let (later, _) = pki.short_lived("gw-later", Duration::from_secs(20 * day));
    let mut connected = proxy.connect_with(&soon, "gw/soon").await;
    connected.hello("soon").await;
    // Seen, then gone: still listed, with the room it asked for.
    let mut visitor = proxy.connect_with(&later, "gw/later").await;
    visitor.hello("later").await;
    visitor.close().await;
    within("the visitor leaves", async {
        while proxy.admin("GET", "/v1/rooms/gw/later").await.0 == 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let list = |body: String| -> Vec<Value> {
        serde_json::from_str::<Value>(&body).unwrap().as_array().unwrap().clone()
    };
    let (status, body) = proxy.admin("GET", "/v1/certificates?expiring_within=30d").await;
    assert_eq!(status, 200, "{body}");
    let all = list(body);
    assert_eq!(all.len(), 2, "{all:?}");
    let not_after = soon_after.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(all[0]["subject"], "CN=gw-soon, O=Test", "soonest first: {all:?}");
    assert_eq!(all[0]["not_after"], not_after);
    assert_eq!(all[0]["connected"], true);
    assert_eq!(all[0]["rooms"], serde_json::json!(["gw/soon"]));
    assert!(all[0]["serial"].as_str().is_some_and(|s| s.len() >= 2 && s != "-"), "{all:?}");
    assert_eq!(all[1]["connected"], false);
    assert_eq!(all[1]["rooms"], serde_json::json!(["gw/later"]));
    assert!(all[1]["last_seen"].as_i64().unwrap() > 0);
    // The dev identities (valid for years) are not in a 30-day window; within 10 days only one.
    let (_, body) = proxy.admin("GET", "/v1/certificates?expiring_within=10d").await;
    assert_eq!(list(body).len(), 1);
    let (status, body) = proxy.admin("GET", "/v1/certificates?expiring_within=soon").await;
    assert_eq!(status, 400);
    assert!(body.contains("expiring_within"), "{body}");

    let (_, rooms) = proxy.admin("GET", "/v1/rooms/gw/soon").await;
    let room: Value = serde_json::from_str(&rooms).unwrap();
    assert_eq!(room["members"][0]["not_after"], not_after);

    let (_, metrics) = proxy.admin("GET", "/metrics").await;
    assert_eq!(sample(&metrics, "ws_proxy_peer_certificate_expiry_seconds_count"), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "ws_proxy_peer_certificate_expiry_seconds_bucket{le=\"86400\"}"), 0.0);
    assert_eq!(sample(&metrics, "ws_proxy_peer_certificate_expiry_seconds_bucket{le=\"604800\"}"), 1.0);
    let soonest = sample(&metrics, "ws_proxy_peer_certificate_soonest_expiry_seconds");
    assert!((5.0 * 86_400.0 - 120.0..=5.0 * 86_400.0).contains(&soonest), "{soonest}");
    assert!(sample(&metrics, "ws_proxy_server_certificate_expiry_seconds") > 30.0 * 86_400.0, "{metrics}");
    assert!(metrics.contains("ws_proxy_ca_certificate_expiry_seconds{subject=\""), "{metrics}");
    assert_eq!(sample(&metrics, "ws_proxy_certificate_expiry_warnings_total"), 2.0);
    proxy.stop().await;
}

/// `GET path` over TLS to the admin endpoint, as `cert` (or with no certificate) and with
/// `token` (if any): the status code and the body, or the TLS error.
async fn admin_tls(
    proxy: &crate::support::TestProxy,
    cert: Option<&str>,
    token: Option<&str>,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let cert = cert.map(|name| proxy.pki.client(name));
    let mut tls = tls_connect(proxy.admin, &proxy.pki.dev.root_cert(), cert.as_deref()).await?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}Connection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut tls, request.as_bytes()).await?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned()))
}

#[tokio::test]
async fn a_token_protects_everything_but_health_and_readiness() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    let token_file = pki.path("admin.token");
    std::fs::write(&token_file, "s3cret-token-of-the-operators\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let proxy = start(&pki, &format!("[admin]\ntoken_file = {:?}\n", token_file.display().to_string())).await;
    assert_eq!(proxy.admin("GET", "/healthz").await.0, 200);
    assert_eq!(proxy.admin("GET", "/readyz").await.0, 200);
    for path in ["/metrics", "/v1/rooms", "/v1/overview", "/v1/certificates", "/"] {
        let (status, body) = proxy.admin("GET", path).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("token"), "{body}");
    }
    let with = |authorization: String| {
        let admin = proxy.admin;
        async move {
            within("admin request", async {
                let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
                let request = format!(
                    "GET /v1/rooms HTTP/1.1\r\nHost: admin\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n"
                );
                tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes()).await.unwrap();
                let mut response = String::new();
                tcp.read_to_string(&mut response).await.unwrap();
                response
            })
            .await
        }
    };
    assert!(with("Bearer s3cret-token-of-the-operators".into()).await.starts_with("HTTP/1.1 200"));
    let refused = with("Bearer s3cret-token-of-the-operatorz".into()).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    // A browser is asked for the token as a password, and sends it so.
    assert!(refused.contains("www-authenticate: Basic realm="), "{refused}");
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode("operator:s3cret-token-of-the-operators")
    };
    assert!(with(format!("Basic {basic}")).await.starts_with("HTTP/1.1 200"));
    proxy.stop().await;

    // A token file others may read is refused at start.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let toml = format!(
        "[tls]\nserver_cert = {:?}\nclient_ca = {:?}\n[admin]\ntoken_file = {:?}\n",
        pki.dev.pkeycert(&micronets_certgen::dev::PROXY).display().to_string(),
        pki.dev.root_cert().display().to_string(),
        token_file.display().to_string()
    );
    let config = micronets_proxy::config::FileConfig::parse(&toml)
        .unwrap()
        .into_config(&micronets_proxy::config::Overrides::default())
        .unwrap();
    let err = micronets_proxy::Proxy::new(config).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("admin.token_file") && err.contains("chmod 600"), "{err}");
}

#[tokio::test]
async fn allowed_client_certificates_or_the_token_open_the_tls_endpoint() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    let token_file = pki.path("admin.token");
    std::fs::write(&token_file, "s3cret-token-of-the-operators").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let extra = format!(
        "[admin]\ntoken_file = {:?}\n[[admin.allow]]\ncn = \"manager\"\n",
        token_file.display().to_string()
    );
    let proxy = start(&pki, &extra).await;
    // TLS, with the server certificate of the relay.
    assert_eq!(admin_tls(&proxy, Some("manager"), None, "/v1/rooms").await.unwrap(), (200, "[]".into()));
    assert_eq!(admin_tls(&proxy, Some("gateway"), None, "/v1/rooms").await.unwrap().0, 401, "not allowed");
    assert_eq!(admin_tls(&proxy, None, None, "/v1/rooms").await.unwrap().0, 401, "no certificate, no token");
    let by_token = admin_tls(&proxy, None, Some("s3cret-token-of-the-operators"), "/v1/rooms").await.unwrap();
    assert_eq!(by_token.0, 200);
    assert_eq!(admin_tls(&proxy, None, None, "/healthz").await.unwrap(), (200, "ok\n".into()));
    // Plain HTTP to a TLS endpoint gets nothing.
    let mut tcp = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET /v1/rooms HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = within("plain HTTP refused", tcp.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"), "{answer:?}");
    proxy.stop().await;
}

/// With `[[admin.allow]]` and no token, a load balancer's probe, which has no certificate,
/// still gets `/readyz` and `/healthz`; everything else asks for an allowed certificate.
#[tokio::test]
async fn health_checks_answer_a_probe_without_a_certificate_when_only_certificates_open_the_rest() {
    let pki = Pki::new();
    let proxy = start(&pki, "[[admin.allow]]\ncn = \"manager\"\n").await;
    assert_eq!(admin_tls(&proxy, None, None, "/readyz").await.unwrap().0, 200);
    assert_eq!(admin_tls(&proxy, None, None, "/healthz").await.unwrap(), (200, "ok\n".into()));
    assert_eq!(admin_tls(&proxy, None, None, "/metrics").await.unwrap().0, 401);
    assert_eq!(admin_tls(&proxy, Some("gateway"), None, "/metrics").await.unwrap().0, 401, "not allowed");
    assert_eq!(admin_tls(&proxy, Some("manager"), None, "/v1/rooms").await.unwrap(), (200, "[]".into()));
    proxy.stop().await;
}

#[tokio::test]
async fn a_reload_gives_the_tls_endpoint_the_new_crl() {
    use micronets_certgen::{Authority, crl, dev};
    let pki = Pki::new();
    let root = Authority::load(&pki.dev.root_cert(), &pki.dev.file(dev::ROOT, ".key.pem")).unwrap();
    let crl_file = pki.path("root.crl.pem");
    crl::revoke(&root, &crl_file, &crl::serial_of(&pki.client("long-gone")).unwrap(), 30).unwrap();
    let toml = format!(
        "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = {:?}\nclient_ca = {:?}\ncrl_files = [{:?}]\n\
         [shutdown]\ndrain_window = \"100ms\"\n[[admin.allow]]\ncn = \"manager\"\n",
        pki.dev.pkeycert(&dev::PROXY).display().to_string(),
        pki.dev.root_cert().display().to_string(),
        crl_file.display().to_string(),
    );
    let proxy = start_toml(&pki, &toml).await;
    assert_eq!(admin_tls(&proxy, Some("manager"), None, "/v1/rooms").await.unwrap(), (200, "[]".into()));

    crl::revoke(&root, &crl_file, &crl::serial_of(&pki.client("manager")).unwrap(), 30).unwrap();
    proxy.proxy.reload().unwrap();
    let refused = admin_tls(&proxy, Some("manager"), None, "/v1/rooms").await;
    let error = refused.expect_err("a certificate revoked by the reloaded CRL opens nothing");
    assert!(error.to_string().contains("Revoked"), "{error}");
    assert_eq!(
        admin_tls(&proxy, Some("gateway"), None, "/healthz").await.unwrap().0,
        200,
        "the rest still served"
    );
    proxy.stop().await;
}
