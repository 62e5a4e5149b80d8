//! The proxy in-process on 127.0.0.1:0, with a PKI made in a temp dir and real mTLS WebSocket
//! clients.

mod acl;
mod admin;
mod auth_hook;
mod cluster;
mod console;
mod handshake;
mod identity;
mod muting_relay;
mod redis_server;
mod relay;
mod reload;
mod resumption;
mod revoke;
mod rooms;
mod support;
