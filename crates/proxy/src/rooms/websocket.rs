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
/// From this size up, a payload that fills the read buffer takes the buffer along instead of
/// being copied out of it; smaller ones get an exact-size copy, so that a queued frame never
/// keeps a larger buffer alive.
const HANDOVER_MIN: usize = 16 * 1024;
/// A client frame's header at its longest: 10 bytes, then the 4-byte mask.
const MAX_CLIENT_HEAD: usize = 14;
/// A read is not started with less room than this, unless the frame being read lacks less.
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
    /// More bytes before the peer's HELLO than a HELLO may take, in all.
    BeforeHello,
    /// A text message, or a close reason, that is not UTF-8.
    InvalidUtf8,
    /// A frame that breaks RFC 6455.
    Protocol(&'static str),
    /// The transport failed, or ended inside a frame.
    Io(io::Error),
}

impl ReadError {
    /// Why the connection ends after this error; `max_message` is the limit it broke.
    pub(crate) fn into_close(self, max_message: usize) -> Close {
        match self {
            ReadError::TooBig => Close::TooBig(max_message),
            ReadError::BeforeHello => Close::TooMuchBeforeHello(max_message),
            ReadError::InvalidUtf8 => Close::InvalidUtf8,
            ReadError::Protocol(why) => Close::Protocol(why.to_owned()),
            ReadError::Io(e) => Close::Transport(e.to_string()),
        }
    }
}

/// A stream of a peer's messages that knows when the peer has earned its place.
pub(crate) trait Frames: Stream<Item = Result<Message, ReadError>> + Unpin {
    /// The peer has said HELLO: from now on it may send messages up to the frame limit, and
    /// as many as it likes.
    fn hello_said(&mut self);
}

/// Reads messages from a client: unmasks, reassembles fragments, checks UTF-8 and sizes.
///
/// Until [`Frames::hello_said`], a peer is a stranger: every message, fragments included, is
/// limited to what a HELLO may take, and so are all its frames together (control frames too),
/// so a connection that has not said HELLO holds at most that much of ours, whatever the frame
/// limit.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_message: usize,
    /// The frame limit, for after the HELLO.
    max_frame: usize,
    /// Payload bytes the peer may still send before its HELLO.
    budget: usize,
    /// A fragmented message being assembled: its opcode and its payload so far.
    partial: Option<(u8, BytesMut)>,
    /// Bytes the frame being read still lacks, when its header is in (else `usize::MAX`).
    missing: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `io`, starting with the bytes already read past the upgrade request: at
    /// most `max_hello` bytes in all until the HELLO, messages up to `max_frame` after it.
    pub(crate) fn new(io: R, leftover: &[u8], max_hello: usize, max_frame: usize) -> Self {
        FrameReader {
            io,
            buf: BytesMut::from(leftover),
            max_message: max_hello.min(max_frame),
            max_frame,
            budget: max_hello,
            partial: None,
            missing: usize::MAX,
        }
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
        self.missing = usize::MAX;
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
            Ok(len) if len > self.budget => return Err(ReadError::BeforeHello),
            Ok(len) if len.saturating_add(so_far) <= self.max_message => len,
            _ => return Err(ReadError::TooBig),
        };
        let total = header + 4 + len;
        if b.len() < total {
            // Room for the rest of the frame, but at most a step at a time: the buffer grows
            // with what arrives, not with what a header announces, so a peer that announces
            // 1 MiB and sends nothing more costs one step.
            self.missing = total - b.len();
            self.buf.reserve(self.missing.min(GROW_STEP));
            return Ok(None);
        }
        let mask = [b[header], b[header + 1], b[header + 2], b[header + 3]];
        let payload = if len >= HANDOVER_MIN && self.buf.capacity() <= total + total / 4 {
            // A large payload that fills the buffer takes the buffer along instead of a copy.
            let mut whole = self.buf.split_to(total);
            // Whatever follows moves to a buffer of its own, sized for another frame like this
            // one (large frames come in runs) but at most a step and a header beyond what has
            // arrived: a frame of up to 64 KiB then lands in place. Grown in place instead,
            // the shared rest would be replaced by a buffer the size of the old one, a few
            // bytes short of the next frame, then doubled: too large to be handed over.
            let mut next = BytesMut::with_capacity(total.min(self.buf.len() + GROW_STEP + MAX_CLIENT_HEAD));
            next.extend_from_slice(&self.buf);
            self.buf = next;
            whole.advance(header + 4);
            unmask(&mut whole, mask);
            whole.freeze()
        } else {
            let payload = &mut self.buf[header + 4..total];
            unmask(payload, mask);
            let payload = Bytes::copy_from_slice(payload);
            self.buf.advance(total);
            payload
        };
        self.budget -= len;
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

impl<R: AsyncRead + Unpin> Frames for FrameReader<R> {
    fn hello_said(&mut self) {
        self.max_message = self.max_frame;
        self.budget = usize::MAX;
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl<R> FrameReader<R> {
    /// Whether the read buffer is within a step of the bytes it holds: it grows with what
    /// arrives, a step at a time, never with what a header announces or what an earlier frame
    /// needed. Growing may double the allocation, and counts the bytes already read past until
    /// they are moved out: hence the factor.
    pub(crate) fn within_memory_bound(&self) -> bool {
        self.buf.capacity() <= 3 * (self.buf.len() + GROW_STEP.max(READ_CHUNK))
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
            if this.buf.capacity() - this.buf.len() < MIN_READ.min(this.missing) {
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
        // Drained: an idle peer keeps no list.
        *pending = VecDeque::new();
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
mod tests;
