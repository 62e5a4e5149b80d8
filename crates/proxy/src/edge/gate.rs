//! What every connection passes at the edge: the TLS material (the CA bundles and CRLs in its
//! client-certificate verifier), the ACL, the authorization hook and the per-address and
//! per-certificate counts. A reload swaps the TLS material and the ACL in at once for new
//! connections, and the same checks decide which members, and which connections still waiting
//! for their HELLO, may stay ([`Gate::still_admits`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::Semaphore;

use super::acl::{Acl, Decision};
use super::auth_hook::AuthHook;
use super::conflict_log::ConflictLog;
use super::expiry::ExpiryWatch;
use super::slots::PerKey;
use super::tickets::Secret;
use super::tls::{self, Resumption, TlsMaterial};
use crate::config::Config;
use crate::error::{Close, Error, Result};
use crate::identity::{Fingerprint, PeerIdentity};
use crate::metrics::Metrics;
use crate::rooms::id::RoomId;
use crate::rooms::room::Credentials;

/// The edge's state, shared by every connection.
pub(crate) struct Gate {
    pub(crate) config: Arc<Config>,
    /// The TLS material new handshakes use.
    pub(crate) tls: ArcSwap<TlsMaterial>,
    /// Session tickets and cache, the same for every TLS material.
    resumption: Resumption,
    /// Who may join which room.
    pub(crate) acl: ArcSwap<Acl>,
    /// Moves on every reload: a connection admitted under another generation is checked again
    /// when its HELLO arrives.
    generation: AtomicU64,
    /// The external authorization hook, when configured.
    pub(crate) auth_hook: Option<AuthHook>,
    /// Live connections per source address (`max_connections_per_ip`).
    pub(crate) per_ip: Arc<PerKey<IpAddr>>,
    /// Live connections per certificate (`max_connections_per_identity`).
    pub(crate) per_identity: Arc<PerKey<Fingerprint>>,
    /// Certificates about to expire, each told once.
    pub(crate) expiry: ExpiryWatch,
    /// One per TLS handshake worked on at once (`max_handshakes_in_flight`); fair, so
    /// connections get theirs in arrival order.
    pub(crate) handshake_slots: Semaphore,
    /// When each certificate's last identity conflict was logged.
    pub(crate) conflicts: ConflictLog,
    pub(crate) metrics: Arc<Metrics>,
}

/// The parts of the gate a reload replaces, loaded and checked before any is swapped in.
pub(crate) struct Material {
    tls: TlsMaterial,
    acl: Acl,
    /// The ticket key file's secret, for the keys to change if its content did.
    tickets: Secret,
    /// The TLS files as read, for the admin endpoint's configuration to come from the same
    /// reading.
    files: tls::Files,
}

impl Material {
    /// Loads the TLS files, CRLs and ticket key file of `config` and compiles its ACL; the
    /// TLS configuration resumes sessions with `resumption`.
    ///
    /// # Errors
    /// [`Error::Tls`] naming the file that cannot be used, [`Error::Config`] for a rule of
    /// `acl.rules` that cannot be used.
    fn load(config: &Config, resumption: &Resumption) -> Result<Self> {
        // The rules first: they belong to the configuration, which is checked before any file
        // it names is read.
        let acl = Acl::new(&config.acl)
            .map_err(|e| Error::Config { key: "acl.rules".into(), reason: e.to_string() })?;
        let files = tls::Files::read(config)?;
        let tls = tls::material(config, &files, resumption)?;
        let tickets = Secret::load(config.ticket_key_file.as_deref())?;
        Ok(Material { tls, acl, tickets, files })
    }

    /// The TLS files as this material read them.
    pub(crate) fn files(&self) -> &tls::Files {
        &self.files
    }
}

/// What a reload changed, for the check of the members that stay.
pub(crate) struct Swapped {
    /// Whether the trusted CAs or the CRLs changed: every member's chain is verified again.
    pub(crate) trust_changed: bool,
}

impl Gate {
    /// The gate of `config`, and the TLS files it read: the admin endpoint's configuration
    /// comes from the same reading.
    ///
    /// # Errors
    /// As [`Material::load`], and [`Error::Config`] or [`Error::Tls`] for the hook.
    pub(crate) fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<(Self, tls::Files)> {
        let resumption = Resumption::new(&config)?;
        let Material { tls, acl, tickets, files } = Material::load(&config, &resumption)?;
        resumption.tickets.rekey(tickets, tls.trust);
        if acl.is_empty() {
            tracing::warn!("no [[acl.rules]]: every valid client certificate may join every room");
        }
        let auth_hook = config.auth_hook.as_ref().map(AuthHook::new).transpose()?;
        let gate = Gate {
            tls: ArcSwap::from_pointee(tls),
            resumption,
            acl: ArcSwap::from_pointee(acl),
            generation: AtomicU64::new(0),
            auth_hook,
            per_ip: PerKey::new(config.max_connections_per_ip),
            per_identity: PerKey::new(config.max_connections_per_identity),
            expiry: ExpiryWatch::default(),
            handshake_slots: Semaphore::new(config.max_handshakes_in_flight),
            conflicts: ConflictLog::default(),
            metrics,
            config,
        };
        Ok((gate, files))
    }

    /// Loads the material of `config` for [`Gate::swap`], with this gate's session resumption.
    ///
    /// # Errors
    /// As [`Material::load`].
    pub(crate) fn load(&self, config: &Config) -> Result<Material> {
        Material::load(config, &self.resumption)
    }

    /// Swaps `material` in for new connections; a connection admitted before this is checked
    /// again at its HELLO.
    pub(crate) fn swap(&self, material: Material) -> Swapped {
        let trust_changed = self.tls.load().trust != material.tls.trust;
        if self.resumption.tickets.rekey(material.tickets, material.tls.trust) {
            tracing::warn!(
                "reload: the ticket key file or the trusted CAs and CRLs changed: earlier TLS sessions are not resumed"
            );
        }
        self.tls.store(Arc::new(material.tls));
        self.acl.store(Arc::new(material.acl));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Swapped { trust_changed }
    }

    /// The generation of the material new connections are admitted under.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether a connection admitted under generation `since` may still join `room` with the
    /// `peer_class` of its HELLO: when a reload came in between, it is checked as a member
    /// would be.
    ///
    /// # Errors
    /// Why it may not.
    pub(crate) fn recheck(
        &self,
        since: u64,
        room: &RoomId,
        credentials: &dyn Credentials,
        peer_class: Option<&str>,
    ) -> std::result::Result<(), Close> {
        if self.generation() == since {
            return Ok(());
        }
        self.still_admits(room, &credentials.chain(), peer_class, &Swapped { trust_changed: true })
    }

    /// Whether the certificates of a resumed TLS session are still within their validity
    /// windows: the leaf, which expires at `leaf_expires` (Unix seconds), the `intermediates`
    /// and the trusted CAs. Their signatures and revocation were verified under the trust in
    /// force when the session began, and a session only resumes under that same trust
    /// (`tickets.rs`, `tls.rs`): time is what has moved since.
    ///
    /// # Errors
    /// The error a full handshake would have met: `Expired`, or `BadEncoding` for an
    /// intermediate that does not parse.
    pub(crate) fn still_valid(
        &self,
        leaf_expires: i64,
        intermediates: &[CertificateDer<'static>],
    ) -> std::result::Result<(), rustls::Error> {
        use rustls::CertificateError;
        use x509_parser::prelude::FromDer;
        let mut expires = leaf_expires.min(self.tls.load().trust_expires);
        for der in intermediates {
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            expires = expires.min(cert.validity().not_after.timestamp());
        }
        if UnixTime::now().as_secs() >= u64::try_from(expires).unwrap_or(0) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
        }
        Ok(())
    }

    /// Verifies a member's certificate chain against the current trust, CRLs and clock, as a
    /// full handshake would (a reload that changed the trust asks).
    ///
    /// # Errors
    /// rustls's error, as a full handshake would have met it.
    pub(crate) fn verify_chain(
        &self,
        chain: &[CertificateDer<'static>],
    ) -> std::result::Result<(), rustls::Error> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(rustls::Error::NoCertificatesPresented);
        };
        self.tls.load().verifier.verify_client_cert(leaf, intermediates, UnixTime::now()).map(|_| ())
    }

    /// Whether a member of `room` whose HELLO said `peer_class` may stay after a reload: its
    /// certificate still verifying with the CA bundles and CRLs (checked again when `swapped`
    /// says they changed; a CRL revokes by issuer and serial), and the ACL still letting it
    /// into the room.
    ///
    /// # Errors
    /// Why it must go.
    pub(crate) fn still_admits(
        &self,
        room: &RoomId,
        chain: &[CertificateDer<'static>],
        peer_class: Option<&str>,
        swapped: &Swapped,
    ) -> std::result::Result<(), Close> {
        let identity = chain
            .first()
            .and_then(|leaf| PeerIdentity::from_der(leaf).ok())
            .ok_or(Close::NoLongerAdmitted)?;
        if swapped.trust_changed {
            use rustls::{CertificateError, Error as TlsError};
            match self.verify_chain(chain) {
                Ok(()) => {}
                Err(TlsError::InvalidCertificate(CertificateError::Revoked)) => return Err(Close::Revoked),
                Err(TlsError::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                )) => return Err(Close::CertificateExpired),
                Err(_) => return Err(Close::NoLongerAdmitted),
            }
        }
        match self.acl.load().decide(&identity, room) {
            Decision::Allow { peer_class: Some(required) } if peer_class != Some(required.as_str()) => {
                Err(Close::NoLongerAdmitted)
            }
            Decision::Allow { .. } => Ok(()),
            Decision::Deny(_) => Err(Close::NoLongerAdmitted),
        }
    }
}
