//! `ws-proxy check-access`: what the ACL of a configuration file decides for one certificate
//! joining one room, and why, in words for a person.

use std::path::Path;

use crate::config::{FileConfig, Overrides};
use crate::edge::acl::{Acl, Decision};
use crate::edge::tls;
use crate::error::{Error, Result};
use crate::identity::PeerIdentity;
use crate::rooms::id::RoomId;

/// What the rules of the configuration file `config` decide for the first certificate in
/// `cert` joining `room`, and why, as lines for a person; and whether it is allowed.
///
/// # Errors
/// [`Error::ConfigFile`] or [`Error::Config`] for the configuration and its rules,
/// [`Error::Tls`] for the certificate file, [`Error::Config`] (key `room`) for an invalid room
/// id.
pub fn check_access(config: &Path, cert: &Path, room: &str) -> Result<(bool, String)> {
    let config = FileConfig::load(config)?.into_config(&Overrides::default())?;
    let acl = Acl::new(&config.acl)
        .map_err(|e| Error::Config { key: "acl.rules".into(), reason: e.to_string() })?;
    let certs = tls::read_certs(cert)?;
    let der =
        certs.first().ok_or_else(|| Error::Tls { path: cert.to_owned(), reason: "no certificate".into() })?;
    let identity = PeerIdentity::from_der(der)
        .map_err(|e| Error::Tls { path: cert.to_owned(), reason: e.to_string() })?;
    let room =
        RoomId::parse(room).map_err(|e| Error::Config { key: "room".into(), reason: e.to_string() })?;
    let (decision, why) = acl.judge(&identity, &room);
    let verdict = match &decision {
        Decision::Allow { peer_class: Some(class) } => {
            format!("allowed, if its CONN:HELLO carries peerClass {class:?}")
        }
        Decision::Allow { peer_class: None } => "allowed".to_owned(),
        Decision::Deny(_) => "denied: the upgrade is refused with HTTP 403".to_owned(),
    };
    let report = format!("certificate: {}\nroom: {room}\n{why}\n{verdict}\n", identity.subject);
    Ok((matches!(decision, Decision::Allow { .. }), report))
}
