//! WebSocket framing (RFC 6455) of an upgraded connection, server side: [`FrameReader`] turns
//! the client's bytes into messages and [`FrameWriter`] the proxy's messages into frames.
//!
//! The proxy frames its own connections instead of running them through tokio-tungstenite
//! (whose `Message` type it keeps): the read buffer exists only while bytes are in flight and is
//! given back whenever the socket has nothing more to read, so an idle peer holds none; a frame's
//! payload is copied into its own exact-size allocation, so a queued frame never pins a read
//! buffer; nothing is zero-filled before a read; and the reading and writing halves share no
//! lock but the TLS stream's own. No extension is negotiated, so every reserved bit must be
//! zero. The figures behind this are in docs/performance.md.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::error::Close;

/// How much the read buffer grows by when it needs room.
const READ_CHUNK: usize = 8 * 1024;
/// The most the read buffer grows by ahead of bytes that have arrived.
const GROW_STEP: usize = 64 * 1024;
/// A read is not started with less room than this.
const MIN_READ: usize = 512;
/// Output fed before `poll_ready` waits for it to be written.
const WRITE_HIGH: usize = 64 * 1024;
/// The largest payload of a control frame.
const MAX_CONTROL: usize = 125;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Why reading from a client failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// A message longer than the configured maximum.
    TooBig,
    /// A text message, or a close reason, that is not UTF-8.
    InvalidUtf8,
    /// A frame that breaks RFC 6455.
    Protocol(&'static str),
    /// The transport failed, or ended inside a frame.
    Io(io::Error),
}

impl ReadError {
    /// Why the connection ends after this error; `max_message` is the configured limit.
    pub(crate) fn into_close(self, max_message: usize) -> Close {
        match self {
            ReadError::TooBig => Close::TooBig(max_message),
            ReadError::InvalidUtf8 => Close::InvalidUtf8,
            ReadError::Protocol(why) => Close::Protocol(why.to_owned()),
            ReadError::Io(e) => Close::Transport(e.to_string()),
        }
    }
}

/// Reads messages from a client: unmasks, reassembles fragments, checks UTF-8 and sizes.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_message: usize,
    /// A fragmented message being assembled: its opcode and its payload so far.
    partial: Option<(u8, BytesMut)>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `io`, starting with the bytes already read past the upgrade request.
    pub(crate) fn new(io: R, leftover: &[u8], max_message: usize) -> Self {
        FrameReader { io, buf: BytesMut::from(leftover), max_message, partial: None }
    }

    /// Takes the next whole message from the buffer, if there is one.
    fn parse(&mut self) -> Result<Option<Message>, ReadError> {
        loop {
            let Some(frame) = self.parse_frame()? else { return Ok(None) };
            if let Some(message) = self.assemble(frame)? {
                return Ok(Some(message));
            }
        }
    }

    /// Takes the next whole frame from the buffer, unmasked.
    fn parse_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        let b = &self.buf[..];
        let [b0, b1, ..] = *b else { return Ok(None) };
        if b0 & 0x70 != 0 {
            return Err(ReadError::Protocol("reserved bits set, but no extension was negotiated"));
        }
        if b1 & 0x80 == 0 {
            return Err(ReadError::Protocol("unmasked frame from a client"));
        }
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
        let (len, header) = match b1 & 0x7F {
            126 => match b.get(2..4) {
                Some(&[hi, lo]) => (u64::from(u16::from_be_bytes([hi, lo])), 4),
                _ => return Ok(None),
            },
            127 => match b.get(2..10).and_then(|s| <[u8; 8]>::try_from(s).ok()) {
                Some(bytes) => (u64::from_be_bytes(bytes), 10),
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if opcode & 0x08 != 0 && (!fin || len > MAX_CONTROL as u64) {
            return Err(ReadError::Protocol("control frame fragmented or longer than 125 bytes"));
        }
        let so_far = self.partial.as_ref().map_or(0, |(_, payload)| payload.len());
        let len = match usize::try_from(len) {
            Ok(len) if len.saturating_add(so_far) <= self.max_message => len,
            _ => return Err(ReadError::TooBig),
        };
        let total = header + 4 + len;
        if b.len() < total {
            // Room for the rest of the frame, but at most a step at a time: the buffer grows
            // with what arrives, not with what a header announces, so a peer that announces
            // 1 MiB and sends nothing more costs one step.
            self.buf.reserve((total - b.len()).min(GROW_STEP));
            return Ok(None);
        }
        let mask = [b[header], b[header + 1], b[header + 2], b[header + 3]];
        let payload = &mut self.buf[header + 4..total];
        unmask(payload, mask);
        let payload = Bytes::copy_from_slice(payload);
        self.buf.advance(total);
        Ok(Some(Frame { fin, opcode, payload }))
    }

    /// Turns a frame into a message, or keeps it as part of a fragmented one.
    fn assemble(&mut self, frame: Frame) -> Result<Option<Message>, ReadError> {
        let Frame { fin, opcode, payload } = frame;
        match opcode {
            OP_TEXT | OP_BINARY if self.partial.is_some() => {
                Err(ReadError::Protocol("new message inside a fragmented one"))
            }
            OP_TEXT | OP_BINARY if fin => data_message(opcode, payload).map(Some),
            OP_TEXT | OP_BINARY => {
                self.partial = Some((opcode, BytesMut::from(payload)));
                Ok(None)
            }
            OP_CONTINUATION => {
                let Some((_, so_far)) = self.partial.as_mut() else {
                    return Err(ReadError::Protocol("continuation frame outside a fragmented message"));
                };
                so_far.extend_from_slice(&payload);
                match self.partial.take() {
                    Some((opcode, whole)) if fin => data_message(opcode, whole.freeze()).map(Some),
                    unfinished => {
                        self.partial = unfinished;
                        Ok(None)
                    }
                }
            }
            OP_CLOSE => close_message(payload).map(Some),
            OP_PING => Ok(Some(Message::Ping(payload))),
            OP_PONG => Ok(Some(Message::Pong(payload))),
            _ => Err(ReadError::Protocol("unknown opcode")),
        }
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl<R> FrameReader<R> {
    /// Whether the read buffer is within what `arrived` bytes of input justify: it grows with
    /// what arrives, a step at a time, never with what a header announces. Allocation may
    /// double, hence the factor.
    pub(crate) fn within_memory_bound(&self, arrived: usize) -> bool {
        self.buf.capacity() <= 2 * (arrived + GROW_STEP.max(READ_CHUNK))
    }
}

impl<R: AsyncRead + Unpin> Stream for FrameReader<R> {
    type Item = Result<Message, ReadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(message) = this.parse().transpose() {
                return Poll::Ready(Some(message));
            }
            if this.buf.capacity() - this.buf.len() < MIN_READ {
                this.buf.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Pending => {
                    if this.buf.is_empty() {
                        // Nothing in flight: an idle peer keeps no read buffer.
                        this.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) if this.buf.is_empty() && this.partial.is_none() => {
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    let eof =
                        io::Error::new(io::ErrorKind::UnexpectedEof, "connection ended inside a message");
                    return Poll::Ready(Some(Err(ReadError::Io(eof))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(ReadError::Io(e)))),
            }
        }
    }
}

/// One unmasked frame.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Bytes,
}

fn data_message(opcode: u8, payload: Bytes) -> Result<Message, ReadError> {
    if opcode == OP_TEXT {
        Utf8Bytes::try_from(payload).map(Message::Text).map_err(|_| ReadError::InvalidUtf8)
    } else {
        Ok(Message::Binary(payload))
    }
}

fn close_message(payload: Bytes) -> Result<Message, ReadError> {
    let (code, reason) = match payload.as_ref() {
        [] => return Ok(Message::Close(None)),
        [hi, lo, reason @ ..] => (CloseCode::from(u16::from_be_bytes([*hi, *lo])), reason),
        [_] => return Err(ReadError::Protocol("close frame with a one-byte payload")),
    };
    if !code.is_allowed() {
        return Err(ReadError::Protocol("close frame with a code a peer may not send"));
    }
    let reason = Utf8Bytes::try_from(payload.slice(payload.len() - reason.len()..))
        .map_err(|_| ReadError::InvalidUtf8)?;
    Ok(Message::Close(Some(CloseFrame { code, reason })))
}

/// XORs `data` with the client's masking key, eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let [m0, m1, m2, m3] = mask;
    let wide = u64::from_ne_bytes([m0, m1, m2, m3, m0, m1, m2, m3]);
    let (chunks, rest) = data.as_chunks_mut::<8>();
    for chunk in chunks {
        *chunk = (u64::from_ne_bytes(*chunk) ^ wide).to_ne_bytes();
    }
    // `rest` starts at a multiple of eight, so the key starts over with it.
    for (byte, key) in rest.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// Writes the proxy's messages as unmasked frames. Fed frames are kept as they are (their
/// payloads are shared, never copied here) next to their encoded headers, and a flush hands
/// them to the TLS stream as one vectored write, which encrypts straight from the payloads.
pub(crate) struct FrameWriter<W> {
    io: W,
    pending: VecDeque<Outgoing>,
    /// Bytes of the first pending frame already written.
    written: usize,
    /// Bytes of all pending frames.
    pending_bytes: usize,
}

/// A frame waiting to be written: its header (and a close frame's status code) and payload.
struct Outgoing {
    head: [u8; MAX_HEAD],
    head_len: usize,
    payload: Bytes,
}

/// A header's longest form (2 + 8 bytes), plus a close frame's status code.
const MAX_HEAD: usize = 12;
/// Slices handed to one vectored write, at most.
const MAX_SLICES: usize = 64;
/// A drained pending list keeps at most this many slots.
const KEEP_PENDING: usize = 16;

impl Outgoing {
    fn new(message: Message) -> Option<Self> {
        let (opcode, payload, code) = match message {
            Message::Text(text) => (OP_TEXT, Bytes::from(text), None),
            Message::Binary(bytes) => (OP_BINARY, bytes, None),
            Message::Ping(bytes) => (OP_PING, truncate(bytes, MAX_CONTROL), None),
            Message::Pong(bytes) => (OP_PONG, truncate(bytes, MAX_CONTROL), None),
            Message::Close(None) => (OP_CLOSE, Bytes::new(), None),
            Message::Close(Some(frame)) => {
                let reason = Bytes::from(frame.reason);
                let cut = truncate_str(&reason, MAX_CONTROL - 2);
                (OP_CLOSE, reason.slice(..cut), Some(u16::from(frame.code)))
            }
            // Raw frames are never queued by the proxy.
            Message::Frame(_) => return None,
        };
        let mut head = [0u8; MAX_HEAD];
        let len = payload.len() + if code.is_some() { 2 } else { 0 };
        let mut head_len = header(&mut head, opcode, len);
        if let Some(code) = code {
            head[head_len..head_len + 2].copy_from_slice(&code.to_be_bytes());
            head_len += 2;
        }
        Some(Outgoing { head, head_len, payload })
    }

    fn len(&self) -> usize {
        self.head_len + self.payload.len()
    }
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(io: W) -> Self {
        FrameWriter { io, pending: VecDeque::new(), written: 0, pending_bytes: 0 }
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let FrameWriter { io, pending, written, pending_bytes } = self;
        while !pending.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            let mut skip = *written;
            'fill: for frame in pending.iter() {
                for part in [&frame.head[..frame.head_len], &frame.payload[..]] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    let Some(slot) = slices.get_mut(count) else { break 'fill };
                    *slot = IoSlice::new(&part[skip..]);
                    skip = 0;
                    count += 1;
                }
            }
            let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            while let Some(len) = pending.front().map(Outgoing::len).filter(|&len| len <= *written) {
                *written -= len;
                *pending_bytes -= len;
                pending.pop_front();
            }
        }
        if pending.capacity() > KEEP_PENDING {
            *pending = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> Sink<Message> for FrameWriter<W> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending_bytes >= WRITE_HIGH {
            ready!(this.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> io::Result<()> {
        let this = self.get_mut();
        if let Some(frame) = Outgoing::new(message) {
            this.pending_bytes += frame.len();
            this.pending.push_back(frame);
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Writes a frame header for a payload of `len` bytes into `out`; returns its length.
fn header(out: &mut [u8; MAX_HEAD], opcode: u8, len: usize) -> usize {
    out[0] = 0x80 | opcode;
    match len {
        0..=125 => {
            out[1] = len as u8;
            2
        }
        126..=0xFFFF => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    }
}

fn truncate(bytes: Bytes, max: usize) -> Bytes {
    if bytes.len() > max { bytes.slice(..max) } else { bytes }
}

/// The length of the longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
fn truncate_str(s: &[u8], max: usize) -> usize {
    let text = std::str::from_utf8(s).unwrap_or_default();
    (0..=max.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};

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
        let mut reader = FrameReader::new(&bytes[..], &[], max);
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
}
