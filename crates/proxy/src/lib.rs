//! The Micronets WebSocket relay proxy.
//!
//! Peers connect with mutual TLS to `wss://host:5050/micronets/v1/ws-proxy/<room-id>`, send a
//! `CONN:HELLO`, and from then on every frame they send is relayed, byte for byte, to the other
//! members of their room (design.md sections 4-5). This crate is the whole daemon but the
//! binary's argument parsing: the binary binds the listeners and installs the signals, and
//! hands them to [`Proxy::serve_until_signalled`] (or, in tests, a listener and any shutdown
//! future to [`Proxy::serve`]: the mini-redis shape).
//!
//! Main pieces: [`config`] (file + overrides -> validated [`Config`]), [`tls`] (the mTLS server
//! configuration), [`acl`] (who may join which room), [`auth_hook`] (the operator's HTTP
//! service asked before each upgrade), `upgrade` (path -> [`RoomId`], refusals
//! before the 101), `connection` (one peer from TLS to close), `registry`/`room` (membership,
//! the hold buffer), `relay` (each peer's bounded queue and writer), `websocket` (the framing),
//! `listener` (accept loop and drain).
//! Operations: `admin` (the HTTP endpoint: health, readiness, [`metrics`], the rooms report of
//! [`status`]), `reload` (SIGHUP swaps the TLS material in), [`systemd`] (readiness and
//! watchdog notifications).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod acl;
mod admin;
pub mod auth_hook;
mod cluster;
pub mod config;
mod connection;
pub mod daemon;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
pub mod identity;
mod listener;
pub mod logging;
pub mod metrics;
mod rate;
mod registry;
mod relay;
mod reload;
mod room;
pub mod shutdown;
mod slots;
pub mod status;
pub mod systemd;
pub mod tls;
mod upgrade;
mod websocket;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64};

use arc_swap::ArcSwap;
use rustls::ServerConfig;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, FileConfig, LogFormat, Overrides};
pub use error::{Close, Error, Result};
pub use metrics::Metrics;
pub use room::RoomId;

/// State every connection shares.
struct Shared {
    config: Config,
    /// The TLS material new handshakes use; a reload swaps it.
    tls: ArcSwap<ServerConfig>,
    /// Who may join which room; a reload swaps it.
    acl: ArcSwap<acl::Acl>,
    /// Serials the configured CRLs revoke, checked again when a connection joins; a reload
    /// swaps it.
    revoked: ArcSwap<std::collections::HashSet<String>>,
    /// The external authorization hook, when configured.
    auth_hook: Option<auth_hook::AuthHook>,
    /// What this node shares with other nodes: nothing ([`cluster::Local`]) or presence and
    /// inboxes in Redis.
    backplane: Arc<dyn cluster::Backplane>,
    /// Where a reload reads the configuration from.
    source: reload::Source,
    /// Listening and not draining (`/readyz`).
    ready: AtomicBool,
    registry: registry::Registry,
    /// Live connections per source address (`max_connections_per_ip`).
    per_ip: Arc<slots::PerKey<std::net::IpAddr>>,
    /// Live connections per certificate (`max_connections_per_identity`).
    per_identity: Arc<slots::PerKey<identity::Fingerprint>>,
    metrics: Arc<Metrics>,
    /// `messageId` of the next proxy-originated message.
    next_message_id: AtomicI64,
    /// Cancelled when the server starts draining.
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// A configured proxy, ready to serve on a listener. Clones share the same proxy.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    /// Loads the TLS material and prepares the proxy.
    ///
    /// # Errors
    /// [`Error::Tls`] naming the file that cannot be used.
    pub fn new(config: Config) -> Result<Self> {
        Self::with_source(config, reload::Source::default())
    }

    /// Like [`Proxy::new`], for a configuration read from `path` with `overrides`: a reload
    /// reads that file again (see [`Proxy::reload`]).
    ///
    /// # Errors
    /// As [`Proxy::new`].
    pub fn from_file(config: Config, path: std::path::PathBuf, overrides: Overrides) -> Result<Self> {
        Self::with_source(config, reload::Source { path: Some(path), overrides })
    }

    fn with_source(config: Config, source: reload::Source) -> Result<Self> {
        let tls = ArcSwap::new(tls::server_config(&config)?);
        if config.acl.is_empty() {
            tracing::warn!("no [[acl.rules]]: every valid client certificate may join every room");
        }
        let acl = ArcSwap::from_pointee(config.acl.clone());
        let revoked = ArcSwap::from_pointee(tls::revoked_serials(&config)?);
        let auth_hook = config.auth_hook.as_ref().map(auth_hook::AuthHook::new).transpose()?;
        let shared = Shared {
            registry: registry::Registry::new(config.max_peers, config.max_rooms),
            per_ip: slots::PerKey::new(config.max_connections_per_ip),
            per_identity: slots::PerKey::new(config.max_connections_per_identity),
            config,
            tls,
            acl,
            revoked,
            auth_hook,
            backplane: Arc::new(cluster::Local),
            source,
            ready: AtomicBool::new(false),
            metrics: Arc::new(Metrics::default()),
            next_message_id: AtomicI64::new(1),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        Ok(Proxy { shared: Arc::new(shared) })
    }

    /// In cluster mode (`[cluster] redis_url`), connects to Redis, within its command
    /// timeout; otherwise returns the proxy as it is. Call it before serving, and before any
    /// clone is made.
    ///
    /// # Errors
    /// [`Error::Cluster`] saying why Redis cannot be used; [`Error::Config`] when the proxy
    /// was cloned before.
    pub async fn connect(self) -> Result<Self> {
        let Some(cluster) = self.shared.config.cluster.clone() else { return Ok(self) };
        let backplane = cluster::redis::RedisBackplane::connect(&cluster).await?;
        let mut shared = Arc::try_unwrap(self.shared).map_err(|_| Error::Config {
            key: "cluster".into(),
            reason: "connect the cluster before cloning the proxy".into(),
        })?;
        tracing::info!(
            node = cluster::Backplane::node(&backplane),
            "cluster mode: presence and inboxes in redis"
        );
        shared.backplane = Arc::new(backplane);
        Ok(Proxy { shared: Arc::new(shared) })
    }

    /// The proxy's counters.
    #[must_use]
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Serves the admin endpoint on `listener` (until the future is dropped).
    pub async fn serve_admin(&self, listener: TcpListener) {
        admin::serve(Arc::clone(&self.shared), listener).await;
    }

    /// The daemon: tells systemd it is ready, serves `listener` (and the admin endpoint on
    /// `admin`), reloads on SIGHUP, pings the systemd watchdog, and on SIGTERM or SIGINT
    /// drains. Returns `None` after a complete drain, or the second signal that cut the drain
    /// short.
    pub async fn serve_until_signalled(
        &self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        signals: DaemonSignals,
    ) -> Option<shutdown::Signal> {
        let admin = async move {
            match admin {
                Some(listener) => self.serve_admin(listener).await,
                None => std::future::pending().await,
            }
        };
        // Ready from here: the listener is bound, so connections queue until they are
        // accepted, and /readyz must not say otherwise once "listening on" is out.
        self.shared.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        systemd::notify(systemd::State::Ready);
        tokio::select! {
            signal = self.serve_and_drain(listener, signals.stop) => signal,
            () = admin => None,
            () = reload::on_sighup(self, signals.hangup) => None,
            () = systemd::watchdog() => None,
            () = logging::report_suppressed() => None,
        }
    }

    async fn serve_and_drain(
        &self,
        listener: TcpListener,
        mut signals: shutdown::Signals,
    ) -> Option<shutdown::Signal> {
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let signals = async move {
            let signal = signals.next().await;
            systemd::notify(systemd::State::Stopping);
            tracing::info!(?signal, "stop signal received: draining (a second signal exits at once)");
            let _ = first_tx.send(());
            Some(signals.next().await)
        };
        let stop = async move {
            let _ = first_rx.await;
        };
        tokio::select! {
            () = self.serve(listener, stop) => None,
            signal = signals => signal,
        }
    }

    /// Serves until `shutdown` completes, then closes every connection with 1001 and waits for
    /// them at most the configured grace period.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let backplane = Arc::clone(&self.shared.backplane).run(Arc::clone(&self.shared));
        tokio::pin!(backplane);
        tokio::select! {
            () = listener::serve(Arc::clone(&self.shared), listener, shutdown) => {}
            () = &mut backplane => {}
        }
        // The departures of the drained members still have to reach the other nodes.
        tokio::select! {
            () = self.shared.backplane.drain() => {}
            () = &mut backplane => {}
        }
    }
}

impl Shared {
    /// A message from the proxy itself, with the next proxy `messageId`.
    fn proxy_message(
        &self,
        kind: micronets_message::Kind,
        in_response_to: Option<micronets_message::MessageId<'static>>,
    ) -> tokio_tungstenite::tungstenite::Message {
        let id = self.next_message_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let envelope = micronets_message::Envelope::new(kind).with_id(id).in_response_to(in_response_to);
        tokio_tungstenite::tungstenite::Message::text(envelope.to_json())
    }

    /// The `CONN:PEER-LEFT` telling members that `name` left, and why.
    fn peer_left(&self, name: &room::PeerName, reason: &str) -> tokio_tungstenite::tungstenite::Message {
        let left = micronets_message::PeerLeft {
            peer_class: name.class.clone(),
            peer_id: name.id.clone(),
            reason: Some(reason.to_owned()),
        };
        self.proxy_message(micronets_message::Kind::PeerLeft(left), None)
    }
}

/// The signals the daemon obeys (SIGTERM and SIGINT stop it, SIGHUP reloads), listened to
/// from the moment they are installed: install them before saying "listening" (or READY to
/// systemd), so that a signal sent at once is not met by its default action, which ends the
/// process.
pub struct DaemonSignals {
    stop: shutdown::Signals,
    hangup: tokio::signal::unix::Signal,
}

impl DaemonSignals {
    /// Installs the handlers; needs a running Tokio runtime.
    ///
    /// # Errors
    /// When a signal handler cannot be installed.
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(DaemonSignals { stop: shutdown::Signals::new()?, hangup: signal(SignalKind::hangup())? })
    }
}
