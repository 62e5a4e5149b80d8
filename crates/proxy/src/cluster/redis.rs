//! The Redis (or Valkey) backplane.
//!
//! Presence, per room `R` under the key prefix `P` (the `{R}` hash tag keeps a room's keys in
//! one Redis Cluster slot):
//! - `P:{R}:cards`, a hash from member field (`<node>/<conn>`) to its [`Card`];
//! - `P:{R}:fps`, a hash from member field to certificate fingerprint, for the checks;
//! - `P:{R}:ttl`, a sorted set from member field to its expiry (Unix ms). Each node refreshes
//!   its members every third of `presence_ttl`; the entries of a node that stops doing so
//!   are skipped by every reader and removed by the next join.
//!
//! Joins run [`JOIN`], one Lua script that drops expired entries, checks capacity, removes a
//! member with the same certificate and inserts the newcomer, atomically.
//!
//! Each node subscribes once to its inbox `P:inbox:<node>` and publishes notes from one task
//! over one connection, so the notes from one node to another keep their order. A note that
//! cannot be published is counted as lost: delivery across nodes is at most once while Redis
//! is unreachable (docs/cluster.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::{Script, Value};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use super::link::{Link, MAX_BACKOFF};
use super::wire::{Card, Note, member_field};
use super::{Backplane, BoxFuture, JoinError, Presence};
use crate::config::ClusterConfig;
use crate::identity::Fingerprint;
use crate::registry::Space;
use crate::room::RoomId;
use crate::{Error, Result, Shared};

/// Drops expired entries, checks capacity, replaces a member with the same certificate,
/// inserts the newcomer. KEYS: cards, fps, ttl. ARGV: now, expiry, field, card,
/// fingerprint, max_peers, key lifetime (ms). Returns {0} when full, else {1, replaced card
/// or "", the room's cards as a flat field/card list}.
const JOIN: &str = r"
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
for _, f in ipairs(dead) do
  redis.call('HDEL', KEYS[1], f); redis.call('HDEL', KEYS[2], f); redis.call('ZREM', KEYS[3], f)
end
local fps = redis.call('HGETALL', KEYS[2])
local replaced = nil
local count = 0
for i = 1, #fps, 2 do
  if fps[i] ~= ARGV[3] then
    count = count + 1
    if fps[i + 1] == ARGV[5] then replaced = fps[i] end
  end
end
if replaced then count = count - 1 end
if count >= tonumber(ARGV[6]) then return {0} end
local old = ''
if replaced then
  old = redis.call('HGET', KEYS[1], replaced) or ''
  redis.call('HDEL', KEYS[1], replaced); redis.call('HDEL', KEYS[2], replaced); redis.call('ZREM', KEYS[3], replaced)
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[7]) end
return {1, old, redis.call('HGETALL', KEYS[1])}
";

/// Live members and whether one has this fingerprint. KEYS: cards, fps, ttl. ARGV: now,
/// fingerprint. Returns {live members, 1 if one has the fingerprint}.
const SPACE: &str = r"
local live = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf')
local same = 0
for _, f in ipairs(live) do
  if redis.call('HGET', KEYS[2], f) == ARGV[2] then same = 1 end
end
return {#live, same}
";

/// Refreshes this node's members of one room and returns the room's live cards, and the
/// members of this node that were replaced meanwhile. An entry that is missing is put back
/// (Redis restarted, or this node was cut off longer than the TTL) unless a live member now
/// has its certificate: then it was replaced, and its node must close it. KEYS: cards, fps,
/// ttl. ARGV: now, expiry, key lifetime, then field, card, fingerprint for each member.
/// Returns {live cards, replaced fields}.
const REFRESH: &str = r"
local replaced = {}
for i = 4, #ARGV, 3 do
  local f = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], f) == 1 then
    redis.call('ZADD', KEYS[3], ARGV[2], f)
  else
    local taken = false
    local fps = redis.call('HGETALL', KEYS[2])
    for j = 1, #fps, 2 do
      local score = redis.call('ZSCORE', KEYS[3], fps[j])
      if fps[j + 1] == ARGV[i + 2] and score and tonumber(score) > tonumber(ARGV[1]) then taken = true end
    end
    if taken then
      table.insert(replaced, f)
    else
      redis.call('HSET', KEYS[1], f, ARGV[i + 1])
      redis.call('HSET', KEYS[2], f, ARGV[i + 2])
      redis.call('ZADD', KEYS[3], ARGV[2], f)
    end
  end
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
local live = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf')
local out = {}
for _, f in ipairs(live) do
  local card = redis.call('HGET', KEYS[1], f)
  if card then table.insert(out, card) end
end
return {out, replaced}
";

/// Room refreshes in flight at once.
const REFRESHES_IN_FLIGHT: usize = 32;

/// Notes waiting to be published, at most; beyond, a note is counted lost.
const OUTBOX: usize = 65_536;
/// Notes published in one round trip, at most.
const BATCH: usize = 256;

/// A local member, as this node keeps putting it in presence.
struct Mine {
    room: RoomId,
    card: Bytes,
    fingerprint: String,
}

/// Presence and inboxes in Redis.
pub(crate) struct RedisBackplane {
    node: String,
    config: ClusterConfig,
    link: Link,
    outbox: mpsc::Sender<(String, Bytes)>,
    /// Taken by the publisher when the node starts serving.
    outbox_rx: Mutex<Option<mpsc::Receiver<(String, Bytes)>>>,
    healthy: AtomicBool,
    /// Set when the subscription should be made again (a refresh failed: the connection may
    /// be a black hole).
    resubscribe: Notify,
    mine: Mutex<HashMap<String, Mine>>,
    join_script: Script,
    space_script: Script,
    refresh_script: Script,
    /// Notes published, and notes lost (not published).
    published: AtomicU64,
    lost: AtomicU64,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn hex(fingerprint: &Fingerprint) -> String {
    fingerprint.to_string()
}

impl RedisBackplane {
    /// Connects to Redis, within `command_timeout`.
    ///
    /// # Errors
    /// [`Error::Cluster`] saying why Redis cannot be used.
    pub(crate) async fn connect(config: &ClusterConfig) -> Result<Self> {
        let link = Link::connect(config).await.map_err(|reason| Error::Cluster {
            url: crate::config::redacted_url(&config.redis_url),
            reason,
        })?;
        debug!("redis reached");
        let suffix: u32 = rand_suffix();
        let node = format!("{}-{suffix:08x}", config.node_id);
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        Ok(RedisBackplane {
            node,
            config: config.clone(),
            link,
            outbox,
            outbox_rx: Mutex::new(Some(outbox_rx)),
            healthy: AtomicBool::new(true),
            resubscribe: Notify::new(),
            mine: Mutex::new(HashMap::new()),
            join_script: Script::new(JOIN),
            space_script: Script::new(SPACE),
            refresh_script: Script::new(REFRESH),
            published: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        })
    }

    /// This node's name in presence.
    pub(crate) fn node_name(&self) -> &str {
        &self.node
    }

    fn key(&self, room: &str, what: &str) -> String {
        format!("{}:{{{room}}}:{what}", self.config.key_prefix)
    }

    fn inbox(&self, node: &str) -> String {
        format!("{}:inbox:{node}", self.config.key_prefix)
    }

    fn key_lifetime_ms(&self) -> u64 {
        u64::try_from(self.config.presence_ttl.as_millis()).unwrap_or(u64::MAX).saturating_mul(4)
    }

    fn expiry(&self) -> i64 {
        unix_ms().saturating_add(i64::try_from(self.config.presence_ttl.as_millis()).unwrap_or(i64::MAX))
    }

    fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            if healthy {
                info!("redis reachable again");
            } else {
                warn!(
                    "redis unreachable: rooms on this node keep relaying; joins and frames across nodes fail"
                );
            }
        }
    }

    /// The node's work while it serves: publishing, the inbox, and refreshing presence.
    async fn serve(self: Arc<Self>, shared: Arc<Shared>) {
        let outbox = self.outbox_rx.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(outbox) = outbox else { return };
        tokio::join!(self.publish(outbox), self.subscribe(&shared), self.refresh(&shared));
    }

    /// Publishes queued notes in order, in batches: one pipeline per receiving node (on a
    /// Redis Cluster a pipeline must stay in one slot), the pipelines of a batch at once.
    async fn publish(&self, mut outbox: mpsc::Receiver<(String, Bytes)>) {
        let mut batch = Vec::with_capacity(BATCH);
        while outbox.recv_many(&mut batch, BATCH).await > 0 {
            let mut by_node: Vec<(&str, redis::Pipeline, u64)> = Vec::new();
            for (node, note) in &batch {
                let i = match by_node.iter().position(|(n, _, _)| n == node) {
                    Some(i) => i,
                    None => {
                        by_node.push((node, redis::pipe(), 0));
                        by_node.len() - 1
                    }
                };
                let (_, pipe, count) = &mut by_node[i];
                pipe.cmd(self.link.publish()).arg(self.inbox(node)).arg(note.as_ref());
                *count += 1;
            }
            let sends = by_node.into_iter().map(|(_, pipe, count)| async move {
                let mut commands = self.link.commands();
                (pipe.query_async::<Vec<u64>>(&mut commands).await, count)
            });
            for (result, n) in futures_util::future::join_all(sends).await {
                match result {
                    Ok(receivers) => {
                        // A note no node was subscribed to receive (its node is gone, or was
                        // between subscriptions) is lost too.
                        let unheard = receivers.iter().filter(|&&r| r == 0).count() as u64;
                        self.published.fetch_add(n - unheard, Ordering::Relaxed);
                        self.lost.fetch_add(unheard, Ordering::Relaxed);
                        if unheard > 0 {
                            debug!(notes = unheard, "notes published to an inbox nobody listens on: lost");
                        }
                        self.set_healthy(true);
                    }
                    Err(e) => {
                        self.lost.fetch_add(n, Ordering::Relaxed);
                        warn!(error = %e, notes = n, "cannot publish to other nodes: notes lost");
                        self.set_healthy(false);
                    }
                }
            }
            batch.clear();
        }
    }

    /// Listens on this node's inbox, subscribing again (with backoff) whenever the
    /// subscription is lost, and carries out each note.
    async fn subscribe(&self, shared: &Arc<Shared>) {
        let channel = self.inbox(&self.node);
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscribing =
                tokio::time::timeout(self.config.command_timeout * 2, self.link.subscribe(&channel));
            let mut inbox = match subscribing.await {
                Ok(Ok(inbox)) => inbox,
                failed => {
                    self.set_healthy(false);
                    if let Ok(Err(e)) = failed {
                        debug!(error = %e, "cannot subscribe to the inbox; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            info!(channel, node = self.node, "subscribed to this node's inbox");
            loop {
                let payload = tokio::select! {
                    () = self.resubscribe.notified() => break,
                    payload = inbox.next() => payload,
                };
                let Some(payload) = payload else { break };
                match Note::decode(payload) {
                    Ok(note) => super::apply(shared, note).await,
                    Err(e) => warn!(error = %e, "malformed note in the inbox: dropped"),
                }
            }
            self.set_healthy(false);
            warn!("inbox subscription lost; subscribing again");
        }
    }

    /// Every third of the TTL: refreshes this node's members and brings each local room's view
    /// of the other nodes' members up to date (members of a node that died are forgotten, with
    /// PEER-LEFT; joins whose note was lost are learnt, with their HELLO).
    async fn refresh(&self, shared: &Arc<Shared>) {
        let period = self.config.presence_ttl / 3;
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.refresh_once(shared).await {
                Ok(()) => self.set_healthy(true),
                Err(e) => {
                    warn!(error = %e, "cannot refresh presence");
                    self.set_healthy(false);
                    self.resubscribe.notify_waiters();
                }
            }
        }
    }

    async fn refresh_once(&self, shared: &Arc<Shared>) -> std::result::Result<(), redis::RedisError> {
        let mut by_room: HashMap<String, Vec<(String, Bytes, String)>> = HashMap::new();
        {
            let mine = self.mine.lock().unwrap_or_else(PoisonError::into_inner);
            for (field, m) in mine.iter() {
                by_room.entry(m.room.as_str().to_owned()).or_default().push((
                    field.clone(),
                    m.card.clone(),
                    m.fingerprint.clone(),
                ));
            }
        }
        let refreshes = futures_util::stream::iter(by_room).map(|(room, members)| async move {
            let mut invocation = self.refresh_script.prepare_invoke();
            invocation
                .key(self.key(&room, "cards"))
                .key(self.key(&room, "fps"))
                .key(self.key(&room, "ttl"))
                .arg(unix_ms())
                .arg(self.expiry())
                .arg(self.key_lifetime_ms());
            for (field, card, fingerprint) in &members {
                invocation.arg(field).arg(card.as_ref()).arg(fingerprint);
            }
            let mut commands = self.link.commands();
            let reply: (Vec<Vec<u8>>, Vec<String>) = invocation.invoke_async(&mut commands).await?;
            Ok::<_, redis::RedisError>((room, reply))
        });
        let results: Vec<_> = refreshes.buffer_unordered(REFRESHES_IN_FLIGHT).collect().await;
        for result in results {
            let (room, (live, replaced)) = result?;
            let Some(room) = shared.registry.room(&room) else { continue };
            for field in replaced {
                let conn = field.rsplit('/').next().and_then(|c| c.parse().ok());
                if let Some(mailbox) = conn.and_then(|conn| room.replace_local(conn, None)) {
                    info!(room = %room.id(), "a member was replaced on another node: closing it");
                    mailbox.kill(crate::Close::Replaced);
                }
            }
            let cards: Vec<Card> = live
                .into_iter()
                .filter_map(|bytes| Card::decode(bytes.into()).ok())
                .filter(|card| card.node != self.node)
                .collect();
            super::resync(shared, &room, cards).await;
        }
        Ok(())
    }
}

impl Backplane for RedisBackplane {
    fn node(&self) -> &str {
        &self.node
    }

    fn space<'a>(
        &'a self,
        room: &'a RoomId,
        fingerprint: &'a Fingerprint,
        max_peers: usize,
    ) -> BoxFuture<'a, std::result::Result<Space, String>> {
        Box::pin(async move {
            let mut commands = self.link.commands();
            let (live, same): (usize, i64) = self
                .space_script
                .key(self.key(room.as_str(), "cards"))
                .key(self.key(room.as_str(), "fps"))
                .key(self.key(room.as_str(), "ttl"))
                .arg(unix_ms())
                .arg(hex(fingerprint))
                .invoke_async(&mut commands)
                .await
                .map_err(|e| e.to_string())?;
            Ok(if live < max_peers || same == 1 { Space::Free } else { Space::RoomFull })
        })
    }

    fn join<'a>(
        &'a self,
        room: &'a RoomId,
        card: &'a Card,
        max_peers: usize,
    ) -> BoxFuture<'a, std::result::Result<Presence, JoinError>> {
        Box::pin(async move {
            let field = card.field();
            let encoded = card.encode();
            let fingerprint = hex(&card.fingerprint);
            let mut commands = self.link.commands();
            let reply: Value = self
                .join_script
                .key(self.key(room.as_str(), "cards"))
                .key(self.key(room.as_str(), "fps"))
                .key(self.key(room.as_str(), "ttl"))
                .arg(unix_ms())
                .arg(self.expiry())
                .arg(&field)
                .arg(encoded.as_ref())
                .arg(&fingerprint)
                .arg(max_peers)
                .arg(self.key_lifetime_ms())
                .invoke_async(&mut commands)
                .await
                .map_err(|e| JoinError::Unavailable(e.to_string()))?;
            let presence = parse_join(reply, &self.node).map_err(JoinError::Unavailable)?;
            let Some(presence) = presence else { return Err(JoinError::Full) };
            self.mine
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(field, Mine { room: room.clone(), card: encoded, fingerprint });
            Ok(presence)
        })
    }

    fn leave<'a>(&'a self, room: &'a RoomId, conn: u64) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let field = member_field(&self.node, conn);
            self.mine.lock().unwrap_or_else(PoisonError::into_inner).remove(&field);
            let mut pipe = redis::pipe();
            pipe.atomic()
                .hdel(self.key(room.as_str(), "cards"), &field)
                .hdel(self.key(room.as_str(), "fps"), &field)
                .zrem(self.key(room.as_str(), "ttl"), &field);
            let mut commands = self.link.commands();
            if let Err(e) = pipe.query_async::<()>(&mut commands).await {
                // The entry expires within the TTL; the others learn of the departure by note.
                debug!(error = %e, "cannot remove a member from presence");
            }
        })
    }

    fn send(&self, nodes: &[String], note: &Note) {
        if nodes.is_empty() {
            return;
        }
        let bytes = note.encode();
        for node in nodes {
            if self.outbox.try_send((node.clone(), bytes.clone())).is_err() {
                self.lost.fetch_add(1, Ordering::Relaxed);
                warn!(node, "outbox to other nodes full: note lost");
            }
        }
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn run(self: Arc<Self>, shared: Arc<Shared>) -> BoxFuture<'static, ()> {
        Box::pin(RedisBackplane::serve(self, shared))
    }

    fn counts(&self) -> (u64, u64) {
        (self.published.load(Ordering::Relaxed), self.lost.load(Ordering::Relaxed))
    }
}

/// Reads the join script's reply: `None` when the room is full.
fn parse_join(reply: Value, node: &str) -> std::result::Result<Option<Presence>, String> {
    let bad = || "unexpected reply from the join script".to_owned();
    let Value::Array(items) = reply else { return Err(bad()) };
    match items.first() {
        Some(Value::Int(0)) => return Ok(None),
        Some(Value::Int(1)) => {}
        _ => return Err(bad()),
    }
    let replaced = match items.get(1) {
        Some(Value::BulkString(bytes)) if !bytes.is_empty() => {
            Card::decode(Bytes::copy_from_slice(bytes)).ok()
        }
        _ => None,
    };
    let Some(Value::Array(flat)) = items.get(2) else { return Err(bad()) };
    let others = flat
        .chunks(2)
        .filter_map(|pair| match pair.get(1) {
            Some(Value::BulkString(bytes)) => Card::decode(Bytes::copy_from_slice(bytes)).ok(),
            _ => None,
        })
        .filter(|card| card.node != node)
        .collect();
    Ok(Some(Presence { others, replaced }))
}

/// A random number for the node's name.
fn rand_suffix() -> u32 {
    let mut bytes = [0u8; 4];
    // The system's randomness; should it fail, the clock still tells restarts apart.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return u32::try_from(unix_ms() & 0xffff_ffff).unwrap_or(0);
    }
    u32::from_be_bytes(bytes)
}
