//! End-to-end tests: the real binaries, driven as a user would.

mod certgen;
mod client;
mod cluster;
mod hostile;
mod operations;
mod packaging;
mod proxy;
#[path = "../crates/proxy/tests/proxy/support.rs"]
#[allow(dead_code)]
mod proxy_support;
#[path = "../crates/proxy/tests/proxy/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;
mod support;
