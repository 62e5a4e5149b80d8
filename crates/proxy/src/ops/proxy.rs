//! The assembled proxy: the gate, the hub and the backplane put together from a
//! configuration, served on a listener until a shutdown, then drained.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tracing::{info, warn};

use super::admin_guard::AdminGuard;
use super::shutdown::{self, DaemonSignals};
use super::state::{Shared, Source};
use super::{admin, logging, reload, systemd};
use crate::cluster::backplane::Backplane;
use crate::cluster::local::Local;
use crate::cluster::redis::RedisBackplane;
use crate::config::{Config, Overrides};
use crate::edge::gate::Gate;
use crate::edge::listener;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::rooms::hub::Hub;

/// A configured proxy, ready to serve on a listener. Clones share the same proxy.
#[derive(Clone)]
pub struct Proxy {
    pub(crate) shared: Arc<Shared>,
}

impl Proxy {
    /// Loads the TLS material and prepares the proxy.
    ///
    /// # Errors
    /// [`Error::Tls`] naming the file that cannot be used; [`Error::Config`] for an ACL rule,
    /// an authorization hook or an admin token file that cannot be used.
    pub fn new(config: Config) -> Result<Self> {
        Self::with_source(config, Source::default())
    }

    /// Like [`Proxy::new`], for a configuration read from `path` with `overrides`: a reload
    /// reads that file again (see [`Proxy::reload`]).
    ///
    /// # Errors
    /// As [`Proxy::new`].
    pub fn from_file(config: Config, path: std::path::PathBuf, overrides: Overrides) -> Result<Self> {
        Self::with_source(config, Source { path: Some(path), overrides })
    }

    fn with_source(config: Config, source: Source) -> Result<Self> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::default());
        let (gate, files) = Gate::new(Arc::clone(&config), Arc::clone(&metrics))?;
        let gate = Arc::new(gate);
        let backplane: Arc<dyn Backplane> = Arc::new(Local::default());
        let hub = Arc::new(Hub::new(Arc::clone(&config), backplane.clone(), Arc::clone(&metrics)));
        let admin_guard = AdminGuard::new(&config, &files)?;
        let shared = Shared {
            config,
            gate,
            hub,
            backplane,
            source,
            ready: AtomicBool::new(false),
            metrics,
            admin_guard,
            reloading: Mutex::new(()),
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
        let redis = Arc::new(RedisBackplane::connect(&cluster).await?);
        let mut shared = Arc::try_unwrap(self.shared).map_err(|_| Error::Config {
            key: "cluster".into(),
            reason: "connect the cluster before cloning the proxy".into(),
        })?;
        info!(node = %crate::rooms::nodes::Nodes::node(&*redis), "cluster mode: presence and inboxes in redis");
        let backplane: Arc<dyn Backplane> = redis;
        shared.hub =
            Arc::new(Hub::new(Arc::clone(&shared.config), backplane.clone(), Arc::clone(&shared.metrics)));
        shared.backplane = backplane;
        Ok(Proxy { shared: Arc::new(shared) })
    }

    /// The proxy's counters.
    #[must_use]
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Reads the configuration and the TLS material again; new handshakes use the new
    /// material at once, established connections are untouched, and members whose
    /// certificate a new CRL revokes are closed with 1008.
    ///
    /// # Errors
    /// [`Error::ConfigFile`], [`Error::Config`] or [`Error::Tls`], naming the file or key; the
    /// proxy then keeps its current state.
    pub fn reload(&self) -> Result<()> {
        reload::reload(&self.shared)
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
        self.shared.ready.store(true, Ordering::Relaxed);
        systemd::notify(systemd::State::Ready);
        let (stop, hangup) = signals.into_parts();
        tokio::select! {
            signal = self.serve_and_drain(listener, stop) => signal,
            () = admin => None,
            () = reload::on_sighup(&self.shared, hangup) => None,
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
        let shared = &self.shared;
        shared.ready.store(true, Ordering::Relaxed);
        let backplane = Arc::clone(&shared.backplane).run(Arc::clone(&shared.hub));
        tokio::pin!(backplane);
        let served = async {
            listener::serve(Arc::clone(&shared.gate), Arc::clone(&shared.hub), listener, shutdown).await;
            self.drain().await;
        };
        tokio::select! {
            () = served => {}
            () = &mut backplane => {}
        }
        // The departures of the drained members still have to reach the other nodes.
        tokio::select! {
            () = shared.backplane.drain() => {}
            () = &mut backplane => {}
        }
    }

    /// Turns not-ready, closes members spread over the drain window, and waits for every
    /// connection within the grace period.
    async fn drain(&self) {
        let shared = &self.shared;
        let hub = &shared.hub;
        let config = &shared.config;
        shared.ready.store(false, Ordering::Relaxed);
        let members = hub.registry.mailboxes_of(|_| true);
        info!(
            open = Metrics::get(&shared.metrics.connections_open),
            members = members.len(),
            drain_window_secs = config.drain_window.as_secs_f64(),
            grace_secs = config.shutdown_grace.as_secs_f64(),
            "shutting down: not ready, accepting stopped, closing members across the drain window"
        );
        shutdown::close_spread(members, config.drain_window).await;
        hub.shutdown.cancel();
        hub.tracker.close();
        if tokio::time::timeout(config.shutdown_grace, hub.tracker.wait()).await.is_err() {
            warn!(remaining = hub.tracker.len(), "grace period over: cutting off the remaining connections");
        } else {
            info!("all connections closed");
        }
    }
}
