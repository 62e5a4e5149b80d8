//! Cluster mode with the real binary: two `ws-proxy` processes against one `redis-server`.

use std::path::Path;

use crate::proxy_support::{Client, within};
use crate::redis_server::Redis;
use crate::support::ProxyProcess;

/// Starts a node named `name` with the dev PKI under `dir/certs/dev`.
fn node(dir: &Path, redis: &Redis, name: &str) -> ProxyProcess {
    let file = dir.join(format!("{name}.toml"));
    let text = format!(
        "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = \"certs/dev/micronets-ws-proxy.pkeycert.pem\"\nclient_ca = \"certs/dev/micronets-ws-root.cert.pem\"\n[admin]\nbind = \"127.0.0.1:0\"\n[cluster]\nredis_url = \"{}\"\nnode_id = \"{name}\"\npresence_ttl = \"2s\"\ncommand_timeout = \"500ms\"\n",
        redis.url()
    );
    std::fs::write(&file, text).unwrap();
    let node = ProxyProcess::start(dir, &["--config", file.to_str().unwrap()], &[]);
    assert!(node.log().contains("cluster mode"), "{}", node.log());
    node
}

async fn member(node: &ProxyProcess, dir: &Path, who: &str, peer: &str) -> Client {
    let dev = dir.join("certs/dev");
    let cert = dev.join(format!("micronets-{who}.pkeycert.pem"));
    let root = dev.join("micronets-ws-root.cert.pem");
    let mut client =
        within("connect", Client::connect(node.addr, &root, &cert, "/micronets/v1/ws-proxy/gw/gateway"))
            .await
            .unwrap();
    client.hello(peer).await;
    client
}

#[tokio::test]
async fn a_node_killed_with_sigkill_is_forgotten_within_the_presence_ttl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    micronets_certgen::dev::ensure(&micronets_certgen::dev::DevPki::new(dir.join("certs/dev"))).unwrap();
    let redis = Redis::start().await;
    let one = node(dir, &redis, "one");
    let two = node(dir, &redis, "two");

    let mut manager = member(&one, dir, "manager", "m").await;
    let mut gateway = member(&two, dir, "gateway", "g").await;
    assert!(gateway.recv_text().await.contains("\"peerId\": \"m\""));
    assert!(manager.recv_text().await.contains("\"peerId\": \"g\""));
    gateway.send_text(r#"{"message": {"messageId": 1, "messageType": "EVENT:up"}}"#).await;
    assert!(manager.recv_text().await.contains("EVENT:up"));

    let killed = std::time::Instant::now();
    two.signal("KILL");
    let left = manager.recv_message().await;
    assert_eq!(left["messageType"], "CONN:PEER-LEFT", "{left}");
    assert_eq!(left["peerId"], "g");
    assert_eq!(left["reason"], "node lost");
    let after = killed.elapsed();
    assert!(after < std::time::Duration::from_millis(3500), "forgotten after {after:?}");

    // Its place is free again: the gateway reconnects, to the surviving node.
    let mut again = member(&one, dir, "gateway", "g2").await;
    assert!(again.recv_text().await.contains("\"peerId\": \"m\""));
    assert!(manager.recv_text().await.contains("\"peerId\": \"g2\""));
    drop(two);
    drop(one);
}
