//! The framing's tests: reading every frame form, refusing what RFC 6455 forbids, writing.

use super::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::ReadBuf;

/// A client frame: masked with a fixed key.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut head = [0u8; MAX_HEAD];
    let head_len = header(&mut head, opcode, payload.len());
    let mut out = head[..head_len].to_vec();
    out[0] = if fin { out[0] } else { out[0] & 0x7F };
    out[1] |= 0x80;
    out.extend_from_slice(&key);
    out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<Message, String>> {
    let mut reader = FrameReader::new(&bytes[..], &[], usize::MAX, max);
    let mut out = Vec::new();
    while let Some(item) = reader.next().await {
        let failed = item.is_err();
        out.push(item.map_err(|e| format!("{e:?}")));
        if failed {
            break;
        }
    }
    out
}

#[tokio::test]
async fn reads_masked_frames_of_every_length_form() {
    let long = "x".repeat(70_000);
    let mut bytes = client_frame(true, OP_TEXT, b"hi");
    bytes.extend(client_frame(true, OP_BINARY, &[7u8; 300]));
    bytes.extend(client_frame(true, OP_TEXT, long.as_bytes()));
    bytes.extend(client_frame(true, OP_PING, b"p"));
    let got = read_all(bytes, 1 << 20).await;
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].as_ref().unwrap(), &Message::text("hi"));
    assert_eq!(got[1].as_ref().unwrap(), &Message::binary(vec![7u8; 300]));
    assert_eq!(got[2].as_ref().unwrap(), &Message::text(long));
    assert_eq!(got[3].as_ref().unwrap(), &Message::Ping(Bytes::from_static(b"p")));
}

#[tokio::test]
async fn reassembles_fragments_with_control_frames_between() {
    let mut bytes = client_frame(false, OP_TEXT, "h\u{e9}".as_bytes()[..2].as_ref());
    bytes.extend(client_frame(true, OP_PONG, b""));
    bytes.extend(client_frame(true, OP_CONTINUATION, &"h\u{e9}llo".as_bytes()[2..]));
    let got = read_all(bytes, 1024).await;
    assert_eq!(got[0].as_ref().unwrap(), &Message::Pong(Bytes::new()));
    assert_eq!(got[1].as_ref().unwrap(), &Message::text("h\u{e9}llo"));
}

#[tokio::test]
async fn refuses_what_rfc_6455_forbids() {
    let unmasked = {
        let mut head = [0u8; MAX_HEAD];
        let head_len = header(&mut head, OP_TEXT, 1);
        [&head[..head_len], b"a"].concat()
    };
    let mut rsv = client_frame(true, OP_TEXT, b"a");
    rsv[0] |= 0x40;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (unmasked, "unmasked"),
        (rsv, "reserved bits"),
        (client_frame(true, 0x3, b""), "unknown opcode"),
        (client_frame(false, OP_PING, b""), "control frame"),
        (client_frame(true, OP_PING, &[0u8; 126]), "control frame"),
        (client_frame(true, OP_CONTINUATION, b"a"), "continuation frame outside"),
        (client_frame(true, OP_CLOSE, &[3]), "one-byte payload"),
        (client_frame(true, OP_CLOSE, &1005u16.to_be_bytes()), "may not send"),
        (
            [client_frame(false, OP_TEXT, b"a"), client_frame(true, OP_TEXT, b"b")].concat(),
            "inside a fragmented",
        ),
    ];
    for (bytes, expected) in cases {
        let got = read_all(bytes, 1024).await;
        let error = got.last().unwrap().as_ref().unwrap_err();
        assert!(error.contains(expected), "{error} should mention {expected}");
    }
}

#[tokio::test]
async fn size_utf8_and_truncation_errors() {
    let too_big = read_all(client_frame(true, OP_BINARY, &[0u8; 2000]), 1024).await;
    assert!(matches!(too_big[0], Err(ref e) if e.contains("TooBig")));
    let fragments =
        [client_frame(false, OP_BINARY, &[0u8; 600]), client_frame(true, OP_CONTINUATION, &[0u8; 600])];
    let too_big = read_all(fragments.concat(), 1024).await;
    assert!(matches!(too_big[0], Err(ref e) if e.contains("TooBig")));
    let bad_utf8 = read_all(client_frame(true, OP_TEXT, &[0xff, 0xfe]), 1024).await;
    assert!(matches!(bad_utf8[0], Err(ref e) if e.contains("InvalidUtf8")));
    let mut cut = client_frame(true, OP_TEXT, b"hello");
    cut.truncate(6);
    let truncated = read_all(cut, 1024).await;
    assert!(matches!(truncated[0], Err(ref e) if e.contains("UnexpectedEof")));
    assert!(read_all(Vec::new(), 1024).await.is_empty(), "a clean end is the end of the stream");
}

#[tokio::test]
async fn reads_a_close_frame() {
    let mut payload = 1001u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    let got = read_all(client_frame(true, OP_CLOSE, &payload), 1024).await;
    match got[0].as_ref().unwrap() {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1001);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[test]
fn unmasking_matches_the_bytewise_definition() {
    let key = [1, 2, 3, 4];
    for len in 0..40 {
        let original: Vec<u8> = (0..len as u8).collect();
        let mut fast = original.clone();
        unmask(&mut fast, key);
        let slow: Vec<u8> = original.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
        assert_eq!(fast, slow, "length {len}");
    }
}

/// A transport that gives at most a TLS record's plaintext (16 KiB) per read, as the TLS stream
/// does.
struct Records(Vec<u8>, usize);

impl AsyncRead for Records {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = buf.remaining().min(16 * 1024).min(this.0.len() - this.1);
        buf.put_slice(&this.0[this.1..this.1 + n]);
        this.1 += n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_stream_of_large_frames_lands_in_place_and_is_handed_over() {
    let payload = "x".repeat(64 * 1024);
    let frame = client_frame(true, OP_TEXT, payload.as_bytes());
    let head = frame.len() - payload.len();
    let mut reader = FrameReader::new(Records(frame.repeat(12), 0), &[], usize::MAX, 1 << 20);
    let first = reader.next().await.unwrap().unwrap();
    assert_eq!(first, Message::text(payload.as_str()));
    for i in 2..=12 {
        // The buffer the previous frame left holds (the start of) this one.
        let landing = reader.buf.as_ptr() as usize;
        let message = reader.next().await.unwrap().unwrap();
        assert_eq!(message, Message::text(payload.as_str()));
        let Message::Text(text) = message else { unreachable!() };
        // Neither moved while it arrived nor copied out when it was whole.
        assert_eq!(text.as_str().as_ptr() as usize, landing + head, "frame {i}");
    }
    assert!(reader.next().await.is_none());
}

/// A transport that gives its bytes a record at a time, then has nothing more: a peer that
/// stalled.
struct Stalls(Vec<u8>, usize);

impl AsyncRead for Stalls {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = buf.remaining().min(16 * 1024).min(this.0.len() - this.1);
        if n == 0 {
            return Poll::Pending;
        }
        buf.put_slice(&this.0[this.1..this.1 + n]);
        this.1 += n;
        Poll::Ready(Ok(()))
    }
}

#[test]
fn a_peer_that_stalls_after_a_large_frame_holds_a_step_of_buffer_not_a_frame() {
    use futures_util::FutureExt;
    let large = client_frame(true, OP_BINARY, &vec![7u8; 1 << 20]);
    let mut bytes = large.clone();
    bytes.extend_from_slice(&large[..20]);
    let mut reader = FrameReader::new(Stalls(bytes, 0), &[], usize::MAX, 2 << 20);
    let first = reader.next().now_or_never().flatten().unwrap().unwrap();
    assert_eq!(first.len(), 1 << 20);
    drop(first);
    assert!(reader.next().now_or_never().is_none(), "the second frame is not whole");
    assert_eq!(reader.buf.len(), 20);
    assert!(
        reader.buf.capacity() <= 20 + GROW_STEP + MAX_CLIENT_HEAD,
        "{} bytes kept",
        reader.buf.capacity()
    );
}

/// A transport that takes at most seven bytes per write, to exercise partial writes.
struct Trickle(Vec<u8>);

impl AsyncWrite for Trickle {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let n = buf.len().min(7);
        self.get_mut().0.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Reads unmasked server frames back: (opcode, payload) each.
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while let [b0, b1, rest @ ..] = bytes {
        assert_eq!(b0 & 0x80, 0x80, "every frame is final");
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        let (len, rest) = match b1 & 0x7F {
            126 => (usize::from(u16::from_be_bytes([rest[0], rest[1]])), &rest[2..]),
            127 => (u64::from_be_bytes(rest[..8].try_into().unwrap()) as usize, &rest[8..]),
            n => (usize::from(n), rest),
        };
        frames.push((b0 & 0x0F, rest[..len].to_vec()));
        bytes = &rest[len..];
    }
    frames
}

#[tokio::test]
async fn a_long_batch_survives_partial_writes() {
    let messages: Vec<Message> = (0..150)
        .map(|i| match i % 3 {
            0 => Message::text("t".repeat(i * 2)),
            1 => Message::binary(vec![i as u8; i * 3]),
            _ => Message::binary(vec![7u8; 70_000 + i]),
        })
        .collect();
    let mut writer = FrameWriter::new(Trickle(Vec::new()));
    for message in messages.clone() {
        writer.feed(message).await.unwrap();
    }
    writer.flush().await.unwrap();
    let frames = server_frames(&writer.io.0);
    assert_eq!(frames.len(), messages.len());
    for ((opcode, payload), message) in frames.iter().zip(&messages) {
        assert_eq!(*opcode, if message.is_text() { OP_TEXT } else { OP_BINARY });
        assert_eq!(payload.as_slice(), message.clone().into_data().as_ref());
    }
    assert!(writer.pending.is_empty() && writer.pending_bytes == 0);
}

#[tokio::test]
async fn writes_unmasked_frames_and_a_bounded_close_reason() {
    let mut out = Vec::new();
    {
        let mut writer = FrameWriter::new(&mut out);
        writer.feed(Message::text("hi")).await.unwrap();
        writer.feed(Message::binary(vec![1u8; 200])).await.unwrap();
        let reason = "\u{e9}".repeat(100);
        let close = CloseFrame { code: CloseCode::Policy, reason: reason.into() };
        writer.feed(Message::Close(Some(close))).await.unwrap();
        writer.flush().await.unwrap();
    }
    assert_eq!(&out[..4], &[0x81, 2, b'h', b'i']);
    assert_eq!(&out[4..8], &[0x82, 126, 0, 200]);
    let close = &out[8 + 200..];
    assert_eq!(close[0], 0x88);
    let len = usize::from(close[1]);
    assert!(len <= 125 && len == close.len() - 2);
    assert_eq!(&close[2..4], &1008u16.to_be_bytes());
    assert!(std::str::from_utf8(&close[4..]).is_ok(), "the reason is cut on a character boundary");
}
