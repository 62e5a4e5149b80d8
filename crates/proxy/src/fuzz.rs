//! The entry points of the `frames`, `upgrade_request` and `inbox` fuzz targets (`fuzz/`), and
//! the tests that replay their corpora. Compiled for tests and under the `fuzzing` feature
//! only; not part of the API.
//!
//! Both drive the proxy's readers without a runtime: the transport is in memory and always
//! ready (or pending once before a chunk, and woken at once), so polling with a no-op waker
//! runs a reader to its end, and a bound on the number of polls turns a reader that stops
//! making progress into a failure instead of a hang. A broken invariant panics.

#![allow(clippy::expect_used)]

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::resp::{self, Reply, RespError};
use crate::cluster::wire::{FrameNote, Note, Packet, RoomNote};
use crate::edge::upgrade::{self, Refusal};
use crate::rooms::id::RoomId;
use crate::rooms::websocket::FrameReader;

/// The largest payload of a control frame, and of a close frame's reason.
const MAX_CONTROL: usize = 125;
const PREFIX: &str = "/micronets/v1/ws-proxy/";

/// Reads `data` as a client's frames, in the chunks its first bytes choose, and checks what
/// comes out: no message over the limit, text that is UTF-8, control frames within RFC 6455's
/// bounds, a read buffer that grows with what arrives, and the same messages (and the same
/// error) as from reading `data` in one piece; for a peer that has not said HELLO, no more
/// payload in all than a HELLO may take.
///
/// Layout of `data`: the message limit (top bit set: 1 MiB, else 16 bytes per unit; with the
/// top bit clear and the next set, the limit is instead the budget of a peer before its HELLO,
/// under a 1 MiB frame limit), four chunk sizes (see [`Chunked`]), then the stream; the first
/// chunk is handed to the reader as the bytes that came with the upgrade request.
pub fn frames(data: &[u8]) {
    let [limit, s0, s1, s2, s3, stream @ ..] = data else { return };
    let (max_hello, max_message) = match limit {
        l if l & 0x80 != 0 => (usize::MAX, 1 << 20),
        l if l & 0x40 != 0 => (usize::from(l & 0x3F) * 16, usize::from(l & 0x3F) * 16),
        l => (usize::MAX, usize::from(*l) * 16),
    };
    let max_frame = if max_hello == usize::MAX { max_message } else { 1 << 20 };
    let sizes = [*s0, *s1, *s2, *s3];
    let (leftover, rest) = stream.split_at(chunk_size(*s0).min(stream.len()));
    let transport = Chunked { next: 1, ..Chunked::new(rest, &sizes) };
    let in_pieces = read_all(FrameReader::new(transport, leftover, max_hello, max_frame), stream.len());
    let at_once = read_all(FrameReader::new(stream, &[], max_hello, max_frame), stream.len());
    assert_eq!(in_pieces, at_once, "the messages depend on how the bytes arrived");
    let mut payload = 0;
    for message in in_pieces.iter().flatten() {
        check_message(message, max_message);
        payload += message.len();
    }
    assert!(payload <= stream.len(), "{payload} bytes of messages from {} bytes", stream.len());
    assert!(payload <= max_hello, "{payload} bytes before a HELLO, past a budget of {max_hello}");
}

/// Every message the reader yields, up to and including its first error, polled with a
/// no-op waker. Each poll yields, or returns `Pending` because the transport did (once per
/// chunk at most), so a reader that needs more polls than that has stopped making progress.
fn read_all<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    arrived: usize,
) -> Vec<Result<Message, String>> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let max_polls = 2 * arrived + 8;
    for _ in 0..max_polls {
        let next = Pin::new(&mut reader).poll_next(&mut cx);
        assert!(reader.within_memory_bound(), "the read buffer outgrew the bytes it holds");
        match next {
            Poll::Pending => {}
            Poll::Ready(None) => return out,
            Poll::Ready(Some(Ok(message))) => out.push(Ok(message)),
            Poll::Ready(Some(Err(e))) => {
                out.push(Err(format!("{e:?}")));
                return out;
            }
        }
    }
    panic!("the frame reader made no progress in {max_polls} polls");
}

fn check_message(message: &Message, max_message: usize) {
    match message {
        Message::Text(text) => {
            assert!(text.len() <= max_message, "a {}-byte text message", text.len());
            assert!(std::str::from_utf8(text.as_str().as_bytes()).is_ok());
        }
        Message::Binary(bytes) => assert!(bytes.len() <= max_message, "a {}-byte message", bytes.len()),
        Message::Ping(bytes) | Message::Pong(bytes) => assert!(bytes.len() <= MAX_CONTROL),
        Message::Close(None) => {}
        Message::Close(Some(frame)) => {
            assert!(frame.code.is_allowed(), "close code {}", frame.code);
            assert!(frame.reason.len() + 2 <= MAX_CONTROL);
        }
        Message::Frame(_) => panic!("the reader yielded a raw frame"),
    }
}

/// Reads `data` as an upgrade request, at once and in small pieces, and checks the outcome:
/// both ways agree; an accepted request names a valid room, keeps a target that is its path
/// and a query, at most 64 headers and exactly the bytes past its head; the 101 or the refusal
/// written back is a well-formed response; and a refusal's path is fit for a log line.
pub fn upgrade_request(data: &[u8]) {
    let mut at_once = data;
    let whole = run(upgrade::read_request(&mut at_once, PREFIX, upgrade::HeadLimits::default()), 1);
    let whole = outcome(data, data.len() - at_once.len(), whole);
    let mut pieces = Chunked::new(data, &[1, 100, 0x80 | 7, 1, 0x80]);
    let split =
        run(upgrade::read_request(&mut pieces, PREFIX, upgrade::HeadLimits::default()), 2 * data.len() + 2);
    let split = outcome(data, data.len() - pieces.data.len(), split);
    assert_eq!(whole, split, "the outcome depends on how the request arrived");
}

/// An upgrade's outcome, checked, in a form that does not depend on how the bytes arrived.
#[derive(Debug, PartialEq)]
enum Outcome {
    Upgrade { room: RoomId, path: String, head: usize },
    Refused { status: u16, reason: String, path: Option<String> },
    Closed,
}

fn outcome(data: &[u8], consumed: usize, result: Result<upgrade::UpgradeRequest, Refusal>) -> Outcome {
    assert!(consumed <= 16 * 1024, "read {consumed} bytes of a request head");
    match result {
        Ok(request) => {
            assert_eq!(RoomId::parse(request.room.as_str()).as_ref(), Ok(&request.room));
            assert_eq!(request.path, format!("{PREFIX}{}", request.room));
            let query = request.target.strip_prefix(&request.path).expect("the target starts with the path");
            assert!(query.is_empty() || query.starts_with('?'), "target {:?}", request.target);
            assert!(request.headers.len() <= 64 && request.headers.iter().all(|(name, _)| !name.is_empty()));
            assert!(data[..consumed].ends_with(&request.leftover), "leftover bytes are not the read's tail");
            let mut response = Vec::new();
            run(upgrade::accept(&mut response, &request), 1).expect("writing to a Vec");
            assert_eq!(parse_response(&response).0, 101);
            let head = consumed - request.leftover.len();
            Outcome::Upgrade { room: request.room, path: request.path, head }
        }
        Err(Refusal::Status { status, reason, path, retry_after }) => {
            assert!([400, 404, 426, 431].contains(&status), "status {status} for a request alone");
            // The path is logged: nothing in it may end or forge a line. (Other characters,
            // C1 controls included, are escaped by the text log format and by JSON.)
            if let Some(path) = &path {
                assert!(
                    !path.bytes().any(|b| b.is_ascii_control() || b == b' '),
                    "path {path:?} in a log line"
                );
            }
            let mut response = Vec::new();
            run(upgrade::refuse(&mut response, status, &reason, retry_after), 1).expect("writing to a Vec");
            let (code, body) = parse_response(&response);
            assert_eq!((code, body), (status, format!("{reason}\n").into_bytes()));
            Outcome::Refused { status, reason, path }
        }
        Err(Refusal::Closed(_)) => {
            assert_eq!(consumed, data.len(), "closed before the end of the input");
            Outcome::Closed
        }
    }
}

/// Reads `data` as what Redis sends a node on its inbox subscription (`cluster/resp.rs`), in
/// chunks of the size its first byte gives, and each message's payload as a packet of notes
/// (`cluster/wire.rs`); the bytes after the first are also read as a packet and as a note
/// themselves. Checks that the values do not depend on how the bytes arrived, that the read
/// buffer only waits for what a value announced, and that a frame note read in place says what
/// its full decoding says.
pub fn inbox(data: &[u8]) {
    let [step, stream @ ..] = data else { return };
    let step = usize::from(*step).max(1);
    let in_pieces = resp_values(stream.chunks(step));
    let at_once = resp_values(std::iter::once(stream));
    assert_eq!(in_pieces, at_once, "the values depend on how the bytes arrived");
    for reply in in_pieces.0 {
        if let Reply::Array(Some(items)) = reply
            && let Some(Reply::Bulk(Some(payload))) = items.into_iter().nth(2)
        {
            packet(payload);
        }
    }
    packet(Bytes::copy_from_slice(stream));
}

/// The RESP values in `chunks`, and the error that ended them.
fn resp_values<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<Reply>, Option<RespError>) {
    let mut buf = BytesMut::new();
    let mut values = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match resp::take(&mut buf) {
                Ok(Some(value)) => values.push(value),
                Ok(None) => break,
                Err(e) => return (values, Some(e)),
            }
        }
        let wanted = resp::wanted(&buf);
        assert!(wanted == 0 || wanted > buf.len(), "waits for {wanted} bytes with {} held", buf.len());
        assert!(wanted <= resp::MAX_BULK + 4096, "waits for {wanted} bytes");
    }
    (values, None)
}

/// Reads `payload` as a packet and each of its notes, or as one note.
fn packet(payload: Bytes) {
    match Packet::decode(payload.clone()) {
        Ok(packet) => packet.notes.into_iter().for_each(note),
        Err(_) => note(payload),
    }
}

/// Reads a note in place and in full: where both read a frame, they agree.
fn note(bytes: Bytes) {
    let in_place = FrameNote::read(&bytes);
    if let Ok(Note::Room(RoomNote::Frame { room, conn, frame, .. })) = Note::decode(bytes.clone()) {
        let Some(Ok(read)) = in_place else { panic!("a frame note decodes but is not read in place") };
        assert_eq!((read.room, read.conn, &read.frame), (room.as_str(), conn, &frame));
    }
}

/// The status and body of a whole HTTP response, whose Content-Length (if any) is exact.
fn parse_response(bytes: &[u8]) -> (u16, Vec<u8>) {
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = response.parse(bytes) else {
        panic!("malformed response {:?}", String::from_utf8_lossy(bytes));
    };
    let body = &bytes[head..];
    if let Some(length) = response.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length")) {
        assert_eq!(length.value, body.len().to_string().as_bytes(), "Content-Length");
    }
    (response.code.expect("a complete response has a status"), body.to_vec())
}

/// An in-memory transport that hands out its bytes in chunks of the sizes given, cycling
/// through them: `1..=127` bytes, `0` for all that is left, and with the top bit set, one
/// `Pending` (woken at once) before the chunk.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    next: usize,
    paused: bool,
}

impl<'a> Chunked<'a> {
    fn new(data: &'a [u8], sizes: &'a [u8]) -> Self {
        Chunked { data, sizes, next: 0, paused: false }
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let spec = this.sizes.get(this.next % this.sizes.len().max(1)).copied().unwrap_or(0);
        if spec & 0x80 != 0 && !this.paused {
            this.paused = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.paused = false;
        this.next += 1;
        let size = chunk_size(spec);
        let (now, later) = this.data.split_at(size.min(this.data.len()).min(buf.remaining()));
        buf.put_slice(now);
        this.data = later;
        Poll::Ready(Ok(()))
    }
}

fn chunk_size(spec: u8) -> usize {
    match spec & 0x7F {
        0 => usize::MAX,
        n => usize::from(n),
    }
}

/// Polls `future` to its end with a no-op waker, at most `max_polls` times.
fn run<F: Future>(future: F, max_polls: usize) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..max_polls {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
    panic!("no progress in {max_polls} polls");
}

#[cfg(test)]
mod tests {
    /// Every input of a target's committed corpus, and so every past crash, still passes.
    fn replay(target: &str, check: fn(&[u8])) {
        let dir = format!("{}/../../fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            eprintln!("replaying {}", path.display());
            check(&std::fs::read(&path).unwrap());
            count += 1;
        }
        assert!(count > 0, "{dir} holds no inputs");
    }

    #[test]
    fn replays_the_frames_corpus() {
        replay("frames", super::frames);
    }

    #[test]
    fn replays_the_inbox_corpus() {
        replay("inbox", super::inbox);
    }

    #[test]
    fn replays_the_upgrade_request_corpus() {
        replay("upgrade_request", super::upgrade_request);
    }
}
