//! The server side of a TLS connection that holds no buffer it is not using: rustls'
//! unbuffered API over a tokio `TcpStream`.
//!
//! rustls' buffered `ServerConnection` keeps a 4 KiB receive buffer for the whole life of every
//! connection, a quarter of what an idle peer used to cost (docs/performance.md). Here, bytes
//! read from the socket are processed where they landed, in a buffer on the stack; only a
//! record's unfinished beginning is kept on the heap until the rest arrives. Encrypted bytes
//! wait in a queue that is freed once written, and decrypted bytes the reader has not taken
//! yet likewise. An idle connection holds the session's keys and state, and nothing else.
//!
//! After the upgrade the stream is split ([`TlsStream::split`]): its reading half goes to the
//! member's task, its writing half to the writer's, and a third handle lets the room read the
//! peer's certificate chain again when a reload asks (the session holds the one copy). Only the
//! writing half waits for the socket to take bytes, so that the two halves never take each
//! other's wake-up: a reader with bytes to send (an alert, a key update) offers them without
//! waiting and leaves what the socket does not take to the next write.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use rustls::ProtocolVersion;
use rustls::server::{ServerConfig, ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, UnbufferedStatus,
    WriteTraffic,
};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::outgoing::Outgoing;
use crate::rooms::room::{Certificates, Credentials};

/// A TLS record at its largest on the wire: header, 2^14 bytes of plaintext and 256 of
/// expansion (RFC 8446, 5.2).
const MAX_RECORD: usize = 5 + (1 << 14) + 256;
/// Plaintext in one record, at most.
const MAX_PLAINTEXT: usize = 1 << 14;
/// What a record adds to its plaintext, generously (header, content type, nonce, tag): the
/// first guess at the room encryption needs; rustls says so when it needs more.
const RECORD_OVERHEAD: usize = 64;
/// Received bytes a connection may hold unprocessed: a handshake message of rustls' largest
/// (64 KiB) spread over records, and one more record.
const MAX_INCOMING: usize = 0x1_0000 + MAX_RECORD;
/// Encrypted bytes a writer may queue before it waits for the socket (passed by one record at
/// most, to finish a write).
const MAX_QUEUED: usize = 64 * 1024;

/// A TLS session over TCP, server side.
pub(crate) struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received bytes not processed yet: the beginning of a record, or of a handshake message
    /// spread over records.
    incoming: Vec<u8>,
    /// Encrypted bytes not written yet.
    outgoing: Outgoing,
    /// Decrypted bytes not read yet, from `taken` on.
    plain: Vec<u8>,
    taken: usize,
    /// The peer's close_notify has arrived: reading ends there.
    peer_closed: bool,
    /// Our close_notify is queued.
    closing: bool,
    /// rustls met an error: the session is over, only its alert may still go out.
    failed: bool,
    /// The TLS 1.3 session tickets issued at the end of the handshake wait in `outgoing` for
    /// the first write (the upgrade's answer), so that they share its segment: one write and
    /// one wake-up of the peer fewer per connection. Nothing the client waits for is held: in
    /// TLS 1.3 the server's Finished went before the client's.
    holding: bool,
}

/// After one state of the session.
enum Step {
    /// Ask rustls again, having also finished with this many bytes of the input.
    Continue(usize),
    /// Nothing more to do until more bytes arrive or the session sends.
    Stop,
}

/// Runs the TLS handshake on `tcp`, as the server of `config`.
///
/// # Errors
/// The socket's errors, `UnexpectedEof` when the peer leaves during the handshake, and
/// `InvalidData` wrapping the [`rustls::Error`] that failed it (after the alert that tells the
/// peer why was offered to the socket): `tls::handshake_failure` names them.
pub(crate) async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
    let mut stream = TlsStream {
        tcp,
        conn,
        incoming: Vec::new(),
        outgoing: Outgoing::default(),
        plain: Vec::new(),
        taken: 0,
        peer_closed: false,
        closing: false,
        failed: false,
        holding: false,
    };
    std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl TlsStream {
    /// The TLS session: the peer's certificates, whether it was resumed.
    pub(crate) fn session(&self) -> &UnbufferedServerConnection {
        &self.conn
    }

    /// The reading and writing halves, and the peer's certificates.
    pub(crate) fn split(self) -> (ReadHalf, WriteHalf, Certificates) {
        let shared = Arc::new(Mutex::new(self));
        (ReadHalf(Arc::clone(&shared)), WriteHalf(Arc::clone(&shared)), shared)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.conn.is_handshaking() && self.conn.protocol_version() == Some(ProtocolVersion::TLSv1_3) {
                self.holding = self.queued() > 0;
                return Poll::Ready(Ok(()));
            }
            while self.queued() > 0 {
                ready!(self.poll_send(cx))?;
            }
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_fill(cx, None))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                )));
            }
        }
    }

    /// Encrypted bytes waiting for the socket.
    fn queued(&self) -> usize {
        self.outgoing.queued()
    }

    /// Writes queued bytes to the socket, waiting for it to take some.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, self.outgoing.pending()))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.outgoing.wrote(n);
        Poll::Ready(Ok(()))
    }

    /// Offers queued bytes to the socket without waiting (and without taking the writer's
    /// wake-up): what it does not take now goes with the next write.
    fn offer(&mut self) -> io::Result<()> {
        while self.queued() > 0 {
            match self.tcp.try_write(self.outgoing.pending()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.outgoing.wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what the socket has and runs rustls over it; decrypted bytes go to `read` while it
    /// has room, and wait in `plain` otherwise. What rustls has to send then (a key update) is
    /// offered to the socket on the reader's way (`read` is given), and left to the caller in
    /// the handshake. Returns how many bytes the socket gave (0 at its end).
    fn poll_fill(&mut self, cx: &mut Context<'_>, read: Option<&mut ReadBuf<'_>>) -> Poll<io::Result<usize>> {
        if self.failed {
            return Poll::Ready(Err(session_failed()));
        }
        let offer = read.is_some() && !self.holding;
        let TlsStream { tcp, conn, incoming, outgoing, plain, peer_closed, .. } = self;
        let mut out = Out { outgoing, plain, read, peer_closed };
        let (arrived, result) = if incoming.is_empty() {
            // The common case: whole records arrive, and are processed where they landed.
            let mut stack = [MaybeUninit::<u8>::uninit(); MAX_RECORD];
            let mut landed = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut *tcp).poll_read(cx, &mut landed))?;
            let bytes = landed.filled_mut();
            let (done, result) = drive(conn, bytes, &mut out);
            incoming.extend_from_slice(&bytes[done..]);
            (bytes.len(), result)
        } else {
            let before = incoming.len();
            incoming.reserve(MAX_RECORD);
            ready!(tokio_util::io::poll_read_buf(Pin::new(&mut *tcp), cx, incoming))?;
            let (done, result) = drive(conn, &mut incoming[..], &mut out);
            consume(incoming, done);
            (incoming.len() + done - before, result)
        };
        if let Err(e) = result {
            self.fail();
            return Poll::Ready(Err(invalid_data(e)));
        }
        if self.incoming.len() > MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS: a handshake message over 64 KiB",
            )));
        }
        if offer {
            self.offer()?;
        }
        Poll::Ready(Ok(arrived))
    }

    /// After an error: queues the alert rustls has for the peer and offers it to the socket.
    ///
    /// rustls hands out what it has to send before it looks at the input again, and looking
    /// again would meet the error again: it is asked only while it has something to send.
    fn fail(&mut self) {
        let TlsStream { conn, incoming, outgoing, .. } = self;
        while conn.wants_write() {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(incoming);
            let encoded = match state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => encode(&mut data, outgoing).is_ok(),
                _ => false,
            };
            consume(incoming, discard);
            if !encoded {
                break;
            }
        }
        self.failed = true;
        self.incoming = Vec::new();
        let _ = self.offer();
    }

    /// Queues `sealed` (application data, or our close_notify) encrypted.
    ///
    /// rustls is asked with the bytes it has not finished with (`incoming`), as it always must
    /// be: a handshake message it is joining from several records lies there.
    fn seal(&mut self, sealed: Sealed<'_>) -> io::Result<()> {
        if self.failed {
            return Err(session_failed());
        }
        self.holding = false;
        loop {
            let TlsStream { conn, incoming, outgoing, plain, peer_closed, .. } = self;
            let UnbufferedStatus { discard, state } = conn.process_tls_records(incoming);
            let outcome = match state {
                Err(e) => Err(invalid_data(e)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    write_sealed(&mut traffic, sealed, outgoing).map(|()| None)
                }
                Ok(ConnectionState::Closed) if matches!(sealed, Sealed::CloseNotify) => Ok(None),
                Ok(other) => Out { outgoing, plain, read: None, peer_closed }
                    .handle(other)
                    .map(Some)
                    .map_err(invalid_data),
            };
            let more = match outcome {
                Ok(Some(Step::Continue(more))) => more,
                _ => 0,
            };
            consume(incoming, discard + more);
            match outcome {
                Ok(None) => return Ok(()),
                Ok(Some(Step::Continue(_))) => {}
                Ok(Some(Step::Stop)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "TLS: the session cannot send application data",
                    ));
                }
                Err(e) => {
                    self.fail();
                    return Err(e);
                }
            }
        }
    }
}

/// Encrypts `sealed` onto `outgoing`, making the room rustls asks for.
fn write_sealed(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    sealed: Sealed<'_>,
    outgoing: &mut Outgoing,
) -> io::Result<()> {
    let mut room = match sealed {
        Sealed::Data(data) => data.len() + data.len().div_ceil(MAX_PLAINTEXT) * RECORD_OVERHEAD,
        Sealed::CloseNotify => RECORD_OVERHEAD,
    };
    loop {
        let written = match sealed {
            Sealed::Data(data) => traffic.encrypt(data, outgoing.room(room)),
            Sealed::CloseNotify => traffic.queue_close_notify(outgoing.room(room)),
        };
        match written {
            Ok(n) => {
                outgoing.commit(n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size
            }
            Err(e) => return Err(io::Error::other(format!("TLS: {e}"))),
        }
    }
}

/// What [`TlsStream::seal`] encrypts.
#[derive(Clone, Copy)]
enum Sealed<'a> {
    Data(&'a [u8]),
    CloseNotify,
}

/// Where the states of a session put what they produce.
struct Out<'a, 'b, 'c> {
    outgoing: &'a mut Outgoing,
    plain: &'a mut Vec<u8>,
    /// The reader's buffer, while it has room.
    read: Option<&'a mut ReadBuf<'b>>,
    peer_closed: &'c mut bool,
}

impl Out<'_, '_, '_> {
    /// Decrypted bytes: to the reader's buffer while it has room, then to `plain`.
    fn deliver(&mut self, mut payload: &[u8]) {
        if self.plain.is_empty()
            && let Some(read) = self.read.as_deref_mut()
        {
            let n = payload.len().min(read.remaining());
            read.put_slice(&payload[..n]);
            payload = &payload[n..];
        }
        self.plain.extend_from_slice(payload);
    }

    /// Handles one state of the session.
    fn handle(
        &mut self,
        state: ConnectionState<'_, '_, ServerConnectionData>,
    ) -> Result<Step, rustls::Error> {
        match state {
            ConnectionState::ReadTraffic(mut traffic) => {
                let mut discard = 0;
                while let Some(record) = traffic.next_record() {
                    let record = record?;
                    discard += record.discard;
                    self.deliver(record.payload);
                }
                Ok(Step::Continue(discard))
            }
            ConnectionState::EncodeTlsData(mut data) => {
                encode(&mut data, self.outgoing).map(|()| Step::Continue(0))
            }
            // What `encode` queued is written before anything queued later: in order.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                Ok(Step::Continue(0))
            }
            ConnectionState::PeerClosed => {
                *self.peer_closed = true;
                Ok(Step::Continue(0))
            }
            ConnectionState::BlockedHandshake
            | ConnectionState::WriteTraffic(_)
            | ConnectionState::Closed => Ok(Step::Stop),
            // No early data is accepted (rustls' default), and no other state is expected.
            _ => Err(rustls::Error::General("unexpected TLS state".into())),
        }
    }
}

/// Runs rustls over `input` until it needs more bytes or has nothing more to do; returns how
/// many bytes of `input` it is done with (the rest is the beginning of a record).
fn drive(
    conn: &mut UnbufferedServerConnection,
    input: &mut [u8],
    out: &mut Out<'_, '_, '_>,
) -> (usize, Result<(), rustls::Error>) {
    let mut done = 0;
    loop {
        let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut input[done..]);
        let step = state.and_then(|state| out.handle(state));
        done += discard;
        match step {
            Ok(Step::Continue(more)) => done += more,
            Ok(Step::Stop) => return (done, Ok(())),
            Err(e) => return (done, Err(e)),
        }
    }
}

/// Queues a handshake record (or an alert) rustls has encoded.
fn encode(
    data: &mut EncodeTlsData<'_, ServerConnectionData>,
    outgoing: &mut Outgoing,
) -> Result<(), rustls::Error> {
    let needed = match data.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => required_size,
        Err(e) => return Err(rustls::Error::General(e.to_string())),
    };
    match data.encode(outgoing.room(needed)) {
        Ok(n) => {
            outgoing.commit(n);
            Ok(())
        }
        Err(e) => Err(rustls::Error::General(e.to_string())),
    }
}

/// Drops the first `n` bytes of `incoming`, and its allocation once it is empty.
fn consume(incoming: &mut Vec<u8>, n: usize) {
    incoming.drain(..n);
    if incoming.is_empty() {
        *incoming = Vec::new();
    }
}

fn session_failed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "the TLS session failed")
}

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl AsyncRead for TlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.taken);
                buf.put_slice(&this.plain[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.plain.len() {
                    this.plain = Vec::new();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let arrived = ready!(this.poll_fill(cx, Some(buf)))?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            if arrived == 0 && !this.peer_closed && this.plain.is_empty() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection without sending TLS close_notify",
                )));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// Encrypts as much of `bufs` as the queue takes, a record's worth at a time (gathered on
    /// the stack when it spans slices), and starts writing it.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        while this.queued() >= MAX_QUEUED {
            ready!(this.poll_send(cx))?;
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        this.outgoing.writing(total);
        let mut taken = 0;
        let mut slices = bufs.iter().map(|b| &b[..]).filter(|b| !b.is_empty()).peekable();
        let mut stack = [MaybeUninit::<u8>::uninit(); MAX_PLAINTEXT];
        while let Some(first) = slices.next() {
            let mut room = MAX_QUEUED.saturating_sub(this.queued()).max(MAX_PLAINTEXT);
            if total - taken <= room + MAX_PLAINTEXT {
                // What the queue's room leaves of this write fits in one more record: it is
                // taken too, so that a message a little over the queue's size (64 KiB and its
                // frame header) leaves in one write, not in a second, tiny one.
                room += MAX_PLAINTEXT;
            }
            if first.len() >= MAX_PLAINTEXT || slices.peek().is_none() {
                let part = &first[..first.len().min(room)];
                this.seal(Sealed::Data(part))?;
                taken += part.len();
                if part.len() < first.len() {
                    break;
                }
            } else {
                let mut gathered = ReadBuf::uninit(&mut stack);
                gathered.put_slice(first);
                while let Some(next) = slices.next_if(|next| next.len() <= gathered.remaining()) {
                    gathered.put_slice(next);
                }
                this.seal(Sealed::Data(gathered.filled()))?;
                taken += gathered.filled().len();
            }
            if this.queued() >= MAX_QUEUED && total - taken > MAX_PLAINTEXT {
                break;
            }
        }
        // The bytes are ours now: they go out as the socket takes them, here or at the flush.
        if this.queued() > 0
            && let Poll::Ready(Err(e)) = this.poll_send(cx)
        {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.queued() > 0 {
            ready!(this.poll_send(cx))?;
        }
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing && !this.failed {
            this.closing = true;
            this.seal(Sealed::CloseNotify)?;
        }
        while this.queued() > 0 {
            ready!(this.poll_send(cx))?;
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// The reading half of a [`TlsStream`].
pub(crate) struct ReadHalf(Arc<Mutex<TlsStream>>);

/// The writing half of a [`TlsStream`].
pub(crate) struct WriteHalf(Arc<Mutex<TlsStream>>);

/// The stream, for one poll of either half: the lock is held only while rustls works.
fn lock(shared: &Mutex<TlsStream>) -> MutexGuard<'_, TlsStream> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Credentials for Mutex<TlsStream> {
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        lock(self).conn.peer_certificates().map(<[_]>::to_vec).unwrap_or_default()
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.0)).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *lock(&self.0)).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *lock(&self.0)).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.0)).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.0)).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
