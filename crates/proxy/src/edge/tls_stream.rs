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
mod tests {
    use std::sync::Arc;

    use micronets_certgen::dev::{self, DevPki};
    use rustls::pki_types::ServerName;
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::client::TlsStream as ClientStream;

    use super::*;
    use crate::config::{FileConfig, Overrides};

    struct Pair {
        server: TlsStream,
        client: ClientStream<TcpStream>,
    }

    fn pki() -> (tempfile::TempDir, DevPki) {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new(dir.path().join("dev"));
        dev::ensure(&pki).unwrap();
        (dir, pki)
    }

    fn client_config(
        pki: &DevPki,
        versions: &[&'static rustls::SupportedProtocolVersion],
        with_cert: bool,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_file_iter(pki.root_cert()).unwrap() {
            roots.add(der.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
        let config = if with_cert {
            let pem = pki.pkeycert(&dev::CLIENTS[0]);
            let chain = CertificateDer::pem_file_iter(&pem).unwrap().map(Result::unwrap).collect();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&pem).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }

    /// A server stream and a rustls client over loopback; `Err` is the server's handshake error.
    async fn connect(
        pki: &DevPki,
        client: Arc<rustls::ClientConfig>,
    ) -> (io::Result<TlsStream>, io::Result<ClientStream<TcpStream>>) {
        let config = FileConfig::dev(pki).into_config(&Overrides::default()).unwrap();
        let server = crate::edge::tls::server_config(&config).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(server, tcp).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let client = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await;
        (accepting.await.unwrap(), client)
    }

    async fn pair(pki: &DevPki, versions: &[&'static rustls::SupportedProtocolVersion]) -> Pair {
        let (server, client) = connect(pki, client_config(pki, versions, true)).await;
        Pair { server: server.unwrap(), client: client.unwrap() }
    }

    /// Nothing held but the session: what an idle connection costs.
    fn holds_no_buffer(stream: &TlsStream) -> bool {
        stream.incoming.capacity() == 0 && stream.outgoing.capacity() == 0 && stream.plain.capacity() == 0
    }

    #[tokio::test]
    async fn a_megabyte_crosses_both_ways_in_tls13_and_tls12_and_no_buffer_stays() {
        let (_dir, pki) = pki();
        for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
            let Pair { mut server, mut client } = pair(&pki, versions).await;
            let tls13 = versions[0] == &rustls::version::TLS13;
            assert!(holds_no_buffer(&server) || (tls13 && server.holding), "after the handshake");
            let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                client.write_all(&sent).await.unwrap();
                client.flush().await.unwrap();
                let mut back = vec![0u8; sent.len()];
                client.read_exact(&mut back).await.unwrap();
                (client, back)
            });
            let mut got = vec![0u8; data.len()];
            server.read_exact(&mut got).await.unwrap();
            assert!(got == data, "received intact");
            // Written back as two slices, the way the framing writes a header and a payload.
            let (head, tail) = got.split_at(3);
            let mut slices = [IoSlice::new(head), IoSlice::new(tail)];
            let mut slices = &mut slices[..];
            while !slices.is_empty() {
                let n = std::future::poll_fn(|cx| Pin::new(&mut server).poll_write_vectored(cx, slices))
                    .await
                    .unwrap();
                IoSlice::advance_slices(&mut slices, n);
            }
            server.flush().await.unwrap();
            let (mut client, back) = writer.await.unwrap();
            assert!(back == data, "sent back intact");
            // Large writes keep the send buffer (not zeroed for each); small ones, like the
            // pings an idle connection gets, give it back once they have drained it twice.
            assert!(server.outgoing.capacity() > 0, "kept while large writes flow: {versions:?}");
            for _ in 0..2 {
                server.write_all(b"ping").await.unwrap();
                server.flush().await.unwrap();
                let mut ping = [0u8; 4];
                client.read_exact(&mut ping).await.unwrap();
                assert_eq!(&ping, b"ping");
            }
            assert!(holds_no_buffer(&server), "drained: {versions:?}");
        }
    }

    #[tokio::test]
    async fn tls13_tickets_wait_for_the_first_write_and_resume_the_next_session() {
        let (_dir, pki) = pki();
        let config = FileConfig::dev(&pki).into_config(&Overrides::default()).unwrap();
        let server_config = crate::edge::tls::server_config(&config).unwrap();
        let client_config = client_config(&pki, &[&rustls::version::TLS13], true);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for round in ["full", "resumed"] {
            let (accepted, tcp) = tokio::join!(listener.accept(), TcpStream::connect(addr));
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(&client_config));
            let name = ServerName::try_from("localhost").unwrap();
            let (server, client) = tokio::join!(
                accept(Arc::clone(&server_config), accepted.unwrap().0),
                connector.connect(name, tcp.unwrap())
            );
            let (mut server, mut client) = (server.unwrap(), client.unwrap());
            let kind = server.session().handshake_kind();
            let expected =
                if round == "full" { rustls::HandshakeKind::Full } else { rustls::HandshakeKind::Resumed };
            assert_eq!(kind, Some(expected), "{round}");
            assert!(server.holding && server.queued() > 0, "{round}: the tickets are held");
            // Loopback delivers a write before it returns: had the tickets been sent, they
            // would be waiting in the client's socket now.
            let mut peek = [0u8; 1];
            let waiting = client.get_ref().0.try_read(&mut peek);
            assert!(
                matches!(&waiting, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                "{round}: nothing sent before the first write: {waiting:?}"
            );
            server.write_all(b"HTTP/1.1 101").await.unwrap();
            server.flush().await.unwrap();
            assert!(!server.holding && holds_no_buffer(&server), "{round}: all sent");
            let mut answer = [0u8; 12];
            client.read_exact(&mut answer).await.unwrap();
            assert_eq!(&answer, b"HTTP/1.1 101");
        }
    }

    #[tokio::test]
    async fn a_message_a_little_over_the_queue_is_taken_in_one_write() {
        let (_dir, pki) = pki();
        let Pair { mut server, mut client } = pair(&pki, &[&rustls::version::TLS13]).await;
        // The client reads all along, so that the socket always takes what is written.
        let (total, expected) = tokio::sync::oneshot::channel::<usize>();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut expected = std::pin::pin!(expected);
            let mut want = None;
            while want.is_none_or(|w| got.len() < w) {
                tokio::select! {
                    n = client.read(&mut buf) => got.extend_from_slice(&buf[..n.unwrap()]),
                    w = &mut expected, if want.is_none() => want = Some(w.unwrap()),
                }
            }
            got.len()
        });
        let (head, payload) = ([0x82u8, 127, 0, 0, 0, 0, 0, 1, 0, 0], vec![7u8; MAX_QUEUED]);
        let slices = [IoSlice::new(&head), IoSlice::new(&payload)];
        let n =
            std::future::poll_fn(|cx| Pin::new(&mut server).poll_write_vectored(cx, &slices)).await.unwrap();
        assert_eq!(
            n,
            head.len() + payload.len(),
            "the frame's header does not leave a tail for a second write"
        );
        // More than one record past the queue's size is left for the next write.
        let big = vec![7u8; MAX_QUEUED + 2 * MAX_PLAINTEXT];
        let m =
            std::future::poll_fn(|cx| Pin::new(&mut server).poll_write_vectored(cx, &[IoSlice::new(&big)]))
                .await
                .unwrap();
        assert!(m < big.len(), "the queue is bounded: {m}");
        server.flush().await.unwrap();
        total.send(n + m).unwrap();
        assert_eq!(reader.await.unwrap(), n + m);
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_followed() {
        let (_dir, pki) = pki();
        let Pair { mut server, mut client } = pair(&pki, &[&rustls::version::TLS13]).await;
        client.write_all(b"before").await.unwrap();
        let mut buf = [0u8; 6];
        server.read_exact(&mut buf).await.unwrap();
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b"after!").await.unwrap();
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"after!");
        server.write_all(b"answer").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"answer");
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_and_a_bare_close_is_an_unexpected_end() {
        let (_dir, pki) = pki();
        let Pair { mut server, mut client } = pair(&pki, &[&rustls::version::TLS13]).await;
        client.shutdown().await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf).await.unwrap(), 0, "close_notify: a clean end");
        server.shutdown().await.unwrap();

        // The TCP stream ends without close_notify: cut, not closed.
        let Pair { mut server, mut client } = pair(&pki, &[&rustls::version::TLS13]).await;
        client.get_mut().0.shutdown().await.unwrap();
        let end = server.read(&mut buf).await.unwrap_err();
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof, "{end}");
    }

    #[tokio::test]
    async fn garbage_after_the_handshake_fails_the_stream_cleanly() {
        let (_dir, pki) = pki();
        let Pair { mut server, mut client } = pair(&pki, &[&rustls::version::TLS13]).await;
        // An application-data record whose ciphertext is noise.
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
        record.extend((0..0x40).map(|i| i as u8));
        client.get_mut().0.write_all(&record).await.unwrap();
        let mut buf = [0u8; 8];
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert!(server.write_all(b"more").await.is_err(), "a failed session sends no data");
        assert!(server.read(&mut buf).await.is_err(), "nor reads any");
        let _ = server.shutdown().await;
    }

    #[tokio::test]
    async fn a_refused_handshake_names_its_reason_and_alerts_the_client() {
        let (_dir, pki) = pki();
        let (server, client) = connect(&pki, client_config(&pki, &[&rustls::version::TLS12], false)).await;
        let error = server.err().unwrap();
        assert_eq!(crate::edge::tls::handshake_failure(&error).0, "no_client_certificate");
        let alert = client.err().unwrap().to_string();
        assert!(alert.contains("CertificateRequired") || alert.contains("HandshakeFailure"), "{alert}");
    }
}
