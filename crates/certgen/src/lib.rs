//! The Micronets private PKI: a CA, leaf certificates for the proxy and its peers, and the
//! tools to look at them.
//!
//! Every deployment starts here: the proxy only admits peers whose client certificate chains to
//! the private root. This crate issues that material with sound defaults (ECDSA P-256, random
//! 127-bit serials, proper CA and leaf extensions, key files written atomically with mode 0600)
//! while staying compatible with the original scripts' files: their SEC1 keys with an
//! `EC PARAMETERS` block load as CA keys, and leaves issued here chain to their roots.
//!
//! Main entry points: [`issue_root`] and [`Authority::issue_leaf`] produce an [`Issued`]
//! certificate and key; [`files::write_outputs`] puts them on disk; [`inspect::CertInfo`]
//! describes a certificate; [`verify::verify`] checks a chain with webpki, the verifier rustls
//! uses; [`dev::ensure`] creates or refreshes a whole development PKI; [`cli`] is the
//! `certgen` command line over all of them.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cli;
pub mod crl;
pub mod dev;
mod error;
pub mod files;
pub mod inspect;
mod issue;
mod key;
pub mod pem;
pub mod verify;

pub use error::{Error, Result};
pub use issue::{Authority, Issued, LeafSpec, RootSpec, Usage, issue_root};
pub use key::KeyType;
