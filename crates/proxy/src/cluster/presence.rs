//! Presence in Redis: who is in each room, on which node, kept by TTL-refreshed entries.
//!
//! Per room `R`, under the key prefix `P` (the `{R}` hash tag keeps a room's keys in one
//! Redis Cluster slot, so its scripts run on one shard):
//! - `P:{R}:cards`, a hash from member field (`<node>/<conn>`) to its card (`wire.rs`);
//! - `P:{R}:fps`, a hash from member field to certificate fingerprint, for the checks;
//! - `P:{R}:ttl`, a sorted set from member field to its expiry (Unix ms).
//!
//! Each node refreshes its members every quarter of `presence_ttl` and gives each entry half of
//! it; readers skip expired entries and the next join removes them. Every change that must be
//! atomic is one Lua script: [`JOIN`] (capacity and same-certificate replacement), [`REFRESH`];
//! [`LIVE`] reads a room's members for a node that has just joined one there.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::{Script, Value};

use super::error::BackplaneError;
use super::link::Commands;
use super::wire::{decode_card, field, key_of_field};
use crate::identity::Fingerprint;
use crate::rooms::id::{NodeId, RoomId};
use crate::rooms::nodes::Roster;
use crate::rooms::remote::{Card, MayReplace, MemberKey};

/// Drops expired entries, checks capacity, replaces the member with the same certificate when
/// the newcomer may replace it, inserts the newcomer. KEYS: cards, fps, ttl. ARGV: now, expiry,
/// field, card, fingerprint, max_peers, key lifetime (ms), the member the newcomer may replace
/// (its field, "*" for any, "" for none). Returns {0} when full, {2} when a member has the
/// certificate and may not be replaced, else {1, replaced card or "", the room's cards as a
/// flat field/card list}.
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
if replaced and ARGV[8] ~= '*' and ARGV[8] ~= replaced then return {2} end
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

/// Live members and the one with this fingerprint. KEYS: cards, fps, ttl. ARGV: now,
/// fingerprint. Returns {live members, the field of the one with the fingerprint or ""}.
const SPACE: &str = r"
local live = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf')
local same = ''
for _, f in ipairs(live) do
  if redis.call('HGET', KEYS[2], f) == ARGV[2] then same = f end
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

/// The live members of one room, read only. KEYS: cards, ttl. ARGV: now. Returns their cards.
const LIVE: &str = r"
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')
local out = {}
for _, f in ipairs(live) do
  local card = redis.call('HGET', KEYS[1], f)
  if card then table.insert(out, card) end
end
return out
";

/// What the join script did.
pub(crate) enum Joining {
    /// The newcomer is in; the room's members elsewhere, and the one it replaced.
    Joined(Roster),
    /// The room is full.
    Full,
    /// A member has the newcomer's certificate, and the newcomer may not replace it.
    Conflict,
}

/// What a refresh of one room found.
pub(crate) struct Refreshed {
    /// The room's live members on other nodes.
    pub(crate) others: Vec<Card>,
    /// Fields of this node's members that a newcomer elsewhere replaced.
    pub(crate) replaced: Vec<String>,
}

/// The presence keys and scripts of one cluster.
pub(crate) struct Store {
    prefix: String,
    /// How long an entry lives without a refresh.
    entry_lifetime: Duration,
    join: Script,
    space: Script,
    refresh: Script,
    live: Script,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    pub(crate) fn new(prefix: &str, presence_ttl: Duration) -> Self {
        Store {
            prefix: prefix.to_owned(),
            entry_lifetime: presence_ttl / 2,
            join: Script::new(JOIN),
            space: Script::new(SPACE),
            refresh: Script::new(REFRESH),
            live: Script::new(LIVE),
        }
    }

    fn key(&self, room: &str, what: &str) -> String {
        format!("{}:{{{room}}}:{what}", self.prefix)
    }

    fn expiry(&self) -> i64 {
        unix_ms().saturating_add(millis(self.entry_lifetime))
    }

    /// How long a room's keys live after their last change: long after every entry expired.
    fn key_lifetime(&self) -> i64 {
        millis(self.entry_lifetime).saturating_mul(8)
    }

    /// The live members of `room`, and the one with this certificate.
    pub(crate) async fn space(
        &self,
        commands: &mut Commands,
        room: &RoomId,
        fingerprint: &Fingerprint,
    ) -> Result<(usize, Option<MemberKey>), BackplaneError> {
        let (live, same): (usize, String) = self
            .space
            .key(self.key(room.as_str(), "cards"))
            .key(self.key(room.as_str(), "fps"))
            .key(self.key(room.as_str(), "ttl"))
            .arg(unix_ms())
            .arg(fingerprint.to_string())
            .invoke_async(commands)
            .await?;
        Ok((live, key_of_field(&same)))
    }

    /// Takes a place for `card` (see [`JOIN`]).
    pub(crate) async fn join(
        &self,
        commands: &mut Commands,
        room: &RoomId,
        card: &Card,
        encoded: &Bytes,
        max_peers: usize,
        may_replace: &MayReplace,
    ) -> Result<Joining, BackplaneError> {
        let replaceable = match may_replace {
            MayReplace::Nobody => String::new(),
            MayReplace::Anyone => "*".to_owned(),
            MayReplace::Only(who) => field(who),
        };
        let reply: Value = self
            .join
            .key(self.key(room.as_str(), "cards"))
            .key(self.key(room.as_str(), "fps"))
            .key(self.key(room.as_str(), "ttl"))
            .arg(unix_ms())
            .arg(self.expiry())
            .arg(field(&card.key()))
            .arg(encoded.as_ref())
            .arg(card.fingerprint.to_string())
            .arg(max_peers)
            .arg(self.key_lifetime())
            .arg(replaceable)
            .invoke_async(commands)
            .await?;
        parse_join(reply, &card.node)
    }

    /// The live members of `room` on other nodes than `node` (see [`LIVE`]).
    pub(crate) async fn live(
        &self,
        commands: &mut Commands,
        room: &RoomId,
        node: &NodeId,
    ) -> Result<Vec<Card>, BackplaneError> {
        let live: Vec<Vec<u8>> = self
            .live
            .key(self.key(room.as_str(), "cards"))
            .key(self.key(room.as_str(), "ttl"))
            .arg(unix_ms())
            .invoke_async(commands)
            .await?;
        Ok(elsewhere(live, node))
    }

    /// Removes a member's entry.
    pub(crate) async fn leave(
        &self,
        commands: &mut Commands,
        room: &RoomId,
        field: &str,
    ) -> Result<(), BackplaneError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(self.key(room.as_str(), "cards"), field)
            .hdel(self.key(room.as_str(), "fps"), field)
            .zrem(self.key(room.as_str(), "ttl"), field);
        pipe.query_async::<()>(commands).await?;
        Ok(())
    }

    /// Refreshes this node's members of `room` (field, card, fingerprint each; see [`REFRESH`]).
    pub(crate) async fn refresh(
        &self,
        commands: &mut Commands,
        room: &RoomId,
        node: &NodeId,
        members: &[(String, Bytes, String)],
    ) -> Result<Refreshed, BackplaneError> {
        let mut invocation = self.refresh.prepare_invoke();
        invocation
            .key(self.key(room.as_str(), "cards"))
            .key(self.key(room.as_str(), "fps"))
            .key(self.key(room.as_str(), "ttl"))
            .arg(unix_ms())
            .arg(self.expiry())
            .arg(self.key_lifetime());
        for (field, card, fingerprint) in members {
            invocation.arg(field).arg(card.as_ref()).arg(fingerprint);
        }
        let (live, replaced): (Vec<Vec<u8>>, Vec<String>) = invocation.invoke_async(commands).await?;
        Ok(Refreshed { others: elsewhere(live, node), replaced })
    }
}

/// The cards in a script's list of live members that are on other nodes than `node`.
fn elsewhere(live: Vec<Vec<u8>>, node: &NodeId) -> Vec<Card> {
    live.into_iter()
        .filter_map(|bytes| decode_card(bytes.into()).ok())
        .filter(|card| card.node != *node)
        .collect()
}

/// Reads the join script's reply: `None` when the room is full. A member replaced on this
/// same node is not reported: the registry replaces it.
fn parse_join(reply: Value, node: &NodeId) -> Result<Joining, BackplaneError> {
    let Value::Array(items) = reply else { return Err(BackplaneError::Reply) };
    match items.first() {
        Some(Value::Int(0)) => return Ok(Joining::Full),
        Some(Value::Int(2)) => return Ok(Joining::Conflict),
        Some(Value::Int(1)) => {}
        _ => return Err(BackplaneError::Reply),
    }
    let replaced = match items.get(1) {
        Some(Value::BulkString(bytes)) if !bytes.is_empty() => {
            decode_card(Bytes::copy_from_slice(bytes)).ok()
        }
        _ => None,
    };
    let Some(Value::Array(flat)) = items.get(2) else { return Err(BackplaneError::Reply) };
    let others = flat
        .chunks(2)
        .filter_map(|pair| match pair.get(1) {
            Some(Value::BulkString(bytes)) => decode_card(Bytes::copy_from_slice(bytes)).ok(),
            _ => None,
        })
        .filter(|card| card.node != *node)
        .collect();
    Ok(Joining::Joined(Roster { others, replaced: replaced.filter(|card| card.node != *node) }))
}
