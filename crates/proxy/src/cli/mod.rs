//! The operator's side of `ws-proxy`: its command line (`args.rs`), and the subcommands that do
//! not run the daemon: `check-access` (the ACL's decision in words) and `status` (the rooms of
//! a running proxy, read from its admin endpoint).

mod admin_client;
pub mod args;
mod check_access;
mod status;

pub use check_access::check_access;
pub use status::{certificates_table, report, table};
