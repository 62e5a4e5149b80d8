//! Relaying: byte-identical frames, isolation, invalid frames, limits, order under load, slow
//! consumers, keepalive and shutdown.

use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::support::{Client, Pki, pair, start, within};

#[tokio::test]
async fn frames_are_relayed_byte_for_byte_and_never_echoed() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (mut a, mut b) = pair(&proxy, "r").await;
    let odd = "{\"message\":{\"messageType\":\"EVENT:x\",  \"messageBody\": \"caf\\u00e9 \u{1F600}\"}}\n";
    a.send_text(odd).await;
    assert_eq!(b.recv_text().await, odd);
    b.send(Message::binary(vec![0u8, 1, 2, 255])).await;
    assert_eq!(a.recv().await, Message::binary(vec![0u8, 1, 2, 255]));
    // Neither got its own frame back: the next thing each sees is the other's next frame.
    b.send_text(r#"{"message": {"messageType": "EVENT:after"}}"#).await;
    assert!(a.recv_text().await.contains("EVENT:after"));
    a.send_text(r#"{"message": {"messageType": "EVENT:after-a"}}"#).await;
    assert!(b.recv_text().await.contains("EVENT:after-a"));
    proxy.stop().await;
}

#[tokio::test]
async fn rooms_are_isolated() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (mut a1, mut b1) = pair(&proxy, "one").await;
    let (mut a2, mut b2) = {
        let (mut a, _) = proxy.join("test-client", "two", "a2").await;
        let (mut b, _) = proxy.join("x2", "two", "b2").await;
        a.recv_text().await;
        b.recv_text().await;
        (a, b)
    };
    a1.send_text(r#"{"message": {"messageType": "EVENT:one"}}"#).await;
    a2.send_text(r#"{"message": {"messageType": "EVENT:two"}}"#).await;
    assert!(b1.recv_text().await.contains("EVENT:one"));
    assert!(b2.recv_text().await.contains("EVENT:two"));
    b1.send_text(r#"{"message": {"messageType": "EVENT:back1"}}"#).await;
    b2.send_text(r#"{"message": {"messageType": "EVENT:back2"}}"#).await;
    assert!(a1.recv_text().await.contains("EVENT:back1"));
    assert!(a2.recv_text().await.contains("EVENT:back2"));
    proxy.stop().await;
}

#[tokio::test]
async fn invalid_envelopes_get_conn_error_400_and_are_not_relayed() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (mut a, mut b) = pair(&proxy, "r").await;
    let cases = [
        ("not json", None, "invalid JSON"),
        (r#"{"message": {"messageId": 9}}"#, Some(serde_json::json!(9)), "messageType"),
        (
            r#"{"message": {"messageId": "x", "messageType": "EVENT:a", "requiresResponse": "yes"}}"#,
            Some(serde_json::json!("x")),
            "requiresResponse must be a boolean",
        ),
        (r#"[1, 2]"#, None, "envelope"),
    ];
    for (frame, id, reason) in cases {
        a.send_text(frame).await;
        let error = a.recv_message().await;
        assert_eq!(error["messageType"], "CONN:ERROR", "{frame}");
        assert_eq!(error["statusCode"], 400, "{frame}");
        assert!(error["reasonPhrase"].as_str().unwrap().contains(reason), "{frame}: {error}");
        assert_eq!(error.get("inResponseTo").cloned(), id, "{frame}");
    }
    a.send_text(r#"{"message": {"messageType": "EVENT:valid"}}"#).await;
    assert!(b.recv_text().await.contains("EVENT:valid"), "only the valid frame reached the peer");
    proxy.stop().await;
}

#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let pki = Pki::new();
    let proxy = start(&pki, "[limits]\nmax_frame_bytes = 4096\nqueue_bytes = 65536\n").await;
    let (mut a, mut b) = pair(&proxy, "r").await;
    a.send(Message::binary(vec![7u8; 4096])).await;
    assert_eq!(b.recv().await, Message::binary(vec![7u8; 4096]), "a frame at the limit passes");
    a.send(Message::binary(vec![7u8; 4097])).await;
    assert_eq!(a.expect_close().await, (1009, "frame exceeds 4096 bytes".to_owned()));
    let left = b.recv_message().await;
    assert_eq!(left["messageType"], "CONN:PEER-LEFT");
    proxy.stop().await;
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (mut a, _b) = pair(&proxy, "r").await;
    let frame = Frame::message(vec![0x7b, 0xff, 0xfe, 0x7d], OpCode::Data(Data::Text), true);
    a.send(Message::Frame(frame)).await;
    assert_eq!(a.expect_close().await.0, 1007);
    proxy.stop().await;
}

#[tokio::test]
async fn a_thousand_messages_each_way_arrive_complete_and_in_order() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (a, b) = pair(&proxy, "load").await;
    const N: usize = 1000;
    let run = |mut me: Client, tag: &'static str, other: &'static str| async move {
        let (mut sink, mut stream) = futures_util::StreamExt::split(me.ws);
        let send = async move {
            for i in 0..N {
                let text = format!(
                    r#"{{"message": {{"messageId": {i}, "messageType": "EVENT:{tag}", "messageBody": "{}"}}}}"#,
                    "x".repeat(i % 300)
                );
                futures_util::SinkExt::send(&mut sink, Message::text(text)).await.unwrap();
            }
            sink
        };
        let receive = async move {
            let mut next = 0;
            while next < N {
                match futures_util::StreamExt::next(&mut stream).await {
                    Some(Ok(Message::Text(text))) => {
                        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                        assert_eq!(v["message"]["messageType"], format!("EVENT:{other}"));
                        assert_eq!(v["message"]["messageId"], next, "in order, none lost or duplicated");
                        next += 1;
                    }
                    Some(Ok(_)) => {}
                    other => panic!("stream ended: {other:?}"),
                }
            }
            stream
        };
        let (sink, stream) = tokio::join!(send, receive);
        me = Client { ws: sink.reunite(stream).unwrap() };
        me
    };
    let (a, b) = within("1000 each way", async { tokio::join!(run(a, "a", "b"), run(b, "b", "a")) }).await;
    drop((a, b));
    let text = micronets_proxy::metrics::FrameKind::Text;
    assert_eq!(proxy.metrics.relayed.of(text).frames(), 2 * N as u64);
    assert_eq!(proxy.metrics.received.of(text).frames(), 2 * N as u64);
    proxy.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_closed_and_the_room_goes_on() {
    let pki = Pki::new();
    let proxy = start(
        &pki,
        "[rooms]\nmax_peers = 3\n[limits]\nmax_frame_bytes = 32768\nqueue_frames = 8\nqueue_bytes = 65536\nslow_consumer_timeout = \"300ms\"\n",
    )
    .await;
    let (mut sender, _) = proxy.join("manager", "r", "s").await;
    let (mut reader, _) = proxy.join("gateway", "r", "r").await;
    let (mut stalled, _) = proxy.join("test-client", "r", "stalled").await;
    sender.recv_text().await;
    sender.recv_text().await;
    reader.recv_text().await;
    reader.recv_text().await;
    // `stalled` never reads from here on. Push far more than its queue and socket buffers hold.
    let chunk = "y".repeat(16 * 1024);
    // The PEER-LEFT for the stalled member may arrive among the bulk frames: order holds per
    // sender, not across senders.
    let reading = async {
        let (mut got, mut left) = (0, false);
        while got < 400 || !left {
            if let Message::Text(t) = reader.recv().await {
                got += usize::from(t.as_str().contains("EVENT:bulk"));
                left |= t.as_str().contains("CONN:PEER-LEFT") && t.as_str().contains("\"stalled\"");
            }
        }
        got
    };
    let sending = async {
        for i in 0..400 {
            sender.send_text(&format!(r#"{{"message": {{"messageId": {i}, "messageType": "EVENT:bulk", "messageBody": "{chunk}"}}}}"#)).await;
        }
    };
    let (got, ()) = within("bulk with a stalled member", async { tokio::join!(reading, sending) }).await;
    assert_eq!(got, 400, "the reading member got everything, and the PEER-LEFT");
    assert!(micronets_proxy::Metrics::get(&proxy.metrics.slow_consumers) >= 1);
    let metrics = proxy.admin("GET", "/metrics").await.1;
    assert!(crate::support::sample(&metrics, "ws_proxy_slow_consumer_disconnects_total") >= 1.0, "{metrics}");
    // The stalled peer, once it reads again, finds the 1013 close after what was queued.
    assert_eq!(stalled.expect_close().await.0, 1013);
    proxy.stop().await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed_with_1001() {
    let pki = Pki::new();
    let proxy = start(&pki, "[keepalive]\nping_interval = \"100ms\"\npong_timeout = \"200ms\"\n").await;
    let (mut a, _) = proxy.join("manager", "r", "a").await;
    // The WebSocket client answers pings whenever it reads, so read the raw frames from the
    // TLS stream underneath instead: pings arrive and go unanswered, then the close frame.
    let tls = a.ws.get_mut();
    let (pings, close) = within("keepalive close", async {
        let mut pings = 0;
        loop {
            let (opcode, payload) = read_raw_frame(tls).await;
            match opcode {
                0x9 => pings += 1,
                0x8 => return (pings, payload),
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    })
    .await;
    assert!(pings >= 1, "the proxy pinged before giving up");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1001);
    assert_eq!(&close[2..], b"keepalive timeout");
    proxy.stop().await;
}

/// Reads one unmasked server frame: (opcode, payload).
async fn read_raw_frame<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.unwrap();
    let len = match head[1] & 0x7f {
        126 => usize::from(stream.read_u16().await.unwrap()),
        127 => usize::try_from(stream.read_u64().await.unwrap()).unwrap(),
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0f, payload)
}

#[tokio::test]
async fn shutdown_closes_members_with_1001() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (mut a, mut b) = pair(&proxy, "r").await;
    let mut pending = proxy.connect("test-client", "p").await;
    let stop = proxy.stop();
    let (_, ca, cb, cp) = tokio::join!(stop, a.expect_close(), b.expect_close(), pending.expect_close());
    assert_eq!(ca, (1001, "server shutting down".to_owned()));
    assert_eq!(cb.0, 1001);
    assert_eq!(cp.0, 1001);
}

#[tokio::test]
async fn a_websocket_protocol_violation_closes_with_1002() {
    use tokio::io::AsyncWriteExt;
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (mut a, mut b) = pair(&proxy, "r").await;
    // A masked frame with the reserved opcode 0x3, written under the WebSocket library.
    within("raw write", a.ws.get_mut().write_all(&[0x83, 0x80, 1, 2, 3, 4])).await.unwrap();
    let (code, reason) = a.expect_close().await;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.starts_with("protocol error"), "{reason}");
    assert_eq!(b.recv_message().await["messageType"], "CONN:PEER-LEFT");
    proxy.stop().await;
}

#[tokio::test]
async fn a_member_over_its_rate_is_told_429_then_closed_with_1008() {
    let pki = Pki::new();
    let proxy = start(&pki, "[limits]\nmax_frames_per_second = 5\n").await;
    let (mut a, mut b) = pair(&proxy, "gw/1").await;
    for i in 0..40 {
        a.send_text(&format!(r#"{{"message": {{"messageId": {i}, "messageType": "EVENT:x"}}}}"#)).await;
    }
    let mut refused = Vec::new();
    let close = loop {
        match a.recv().await {
            Message::Text(text) => {
                let error: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                assert_eq!(error["message"]["statusCode"], 429, "{error}");
                refused.push(error["message"]["inResponseTo"].as_i64().unwrap());
            }
            Message::Close(frame) => break frame.unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!((u16::from(close.code), close.reason.as_str()), (1008, "rate limit exceeded"));
    let mut relayed = 0;
    loop {
        let text = b.recv_text().await;
        if text.contains("CONN:PEER-LEFT") {
            break;
        }
        relayed += 1;
    }
    assert!((5..=7).contains(&relayed), "about one second's worth was relayed: {relayed}");
    assert_eq!(
        relayed + refused.len() - refused.iter().filter(|&&id| id < relayed as i64).count(),
        relayed + refused.len()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_member_cannot_pose_as_another_peer_with_a_hello_or_peer_left() {
    let pki = Pki::new();
    let proxy = start(&pki, "").await;
    let (mut a, mut b) = pair(&proxy, "gw/1").await;
    a.send_text(r#"{"message": {"messageId": 5, "messageType": "CONN:HELLO", "peerClass": "gw-service", "peerId": "other"}}"#).await;
    let error = a.recv_message().await;
    assert_eq!(
        (error["statusCode"].as_u64(), error["inResponseTo"].as_u64()),
        (Some(400), Some(5)),
        "{error}"
    );
    assert!(error["reasonPhrase"].as_str().unwrap().contains("CONN:HELLO is not relayed"), "{error}");
    a.send_text(r#"{"message": {"messageId": 6, "messageType": "CONN:PEER-LEFT", "peerId": "b"}}"#).await;
    assert_eq!(a.recv_message().await["statusCode"], 400);
    a.send_text(r#"{"message": {"messageId": 7, "messageType": "EVENT:fine"}}"#).await;
    assert!(b.recv_text().await.contains("EVENT:fine"), "b saw neither forgery, only this");
    proxy.stop().await;
}
