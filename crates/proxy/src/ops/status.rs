//! The rooms report: what `GET /v1/rooms` answers (rooms, their members, identities and
//! counters), read from the registry. `ws-proxy status` prints it as a table (`cli/status.rs`).

use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::metrics::RoomTotals;
use crate::rooms::registry::Registry;
use crate::rooms::room::{Contents, Member, Room};

/// One room, as the admin API reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomStatus {
    /// The room id.
    pub id: String,
    /// Messages held for the next member.
    pub held_messages: usize,
    /// Bytes held for the next member.
    pub held_bytes: usize,
    /// The members, in join order.
    pub members: Vec<MemberStatus>,
    /// Cluster mode: the members on other nodes, as this node knows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elsewhere: Vec<RemoteMemberStatus>,
}

/// A member on another node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteMemberStatus {
    /// The node it is connected to.
    pub node: String,
    /// Client certificate SHA-256 fingerprint, uppercase hex.
    pub fingerprint: String,
    /// `peerClass` from its HELLO.
    pub peer_class: Option<String>,
    /// `peerId` from its HELLO.
    pub peer_id: Option<String>,
}

/// One member of a room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Client certificate subject DN.
    pub subject: String,
    /// Client certificate SHA-256 fingerprint, uppercase hex.
    pub fingerprint: String,
    /// `peerClass` from its HELLO.
    pub peer_class: Option<String>,
    /// `peerId` from its HELLO.
    pub peer_id: Option<String>,
    /// When it joined, seconds since the Unix epoch.
    pub connected_since: u64,
    /// Data frames it sent.
    pub frames_in: u64,
    /// Bytes it sent.
    pub bytes_in: u64,
    /// Frames written to it.
    pub frames_out: u64,
    /// Bytes written to it.
    pub bytes_out: u64,
    /// Where it connected from.
    #[serde(default)]
    pub address: String,
    /// Newcomers with its certificate it answered a probe for, and so kept its place
    /// (`rooms.same_identity = "probe"`).
    #[serde(default)]
    pub conflicts_survived: u32,
    /// Its certificate's notAfter, seconds since the Unix epoch.
    #[serde(default)]
    pub not_after: i64,
}

/// Every room with its members, as owned data, sorted by room id.
pub(crate) fn snapshot(registry: &Registry) -> Vec<RoomStatus> {
    let mut report: Vec<RoomStatus> = registry.rooms().iter().map(|room| RoomStatus::of(room)).collect();
    report.sort_by(|a, b| a.id.cmp(&b.id));
    report
}

impl RoomStatus {
    /// The report of one room.
    fn of(room: &Room) -> Self {
        room.inspect(|contents: Contents<'_>| RoomStatus {
            id: room.id().to_string(),
            held_messages: contents.held_messages,
            held_bytes: contents.held_bytes,
            members: contents.members.iter().map(MemberStatus::of).collect(),
            elsewhere: contents
                .remote
                .iter()
                .map(|card| RemoteMemberStatus {
                    node: card.node.to_string(),
                    fingerprint: card.fingerprint.to_string(),
                    peer_class: card.name.class.clone(),
                    peer_id: card.name.id.clone(),
                })
                .collect(),
        })
    }
}

impl MemberStatus {
    fn of(member: &Member) -> Self {
        let stats = member.mailbox.stats();
        MemberStatus {
            subject: member.subject.to_string(),
            fingerprint: member.fingerprint.to_string(),
            peer_class: member.name.class.clone(),
            peer_id: member.name.id.clone(),
            connected_since: member.since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            frames_in: stats.received.frames(),
            bytes_in: stats.received.bytes(),
            frames_out: stats.sent.frames(),
            bytes_out: stats.sent.bytes(),
            address: member.address.to_string(),
            conflicts_survived: member.conflicts_survived,
            not_after: member.not_after,
        }
    }
}

/// The room gauges of `/metrics` at `now` (Unix seconds), counted in place: a scrape costs a
/// look at each room, not a report of every member (strings and all) made and sorted.
#[must_use]
pub(crate) fn totals(registry: &Registry, now: i64) -> RoomTotals {
    let mut totals = RoomTotals::default();
    for room in registry.rooms() {
        room.inspect(|contents: Contents<'_>| {
            totals.rooms += 1;
            totals.members += contents.members.len() as u64;
            totals.held_messages += contents.held_messages as u64;
            totals.held_bytes += contents.held_bytes as u64;
            contents.members.iter().for_each(|m| totals.expiry.add(m.not_after - now));
        });
    }
    totals
}
