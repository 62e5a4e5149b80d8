//! Hot reload: on SIGHUP (`systemctl reload`) the configuration file is read and validated
//! again, and the server certificate, key, client CA bundles, CRLs and ACL rules are loaded
//! from it and swapped in for new handshakes; members whose certificate a new CRL revokes are
//! closed with 1008. Established connections keep the TLS session they have. A reload that
//! fails keeps everything as it was and logs why. Other settings are read at start-up only: a
//! reload that changes them says so.

use std::path::PathBuf;

use tracing::{error, info, warn};

use crate::config::{FileConfig, Overrides};
use crate::{Config, Proxy, Result, systemd, tls};

/// Where the configuration came from: a file and the command line's overrides, or (without a
/// file) the start-up configuration, whose TLS files are then read again.
#[derive(Debug, Default)]
pub(crate) struct Source {
    pub(crate) path: Option<PathBuf>,
    pub(crate) overrides: Overrides,
}

impl Proxy {
    /// Reads the configuration and the TLS material again; new handshakes use the new
    /// material at once, established connections are untouched.
    ///
    /// # Errors
    /// [`crate::Error::ConfigFile`], [`crate::Error::Config`] or [`crate::Error::Tls`], naming
    /// the file or key; the proxy then keeps its current state.
    pub fn reload(&self) -> Result<()> {
        let shared = &self.shared;
        let config = match &shared.source.path {
            Some(path) => FileConfig::load(path)?.into_config(&shared.source.overrides)?,
            None => shared.config.clone(),
        };
        let server = tls::server_config(&config)?;
        let revoked = std::sync::Arc::new(tls::revoked_serials(&config)?);
        shared.tls.store(server);
        // The set first, then the sweep: a connection that joins in between meets the new set.
        shared.revoked.store(std::sync::Arc::clone(&revoked));
        let cut = shared.registry.members_with_serials(&revoked);
        for member in &cut {
            member.kill(crate::Close::Revoked);
        }
        if !cut.is_empty() {
            warn!(closed = cut.len(), "reload: closed the connections of revoked certificates with 1008");
        }
        shared.acl.store(std::sync::Arc::new(config.acl.clone()));
        if needs_restart(&shared.config, &config) {
            warn!("reload: settings other than the TLS files changed; they apply at the next restart");
        }
        info!(
            server_cert = %config.server_cert.display(),
            acl_rules = config.acl.len(),
            "reloaded: new handshakes use the new TLS material and ACL"
        );
        Ok(())
    }
}

/// Whether `new` differs from `running` in anything a reload does not apply.
fn needs_restart(running: &Config, new: &Config) -> bool {
    let mut comparable = new.clone();
    comparable.server_cert.clone_from(&running.server_cert);
    comparable.server_key.clone_from(&running.server_key);
    comparable.client_ca.clone_from(&running.client_ca);
    comparable.crl_files.clone_from(&running.crl_files);
    comparable.acl.clone_from(&running.acl);
    format!("{comparable:?}") != format!("{running:?}")
}

/// Reloads on every SIGHUP, forever.
pub(crate) async fn on_sighup(proxy: &Proxy, mut hangups: tokio::signal::unix::Signal) {
    while hangups.recv().await.is_some() {
        info!("SIGHUP: reloading");
        systemd::notify(systemd::State::Reloading);
        if let Err(e) = proxy.reload() {
            error!(error = %e, "reload failed: keeping the current configuration and certificates");
        }
        systemd::notify(systemd::State::Ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_non_tls_changes_need_a_restart() {
        let running = FileConfig::default().into_config(&Overrides::default()).unwrap();
        let mut new = running.clone();
        new.server_cert = "/elsewhere/cert.pem".into();
        new.client_ca = vec!["/elsewhere/ca.pem".into()];
        assert!(!needs_restart(&running, &new));
        new.max_peers = 3;
        assert!(needs_restart(&running, &new));
    }
}
