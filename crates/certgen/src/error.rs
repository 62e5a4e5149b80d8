//! The error type of the certgen crate.

use std::path::PathBuf;

/// What can go wrong issuing, reading or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The directory that should hold the outputs does not exist.
    #[error("output directory {} does not exist", .0.display())]
    MissingDirectory(PathBuf),
    /// An output file exists and `--force` was not given.
    #[error("{} already exists (use --force to replace it)", .0.display())]
    Exists(PathBuf),
    /// A PEM file holds no certificate.
    #[error("{}: no certificate found", .0.display())]
    NoCertificate(PathBuf),
    /// A PEM file holds no private key (or one in a form we cannot read).
    #[error("{}: no usable private key found (expected PKCS#8, SEC1 or PKCS#1 PEM)", .0.display())]
    NoKey(PathBuf),
    /// A certificate that x509-parser cannot read.
    #[error("{}: not a valid X.509 certificate: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The CA key does not belong to the CA certificate.
    #[error("CA key {} does not match CA certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The CA certificate file.
        cert: PathBuf,
        /// The CA key file.
        key: PathBuf,
    },
    /// The CA certificate is not a usable CA.
    #[error("{}: {reason}", path.display())]
    NotUsableCa {
        /// The CA certificate file.
        path: PathBuf,
        /// Why: not a CA, expired, no keyCertSign, ...
        reason: String,
    },
    /// A value given on the command line or in a spec is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A certificate did not verify against the CA.
    #[error("{}: {reason}", path.display())]
    Rejected {
        /// The certificate file.
        path: PathBuf,
        /// Why it does not verify.
        reason: String,
    },
    /// rcgen refused to build or sign the certificate.
    #[error("cannot issue certificate: {0}")]
    Issue(#[from] rcgen::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
