//! What nodes tell each other through their inboxes ([`Note`]), packed in one [`Packet`] per
//! destination and publisher batch, and a member's [`Card`] as presence keeps it: a small
//! binary encoding, length-prefixed, so a frame's payload travels as it is.
//!
//! Packets are numbered per destination node: a receiver that finds a number skipped knows
//! that notes from that node were lost on the way, and says so to the members concerned.
//!
//! Every decode checks lengths and tags and fails with a reason; a malformed message from
//! Redis is logged and dropped, never trusted.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::identity::Fingerprint;
use crate::rooms::id::{ConnId, InvalidRoomId, NodeId, PeerName, RoomId};
use crate::rooms::remote::{Card, MemberKey};

/// First byte of every note and card encoding; a change of format changes it.
const VERSION: u8 = 1;
/// First byte of a packet.
const PACKET: u8 = 2;

/// A message to another node's inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Note {
    /// For the rooms of the receiving node (`inbox.rs`).
    Room(RoomNote),
    /// Probe the local member `conn` of `room` for at most `timeout_ms`, and answer node `from`
    /// with `Probed`: a newcomer at `newcomer` has its certificate.
    Probe { room: RoomId, conn: ConnId, from: NodeId, probe: u64, newcomer: String, timeout_ms: u64 },
    /// The answer to probe `probe`: whether the member answered.
    Probed { probe: u64, alive: bool },
}

/// What a node tells another about a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RoomNote {
    /// A member's data frame, for the members of `room` on the receiving node.
    Frame { room: RoomId, origin: NodeId, conn: ConnId, frame: Message },
    /// A member joined `room`: record it and give its HELLO to the local members. The card is
    /// boxed: it is the largest field of any note, and every note moves through the outbox.
    Joined { room: RoomId, card: Box<Card> },
    /// A member left `room`: forget it and tell the local members why.
    Left { room: RoomId, who: MemberKey, reason: String },
    /// Close the local member `conn`: a newer connection with its certificate joined `room`
    /// on node `by`, which waits for its departure.
    Replace { room: RoomId, conn: ConnId, by: NodeId },
}

/// Why bytes are not a valid encoding.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("truncated")]
    Truncated,
    #[error("unknown version {0}")]
    Version(u8),
    #[error("unknown tag {0}")]
    Tag(u8),
    #[error("text that is not UTF-8")]
    Utf8,
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("room id: {0}")]
    Room(#[from] InvalidRoomId),
}

const FRAME: u8 = 1;
const JOINED: u8 = 2;
const LEFT: u8 = 3;
const REPLACE: u8 = 4;
const PROBE: u8 = 5;
const PROBED: u8 = 6;

const TEXT: u8 = 1;
const BINARY: u8 = 2;

impl Note {
    /// The encoding, as published.
    #[cfg(test)]
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64 + self.payload_len());
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Appends the encoding to `out`.
    fn encode_into(&self, out: &mut BytesMut) {
        out.put_u8(VERSION);
        match self {
            Note::Room(RoomNote::Frame { room, origin, conn, frame }) => {
                out.put_u8(FRAME);
                put_str(out, room.as_str());
                put_str(out, origin.as_str());
                out.put_u64(conn.get());
                put_frame(out, frame);
            }
            Note::Room(RoomNote::Joined { room, card }) => {
                out.put_u8(JOINED);
                put_str(out, room.as_str());
                put_card(out, card);
            }
            Note::Room(RoomNote::Left { room, who, reason }) => {
                out.put_u8(LEFT);
                put_str(out, room.as_str());
                put_str(out, who.node.as_str());
                out.put_u64(who.conn.get());
                put_str(out, reason);
            }
            Note::Room(RoomNote::Replace { room, conn, by }) => {
                out.put_u8(REPLACE);
                put_str(out, room.as_str());
                out.put_u64(conn.get());
                put_str(out, by.as_str());
            }
            Note::Probe { room, conn, from, probe, newcomer, timeout_ms } => {
                out.put_u8(PROBE);
                put_str(out, room.as_str());
                out.put_u64(conn.get());
                put_str(out, from.as_str());
                out.put_u64(*probe);
                put_str(out, newcomer);
                out.put_u64(*timeout_ms);
            }
            Note::Probed { probe, alive } => {
                out.put_u8(PROBED);
                out.put_u64(*probe);
                out.put_u8(u8::from(*alive));
            }
        }
    }

    /// The bytes the note carries beyond its fixed part: what sizes its encoding.
    pub(crate) fn payload_len(&self) -> usize {
        match self {
            Note::Room(RoomNote::Frame { frame, .. }) => frame.len(),
            Note::Room(RoomNote::Joined { card, .. }) => card.hello.len(),
            _ => 0,
        }
    }

    /// Reads a note.
    ///
    /// # Errors
    /// What is wrong with the bytes.
    pub(crate) fn decode(bytes: Bytes) -> Result<Self, WireError> {
        let mut r = Reader::new(&bytes);
        r.version()?;
        let note = match r.u8()? {
            FRAME => Note::Room(RoomNote::Frame {
                room: r.room()?,
                origin: r.node()?,
                conn: r.conn()?,
                frame: r.frame()?,
            }),
            JOINED => Note::Room(RoomNote::Joined { room: r.room()?, card: Box::new(r.card()?) }),
            LEFT => Note::Room(RoomNote::Left {
                room: r.room()?,
                who: MemberKey { node: r.node()?, conn: r.conn()? },
                reason: r.str()?,
            }),
            REPLACE => Note::Room(RoomNote::Replace { room: r.room()?, conn: r.conn()?, by: r.node()? }),
            PROBE => Note::Probe {
                room: r.room()?,
                conn: r.conn()?,
                from: r.node()?,
                probe: r.u64()?,
                newcomer: r.str()?,
                timeout_ms: r.u64()?,
            },
            PROBED => Note::Probed { probe: r.u64()?, alive: r.bool()? },
            tag => return Err(WireError::Tag(tag)),
        };
        r.end()?;
        Ok(note)
    }
}

/// The notes one node publishes to another in one batch, numbered: `seq` counts the packets
/// from `origin` to this destination, from 1. A packet without notes is a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Packet {
    pub(crate) origin: NodeId,
    pub(crate) seq: u64,
    /// Each note's encoding: slices of the packet's buffer, not copies.
    pub(crate) notes: Vec<Bytes>,
}

/// The encoding of a packet of `notes`, as published: each note is encoded straight into the
/// packet's one buffer, behind its length.
pub(crate) fn encode_packet(origin: &NodeId, seq: u64, notes: &[&Note]) -> Bytes {
    let size = 32 + origin.as_str().len() + notes.iter().map(|n| 128 + n.payload_len()).sum::<usize>();
    let mut out = BytesMut::with_capacity(size);
    out.put_u8(PACKET);
    put_str(&mut out, origin.as_str());
    out.put_u64(seq);
    out.put_u32(u32::try_from(notes.len()).unwrap_or(u32::MAX));
    for note in notes {
        let at = out.len();
        out.put_u32(0);
        note.encode_into(&mut out);
        let len = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    out.freeze()
}

/// A member's frame from another node, read in place: its room and origin node are borrowed
/// from the note's bytes, and the frame's payload is a slice of them (the one reference the
/// note's buffer gains). Most notes are frames, and reading one so allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FrameNote<'a> {
    pub(crate) room: &'a str,
    /// The node it came from, as sent: only ever logged.
    pub(crate) origin: &'a [u8],
    pub(crate) conn: ConnId,
    pub(crate) frame: Message,
}

impl<'a> FrameNote<'a> {
    /// `None` when `note` is not a frame note; else the frame, or what is wrong with it.
    pub(crate) fn read(note: &'a Bytes) -> Option<Result<Self, WireError>> {
        if note.get(..2) != Some(&[VERSION, FRAME][..]) {
            return None;
        }
        let mut r = Reader { bytes: note, at: 2 };
        let read = (|| {
            let frame = FrameNote { room: r.text()?, origin: r.chunk()?, conn: r.conn()?, frame: r.frame()? };
            r.end()?;
            Ok(frame)
        })();
        Some(read)
    }
}

/// Whether `bytes` is a note alone, as a node of the version before packets publishes it.
pub(crate) fn is_single_note(bytes: &[u8]) -> bool {
    bytes.first() == Some(&VERSION)
}

impl Packet {
    /// Reads a packet; its notes are read by [`Note::decode`], one by one.
    ///
    /// # Errors
    /// What is wrong with the bytes.
    pub(crate) fn decode(bytes: Bytes) -> Result<Self, WireError> {
        let mut r = Reader::new(&bytes);
        match r.u8()? {
            PACKET => {}
            other => return Err(WireError::Version(other)),
        }
        let origin = r.node()?;
        let seq = r.u64()?;
        let count = r.u32()? as usize;
        // Each note takes at least its length: a count the bytes cannot hold is refused before
        // anything is reserved for it.
        r.need(count.saturating_mul(4))?;
        let mut notes = Vec::with_capacity(count);
        for _ in 0..count {
            notes.push(r.bytes()?);
        }
        r.end()?;
        Ok(Packet { origin, seq, notes })
    }
}

/// A card's encoding, as presence keeps it.
pub(crate) fn encode_card(card: &Card) -> Bytes {
    let mut out = BytesMut::with_capacity(96 + card.hello.len());
    out.put_u8(VERSION);
    put_card(&mut out, card);
    out.freeze()
}

/// Reads a card.
///
/// # Errors
/// What is wrong with the bytes.
pub(crate) fn decode_card(bytes: Bytes) -> Result<Card, WireError> {
    let mut r = Reader::new(&bytes);
    r.version()?;
    let card = r.card()?;
    r.end()?;
    Ok(card)
}

/// A member's field in a room's presence hash: `<node>/<conn>`.
pub(crate) fn field(who: &MemberKey) -> String {
    who.to_string()
}

/// The member whose field is `field`; `None` for "" or anything else that is not one.
pub(crate) fn key_of_field(field: &str) -> Option<MemberKey> {
    let (node, conn) = field.rsplit_once('/')?;
    let conn = conn.parse().ok().map(ConnId::from_wire)?;
    (!node.is_empty()).then(|| MemberKey { node: NodeId::new(node), conn })
}

fn put_str(out: &mut BytesMut, text: &str) {
    put_bytes(out, text.as_bytes());
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.put_slice(bytes);
}

fn put_opt(out: &mut BytesMut, text: Option<&str>) {
    match text {
        Some(text) => {
            out.put_u8(1);
            put_str(out, text);
        }
        None => out.put_u8(0),
    }
}

fn put_frame(out: &mut BytesMut, frame: &Message) {
    match frame {
        Message::Text(text) => {
            out.put_u8(TEXT);
            put_bytes(out, text.as_bytes());
        }
        other => {
            out.put_u8(BINARY);
            put_bytes(out, &other.clone().into_data());
        }
    }
}

fn put_card(out: &mut BytesMut, card: &Card) {
    put_str(out, card.node.as_str());
    out.put_u64(card.conn.get());
    out.put_slice(&card.fingerprint.0);
    put_opt(out, card.name.class.as_deref());
    put_opt(out, card.name.id.as_deref());
    put_frame(out, &card.hello);
}

/// Reads the fields of an encoding in place: what it hands out borrows from the bytes, or
/// (`bytes`, a frame's payload) is a slice of them, never a copy.
struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a Bytes) -> Self {
        Reader { bytes, at: 0 }
    }

    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.bytes.len() - self.at < n { Err(WireError::Truncated) } else { Ok(()) }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        self.need(n)?;
        let taken = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(taken)
    }

    fn version(&mut self) -> Result<(), WireError> {
        match self.u8()? {
            VERSION => Ok(()),
            other => Err(WireError::Version(other)),
        }
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let mut be = [0u8; 4];
        be.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(be))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let mut be = [0u8; 8];
        be.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(be))
    }

    /// A length-prefixed field, borrowed.
    fn chunk(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// A length-prefixed field, as a slice of the bytes.
    fn bytes(&mut self) -> Result<Bytes, WireError> {
        let chunk = self.chunk()?;
        Ok(self.bytes.slice_ref(chunk))
    }

    fn text(&mut self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.chunk()?).map_err(|_| WireError::Utf8)
    }

    fn str(&mut self) -> Result<String, WireError> {
        self.text().map(str::to_owned)
    }

    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(WireError::Tag(tag)),
        }
    }

    fn room(&mut self) -> Result<RoomId, WireError> {
        Ok(RoomId::parse(self.text()?)?)
    }

    fn node(&mut self) -> Result<NodeId, WireError> {
        Ok(NodeId::new(self.text()?))
    }

    fn conn(&mut self) -> Result<ConnId, WireError> {
        self.u64().map(ConnId::from_wire)
    }

    fn opt(&mut self) -> Result<Option<String>, WireError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            tag => Err(WireError::Tag(tag)),
        }
    }

    fn frame(&mut self) -> Result<Message, WireError> {
        let tag = self.u8()?;
        let payload = self.bytes()?;
        match tag {
            TEXT => Ok(Message::Text(Utf8Bytes::try_from(payload).map_err(|_| WireError::Utf8)?)),
            BINARY => Ok(Message::Binary(payload)),
            tag => Err(WireError::Tag(tag)),
        }
    }

    fn card(&mut self) -> Result<Card, WireError> {
        let node = self.node()?;
        let conn = self.conn()?;
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(self.take(32)?);
        let name = PeerName { class: self.opt()?, id: self.opt()? };
        let hello = self.frame()?;
        Ok(Card { node, conn, fingerprint: Fingerprint(fingerprint), name, hello })
    }

    fn end(&self) -> Result<(), WireError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests;
