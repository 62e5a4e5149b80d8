//! A fleet of devices: peers in rooms of two that connect as a device does (a TLS session
//! store of their own, so a reconnect resumes; the client's backoff), say HELLO, wait for their
//! partner's, and stay, answering the relay's pings, until told to stop.
//!
//! The scenarios built on it (`scenarios.rs`) connect them once and measure what the relay
//! holds per idle peer (`idle`), or restart the relay under them and time their return
//! (`storm`). A room is whole when each of its two peers has received the other's HELLO on
//! its current connection.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use micronets_client::backoff::{Backoff, STABLE};
use micronets_client::connect::{ConnectOptions, Connector};
use micronets_client::tls::TlsOptions;
use rustls::ClientConfig;
use rustls::client::Resumption;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::peers::Identities;
use crate::transport::node_url;

/// The client's own backoff (`ws-client`): its first ceiling and its cap.
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Tickets a device keeps (the relay gives two per connection).
const TICKETS_KEPT: usize = 4;

/// How the fleet is laid out.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// Peers (an even number: rooms of two).
    pub(crate) peers: usize,
    /// Rooms are numbered from here, so that several generators can share one relay.
    pub(crate) offset: usize,
    /// Local addresses the peers connect from, in turn (empty: any).
    pub(crate) source_ips: Vec<IpAddr>,
    /// A tag in the room names (`bench/<tag>/<n>`).
    pub(crate) tag: &'static str,
}

/// What the devices share with the scenario that drives them.
pub(crate) struct Fleet {
    started: Instant,
    peers: usize,
    /// When each peer last became whole (ns since `started`, plus one); 0 while it is not.
    whole_at: Vec<AtomicU64>,
    /// The latest check round each room's second peer received from its first.
    checked: Vec<AtomicU64>,
    /// Connection attempts that failed, by kind.
    refusals: Mutex<BTreeMap<String, u64>>,
    /// Connections that ended, by how.
    endings: Mutex<BTreeMap<String, u64>>,
    /// Connections made, by their TLS handshake: full or resumed.
    handshakes: Mutex<BTreeMap<String, u64>>,
    /// Told whenever a peer becomes whole or a room's check arrives.
    progress: Notify,
    round: watch::Sender<u64>,
    stop: CancellationToken,
    /// Until the fleet is whole for the first time: first connections at once, at most.
    first_connects: Semaphore,
}

impl Fleet {
    /// The connectors of `layout.peers` devices against `urls` (peer n on node n modulo their
    /// number, so the two peers of a room are on different nodes), each with a TLS session
    /// store of its own: a fleet started again with them resumes.
    pub(crate) fn devices(ids: &Identities, urls: &[String], layout: &Layout) -> Result<Vec<Arc<Connector>>> {
        let sides = Sides::new(ids)?;
        (0..layout.peers / 2 * 2)
            .map(|index| {
                let url =
                    format!("{}bench/{}/{}", node_url(urls, index), layout.tag, layout.offset + index / 2);
                let local = layout.source_ips.get(index % layout.source_ips.len().max(1)).copied();
                Ok(Arc::new(sides.device(index, url, local)?))
            })
            .collect()
    }

    /// Starts the devices of `connectors` (two by two in rooms), at most `concurrency`
    /// connecting for the first time at once; with `reconnect`, a device whose connection
    /// ends comes back.
    pub(crate) fn start(connectors: &[Arc<Connector>], concurrency: usize, reconnect: bool) -> Arc<Fleet> {
        let peers = connectors.len() / 2 * 2;
        let fleet = Arc::new(Fleet {
            started: Instant::now(),
            peers,
            whole_at: (0..peers).map(|_| AtomicU64::new(0)).collect(),
            checked: (0..peers / 2).map(|_| AtomicU64::new(0)).collect(),
            refusals: Mutex::default(),
            endings: Mutex::default(),
            handshakes: Mutex::default(),
            progress: Notify::new(),
            round: watch::Sender::new(0),
            stop: CancellationToken::new(),
            first_connects: Semaphore::new(concurrency.max(1)),
        });
        for (index, connector) in connectors.iter().take(peers).enumerate() {
            let device = Device { index, connector: Arc::clone(connector) };
            tokio::spawn(device.live(Arc::clone(&fleet), reconnect));
        }
        fleet
    }

    /// Peers in the fleet.
    pub(crate) fn peers(&self) -> usize {
        self.peers
    }

    /// The rooms both of whose peers became whole at or after `since` (a time of this clock).
    pub(crate) fn rooms_whole_since(&self, since: Instant) -> usize {
        let since = self.stamp(since);
        self.whole_at
            .chunks(2)
            .filter(|room| room.iter().all(|peer| peer.load(Ordering::Acquire) > since))
            .count()
    }

    /// Waits until every room is whole since `since`, or `deadline`; returns the rooms whole.
    pub(crate) async fn wait_whole(&self, since: Instant, deadline: Instant) -> usize {
        let rooms = self.peers / 2;
        loop {
            let progress = self.progress.notified();
            let whole = self.rooms_whole_since(since);
            if whole == rooms || Instant::now() >= deadline {
                return whole;
            }
            let _ = tokio::time::timeout_at(deadline.into(), progress).await;
        }
    }

    /// Has each room's first peer send a check to the second and waits until they all arrive
    /// (or `deadline`); returns how many did.
    pub(crate) async fn check_every_room(&self, deadline: Instant) -> usize {
        let round = self.round.borrow().wrapping_add(1);
        self.round.send_replace(round);
        loop {
            let progress = self.progress.notified();
            let arrived = self.checked.iter().filter(|c| c.load(Ordering::Acquire) >= round).count();
            if arrived == self.checked.len() || Instant::now() >= deadline {
                return arrived;
            }
            let _ = tokio::time::timeout_at(deadline.into(), progress).await;
        }
    }

    /// For each peer whole since `since`: how long after `from` it became whole.
    pub(crate) fn whole_after(&self, since: Instant, from: Instant) -> Vec<Duration> {
        let since = self.stamp(since);
        let from = self.stamp(from);
        self.whole_at
            .iter()
            .map(|at| at.load(Ordering::Acquire))
            .filter(|&at| at > since)
            .map(|at| Duration::from_nanos(at.saturating_sub(from)))
            .collect()
    }

    /// Failed attempts by kind.
    pub(crate) fn refusals(&self) -> BTreeMap<String, u64> {
        self.refusals.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Ended connections by how they ended.
    pub(crate) fn endings(&self) -> BTreeMap<String, u64> {
        self.endings.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Connections made since the last call, by their TLS handshake (full or resumed).
    pub(crate) fn take_handshakes(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.handshakes.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Stops every device: their connections close.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// `at` on this fleet's clock (ns since it started, plus one so that 0 means never).
    fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_nanos() as u64 + 1
    }

    fn count(map: &Mutex<BTreeMap<String, u64>>, kind: String) {
        *map.lock().unwrap_or_else(PoisonError::into_inner).entry(kind).or_default() += 1;
    }
}

/// The TLS configurations of the two sides of the rooms (a certificate each), from which each
/// device takes a copy with a session store of its own.
struct Sides([Arc<ClientConfig>; 2]);

impl Sides {
    fn new(ids: &Identities) -> Result<Self> {
        let side = |n: usize| {
            let options = TlsOptions {
                client_cert: Some(ids.cert(n)?),
                ca_cert: Some(ids.root_cert()),
                ..Default::default()
            };
            micronets_client::tls::client_config(&options).context("the devices' TLS configuration")
        };
        Ok(Sides([side(0)?, side(1)?]))
    }

    /// The connector of device `index` (side `index % 2`) to `url`, from `local` when given.
    fn device(&self, index: usize, url: String, local: Option<IpAddr>) -> Result<Connector> {
        let mut tls = ClientConfig::clone(&self.0[index % 2]);
        tls.resumption = Resumption::in_memory_sessions(TICKETS_KEPT);
        let options = ConnectOptions {
            url,
            tls: TlsOptions::default(),
            via: None,
            headers: Vec::new(),
            timeout: Duration::from_secs(30),
            max_frame_bytes: 1 << 20,
            local_address: local,
        };
        Ok(Connector::with_tls(options, Arc::new(tls))?)
    }
}

/// One simulated device.
struct Device {
    index: usize,
    connector: Arc<Connector>,
}

impl Device {
    fn room(&self) -> usize {
        self.index / 2
    }

    /// Connects, and with `reconnect` comes back after every end, until the fleet stops.
    async fn live(self, fleet: Arc<Fleet>, reconnect: bool) {
        let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
        // Held through the first connection's handshake and upgrade: the cold start's
        // concurrency.
        let mut first = fleet.first_connects.acquire().await.ok();
        while !fleet.stop.is_cancelled() {
            let attempt = tokio::select! {
                () = fleet.stop.cancelled() => return,
                attempt = self.connector.connect() => attempt,
            };
            let wait = match attempt {
                Ok(ws) => {
                    let resumed =
                        ws.get_ref().get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                    Fleet::count(&fleet.handshakes, if resumed { "resumed" } else { "full" }.into());
                    let connected = Instant::now();
                    let ending = self.serve(ws, &fleet, &mut first).await;
                    fleet.whole_at[self.index].store(0, Ordering::Release);
                    let Some(ending) = ending else { return };
                    Fleet::count(&fleet.endings, ending);
                    if connected.elapsed() >= STABLE {
                        backoff.reset();
                    }
                    backoff.next(None)
                }
                Err(e) => {
                    let (kind, retry_after) = refusal(&e);
                    Fleet::count(&fleet.refusals, kind);
                    backoff.next(retry_after)
                }
            };
            first = None;
            if !reconnect {
                return;
            }
            tokio::select! {
                () = fleet.stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Says HELLO and reads until the connection ends: whole once the partner's HELLO arrives,
    /// a check sent to the partner on every round (first peer of a room) or recorded (second).
    /// Returns how the connection ended, or `None` when the fleet stopped.
    async fn serve(
        &self,
        ws: micronets_client::connect::Ws,
        fleet: &Fleet,
        first: &mut Option<tokio::sync::SemaphorePermit<'_>>,
    ) -> Option<String> {
        let (mut sink, mut stream) = ws.split();
        let hello = format!(
            r#"{{"message":{{"messageId":0,"messageType":"CONN:HELLO","requiresResponse":false,"peerClass":"ws-bench","peerId":"p{}"}}}}"#,
            self.index
        );
        if sink.send(Message::text(hello)).await.is_err() {
            return Some("closed_before_hello".into());
        }
        first.take();
        let sends_checks = self.index.is_multiple_of(2);
        // Subscribed now: only the rounds started from here on are sent.
        let mut round = fleet.round.subscribe();
        loop {
            let message = tokio::select! {
                () = fleet.stop.cancelled() => {
                    let _ = sink.close().await;
                    return None;
                }
                changed = round.changed(), if sends_checks => {
                    if changed.is_err() {
                        continue;
                    }
                    let check = format!(
                        r#"{{"message":{{"messageId":{},"messageType":"EVENT:bench-check","requiresResponse":false}}}}"#,
                        *round.borrow_and_update()
                    );
                    if sink.send(Message::text(check)).await.is_err() {
                        return Some("write_failed".into());
                    }
                    continue;
                }
                message = stream.next() => message,
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    if text.contains("\"CONN:HELLO\"") {
                        fleet.whole_at[self.index].store(fleet.stamp(Instant::now()), Ordering::Release);
                        fleet.progress.notify_waiters();
                    } else if text.contains("\"CONN:PEER-LEFT\"") {
                        fleet.whole_at[self.index].store(0, Ordering::Release);
                    } else if let Some(round) = check_round(text) {
                        fleet.checked[self.room()].fetch_max(round, Ordering::AcqRel);
                        fleet.progress.notify_waiters();
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(
                        frame.map_or("close_no_code".into(), |f| format!("close_{}", u16::from(f.code))),
                    );
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(format!("error: {}", short(&e.to_string()))),
                None => return Some("eof".into()),
            }
        }
    }
}

/// The round of a check message.
fn check_round(text: &str) -> Option<u64> {
    if !text.contains("EVENT:bench-check") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value["message"]["messageId"].as_u64()
}

/// A failed attempt's kind, and how long the relay asked to wait.
fn refusal(e: &micronets_client::Error) -> (String, Option<Duration>) {
    use micronets_client::Error;
    match e {
        Error::BadHandshake { status, retry_after, .. } => (format!("http_{status}"), *retry_after),
        Error::Timeout(_) => ("timeout".into(), None),
        Error::Connect { reason, .. } => {
            let reason = reason.to_ascii_lowercase();
            let kind = if reason.contains("refused") {
                "tcp_refused"
            } else if reason.contains("tls") && (reason.contains("eof") || reason.contains("reset")) {
                "closed_during_tls"
            } else if reason.contains("tls") {
                "tls_error"
            } else if reason.contains("reset") {
                "tcp_reset"
            } else {
                "connect_error"
            };
            (kind.into(), None)
        }
        other => (format!("other: {}", short(&other.to_string())), None),
    }
}

/// The start of an error message, as a kind.
fn short(text: &str) -> String {
    text.chars().take(60).collect()
}
