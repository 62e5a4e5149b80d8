//! End-to-end tests: the real binaries, driven as a user would.

mod certgen;
mod client;
mod hostile;
mod operations;
mod packaging;
mod proxy;
#[path = "../crates/proxy/tests/proxy/support.rs"]
#[allow(dead_code)]
mod proxy_support;
mod support;
