//! The development PKI: a root, the proxy's server certificate and three client identities,
//! created in one go and kept while they stay valid.

use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::files::{outputs, with_suffix, write_outputs};
use crate::{Authority, Error, KeyType, LeafSpec, Result, RootSpec, Usage, issue_root};

/// An identity is re-issued when it expires sooner than this.
const MIN_REMAINING: Duration = Duration::days(30);
const ROOT_DAYS: u32 = 3650;
const LEAF_DAYS: u32 = 365;

/// The root's file basename in a dev directory.
pub const ROOT: &str = "micronets-ws-root";

/// One leaf identity of the dev PKI.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    /// Short name, used in messages and as the certificate CN.
    pub name: &'static str,
    /// File basename: `<basename>.cert.pem`, `.key.pem`, `.pkeycert.pem`.
    pub basename: &'static str,
    /// Subject O, as the original README's commands set it.
    pub org: &'static str,
    /// What the certificate authenticates.
    pub usage: Usage,
}

/// The proxy's server identity (SANs localhost, 127.0.0.1, ::1).
pub const PROXY: Identity = Identity {
    name: "proxy",
    basename: "micronets-ws-proxy",
    org: "Micronets Websocket Proxy Cert",
    usage: Usage::Server,
};

/// The client identities: the manager, a gateway, the test client.
pub const CLIENTS: [Identity; 3] = [
    Identity {
        name: "manager",
        basename: "micronets-manager",
        org: "Micronets Manager Cert",
        usage: Usage::Client,
    },
    Identity {
        name: "gateway",
        basename: "micronets-gateway",
        org: "Micronets Gateway Cert",
        usage: Usage::Client,
    },
    Identity {
        name: "test-client",
        basename: "micronets-ws-test-client",
        org: "Micronets Websocket Test Client Cert",
        usage: Usage::Client,
    },
];

/// Where the dev PKI's files are.
#[derive(Clone, Debug)]
pub struct DevPki {
    /// The directory.
    pub dir: PathBuf,
}

impl DevPki {
    /// The dev PKI in `dir`.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DevPki { dir: dir.into() }
    }

    /// `<dir>/<basename><suffix>`.
    #[must_use]
    pub fn file(&self, basename: &str, suffix: &str) -> PathBuf {
        with_suffix(&self.dir.join(basename), suffix)
    }

    /// The root CA certificate: the proxy's client CA and the clients' server CA.
    #[must_use]
    pub fn root_cert(&self) -> PathBuf {
        self.file(ROOT, ".cert.pem")
    }

    /// An identity's pkeycert (certificate then key).
    #[must_use]
    pub fn pkeycert(&self, identity: &Identity) -> PathBuf {
        self.file(identity.basename, ".pkeycert.pem")
    }
}

/// What [`ensure`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Names issued now (`root` and identity names).
    pub created: Vec<&'static str>,
    /// Names kept because they were still good.
    pub kept: Vec<&'static str>,
}

/// Creates `dir` if needed and makes sure it holds a complete, valid dev PKI: every identity
/// whose certificate and key are present, match, chain to the root and stay valid for at least
/// 30 more days is kept; the rest is issued anew (everything, when the root is).
///
/// # Errors
/// [`Error::Io`] when the directory or a file cannot be written, [`Error::Issue`] when signing
/// fails.
pub fn ensure(pki: &DevPki) -> Result<Report> {
    std::fs::create_dir_all(&pki.dir).map_err(|e| Error::io(&pki.dir, e))?;
    let mut report = Report::default();
    let root_base = pki.dir.join(ROOT);
    let root_key = pki.file(ROOT, ".key.pem");
    let root_ok = Authority::load(&pki.root_cert(), &root_key).is_ok() && lasts(&pki.root_cert());
    if root_ok {
        report.kept.push("root");
    } else {
        let root = issue_root(&RootSpec {
            org: "Micronets Websocket Root Cert".to_owned(),
            common_name: None,
            days: ROOT_DAYS,
            key_type: KeyType::P256,
        })?;
        write_outputs(&outputs(&root_base, &root, false), true)?;
        report.created.push("root");
    }
    let authority = Authority::load(&pki.root_cert(), &root_key)?;
    for identity in std::iter::once(&PROXY).chain(CLIENTS.iter()) {
        if root_ok && leaf_is_good(pki, identity) {
            report.kept.push(identity.name);
            continue;
        }
        let server = identity.usage == Usage::Server;
        let issued = authority.issue_leaf(&LeafSpec {
            org: identity.org.to_owned(),
            common_name: identity.name.to_owned(),
            days: LEAF_DAYS,
            key_type: KeyType::P256,
            usage: identity.usage,
            dns_names: if server { vec!["localhost".to_owned()] } else { Vec::new() },
            ip_addresses: if server { vec!["127.0.0.1".to_owned(), "::1".to_owned()] } else { Vec::new() },
        })?;
        write_outputs(&outputs(&pki.dir.join(identity.basename), &issued, true), true)?;
        report.created.push(identity.name);
    }
    Ok(report)
}

/// Whether the first certificate in `path` is valid for at least [`MIN_REMAINING`] more.
fn lasts(path: &Path) -> bool {
    let Ok(certs) = crate::pem::read_certs(path) else {
        return false;
    };
    let Some(der) = certs.first() else {
        return false;
    };
    X509Certificate::from_der(der).is_ok_and(|(_, cert)| {
        cert.validity().not_after.to_datetime() > OffsetDateTime::now_utc() + MIN_REMAINING
    })
}

fn leaf_is_good(pki: &DevPki, identity: &Identity) -> bool {
    let cert = pki.file(identity.basename, ".cert.pem");
    let key = pki.file(identity.basename, ".key.pem");
    let matches = match (crate::pem::read_certs(&cert), crate::pem::read_key_pair(&key)) {
        (Ok(certs), Ok(key)) => certs.first().is_some_and(|der| {
            X509Certificate::from_der(der)
                .is_ok_and(|(_, c)| rcgen::PublicKeyData::subject_public_key_info(&key) == c.public_key().raw)
        }),
        _ => false,
    };
    matches
        && pki.pkeycert(identity).is_file()
        && lasts(&cert)
        && crate::verify::verify(&pki.root_cert(), &cert, Some(identity.usage)).is_ok()
}
