//! The wire format's tests: notes, cards and packets read back as written (frames in place),
//! and malformed bytes refused with a reason.

use super::*;

fn room(id: &str) -> RoomId {
    RoomId::parse(id).unwrap()
}

fn node(name: &str) -> NodeId {
    NodeId::new(name)
}

fn card() -> Card {
    Card {
        node: node("node-a-1f2e"),
        conn: ConnId::from_wire(42),
        fingerprint: Fingerprint([9; 32]),
        name: PeerName { class: Some("gw".into()), id: None },
        hello: Message::text(r#"{"message": {"messageType": "CONN:HELLO"}}"#),
    }
}

#[test]
fn notes_and_cards_round_trip() {
    let notes = [
        Note::Room(RoomNote::Frame {
            room: room("gw/1"),
            origin: node("a"),
            conn: ConnId::from_wire(7),
            frame: Message::text("héllo"),
        }),
        Note::Room(RoomNote::Frame {
            room: room("r"),
            origin: node("b"),
            conn: ConnId::from_wire(u64::MAX),
            frame: Message::binary(vec![0, 255, 1]),
        }),
        Note::Room(RoomNote::Joined { room: room("gw/1"), card: Box::new(card()) }),
        Note::Room(RoomNote::Left {
            room: room("gw/1"),
            who: MemberKey { node: node("a"), conn: ConnId::from_wire(3) },
            reason: "closed".into(),
        }),
        Note::Room(RoomNote::Replace { room: room("gw/1"), conn: ConnId::from_wire(5), by: node("b") }),
        Note::Probe {
            room: room("gw/1"),
            conn: ConnId::from_wire(6),
            from: node("c"),
            probe: 77,
            newcomer: "127.0.0.1:4000".into(),
            timeout_ms: 3000,
        },
        Note::Probed { probe: 77, alive: true },
        Note::Probed { probe: 78, alive: false },
    ];
    for note in notes {
        assert_eq!(Note::decode(note.encode()).unwrap(), note);
    }
    assert_eq!(decode_card(encode_card(&card())).unwrap(), card());
    assert_eq!(field(&card().key()), "node-a-1f2e/42");
    assert_eq!(key_of_field("node-a-1f2e/42"), Some(card().key()));
    assert_eq!(key_of_field(""), None);
}

#[test]
fn packets_carry_their_notes_as_slices_and_refuse_what_is_malformed() {
    let sent = [
        Note::Room(RoomNote::Joined { room: room("gw/1"), card: Box::new(card()) }),
        Note::Probed { probe: 1, alive: true },
        Note::Room(RoomNote::Frame {
            room: room("gw/1"),
            origin: node("a-1"),
            conn: ConnId::from_wire(3),
            frame: Message::binary(vec![7u8; 70_000]),
        }),
    ];
    let notes: Vec<Bytes> = sent.iter().map(Note::encode).collect();
    let packet = encode_packet(&node("a-1"), 7, &sent.iter().collect::<Vec<_>>());
    let decoded = Packet::decode(packet.clone()).unwrap();
    assert_eq!(decoded, Packet { origin: node("a-1"), seq: 7, notes: notes.clone() });
    let inside = |b: &Bytes| packet.as_ptr_range().contains(&b.as_ptr());
    assert!(decoded.notes.iter().all(inside), "slices of the packet, not copies");
    let heartbeat = Packet::decode(encode_packet(&node("a-1"), 8, &[])).unwrap();
    assert!(heartbeat.notes.is_empty());
    for cut in 0..packet.len() {
        assert!(Packet::decode(packet.slice(..cut)).is_err(), "cut at {cut}");
    }
    assert_eq!(Packet::decode(notes[0].clone()), Err(WireError::Version(1)), "a note is not a packet");
    assert!(is_single_note(&notes[0]) && !is_single_note(&packet), "told apart by their first byte");
    let mut huge_count = encode_packet(&node("a"), 1, &[]).to_vec();
    let at = huge_count.len() - 4;
    huge_count[at..].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(Packet::decode(huge_count.into()), Err(WireError::Truncated));
}

#[test]
fn frame_notes_are_read_in_place() {
    let note = Note::Room(RoomNote::Frame {
        room: room("gw/1"),
        origin: node("a-1"),
        conn: ConnId::from_wire(7),
        frame: Message::text("héllo"),
    })
    .encode();
    let frame = FrameNote::read(&note).unwrap().unwrap();
    assert_eq!((frame.room, frame.origin, frame.conn), ("gw/1", &b"a-1"[..], ConnId::from_wire(7)));
    assert_eq!(frame.frame, Message::text("héllo"));
    let inside = |s: &[u8]| note.as_ptr_range().contains(&s.as_ptr());
    assert!(
        inside(frame.room.as_bytes())
            && inside(frame.origin)
            && inside(frame.frame.clone().into_data().as_ref()),
        "slices of the note, not copies"
    );
    let joined = Note::Room(RoomNote::Joined { room: room("gw/1"), card: Box::new(card()) }).encode();
    assert!(FrameNote::read(&joined).is_none(), "only frames");
    for cut in 2..note.len() {
        assert!(FrameNote::read(&note.slice(..cut)).unwrap().is_err(), "cut at {cut}");
    }
    let mut bad = note.to_vec();
    let last = bad.len() - 1;
    bad[last] = 0xff;
    assert_eq!(FrameNote::read(&bad.into()), Some(Err(WireError::Utf8)));
}

#[test]
fn malformed_bytes_are_refused_with_a_reason() {
    let good = Note::Room(RoomNote::Joined { room: room("gw/1"), card: Box::new(card()) }).encode();
    for cut in 0..good.len() {
        assert!(Note::decode(good.slice(..cut)).is_err(), "cut at {cut}");
    }
    let mut trailing = good.to_vec();
    trailing.push(0);
    assert_eq!(Note::decode(trailing.into()), Err(WireError::Trailing(1)));
    assert_eq!(Note::decode(Bytes::from_static(&[2, 1])), Err(WireError::Version(2)));
    assert_eq!(Note::decode(Bytes::from_static(&[1, 9])), Err(WireError::Tag(9)));
    let frame = Note::Room(RoomNote::Frame {
        room: room("r"),
        origin: node("o"),
        conn: ConnId::from_wire(1),
        frame: Message::text("ab"),
    });
    let mut bad_text = frame.encode().to_vec();
    let last = bad_text.len() - 1;
    bad_text[last] = 0xff;
    assert_eq!(Note::decode(bad_text.into()), Err(WireError::Utf8));
    let huge = [&[1u8, 4][..], &u32::MAX.to_be_bytes()].concat();
    assert_eq!(Note::decode(huge.into()), Err(WireError::Truncated));
}
