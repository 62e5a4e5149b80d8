//! What every connection passes at the edge: the TLS material, the ACL, the revoked serials,
//! the authorization hook and the per-address and per-certificate counts. A reload swaps the
//! TLS material, the revocations and the ACL in at once for new connections.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;

use super::acl::Acl;
use super::auth_hook::AuthHook;
use super::slots::PerKey;
use super::tls;
use crate::config::Config;
use crate::error::{Close, Error, Result};
use crate::identity::{Fingerprint, PeerIdentity};
use crate::metrics::Metrics;

/// The edge's state, shared by every connection.
pub(crate) struct Gate {
    pub(crate) config: Arc<Config>,
    /// The TLS material new handshakes use.
    pub(crate) tls: ArcSwap<ServerConfig>,
    /// Who may join which room.
    pub(crate) acl: ArcSwap<Acl>,
    /// Serials the configured CRLs revoke, checked again when a connection joins.
    pub(crate) revoked: ArcSwap<HashSet<String>>,
    /// The external authorization hook, when configured.
    pub(crate) auth_hook: Option<AuthHook>,
    /// Live connections per source address (`max_connections_per_ip`).
    pub(crate) per_ip: Arc<PerKey<IpAddr>>,
    /// Live connections per certificate (`max_connections_per_identity`).
    pub(crate) per_identity: Arc<PerKey<Fingerprint>>,
    pub(crate) metrics: Arc<Metrics>,
}

/// The parts of the gate a reload replaces, loaded and checked before any is swapped in.
pub(crate) struct Material {
    tls: Arc<ServerConfig>,
    acl: Acl,
    revoked: Arc<HashSet<String>>,
}

impl Material {
    /// Loads the TLS files and CRLs of `config` and compiles its ACL.
    ///
    /// # Errors
    /// [`Error::Tls`] naming the file that cannot be used, [`Error::Config`] for a rule of
    /// `acl.rules` that cannot be used.
    pub(crate) fn load(config: &Config) -> Result<Self> {
        // The rules first: they belong to the configuration, which is checked before any file
        // it names is read.
        let acl = Acl::new(&config.acl)
            .map_err(|e| Error::Config { key: "acl.rules".into(), reason: e.to_string() })?;
        let tls = tls::server_config(config)?;
        let revoked = Arc::new(tls::revoked_serials(config)?);
        Ok(Material { tls, acl, revoked })
    }

    /// The serials the CRLs revoke.
    pub(crate) fn revoked(&self) -> &Arc<HashSet<String>> {
        &self.revoked
    }
}

impl Gate {
    /// The gate of `config`.
    ///
    /// # Errors
    /// As [`Material::load`], and [`Error::Config`] or [`Error::Tls`] for the hook.
    pub(crate) fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Self> {
        let material = Material::load(&config)?;
        if material.acl.is_empty() {
            tracing::warn!("no [[acl.rules]]: every valid client certificate may join every room");
        }
        let auth_hook = config.auth_hook.as_ref().map(AuthHook::new).transpose()?;
        Ok(Gate {
            tls: ArcSwap::new(material.tls),
            acl: ArcSwap::from_pointee(material.acl),
            revoked: ArcSwap::new(material.revoked),
            auth_hook,
            per_ip: PerKey::new(config.max_connections_per_ip),
            per_identity: PerKey::new(config.max_connections_per_identity),
            metrics,
            config,
        })
    }

    /// Swaps `material` in for new connections: the revocations first, so a connection that
    /// joins after this meets them.
    pub(crate) fn swap(&self, material: Material) {
        self.tls.store(material.tls);
        self.revoked.store(material.revoked);
        self.acl.store(Arc::new(material.acl));
    }

    /// Whether a connection let in earlier may still join: its certificate may have been
    /// revoked by a reload since.
    ///
    /// # Errors
    /// [`Close::Revoked`].
    pub(crate) fn recheck(&self, identity: &PeerIdentity) -> std::result::Result<(), Close> {
        if self.revoked.load().contains(&identity.serial) { Err(Close::Revoked) } else { Ok(()) }
    }
}
