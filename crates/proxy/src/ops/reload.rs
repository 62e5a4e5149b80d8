//! Hot reload: on SIGHUP (`systemctl reload`) the configuration file is read and validated
//! again, and the server certificate, key, client CA bundles, CRLs and ACL rules are loaded
//! from it and swapped in for new handshakes, the relay's and the admin endpoint's; members
//! whose certificate the new material no longer admits (revoked, its CA no longer trusted, the
//! ACL no longer letting it into its room) are closed with 1008. Established connections keep the TLS session they have. A reload that
//! fails keeps everything as it was and logs why. Other settings are read at start-up only: a
//! reload that changes them says so.

use std::sync::{Arc, PoisonError};

use tracing::{error, info, warn};

use super::file_limit;
use super::state::Shared;
use super::systemd;
use crate::config::{Config, FileConfig};
use crate::error::Result;

/// Reads the configuration and the TLS material again and swaps them in (see
/// `Proxy::reload`).
///
/// # Errors
/// What cannot be read or used, naming the file or key; nothing is swapped then.
pub(crate) fn reload(shared: &Shared) -> Result<()> {
    let _one_at_a_time = shared.reloading.lock().unwrap_or_else(PoisonError::into_inner);
    let mut config = match &shared.source.path {
        Some(path) => FileConfig::load(path)?.into_config(&shared.source.overrides)?,
        None => Config::clone(&shared.config),
    };
    // As at start-up, so that a limit the open-file limit lowered is no change.
    if let Some(cap) = file_limit::cap(&config) {
        config.max_connections = cap;
    }
    let material = shared.gate.load(&config)?;
    let admin_tls = shared.admin_guard.reload_tls(&config, material.files())?;
    // The new material first, then the sweep: a connection that joins in between meets it.
    let swapped = shared.gate.swap(material);
    shared.admin_guard.swap_tls(admin_tls);
    let members = shared
        .hub
        .registry
        .each_member(|room, m| (room.clone(), m.mailbox.clone(), Arc::clone(&m.chain), m.name.class.clone()));
    let mut closed = 0;
    for (room, mailbox, chain, peer_class) in members {
        if let Err(why) = shared.gate.still_admits(&room, &chain.chain(), peer_class.as_deref(), &swapped) {
            info!(room = %room, conn = %mailbox.conn(), reason = %why.reason(), "reload: the member's certificate is no longer admitted");
            mailbox.kill(why);
            closed += 1;
        }
    }
    if closed > 0 {
        warn!(closed, "reload: closed with 1008 the members whose certificates are no longer admitted");
    }
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

/// Whether `new` differs from `running` in anything a reload does not apply.
fn needs_restart(running: &Config, new: &Config) -> bool {
    let mut comparable = new.clone();
    comparable.server_cert.clone_from(&running.server_cert);
    comparable.server_key.clone_from(&running.server_key);
    comparable.client_ca.clone_from(&running.client_ca);
    comparable.crl_files.clone_from(&running.crl_files);
    comparable.ticket_key_file.clone_from(&running.ticket_key_file);
    comparable.acl.clone_from(&running.acl);
    format!("{comparable:?}") != format!("{running:?}")
}

/// Reloads on every SIGHUP, forever.
pub(crate) async fn on_sighup(shared: &Shared, mut hangups: tokio::signal::unix::Signal) {
    while hangups.recv().await.is_some() {
        info!("SIGHUP: reloading");
        systemd::notify(systemd::State::Reloading);
        if let Err(e) = reload(shared) {
            error!(error = %e, "reload failed: keeping the current configuration and certificates");
        }
        systemd::notify(systemd::State::Ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

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
