//! The reference relay: what a user would write in an afternoon instead of ws-proxy, to
//! compare it with. tokio-tungstenite over tokio-rustls with the relay's own TLS configuration
//! (client certificates required and verified), a room per request path, every text or binary
//! frame forwarded to the room's other members as it is; nothing parsed, nothing held, a slow
//! receiver slowing its senders. One task per connection: it writes what its member sends straight
//! into the other members' WebSockets and flushes them when it has nothing more to read, the
//! leanest of the obvious designs (a queue and a writer task per member costs more).
//!
//! `--reference` makes ws-bench start it as a child process, pinned to the CPUs of the relay
//! under test, and run each scenario against both in the same invocation.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use anyhow::{Context, Result, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// What the reference relay prints once it listens, followed by its address.
const LISTENING: &str = "reference relay listening on ";

/// The write half of a member's WebSocket, shared by the tasks of the room's other members
/// (empty until its upgrade is done; its own task holds the lock until then).
type Sink = Arc<tokio::sync::Mutex<Option<SplitSink<Ws, Message>>>>;
type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// The members of each room: their id and their write half.
type Rooms = Arc<Mutex<HashMap<String, Vec<(u64, Sink)>>>>;

/// Serves the reference relay on `bind` with the PKI's proxy certificate, until killed.
pub(crate) async fn serve(bind: SocketAddr, pki: &Path) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(crate::transport::relay_tls(pki)?);
    let listener = tokio::net::TcpListener::bind(bind).await?;
    eprintln!("{LISTENING}{}", listener.local_addr()?);
    let rooms = Rooms::default();
    let mut next_id = 0;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        next_id += 1;
        tokio::spawn(connection(acceptor.clone(), tcp, Arc::clone(&rooms), next_id));
    }
}

/// One member: each frame it sends is written by this task into the other members' sinks, and
/// they are flushed once nothing more is waiting to be read.
#[expect(clippy::result_large_err, reason = "the upgrade callback's signature is tungstenite's")]
async fn connection(acceptor: tokio_rustls::TlsAcceptor, tcp: tokio::net::TcpStream, rooms: Rooms, id: u64) {
    let Ok(tls) = acceptor.accept(tcp).await else { return };
    let sink = Sink::default();
    let Ok(mut own) = Arc::clone(&sink).try_lock_owned() else { return };
    let mut joined = None;
    // The member joins its room before the 101 goes out: once its client sees the upgrade,
    // frames sent to the room reach it (their writers wait for the lock this task holds).
    let join = |request: &Request, response: Response| {
        let path = request.uri().path().to_owned();
        if let Ok(mut rooms) = rooms.lock() {
            rooms.entry(path.clone()).or_default().push((id, sink));
        }
        joined = Some(path);
        Ok(response)
    };
    let upgraded = tokio_tungstenite::accept_hdr_async(tls, join).await;
    let Some(room) = joined else { return };
    if let Ok(ws) = upgraded {
        let (write, read) = ws.split();
        *own = Some(write);
        drop(own);
        relay(read, &rooms, &room, id).await;
    } else {
        drop(own);
    }
    if let Ok(mut rooms) = rooms.lock()
        && let Some(members) = rooms.get_mut(&room)
    {
        members.retain(|(other, _)| *other != id);
        if members.is_empty() {
            rooms.remove(&room);
        }
    }
}

/// Reads the member's frames until it leaves, writing each to the room's other members.
async fn relay(mut stream: SplitStream<Ws>, rooms: &Rooms, room: &str, id: u64) {
    let mut unflushed: Vec<Sink> = Vec::new();
    loop {
        // Polled with this task's own waker, so that a frame that arrives later wakes it.
        let incoming = match std::future::poll_fn(|cx| Poll::Ready(stream.poll_next_unpin(cx))).await {
            Poll::Ready(incoming) => incoming,
            Poll::Pending => {
                flush(&mut unflushed).await;
                stream.next().await
            }
        };
        let message = match incoming {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
            Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            Some(Ok(_)) => continue,
        };
        let others: Vec<Sink> = rooms
            .lock()
            .map(|rooms| {
                let members = rooms.get(room).into_iter().flatten();
                members.filter(|(other, _)| *other != id).map(|(_, sink)| Arc::clone(sink)).collect()
            })
            .unwrap_or_default();
        for sink in others {
            let fed = match sink.lock().await.as_mut() {
                Some(write) => write.feed(message.clone()).await.is_ok(),
                None => false,
            };
            if fed && !unflushed.iter().any(|s| Arc::ptr_eq(s, &sink)) {
                unflushed.push(sink);
            }
        }
    }
    // What the member sent just before it left still goes out.
    flush(&mut unflushed).await;
}

async fn flush(unflushed: &mut Vec<Sink>) {
    for sink in unflushed.drain(..) {
        if let Some(write) = sink.lock().await.as_mut() {
            let _ = write.flush().await;
        }
    }
}

/// The reference relay as a child process of ws-bench, killed when dropped.
pub(crate) struct ReferenceProcess {
    child: Child,
    /// `wss://localhost:PORT/micronets/v1/ws-proxy/`.
    pub(crate) url: String,
}

impl ReferenceProcess {
    /// Starts `ws-bench reference-relay` on a free loopback port, pinned to the CPUs the
    /// process `pin_like` may run on (when given), and waits until it listens.
    pub(crate) fn start(pki: &Path, pin_like: Option<u32>) -> Result<Self> {
        let exe = std::env::current_exe().context("finding ws-bench's own executable")?;
        let mut command = match pin_like {
            Some(pid) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", &allowed_cpus(pid)?]).arg(exe);
                taskset
            }
            None => Command::new(exe),
        };
        command
            .arg("--pki")
            .arg(pki)
            .args(["reference-relay", "--bind", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("starting the reference relay")?;
        let stderr = child.stderr.take().context("the reference relay's stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let address = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(address) = line.strip_prefix(LISTENING) {
                        break address.to_owned();
                    }
                }
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("the reference relay ended before listening: {other:?}");
                }
            }
        };
        // Its later output (none is expected) must not fill the pipe and block it.
        std::thread::spawn(move || lines.for_each(drop));
        let port = address.parse::<SocketAddr>().context("the reference relay's address")?.port();
        Ok(ReferenceProcess { child, url: format!("wss://localhost:{port}/micronets/v1/ws-proxy/") })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ReferenceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CPUs process `pid` may run on, as `taskset -c` takes them (`Cpus_allowed_list`).
fn allowed_cpus(pid: u32) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|list| list.trim().to_owned())
        .with_context(|| format!("no Cpus_allowed_list in /proc/{pid}/status"))
}
