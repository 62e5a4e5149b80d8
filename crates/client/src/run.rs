//! What `ws-client` does: connect (retrying when asked), start a session, run the console, the
//! HTTP bridge and the forwarder on it, and reconnect when it ends (when asked).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use micronets_message::Hello;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::backoff::{Backoff, RefusalLog, STABLE};
use crate::bridge::{self, BridgeOptions};
use crate::connect::{ConnectOptions, Connector};
use crate::console::{self, Line};
use crate::forward::Forwarder;
use crate::session::{Incoming, Session};
use crate::{Error, Result};

/// Retry policy for connecting.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Reconnect after a failure, a refusal or a lost connection (exponential backoff with full
    /// jitter, at least the relay's `Retry-After`).
    pub reconnect: bool,
    /// Give up at once when the relay answers the upgrade with a non-101 status.
    pub stop_on_bad_handshake: bool,
    /// The first wait's ceiling.
    pub initial: Duration,
    /// The longest wait's ceiling.
    pub max: Duration,
}

/// Everything `ws-client` was asked to do.
pub struct RunOptions {
    /// How to reach the relay.
    pub connect: ConnectOptions,
    /// Our HELLO.
    pub hello: Hello,
    /// Serve an HTTP bridge on this address.
    pub bridge: Option<(SocketAddr, BridgeOptions)>,
    /// Serve incoming requests with this forwarder.
    pub forward: Option<Arc<Forwarder>>,
    /// Retry policy.
    pub retry: Retry,
    /// How often to ping the relay; three times this without a frame ends the connection.
    pub keepalive: Duration,
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `quit`, end of input, or a normal close by the relay.
    Clean,
    /// The connection failed or was lost (after the retries allowed).
    Failed,
}

/// Runs until `quit`, end of input (when neither bridge nor forwarder is running), or the end
/// of the connection (without `reconnect`). Console lines come from `input`; received frames are
/// written to `output`, one JSON line each.
///
/// # Errors
/// [`Error::Connect`] and friends when binding the bridge fails.
pub async fn run<I, O>(options: RunOptions, input: I, mut output: O) -> Result<Outcome>
where
    I: AsyncBufRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin,
{
    let bridge = match options.bridge {
        Some((addr, bridge_options)) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| Error::Connect {
                target: addr.to_string(),
                reason: format!("cannot listen: {e}"),
            })?;
            let local = listener.local_addr().map_or(addr, |a| a);
            info!("HTTP bridge listening on {local}");
            Some((Arc::new(listener), bridge_options))
        }
        None => None,
    };
    let serving = bridge.is_some() || options.forward.is_some();
    let handler = options.forward.clone().map(Forwarder::handler);
    let (lines_tx, mut lines) = mpsc::channel::<String>(16);
    tokio::spawn(read_lines(input, lines_tx));
    let mut input_open = true;
    let mut backoff = Backoff::new(options.retry.initial, options.retry.max);
    let mut refusals = RefusalLog::default();
    // One connector for every attempt: a reconnect resumes the TLS session.
    let connector = match Connector::new(options.connect.clone()) {
        Ok(connector) => connector,
        Err(e) => {
            error!("{e}");
            return Ok(Outcome::Failed);
        }
    };
    loop {
        let ws = match connector.connect().await {
            Ok(ws) => ws,
            Err(e) => {
                let fatal = matches!(e, Error::BadHandshake { .. }) && options.retry.stop_on_bad_handshake;
                if !options.retry.reconnect || fatal || matches!(e, Error::Tls { .. } | Error::Invalid(_)) {
                    error!("{e}");
                    return Ok(Outcome::Failed);
                }
                let retry_after = match &e {
                    Error::BadHandshake { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let wait = backoff.next(retry_after);
                if refusals.is_new(&e.to_string()) {
                    warn!(retry_in = ?wait, "{e}");
                } else {
                    debug!(retry_in = ?wait, repeats = refusals.repeats(), "{e}");
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let connected = tokio::time::Instant::now();
        let (incoming_tx, mut incoming) = mpsc::channel::<Incoming>(64);
        let started =
            Session::start(ws, options.hello.clone(), handler.clone(), Some(incoming_tx), options.keepalive)
                .await;
        let session = match started {
            Ok(session) => Arc::new(session),
            // The connection failed right after the upgrade (the relay restarting, say): a
            // lost connection like any other.
            Err(e) if options.retry.reconnect => {
                let wait = backoff.next(None);
                warn!(retry_in = ?wait, "the connection failed before the HELLO went out: {e}");
                tokio::time::sleep(wait).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        info!(url = %options.connect.url, "connected; HELLO sent, waiting for the peer's HELLO");
        let bridge_task = bridge.clone().map(|(listener, bridge_options)| {
            let session = Arc::clone(&session);
            tokio::spawn(async move { bridge::serve(&listener, session, bridge_options).await })
        });
        let alone_report = tokio::spawn(report_while_alone(Arc::clone(&session)));
        let stop = loop {
            tokio::select! {
                frame = incoming.recv() => match frame {
                    Some(frame) => {
                        let line = console::render(&frame);
                        let _ = output.write_all(format!("{line}\n").as_bytes()).await;
                        let _ = output.flush().await;
                    }
                    None => break Stop::Ended(session.ended().await),
                },
                line = lines.recv(), if input_open => match line {
                    Some(line) => match console::parse_line(&line, || session.next_id()) {
                        Ok(Line::Send(text)) => {
                            if session.send_text(text).await.is_err() {
                                warn!("not sent: the connection is closed");
                            }
                        }
                        Ok(Line::Quit) => break Stop::Quit,
                        Ok(Line::Nothing) => {}
                        Err(why) => warn!("{why}"),
                    },
                    // End of input ends a console session; a bridge or forwarder keeps serving.
                    None if serving => input_open = false,
                    None => break Stop::Quit,
                },
            }
        };
        alone_report.abort();
        if let Some(task) = bridge_task {
            task.abort();
        }
        match stop {
            Stop::Quit => {
                session.close().await;
                return Ok(Outcome::Clean);
            }
            Stop::Ended(ended) => {
                if !options.retry.reconnect {
                    info!(code = ?ended.code, reason = %ended.reason, "connection to the relay ended");
                    return Ok(if ended.is_clean() { Outcome::Clean } else { Outcome::Failed });
                }
                // A connection that ended soon after it was made was refused in effect (replaced,
                // an identity conflict at HELLO): it does not start the backoff over.
                if connected.elapsed() >= STABLE {
                    backoff.reset();
                    refusals.clear();
                }
                let wait = backoff.next(None);
                let why = format!("connection to the relay ended: {} ({:?})", ended.reason, ended.code);
                if refusals.is_new(&why) {
                    info!(retry_in = ?wait, "{why}; reconnecting");
                } else {
                    debug!(retry_in = ?wait, repeats = refusals.repeats(), "{why}; reconnecting");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Why a session's loop stopped.
enum Stop {
    /// `quit` or the end of the console's input.
    Quit,
    /// The connection ended.
    Ended(crate::session::Ended),
}

/// Logs, every 10 s, that no peer has said HELLO yet.
async fn report_while_alone(session: Arc<Session>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    ticker.tick().await;
    loop {
        tokio::select! {
            hello = session.peer_hello() => {
                if let Some(hello) = hello {
                    info!(peer_class = ?hello.peer_class, peer_id = ?hello.peer_id, "peer present");
                }
                return;
            }
            _ = ticker.tick() => info!("no peer in the room yet; requests get 503 until one joins"),
        }
    }
}

async fn read_lines<I: AsyncBufRead + Unpin>(input: I, tx: mpsc::Sender<String>) {
    let mut lines = input.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send(line).await.is_err() {
            return;
        }
    }
}
