//! Running the daemon: the assembled [`Proxy`] (`proxy.rs`) and its start (`daemon.rs`), the
//! admin endpoint (`admin.rs`, with the rooms report of `status.rs`, the certificates report of
//! `certificates.rs`, the node at a glance of `overview.rs` and the web console of
//! `console.rs`, which shows it, with the dates of `calendar.rs`), hot reload
//! (`reload.rs`), stopping and draining (`shutdown.rs`), systemd notifications (`systemd.rs`),
//! log output (`logging.rs`) and the open-file limit (`file_limit.rs`). `state.rs` holds what these parts share.

pub(crate) mod admin;
pub(crate) mod admin_guard;
pub(crate) mod calendar;
pub mod certificates;
pub(crate) mod console;
pub mod daemon;
pub(crate) mod file_limit;
pub mod logging;
pub mod overview;
pub(crate) mod proxy;
pub(crate) mod reload;
pub mod shutdown;
pub(crate) mod state;
pub mod status;
pub mod systemd;

pub use proxy::Proxy;
