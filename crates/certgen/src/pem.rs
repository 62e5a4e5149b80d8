//! Reading certificates and keys from PEM files, in every form the project meets: one or more
//! certificates, a pkeycert (certificate then key), and the original scripts' keys (an
//! `EC PARAMETERS` block before a SEC1 `EC PRIVATE KEY`).

use std::path::Path;

use rcgen::KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Result};

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Every certificate in a PEM file, in order; other blocks are skipped.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::NoCertificate`] when it holds none.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::BadCertificate { path: path.to_owned(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, SEC1 or PKCS#1), in DER.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::NoKey`] when it holds no key.
pub fn read_key_der(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|_| Error::NoKey(path.to_owned()))
}

/// The first private key in a PEM file, as a signing key.
///
/// # Errors
/// As [`read_key_der`], and [`Error::NoKey`] for a key of an unsupported algorithm.
pub fn read_key_pair(path: &Path) -> Result<KeyPair> {
    KeyPair::try_from(&read_key_der(path)?).map_err(|_| Error::NoKey(path.to_owned()))
}
