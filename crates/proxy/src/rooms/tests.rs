//! A member's life driven with channels, without sockets: each peer is a stream of frames the
//! test sends and a sink whose frames the test reads, around `member::serve`.

use std::sync::Arc;
use std::time::Duration;

use futures_channel::mpsc;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::hub::Hub;
use super::id::RoomId;
use super::member::{self, Admitted};
use super::remote::MayReplace;
use super::room::Credentials;
use super::websocket::{Frames, ReadError};
use crate::cluster::local::Local;
use crate::config::{Config, FileConfig, Overrides};
use crate::error::Close;
use crate::identity::{Fingerprint, PeerIdentity};
use crate::metrics::Metrics;
use crate::metrics::Metrics as M;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(5);

fn hub(toml: &str) -> Arc<Hub> {
    let config: Config = FileConfig::parse(toml).unwrap().into_config(&Overrides::default()).unwrap();
    Arc::new(Hub::new(Arc::new(config), Arc::new(Local::default()), Arc::new(Metrics::default())))
}

fn identity(cn: &str) -> PeerIdentity {
    let mut fingerprint = [0u8; 32];
    for (i, b) in cn.bytes().enumerate() {
        fingerprint[i % 32] ^= b;
    }
    PeerIdentity {
        subject: format!("CN={cn}"),
        common_name: Some(cn.to_owned()),
        organization: None,
        org_unit: None,
        sans: Vec::new(),
        serial: cn.to_owned(),
        fingerprint: Fingerprint(fingerprint),
        not_after: i64::MAX,
    }
}

/// The test's frames come as they are sent: a channel has no limits to lift at the HELLO.
impl Frames for mpsc::UnboundedReceiver<Result<Message, ReadError>> {
    fn hello_said(&mut self) {}
}

/// A member without a TLS session.
struct NoCertificates;

impl Credentials for NoCertificates {
    fn chain(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        Vec::new()
    }
}

/// A peer in the test: what it sends goes in, what the proxy writes to it comes out.
struct Peer {
    send: mpsc::UnboundedSender<Result<Message, ReadError>>,
    written: mpsc::UnboundedReceiver<Message>,
    life: JoinHandle<Close>,
}

impl Peer {
    fn connect(hub: &Arc<Hub>, cn: &str, room: &str) -> Peer {
        let (send, stream) = mpsc::unbounded();
        let (sink, written) = mpsc::unbounded();
        let admitted = Admitted {
            identity: identity(cn),
            chain: Arc::new(NoCertificates),
            address: "127.0.0.1:40000".parse().unwrap(),
            room: RoomId::parse(room).unwrap(),
            peer_class: None,
            may_replace: MayReplace::Nobody,
        };
        let hub = Arc::clone(hub);
        let life = tokio::spawn(async move { member::serve(&hub, admitted, stream, sink, |_| Ok(())).await });
        Peer { send, written, life }
    }

    fn send(&self, text: &str) {
        self.send.unbounded_send(Ok(Message::text(text))).unwrap();
    }

    fn hello(&self, id: &str) {
        self.send(&format!(
            r#"{{"message": {{"messageId": 0, "messageType": "CONN:HELLO", "peerId": "{id}"}}}}"#
        ));
    }

    /// The next data frame written to this peer (pings are skipped).
    async fn next(&mut self) -> Message {
        loop {
            let frame = tokio::time::timeout(WAIT, self.written.next()).await.expect("a frame in time");
            match frame.expect("the peer's writer ended") {
                Message::Ping(_) => continue,
                frame => return frame,
            }
        }
    }

    /// The next data frame, as the `message` object of its envelope.
    async fn next_message(&mut self) -> Value {
        let frame = self.next().await;
        let value: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        value["message"].clone()
    }

    /// Nothing but pings is written to this peer for a while.
    async fn nothing_for(&mut self, wait: Duration) {
        let quiet = tokio::time::timeout(wait, async {
            loop {
                match self.written.next().await {
                    Some(Message::Ping(_)) => continue,
                    other => return other,
                }
            }
        });
        if let Ok(frame) = quiet.await {
            panic!("expected nothing, got {frame:?}");
        }
    }

    /// Ends the peer's side (end of stream) and waits for why its life ended.
    async fn leave(self) -> Close {
        drop(self.send);
        tokio::time::timeout(WAIT, self.life).await.unwrap().unwrap()
    }
}

/// Two members of room `gw/1` that have exchanged their HELLOs.
async fn pair(hub: &Arc<Hub>) -> (Peer, Peer) {
    let mut a = Peer::connect(hub, "a", "gw/1");
    a.hello("a");
    let mut b = Peer::connect(hub, "b", "gw/1");
    b.hello("b");
    a.next().await;
    b.next().await;
    (a, b)
}

#[tokio::test]
async fn members_get_each_others_hello_and_frames_byte_for_byte_never_an_echo() {
    let hub = hub("");
    let mut a = Peer::connect(&hub, "a", "gw/1");
    a.hello("a");
    let mut b = Peer::connect(&hub, "b", "gw/1");
    b.hello("b");
    assert_eq!(b.next_message().await["peerId"], "a", "the member already there, first");
    assert_eq!(a.next_message().await["peerId"], "b");
    let event = r#"{"message":{"messageId":"e-1","messageType":"EVENT:x","dataFormat":"application/json","messageBody":{"n":1}}}"#;
    a.send(event);
    assert_eq!(b.next().await, Message::text(event));
    b.send.unbounded_send(Ok(Message::binary(vec![0u8, 255]))).unwrap();
    assert_eq!(a.next().await, Message::binary(vec![0u8, 255]));
    a.nothing_for(Duration::from_millis(50)).await;
    assert_eq!(b.leave().await, Close::PeerClosed);
    let left = a.next_message().await;
    assert_eq!(
        (left["messageType"].as_str(), left["reason"].as_str()),
        (Some("CONN:PEER-LEFT"), Some("closed"))
    );
    assert_eq!(M::get(&hub.metrics.joins), 2);
}

#[tokio::test]
async fn a_member_alone_is_answered_503_at_once_when_it_asks_for_a_response() {
    let hub = hub("");
    let mut a = Peer::connect(&hub, "a", "gw/1");
    a.hello("a");
    a.send(r#"{"message": {"messageId": 7, "messageType": "REST:REQUEST", "requiresResponse": true, "method": "GET", "path": "/x"}}"#);
    let response = a.next_message().await;
    assert_eq!(response["messageType"], "REST:RESPONSE");
    assert_eq!((response["statusCode"].as_u64(), response["inResponseTo"].as_u64()), (Some(503), Some(7)));
    a.send(r#"{"message": {"messageId": "q", "messageType": "EVENT:ask", "requiresResponse": true}}"#);
    let error = a.next_message().await;
    assert_eq!(
        (error["messageType"].as_str(), error["statusCode"].as_u64()),
        (Some("CONN:ERROR"), Some(503))
    );
    assert_eq!(error["inResponseTo"], "q");
    assert_eq!(hub.metrics.conn_errors(503), 1, "the REST:RESPONSE is not a CONN:ERROR");
}

#[tokio::test]
async fn what_a_lone_member_sends_is_held_and_given_to_the_next_member_after_the_hellos() {
    let hub = hub("");
    let mut a = Peer::connect(&hub, "a", "gw/1");
    a.hello("a");
    let held = [
        r#"{"message": {"messageId": 1, "messageType": "EVENT:one"}}"#,
        r#"{"message": {"messageId": 2, "messageType": "EVENT:two"}}"#,
    ];
    for frame in held {
        a.send(frame);
    }
    a.nothing_for(Duration::from_millis(50)).await;
    assert_eq!(M::get(&hub.metrics.held), 2);
    let mut b = Peer::connect(&hub, "b", "gw/1");
    b.hello("b");
    assert_eq!(b.next_message().await["messageType"], "CONN:HELLO");
    assert_eq!(b.next().await, Message::text(held[0]));
    assert_eq!(b.next().await, Message::text(held[1]));
    assert_eq!(a.next_message().await["peerId"], "b");
}

#[tokio::test]
async fn a_held_message_that_ages_out_is_answered_503() {
    let hub = hub("[rooms]\nhold_max_age = \"100ms\"\n");
    let mut a = Peer::connect(&hub, "a", "gw/1");
    a.hello("a");
    a.send(r#"{"message": {"messageId": "late", "messageType": "EVENT:x"}}"#);
    let expired = a.next_message().await;
    assert_eq!((expired["statusCode"].as_u64(), expired["inResponseTo"].as_str()), (Some(503), Some("late")));
    assert_eq!(M::get(&hub.metrics.held_refused), 1);
}

#[tokio::test]
async fn invalid_envelopes_and_a_members_own_hello_are_refused_400_and_the_connection_stays() {
    let hub = hub("");
    let (mut a, mut b) = pair(&hub).await;
    a.send(r#"{"message": {"messageId": 3, "messageType": 5}}"#);
    let error = a.next_message().await;
    assert_eq!((error["statusCode"].as_u64(), error["inResponseTo"].as_u64()), (Some(400), Some(3)));
    a.send(r#"{"message": {"messageId": 4, "messageType": "CONN:HELLO"}}"#);
    let error = a.next_message().await;
    assert_eq!(error["statusCode"], 400);
    assert!(error["reasonPhrase"].as_str().unwrap().contains("not relayed"), "{error}");
    b.nothing_for(Duration::from_millis(50)).await;
    a.send(r#"{"message": {"messageId": 5, "messageType": "EVENT:ok"}}"#);
    assert_eq!(b.next_message().await["messageId"], 5, "still relaying");
}

#[tokio::test]
async fn frames_over_the_rate_are_refused_429_and_not_relayed() {
    let hub = hub("[limits]\nmax_frames_per_second = 2\n");
    let (mut a, mut b) = pair(&hub).await;
    for id in 1..=3 {
        a.send(&format!(r#"{{"message": {{"messageId": {id}, "messageType": "EVENT:x"}}}}"#));
    }
    let refused = a.next_message().await;
    assert_eq!((refused["statusCode"].as_u64(), refused["inResponseTo"].as_u64()), (Some(429), Some(3)));
    assert_eq!(b.next_message().await["messageId"], 1);
    assert_eq!(b.next_message().await["messageId"], 2);
    b.nothing_for(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn a_first_frame_that_is_not_a_hello_closes_the_connection_with_1008() {
    let hub = hub("");
    let mut a = Peer::connect(&hub, "a", "gw/1");
    a.send(r#"{"message": {"messageId": 1, "messageType": "EVENT:x"}}"#);
    let close = tokio::time::timeout(WAIT, &mut a.life).await.unwrap().unwrap();
    assert!(matches!(&close, Close::BadHello(why) if why.contains("expected CONN:HELLO")), "{close:?}");
    match a.next().await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1008),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// A member of this node, for `Registry::join` directly.
fn local_member(cn: &str, hello: &str) -> super::room::Member {
    super::room::Member {
        mailbox: super::mailbox::Mailbox::new(super::id::ConnId::next(), 16, 1 << 20),
        fingerprint: identity(cn).fingerprint,
        hello: Message::text(hello),
        name: super::id::PeerName { class: Some("test".into()), id: Some(cn.into()) },
        subject: Arc::from(format!("CN={cn}").as_str()),
        since: std::time::SystemTime::now(),
        replaced_by: None,
        address: ([127, 0, 0, 1], 1).into(),
        chain: Arc::new(NoCertificates),
        conflicts_survived: 0,
        not_after: 0,
    }
}

/// Two joins at once on two nodes: this node learns of the member elsewhere by its join note
/// after the local newcomer's join script answered without it, but before the newcomer is
/// admitted here. The newcomer still gets that member's HELLO (once), like the member that was
/// already here.
#[test]
fn a_newcomer_gets_the_hello_of_a_member_elsewhere_learnt_after_its_join_script() {
    let hub = hub("");
    let room = RoomId::parse("race/1").unwrap();
    let here = hub.nodes.node().clone();
    let first = local_member("first", "hello first");
    let first_mailbox = first.mailbox.clone();
    let joined = hub.registry.join(&room, first, Vec::new(), None, &MayReplace::Nobody, &here).unwrap();
    let elsewhere = super::remote::Card {
        node: super::id::NodeId::new("two"),
        conn: super::id::ConnId::next(),
        fingerprint: identity("elsewhere").fingerprint,
        name: super::id::PeerName { class: Some("test".into()), id: Some("elsewhere".into()) },
        hello: Message::text("hello elsewhere"),
    };
    let told = joined.room.add_remote(elsewhere, &mut |_, _| {});
    assert_eq!(told.map(|r| r.len()), Some(1), "the member already here is told");

    let newcomer = local_member("newcomer", "hello newcomer");
    let newcomer_mailbox = newcomer.mailbox.clone();
    hub.registry.join(&room, newcomer, Vec::new(), None, &MayReplace::Nobody, &here).unwrap();
    let mut initial = std::collections::VecDeque::new();
    newcomer_mailbox.take_remaining(&mut initial);
    let texts: Vec<String> = initial.iter().map(|m| m.to_text().unwrap().to_owned()).collect();
    assert_eq!(texts, ["hello first", "hello elsewhere"]);
    let mut first_got = std::collections::VecDeque::new();
    first_mailbox.take_remaining(&mut first_got);
    assert!(first_got.is_empty(), "the announcement is the caller's: {first_got:?}");
}

/// The readings of presence made at members' joins may be older than the notes this node has
/// had meanwhile (several are in flight when members join at once): they add members, and
/// never forget one. Only the periodic refresh's readings do, after two in a row.
#[tokio::test]
async fn readings_made_at_joins_forget_no_member_elsewhere() {
    let hub = hub("");
    let room = RoomId::parse("race/2").unwrap();
    let here = hub.nodes.node().clone();
    let joined = hub
        .registry
        .join(&room, local_member("here", "hello here"), Vec::new(), None, &MayReplace::Nobody, &here)
        .unwrap();
    let card = |name: &str| super::remote::Card {
        node: super::id::NodeId::new("two"),
        conn: super::id::ConnId::next(),
        fingerprint: identity(name).fingerprint,
        name: super::id::PeerName { class: Some("test".into()), id: Some(name.into()) },
        hello: Message::text(format!("hello {name}")),
    };
    let known = card("known");
    assert!(joined.room.add_remote(known.clone(), &mut |_, _| {}).is_some());
    let elsewhere = |r: &super::room::Room| r.inspect(|c| c.remote.len());

    let newer = card("newer");
    super::elsewhere::learn(&hub, &joined.room, vec![newer]).await;
    super::elsewhere::learn(&hub, &joined.room, Vec::new()).await;
    assert_eq!(elsewhere(&joined.room), 2, "learnt the newer one, forgot none");

    super::elsewhere::resync(&hub, &joined.room, vec![known.clone()]).await;
    super::elsewhere::resync(&hub, &joined.room, vec![known]).await;
    assert_eq!(elsewhere(&joined.room), 1, "two refreshes in a row without it: forgotten");
}
