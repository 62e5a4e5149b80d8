//! The node's own connections to a single Redis server (not a Redis Cluster): one that
//! publishes the node's packets, one that holds its inbox subscription. Each is read and
//! written by the one task that uses it, with the few commands of `resp.rs`: a packet goes
//! out without a command future, a multiplexer's channel or a task switch on the way, and a
//! packet comes in to the inbox's own task, read from the socket, not handed over by a reader
//! task of a client library. Presence and its scripts keep the `redis` crate's connection
//! (`link.rs`).
//!
//! A connection is made like the `redis` crate's: TCP with the same keepalive and user timeout,
//! or TLS (`rediss://`, the certificate verified against `cluster.ca_file` or the system's
//! CAs), or a Unix socket; `AUTH` with the URL's user and password. Nothing is sent twice: a
//! publish whose answer does not come is reported as possibly delivered, and the connection is
//! made again for the next batch.

use std::io::IoSlice;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis::{ConnectionAddr, IntoConnectionInfo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::error::BackplaneError;
use super::resp::{self, Reply};
use crate::config::ClusterConfig;

/// Read in steps of this much.
const READ_STEP: usize = 16 << 10;

/// A byte stream to Redis: TCP, TLS over TCP, or a Unix socket.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Where and how to connect.
pub(crate) struct Dialer {
    target: Target,
    username: Option<String>,
    password: Option<String>,
    /// `cluster.command_timeout`: for a connection and its first command, and for each
    /// batch's answers.
    timeout: Duration,
}

enum Target {
    Tcp { host: String, port: u16 },
    Tls { host: String, port: u16, name: ServerName<'static>, tls: TlsConnector },
    Unix(PathBuf),
}

impl Dialer {
    /// The dialer of `config.redis_url` (one server).
    ///
    /// # Errors
    /// [`BackplaneError`] when the URL cannot be parsed, asks for an unverified TLS connection
    /// (`#insecure`), or its CA file cannot be used.
    pub(crate) fn new(config: &ClusterConfig) -> Result<Self, BackplaneError> {
        let info = config.redis_url.as_str().into_connection_info()?;
        let settings = info.redis_settings();
        let target = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Target::Tcp { host: host.clone(), port: *port },
            ConnectionAddr::TcpTls { insecure: true, .. } => {
                return Err(BackplaneError::Url(
                    "#insecure (no certificate verification) is not supported".into(),
                ));
            }
            ConnectionAddr::TcpTls { host, port, .. } => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| BackplaneError::Url(format!("{host:?} is not a host name")))?;
                let tls = crate::edge::tls::client_config(config.ca_file.as_deref(), "cluster.ca_file")
                    .map_err(Box::new)?;
                let tls = TlsConnector::from(tls);
                Target::Tls { host: host.clone(), port: *port, name, tls }
            }
            ConnectionAddr::Unix(path) => Target::Unix(path.clone()),
            other => {
                return Err(BackplaneError::Url(format!(
                    "{other} is not a kind of address this node connects to"
                )));
            }
        };
        Ok(Dialer {
            target,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            timeout: config.command_timeout,
        })
    }

    /// A new connection, authenticated, within twice the command timeout.
    async fn dial(&self) -> Result<Conn, BackplaneError> {
        let limit = self.timeout * 2;
        tokio::time::timeout(limit, self.dial_now()).await.map_err(|_| BackplaneError::Timeout(limit))?
    }

    async fn dial_now(&self) -> Result<Conn, BackplaneError> {
        let io: Box<dyn Io> = match &self.target {
            Target::Tcp { host, port } => Box::new(self.tcp(host, *port).await?),
            Target::Tls { host, port, name, tls } => {
                Box::new(tls.connect(name.clone(), self.tcp(host, *port).await?).await?)
            }
            Target::Unix(path) => Box::new(UnixStream::connect(path).await?),
        };
        let mut conn = Conn { io, buf: BytesMut::new(), out: BytesMut::new() };
        if let Some(password) = &self.password {
            match &self.username {
                Some(user) => resp::command(&mut conn.out, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => resp::command(&mut conn.out, &[b"AUTH", password.as_bytes()]),
            }
            conn.flush().await?;
            match conn.reply().await? {
                Reply::Status(_) => {}
                Reply::Error(e) => return Err(BackplaneError::Refused(e)),
                _ => return Err(BackplaneError::Unexpected("AUTH")),
            }
        }
        Ok(conn)
    }

    /// TCP as the `redis` crate's connections have it (`link.rs`): no delay, keepalive probes
    /// and a user timeout.
    async fn tcp(&self, host: &str, port: u16) -> std::io::Result<TcpStream> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let socket = socket2::SockRef::from(&tcp);
        socket.set_tcp_keepalive(&keepalive(self.timeout))?;
        socket.set_tcp_user_timeout(Some(user_timeout(self.timeout)))?;
        Ok(tcp)
    }

    /// Subscribes a new connection to `channel`, once Redis has confirmed it.
    ///
    /// # Errors
    /// Why the connection or the subscription failed.
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<Subscription, BackplaneError> {
        let mut conn = self.dial().await?;
        resp::command(&mut conn.out, &[b"SUBSCRIBE", channel.as_bytes()]);
        let confirmed = tokio::time::timeout(self.timeout, async {
            conn.flush().await?;
            conn.reply().await
        })
        .await
        .map_err(|_| BackplaneError::Timeout(self.timeout))??;
        match confirmed {
            Reply::Array(Some(items)) if items.first().and_then(Reply::bytes) == Some(b"subscribe") => {
                Ok(Subscription { conn })
            }
            Reply::Error(e) => Err(BackplaneError::Refused(e)),
            _ => Err(BackplaneError::Unexpected("SUBSCRIBE")),
        }
    }
}

/// One connection and its buffers.
struct Conn {
    io: Box<dyn Io>,
    /// Bytes read and not yet taken as replies.
    buf: BytesMut,
    /// Commands not yet written.
    out: BytesMut,
}

impl Conn {
    async fn flush(&mut self) -> std::io::Result<()> {
        self.io.write_all(&self.out).await?;
        self.out.clear();
        self.io.flush().await
    }

    /// Whether the peer has closed the connection (or sent what nobody asked for), looked at
    /// without waiting.
    fn closed_by_peer(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        !matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut probe), Poll::Pending)
    }

    /// The next reply, reading until it has arrived whole.
    async fn reply(&mut self) -> Result<Reply, BackplaneError> {
        loop {
            if let Some(reply) = resp::take(&mut self.buf)? {
                return Ok(reply);
            }
            let wanted = resp::wanted(&self.buf).saturating_sub(self.buf.len());
            self.buf.reserve(wanted.max(READ_STEP));
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(BackplaneError::Closed);
            }
        }
    }
}

/// Writes all of `parts`, in as few system calls as the stream takes them.
async fn write_gathered(io: &mut Box<dyn Io>, mut parts: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !parts.is_empty() {
        let n = io.write_vectored(parts).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut parts, n);
    }
    io.flush().await
}

/// What became of one packet given to [`Publisher::publish`]; one failure may be the fate of
/// every packet of the batch, and is shared by them.
#[derive(Clone, Debug)]
pub(crate) enum Published {
    /// Redis took it: this many subscribers received it.
    Received(u64),
    /// Not published: it was never sent, or Redis refused it.
    NotSent(Arc<BackplaneError>),
    /// Sent, but its answer did not come: it may have been delivered.
    Unanswered(Arc<BackplaneError>),
}

/// The publishing connection, made when first needed and again after a failure.
pub(crate) struct Publisher {
    dialer: Arc<Dialer>,
    conn: Option<Conn>,
}

impl Publisher {
    pub(crate) fn new(dialer: Arc<Dialer>) -> Self {
        Publisher { dialer, conn: None }
    }

    /// Publishes each packet to its channel, all in one write, and reads their answers
    /// within the command timeout.
    pub(crate) async fn publish(&mut self, packets: &[(Arc<str>, Bytes)]) -> Vec<Published> {
        // A connection Redis has closed since the last batch (a restart) is made again before
        // anything is written to it: what is not sent is certainly lost, not maybe.
        let mut kept = self.conn.take();
        if kept.as_mut().is_some_and(Conn::closed_by_peer) {
            kept = None;
        }
        let mut conn = match kept {
            Some(conn) => conn,
            None => match self.dialer.dial().await {
                Ok(conn) => conn,
                Err(e) => {
                    debug!(error = %e, "cannot connect to publish");
                    return vec![Published::NotSent(Arc::new(e)); packets.len()];
                }
            },
        };
        // Each command's head goes into the connection's buffer; the packets are written from
        // where they are, gathered with the heads in one vectored write.
        let mut heads = Vec::with_capacity(packets.len());
        for (channel, packet) in packets {
            let at = conn.out.len();
            resp::command_before(&mut conn.out, &[b"PUBLISH", channel.as_bytes()], packet.len());
            heads.push(at..conn.out.len());
        }
        let mut results = Vec::with_capacity(packets.len());
        let limit = self.dialer.timeout;
        let answered = tokio::time::timeout(limit, async {
            let Conn { io, out, .. } = &mut conn;
            let mut parts = Vec::with_capacity(3 * packets.len());
            for (head, (_, packet)) in heads.into_iter().zip(packets) {
                parts.extend([IoSlice::new(&out[head]), IoSlice::new(packet), IoSlice::new(resp::END)]);
            }
            write_gathered(io, &mut parts).await?;
            out.clear();
            while results.len() < packets.len() {
                results.push(match conn.reply().await? {
                    Reply::Integer(n) => Published::Received(u64::try_from(n).unwrap_or(0)),
                    Reply::Error(e) => Published::NotSent(Arc::new(BackplaneError::Refused(e))),
                    _ => return Err(BackplaneError::Unexpected("PUBLISH")),
                });
            }
            Ok::<_, BackplaneError>(())
        })
        .await
        .map_err(|_| BackplaneError::Timeout(limit))
        .and_then(|r| r);
        match answered {
            Ok(()) => self.conn = Some(conn),
            Err(e) => {
                debug!(error = %e, "publishing connection failed: made again for the next batch");
                results.resize(packets.len(), Published::Unanswered(Arc::new(e)));
            }
        }
        results
    }
}

/// A connection subscribed to the node's inbox.
pub(crate) struct Subscription {
    conn: Conn,
}

impl Subscription {
    /// The next payload published to the channel; `None` once the connection failed or
    /// closed (the reason is logged), after which a new subscription is needed.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        loop {
            match self.conn.reply().await {
                Ok(Reply::Array(Some(items))) if items.first().and_then(Reply::bytes) == Some(b"message") => {
                    if let Some(Reply::Bulk(Some(payload))) = items.into_iter().nth(2) {
                        return Some(payload);
                    }
                }
                Ok(other) => debug!(reply = ?other, "unexpected reply on the inbox subscription: skipped"),
                Err(e) => {
                    debug!(error = %e, "inbox subscription ended");
                    return None;
                }
            }
        }
    }
}

/// A silent Redis (a black hole) is noticed by the kernel too, not only by the command
/// timeouts: an idle connection (the inbox's) is probed from one command `timeout` on (the
/// kernel counts whole seconds), and given up after three probes unanswered.
pub(super) fn keepalive(timeout: Duration) -> socket2::TcpKeepalive {
    let probe = timeout.max(Duration::from_secs(1));
    socket2::TcpKeepalive::new().with_time(probe).with_interval(probe).with_retries(3)
}

/// Unacknowledged writes abort a connection to Redis after three command timeouts.
pub(super) fn user_timeout(timeout: Duration) -> Duration {
    timeout * 3
}
