//! Cluster mode: several proxies in this process, one real `redis-server` started per test on
//! a free loopback port. Peers on different nodes share rooms as on one node.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::muting_relay::MutingRelay;
use crate::redis_server::Redis;
use crate::support::{Client, Live, Pki, TestProxy, WAIT, start, upgrade_request};

/// Starts a node named `name` against `redis`, with `extra` TOML.
async fn node(pki: &Arc<Pki>, redis: &Redis, name: &str, extra: &str) -> TestProxy {
    let cluster = format!(
        "[cluster]\nredis_url = \"{}\"\nnode_id = \"{name}\"\npresence_ttl = \"2s\"\ncommand_timeout = \"500ms\"\n",
        redis.url()
    );
    start(pki, &format!("{cluster}{extra}")).await
}

/// The manager (peerId `m`) on `one` and the gateway (peerId `gateway_id`) on `two` in room
/// `gw/gw-1`, past the HELLO exchange.
async fn across(one: &TestProxy, two: &TestProxy, gateway_id: &str) -> (Client, Client) {
    let (mut manager, _) = one.join("manager", "gw/gw-1", "m").await;
    let (mut gateway, _) = two.join("gateway", "gw/gw-1", gateway_id).await;
    gateway.recv_text().await;
    manager.recv_text().await;
    (manager, gateway)
}

/// Sends numbered events from `from` until one reaches `to`, and returns its number: frames
/// sent while a node is between subscriptions may be lost (their sender is told).
async fn until_frames_cross(from: &mut Client, to: &mut Client) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    let mut n = 0;
    loop {
        n += 1;
        from.send_text(&event(n)).await;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_millis(300), to.ws.next()).await {
            let text = frame.into_text().unwrap();
            if serde_json::from_str::<Value>(&text).unwrap()["message"]["messageId"] == n {
                return n;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "frames never crossed nodes again");
    }
}

fn event(n: u64) -> String {
    format!(r#"{{"message": {{"messageId": {n}, "messageType": "EVENT:tick", "requiresResponse": false}}}}"#)
}

fn message_id(text: &str) -> u64 {
    let value: Value = serde_json::from_str(text).unwrap();
    value["message"]["messageId"].as_u64().unwrap()
}

#[tokio::test]
async fn peers_on_two_nodes_exchange_hellos_and_frames_in_order_both_ways() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let one = node(&pki, &redis, "one", "").await;
    let two = node(&pki, &redis, "two", "").await;

    let (mut manager, hello_m) = one.join("manager", "gw/gw-1", "m").await;
    let (mut gateway, hello_g) = two.join("gateway", "gw/gw-1", "g").await;
    assert_eq!(gateway.recv_text().await, hello_m, "the newcomer gets the other node's member's HELLO");
    assert_eq!(manager.recv_text().await, hello_g, "the member gets the newcomer's HELLO across nodes");
    let (status, rooms) = one.admin("GET", "/v1/rooms/gw/gw-1").await;
    assert_eq!(status, 200);
    let room: Value = serde_json::from_str(&rooms).unwrap();
    assert_eq!(room["members"][0]["peer_id"], "m");
    assert_eq!(room["elsewhere"][0]["peer_id"], "g", "{room}");
    assert!(room["elsewhere"][0]["node"].as_str().unwrap().starts_with("two-"), "{room}");

    for n in 1..=300 {
        manager.send_text(&event(n)).await;
        gateway.send_text(&event(1000 + n)).await;
    }
    for n in 1..=300 {
        assert_eq!(message_id(&gateway.recv_text().await), n);
        assert_eq!(message_id(&manager.recv_text().await), 1000 + n);
    }
    gateway.send(tokio_tungstenite::tungstenite::Message::binary(vec![0u8, 1, 2, 255])).await;
    assert_eq!(manager.recv().await, tokio_tungstenite::tungstenite::Message::binary(vec![0u8, 1, 2, 255]));

    gateway.close().await;
    let left = manager.recv_message().await;
    assert_eq!(left["messageType"], "CONN:PEER-LEFT");
    assert_eq!(left["peerId"], "g");
    assert_eq!(left["reason"], "closed");
    one.stop().await;
    two.stop().await;
}

/// Members of one room on two nodes saying HELLO at the same moment (a fleet reconnecting
/// after an upgrade): each gets every other member's HELLO, whichever of its node's join, the
/// others' notes and their presence came first. The race is one of timing that two nodes in
/// one test process rarely hit: before `Room::admit` gave a newcomer the HELLOs of every
/// member elsewhere its node knew, and a join read the room's presence once more, the smoke
/// test `pairs_and_fanout_run_across_two_nodes` missed a HELLO in 2 of 8 runs, and ws-bench's
/// fanout against two ws-proxy processes in about one run in fifteen.
#[tokio::test]
async fn members_joining_at_once_on_two_nodes_each_get_every_hello() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let one = node(&pki, &redis, "one", "[rooms]\nmax_peers = 8\n").await;
    let two = node(&pki, &redis, "two", "[rooms]\nmax_peers = 8\n").await;
    for round in 0..10 {
        let room = format!("burst/{round}");
        let mut members = Vec::new();
        for n in 0..8 {
            let at = if n % 2 == 0 { &one } else { &two };
            members.push(at.connect(&format!("member-{n}"), &room).await);
        }
        let names: Vec<String> = (0..8).map(|n| format!("p{n}")).collect();
        let hellos =
            futures_util::future::join_all(members.iter_mut().zip(&names).map(|(m, name)| m.hello(name)))
                .await;
        for (n, member) in members.iter_mut().enumerate() {
            let mut got = Vec::new();
            for _ in 0..7 {
                got.push(member.recv_text().await);
            }
            got.sort();
            let mut expected: Vec<String> =
                hellos.iter().enumerate().filter(|(other, _)| *other != n).map(|(_, h)| h.clone()).collect();
            expected.sort();
            assert_eq!(
                got,
                expected,
                "round {round}: member {n} on node {}",
                if n % 2 == 0 { "one" } else { "two" }
            );
        }
    }
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn a_room_is_full_across_nodes() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let one = node(&pki, &redis, "one", "").await;
    let two = node(&pki, &redis, "two", "").await;
    let three = node(&pki, &redis, "three", "").await;
    let (_a, _) = one.join("manager", "gw/gw-1", "m").await;
    let (mut b, _) = two.join("gateway", "gw/gw-1", "g").await;
    b.recv_text().await;
    let refused = three.raw_request("test-client", &upgrade_request("gw/gw-1")).await;
    assert!(refused.starts_with("HTTP/1.1 409"), "{refused}");
    for n in [one, two, three] {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_reconnect_on_another_node_replaces_the_old_connection() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let one = node(&pki, &redis, "one", "").await;
    let two = node(&pki, &redis, "two", "").await;
    let three = node(&pki, &redis, "three", "").await;
    let (mut manager, mut old) = across(&one, &two, "old").await;

    let (mut new, hello_new) = three.join("gateway", "gw/gw-1", "new").await;
    let (code, reason) = old.expect_close().await;
    assert_eq!((code, reason.as_str()), (1008, "replaced by a newer connection"));
    let left = manager.recv_message().await;
    assert_eq!(left["messageType"], "CONN:PEER-LEFT", "{left}");
    assert_eq!(left["peerId"], "old");
    assert_eq!(left["reason"], "replaced");
    assert_eq!(manager.recv_text().await, hello_new, "then the newcomer's HELLO");
    assert!(new.recv_text().await.contains("\"peerId\": \"m\""), "the newcomer gets the manager's HELLO");
    manager.send_text(&event(7)).await;
    assert_eq!(message_id(&new.recv_text().await), 7);
    for n in [one, two, three] {
        n.stop().await;
    }
}

#[tokio::test]
async fn what_a_lone_member_sent_is_held_for_a_peer_joining_on_another_node() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let one = node(&pki, &redis, "one", "").await;
    let two = node(&pki, &redis, "two", "").await;
    let (mut manager, hello_m) = one.join("manager", "gw/gw-1", "m").await;
    manager.send_text(&event(1)).await;
    manager.send_text(&event(2)).await;
    // Held, not refused: no CONN:ERROR comes back.
    let (mut gateway, _) = two.join("gateway", "gw/gw-1", "g").await;
    assert_eq!(gateway.recv_text().await, hello_m);
    assert_eq!(message_id(&gateway.recv_text().await), 1);
    assert_eq!(message_id(&gateway.recv_text().await), 2);
    one.stop().await;
    two.stop().await;
}

/// Nodes log in as an ACL user, over TCP and over the Unix socket, with the default user
/// turned off: publishing, the inbox and presence all authenticate.
#[tokio::test]
async fn a_redis_with_users_is_reached_over_tcp_and_a_unix_socket() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    assert_eq!(redis.command("ACL SETUSER proxy on >s3cret-pass ~* &* +@all").await, "+OK");
    assert_eq!(redis.command("ACL SETUSER default off").await, "+OK");
    let settings = "node_id = \"{name}\"\npresence_ttl = \"2s\"\ncommand_timeout = \"500ms\"\n";
    let tcp = format!("redis://proxy:s3cret-pass@127.0.0.1:{}", redis.port);
    let unix = redis.socket_url("user=proxy&pass=s3cret-pass");
    let one =
        start(&pki, &format!("[cluster]\nredis_url = \"{tcp}\"\n{}", settings.replace("{name}", "one")))
            .await;
    let two =
        start(&pki, &format!("[cluster]\nredis_url = \"{unix}\"\n{}", settings.replace("{name}", "two")))
            .await;
    let (mut manager, mut gateway) = across(&one, &two, "g").await;
    for n in 1..=3 {
        manager.send_text(&event(n)).await;
        assert_eq!(message_id(&gateway.recv_text().await), n);
        gateway.send_text(&event(100 + n)).await;
        assert_eq!(message_id(&manager.recv_text().await), 100 + n);
    }
    one.stop().await;
    two.stop().await;
}

/// The inbox keeps the room of the last frame it delivered: when that room empties on the
/// receiving node and a new member opens it again, frames go to the new room, not the old one.
#[tokio::test]
async fn frames_reach_a_room_opened_again_after_it_emptied() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let one = node(&pki, &redis, "one", "").await;
    let two = node(&pki, &redis, "two", "").await;
    let (mut manager, gateway) = across(&one, &two, "g").await;
    manager.send_text(&event(1)).await;
    let (mut gateway, mut n) = (gateway, 1);
    assert_eq!(message_id(&gateway.recv_text().await), 1);
    for round in 0..2 {
        gateway.close().await;
        let left = manager.recv_message().await;
        assert_eq!(left["messageType"], "CONN:PEER-LEFT", "{left}");
        let (mut again, _) = two.join("gateway", "gw/gw-1", &format!("g{round}")).await;
        again.recv_text().await;
        manager.recv_text().await;
        n += 1;
        manager.send_text(&event(n)).await;
        assert_eq!(message_id(&again.recv_text().await), n, "round {round}");
        gateway = again;
    }
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn redis_unreachable_at_start_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = micronets_proxy::FileConfig::parse(&format!(
        "[cluster]\nredis_url = \"redis://127.0.0.1:{port}\"\ncommand_timeout = \"200ms\"\n"
    ))
    .unwrap()
    .into_config(&micronets_proxy::Overrides::default())
    .unwrap();
    let pki = Pki::new();
    let config = micronets_proxy::Config {
        server_cert: pki.dev.pkeycert(&micronets_certgen::dev::PROXY),
        client_ca: vec![pki.dev.root_cert()],
        ..config
    };
    let error = match micronets_proxy::Proxy::new(config).unwrap().connect().await {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e.to_string(),
    };
    assert!(error.starts_with(&format!("cluster: redis at redis://127.0.0.1:{port}:")), "{error}");
}

/// Asks the admin endpoint for `path` until its answer (status and body) is `done`, for at
/// most `limit`: what a node does in the background shows only there.
async fn admin_until(node: &TestProxy, path: &str, limit: Duration, done: impl Fn(u16, &str) -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (status, body) = node.admin("GET", path).await;
        if done(status, &body) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} never answered as awaited: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `/readyz` answers `status`.
async fn ready_becomes(node: &TestProxy, status: u16) {
    admin_until(node, "/readyz", WAIT * 3, |answered, _| answered == status).await;
}

#[tokio::test]
async fn a_redis_restart_keeps_local_rooms_relaying_tells_of_lost_frames_and_cross_node_rooms_recover() {
    let pki = Pki::new();
    let mut redis = Redis::start().await;
    let one = node(&pki, &redis, "one", "[rooms]\nmax_peers = 3\n").await;
    let two = node(&pki, &redis, "two", "[rooms]\nmax_peers = 3\n").await;
    let (mut manager, mut gateway) = across(&one, &two, "g").await;
    let (mut local, _) = one.join("test-client", "gw/gw-1", "l").await;
    local.recv_text().await;
    local.recv_text().await;
    manager.recv_text().await;
    gateway.recv_text().await;

    redis.kill();
    ready_becomes(&one, 503).await;
    let refused = two.raw_request("test-client", &upgrade_request("gw/gw-2")).await;
    assert!(refused.starts_with("HTTP/1.1 503") && refused.contains("cluster unavailable"), "{refused}");
    // Members on one node keep talking; the frame could not reach the gateway on the other
    // node, and its sender is told so, in response to it.
    local.send_text(&event(1)).await;
    assert_eq!(message_id(&manager.recv_text().await), 1);
    let told = local.recv_message().await;
    assert_eq!(
        (told["messageType"].as_str(), told["statusCode"].as_u64()),
        (Some("CONN:ERROR"), Some(503)),
        "{told}"
    );
    assert_eq!(told["inResponseTo"], 1, "{told}");
    assert!(
        told["reasonPhrase"].as_str().unwrap().contains("not relayed to the members on node two-"),
        "{told}"
    );

    redis.restart().await;
    ready_becomes(&one, 200).await;
    ready_becomes(&two, 200).await;
    // Presence is put back by each node's refresh; frames cross again, and nobody was
    // reported gone. The gateway hears that frames from node one were lost on the way.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut n: u64 = 100;
    let mut told_of_loss = false;
    'crossing: loop {
        n += 1;
        manager.send_text(&event(n)).await;
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_millis(300), gateway.ws.next()).await
        {
            let text = frame.into_text().unwrap();
            let message = serde_json::from_str::<Value>(&text).unwrap()["message"].clone();
            assert_ne!(message["messageType"], "CONN:PEER-LEFT");
            if message["messageType"] == "CONN:ERROR" {
                assert_eq!(message["statusCode"], 503, "{message}");
                let reason = message["reasonPhrase"].as_str().unwrap();
                assert!(
                    reason.contains("frames from the members on node one-") && reason.contains("lost"),
                    "{reason}"
                );
                told_of_loss = true;
            } else if message_id(&text) == n {
                break 'crossing;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "frames never crossed nodes again");
    }
    assert!(told_of_loss, "the gateway was not told of the frame lost from node one");
    gateway.send_text(&event(999)).await;
    loop {
        let text = manager.recv_text().await;
        assert!(!text.contains("CONN:PEER-LEFT"), "{text}");
        if message_id(&text) == 999 {
            break;
        }
    }
    let metrics = one.admin("GET", "/metrics").await.1;
    assert!(metrics.contains("ws_proxy_cluster_up 1"), "{metrics}");
    assert!(crate::support::sample(&metrics, "ws_proxy_cluster_loss_notices_total") >= 1.0, "{metrics}");
    let metrics = two.admin("GET", "/metrics").await.1;
    assert!(crate::support::sample(&metrics, "ws_proxy_cluster_packets_missed_total") >= 1.0, "{metrics}");
    one.stop().await;
    two.stop().await;
}

/// Frames cross again after the inbox subscriptions are killed on Redis's side, in order and
/// once each, and the nodes' own heartbeats come back through the new subscriptions.
#[tokio::test]
async fn killed_inbox_subscriptions_are_made_again() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let one = node(&pki, &redis, "one", "").await;
    let two = node(&pki, &redis, "two", "").await;
    let (mut manager, mut gateway) = across(&one, &two, "g").await;
    let killed = redis.command("CLIENT KILL TYPE pubsub").await;
    assert!(killed.starts_with(':') && killed != ":0", "{killed}");
    // Until both nodes are subscribed again, a frame may be lost (and its sender told); then
    // every frame crosses, in order, once.
    let n = until_frames_cross(&mut manager, &mut gateway).await;
    for m in n + 1..=n + 50 {
        manager.send_text(&event(m)).await;
    }
    for m in n + 1..=n + 50 {
        assert_eq!(message_id(&gateway.recv_text().await), m);
    }
    ready_becomes(&one, 200).await;
    ready_becomes(&two, 200).await;
    // Three heartbeats later, neither node has found its inbox silent: a window of the
    // watchdog's own length to observe that nothing happens, not a wait for readiness.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node in [&one, &two] {
        let metrics = node.admin("GET", "/metrics").await.1;
        assert_eq!(
            crate::support::sample(&metrics, "ws_proxy_cluster_inbox_silences_total"),
            0.0,
            "{metrics}"
        );
    }
    one.stop().await;
    two.stop().await;
}

/// An inbox subscription that stops delivering while its connection stays open (a relay
/// drops what Redis sends it): the heartbeat finds the inbox silent, `/readyz` turns 503, the
/// node subscribes again, and once the subscription delivers again frames cross again.
#[tokio::test]
async fn an_inbox_that_stops_delivering_is_found_silent_and_subscribed_again() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let relay = MutingRelay::start(redis.port).await;
    let cluster = |name: &str| {
        format!(
            "[cluster]\nredis_url = \"{}\"\nnode_id = \"{name}\"\npresence_ttl = \"2s\"\ncommand_timeout = \"500ms\"\n",
            relay.url()
        )
    };
    let one = start(&pki, &cluster("one")).await;
    let two = start(&pki, &cluster("two")).await;
    let (mut manager, mut gateway) = across(&one, &two, "g").await;
    relay.mute_subscriptions(true);
    // The silent inbox is noticed.
    admin_until(&one, "/metrics", WAIT * 2, |_, metrics| {
        crate::support::sample(metrics, "ws_proxy_cluster_inbox_silences_total") >= 1.0
    })
    .await;
    ready_becomes(&one, 503).await;
    relay.mute_subscriptions(false);
    ready_becomes(&one, 200).await;
    ready_becomes(&two, 200).await;
    until_frames_cross(&mut manager, &mut gateway).await;
    one.stop().await;
    two.stop().await;
}

/// Redis stops answering while a member streams large frames to a room split over two nodes:
/// the outbox fills and refuses frames, and each refused frame's sender gets a 503 in response
/// to it (not only a counter); once Redis answers again, the member on the other node hears
/// that frames from the first were lost, and frames cross again.
#[tokio::test]
async fn frames_the_outbox_has_no_room_for_are_told_to_both_sides() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    // An outbox of 4 MiB holds some 60 frames of 64 KiB, fewer while a batch waits for Redis.
    let one = node(&pki, &redis, "one", "outbox_bytes = 4194304\n").await;
    let two = node(&pki, &redis, "two", "").await;
    let (mut manager, mut gateway) = across(&one, &two, "g").await;
    redis.signal("STOP");
    // Frames go out until one is refused, within a bound of count and time.
    let body = "x".repeat(64 << 10);
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    let mut refused = None;
    for n in 1..=2_000u64 {
        manager.send_text(&format!(
            r#"{{"message": {{"messageId": {n}, "messageType": "EVENT:bulk", "requiresResponse": false, "body": "{body}"}}}}"#
        ))
        .await;
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_millis(1), manager.ws.next()).await
        {
            let message =
                serde_json::from_str::<Value>(&frame.into_text().unwrap()).unwrap()["message"].clone();
            let reason = message["reasonPhrase"].as_str().unwrap_or_default().to_owned();
            if reason.contains("queue to them is full") {
                refused = Some((message, n));
            }
        }
        if refused.is_some() || tokio::time::Instant::now() > deadline {
            break;
        }
    }
    let (told, sent) = refused.expect("the outbox never refused a frame");
    assert_eq!(
        (told["messageType"].as_str(), told["statusCode"].as_u64()),
        (Some("CONN:ERROR"), Some(503)),
        "{told}"
    );
    let answered = told["inResponseTo"].as_u64().unwrap();
    assert!((1..=sent).contains(&answered), "in response to frame {answered} of {sent}");
    let metrics = one.admin("GET", "/metrics").await.1;
    assert!(crate::support::sample(&metrics, "ws_proxy_cluster_notes_lost_total") >= 1.0, "{metrics}");
    assert!(crate::support::sample(&metrics, "ws_proxy_cluster_loss_notices_total") >= 1.0, "{metrics}");

    redis.signal("CONT");
    ready_becomes(&one, 200).await;
    ready_becomes(&two, 200).await;
    // The gateway may first get some of the frames Redis took before it stopped answering;
    // then it hears of the loss, and frames cross again.
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    let mut n = 10_000;
    'told: loop {
        n += 1;
        manager.send_text(&event(n)).await;
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_millis(300), gateway.ws.next()).await
        {
            let message =
                serde_json::from_str::<Value>(&frame.into_text().unwrap()).unwrap()["message"].clone();
            let reason = message["reasonPhrase"].as_str().unwrap_or_default();
            if reason.contains("frames from the members on node one-") && reason.contains("lost") {
                assert_eq!(message["statusCode"], 503, "{message}");
                break 'told;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the gateway was never told of the loss");
    }
    until_frames_cross(&mut manager, &mut gateway).await;
    one.stop().await;
    two.stop().await;
}

/// A link to Redis slower than what a member sends: the outbox backs up for seconds, and the
/// heartbeats queued behind it are not taken for a silent inbox (the watchdog's clock starts
/// when a heartbeat is published, not when it is queued).
#[tokio::test]
async fn a_backed_up_outbox_is_not_taken_for_a_silent_inbox() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let relay = MutingRelay::start(redis.port).await;
    // Commands may take 2 s: a batch of 256 notes of 1 KiB passes the slowed link in about 1 s.
    let cluster = |name: &str| {
        format!(
            "[cluster]\nredis_url = \"{}\"\nnode_id = \"{name}\"\npresence_ttl = \"8s\"\ncommand_timeout = \"2s\"\n",
            relay.url()
        )
    };
    let one = start(&pki, &cluster("one")).await;
    let two = start(&pki, &cluster("two")).await;
    let (mut manager, mut gateway) = across(&one, &two, "g").await;
    relay.slow_publishing(256 << 10);
    // 1.5 MB of frames for the other node: some 6 s of publishing at 256 KiB/s, twice the
    // watchdog's 3 s, with heartbeats queued behind the backlog all along.
    let body = "x".repeat(1000);
    for n in 1..=1_500u64 {
        manager
            .send_text(&format!(
                r#"{{"message": {{"messageId": {n}, "messageType": "EVENT:bulk", "requiresResponse": false, "body": "{body}"}}}}"#
            ))
            .await;
    }
    // Everything sent arrives, in order, through the slow link: the backlog has drained.
    for n in 1..=1_500u64 {
        assert_eq!(message_id(&gateway.recv_text().await), n);
    }
    // And all that while, the inbox was never taken for silent.
    let metrics = one.admin("GET", "/metrics").await.1;
    assert_eq!(crate::support::sample(&metrics, "ws_proxy_cluster_inbox_silences_total"), 0.0, "{metrics}");
    assert_eq!(crate::support::sample(&metrics, "ws_proxy_cluster_notes_lost_total"), 0.0, "{metrics}");
    assert_eq!(one.admin("GET", "/readyz").await.0, 200);
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn a_blackholed_redis_is_noticed_within_seconds() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let one = node(&pki, &redis, "one", "").await;
    ready_becomes(&one, 200).await;
    let started = tokio::time::Instant::now();
    redis.signal("STOP");
    ready_becomes(&one, 503).await;
    let noticed = started.elapsed();
    assert!(noticed < Duration::from_secs(4), "noticed after {noticed:?}");
    let metrics = one.admin("GET", "/metrics").await.1;
    assert!(metrics.contains("ws_proxy_cluster_up 0"), "{metrics}");
    redis.signal("CONT");
    ready_becomes(&one, 200).await;
    one.stop().await;
}

#[tokio::test]
async fn nodes_share_rooms_through_a_redis_cluster_with_sharded_pub_sub() {
    let pki = Pki::new();
    let redis = crate::redis_server::RedisCluster::start().await;
    let config = |name: &str| {
        format!(
            "[cluster]\nredis_url = \"{}\"\nredis_cluster = true\nnode_id = \"{name}\"\npresence_ttl = \"2s\"\ncommand_timeout = \"500ms\"\n",
            redis.urls()
        )
    };
    let one = start(&pki, &config("one")).await;
    let two = start(&pki, &config("two")).await;
    // Rooms whose keys hash to different shards.
    for room in ["gw/gw-1", "gw/gw-2", "gw/gw-3", "gw/gw-4"] {
        let (mut manager, hello_m) = one.join("manager", room, "m").await;
        let (mut gateway, hello_g) = two.join("gateway", room, "g").await;
        assert_eq!(gateway.recv_text().await, hello_m);
        assert_eq!(manager.recv_text().await, hello_g);
        for n in 1..=20 {
            manager.send_text(&event(n)).await;
            gateway.send_text(&event(100 + n)).await;
        }
        for n in 1..=20 {
            assert_eq!(message_id(&gateway.recv_text().await), n);
            assert_eq!(message_id(&manager.recv_text().await), 100 + n);
        }
        gateway.close().await;
        assert_eq!(manager.recv_message().await["messageType"], "CONN:PEER-LEFT");
    }
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn rediss_is_verified_with_the_configured_ca() {
    let pki = Pki::new();
    let redis = Redis::start_tls(&pki.server("redis"), &pki.dev.root_cert()).await;
    let url = format!("rediss://localhost:{}", redis.port);
    let config = |name: &str| {
        format!(
            "[cluster]\nredis_url = \"{url}\"\nca_file = {:?}\nnode_id = \"{name}\"\npresence_ttl = \"2s\"\ncommand_timeout = \"500ms\"\n",
            pki.dev.root_cert().display().to_string()
        )
    };
    let one = start(&pki, &config("one")).await;
    let two = start(&pki, &config("two")).await;
    let (mut manager, mut gateway) = across(&one, &two, "g").await;
    manager.send_text(&event(5)).await;
    assert_eq!(message_id(&gateway.recv_text().await), 5);
    one.stop().await;
    two.stop().await;

    // Without the CA, the server's certificate is not trusted: a clear error at start.
    let file = micronets_proxy::FileConfig::parse(&format!(
        "[tls]\nserver_cert = {:?}\nclient_ca = {:?}\n[cluster]\nredis_url = \"{url}\"\ncommand_timeout = \"500ms\"\n",
        pki.dev.pkeycert(&micronets_certgen::dev::PROXY).display().to_string(),
        pki.dev.root_cert().display().to_string()
    ))
    .unwrap();
    let config = file.into_config(&micronets_proxy::Overrides::default()).unwrap();
    let error = match micronets_proxy::Proxy::new(config).unwrap().connect().await {
        Ok(_) => panic!("trusted a certificate of an unknown CA"),
        Err(e) => e.to_string(),
    };
    assert!(error.starts_with(&format!("cluster: redis at {url}:")), "{error}");
}

#[tokio::test]
async fn a_reconnect_on_the_same_node_replaces_at_once_in_cluster_mode() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let one = node(&pki, &redis, "one", "").await;
    let two = node(&pki, &redis, "two", "").await;
    let (mut manager, mut old) = across(&one, &two, "old").await;
    // Same node: the registry replaces it; nothing waits for another node.
    let (_new, hello_new) = two.join("gateway", "gw/gw-1", "new").await;
    assert_eq!(old.expect_close().await.0, 1008);
    assert_eq!(manager.recv_message().await["reason"], "replaced");
    assert_eq!(manager.recv_text().await, hello_new);
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn a_node_that_drains_tells_the_other_nodes_at_once() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let one = node(&pki, &redis, "one", "").await;
    let two = node(&pki, &redis, "two", "").await;
    let (mut manager, _gateway) = across(&one, &two, "g").await;
    two.stop().await;
    let left = manager.recv_message().await;
    assert_eq!(left["messageType"], "CONN:PEER-LEFT");
    assert_eq!(left["reason"], "server shutting down", "by note, not by the TTL: {left}");
    one.stop().await;
}

#[tokio::test]
async fn a_live_member_on_another_node_keeps_its_place_and_the_newcomer_gets_409() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let one = node(&pki, &redis, "one", "").await;
    let two = node(&pki, &redis, "two", "").await;
    let (mut manager, gateway) = across(&one, &two, "g").await;
    // It keeps reading, so it answers the ping its node sends for the newcomer's node.
    let mut gateway = Live::new(gateway);
    let head = one.raw_request("gateway", &upgrade_request("gw/gw-1")).await;
    assert!(head.starts_with("HTTP/1.1 409") && head.contains("Retry-After: 10\r\n"), "{head}");
    assert_eq!(one.metrics.identity_conflicts("kept"), 1);
    let (_, rooms) = two.admin("GET", "/v1/rooms/gw/gw-1").await;
    let room: Value = serde_json::from_str(&rooms).unwrap();
    assert_eq!(room["members"][0]["conflicts_survived"], 1, "counted on the member's node: {room}");
    manager.send_text(&event(3)).await;
    assert!(format!("{:?}", gateway.recv().await).contains("EVENT:tick"), "still the member");
    one.stop().await;
    two.stop().await;
}
