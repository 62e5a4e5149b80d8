//! What the daemon's parts share: the configuration and where it came from, the edge's gate,
//! the rooms' hub, the backplane to other nodes, the counters, and readiness.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::admin_guard::AdminGuard;
use crate::cluster::backplane::Backplane;
use crate::config::{Config, Overrides};
use crate::edge::gate::Gate;
use crate::metrics::Metrics;
use crate::rooms::hub::Hub;

/// Where the configuration came from: a file and the command line's overrides, or (without a
/// file) the start-up configuration, whose TLS files are then read again.
#[derive(Debug, Default)]
pub(crate) struct Source {
    pub(crate) path: Option<PathBuf>,
    pub(crate) overrides: Overrides,
}

/// The daemon's state.
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) gate: Arc<Gate>,
    pub(crate) hub: Arc<Hub>,
    /// What this node shares with other nodes: nothing (`cluster/local.rs`) or presence and
    /// inboxes in Redis.
    pub(crate) backplane: Arc<dyn Backplane>,
    /// Where a reload reads the configuration from.
    pub(crate) source: Source,
    /// Listening and not draining (`/readyz`).
    pub(crate) ready: AtomicBool,
    pub(crate) metrics: Arc<Metrics>,
    /// Who may use the admin endpoint.
    pub(crate) admin_guard: AdminGuard,
    /// Held by a reload: one at a time, so that the relay and the admin endpoint always have
    /// the material of the same one.
    pub(crate) reloading: Mutex<()>,
}
