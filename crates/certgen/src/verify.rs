//! Checking a certificate chain the way the proxy will: with webpki, the verifier rustls uses.

use std::path::Path;

use rustls_pki_types::UnixTime;
use webpki::{EndEntityCert, KeyUsage};

use crate::{Error, Result, Usage};

/// What a successful verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The purposes the leaf is good for, among client and server authentication.
    pub purposes: Vec<&'static str>,
}

/// Verifies the first certificate of `leaf_path` (later ones are taken as intermediates)
/// against the CA certificates in `ca_path`, at the current time: signature chain, validity
/// window of every certificate, CA constraints, and the extendedKeyUsage: `usage` requires
/// client or server authentication (or both); `None` requires at least one of them.
///
/// # Errors
/// [`Error::Rejected`] with the reason when the chain does not verify; file errors as
/// [`crate::pem::read_certs`].
pub fn verify(ca_path: &Path, leaf_path: &Path, usage: Option<Usage>) -> Result<Verified> {
    let roots = crate::pem::read_certs(ca_path)?;
    let mut chain = crate::pem::read_certs(leaf_path)?;
    let leaf = chain.remove(0);
    let reject = |reason: String| Error::Rejected { path: leaf_path.to_owned(), reason };

    let anchors = roots
        .iter()
        .map(|der| webpki::anchor_from_trusted_cert(der).map(|a| a.to_owned()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::BadCertificate { path: ca_path.to_owned(), reason: describe(&e) })?;
    let end_entity = EndEntityCert::try_from(&leaf).map_err(|e| reject(describe(&e)))?;
    let check = |purpose: KeyUsage| -> std::result::Result<(), webpki::Error> {
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &chain,
                UnixTime::now(),
                purpose,
                None,
                None,
            )
            .map(|_| ())
    };

    let client = check(KeyUsage::client_auth());
    let server = check(KeyUsage::server_auth());
    let required: &[(&'static str, &std::result::Result<(), webpki::Error>)] = match usage {
        Some(Usage::Client) => &[("client", &client)],
        Some(Usage::Server) => &[("server", &server)],
        Some(Usage::Both) => &[("client", &client), ("server", &server)],
        None => &[],
    };
    for (name, outcome) in required {
        if let Err(e) = outcome {
            return Err(reject(describe_for(e, name)));
        }
    }
    let purposes: Vec<&'static str> = [("client", &client), ("server", &server)]
        .into_iter()
        .filter(|(_, outcome)| outcome.is_ok())
        .map(|(name, _)| name)
        .collect();
    if purposes.is_empty() {
        // Neither purpose verified: report the client-side reason, which names the real fault
        // (expiry, issuer, ...) unless the only fault is the EKU, which then says so.
        return Err(match (&client, &server) {
            (Err(c), _) => reject(describe_for(c, "client or server")),
            (_, Err(s)) => reject(describe_for(s, "client or server")),
            _ => reject("no usable purpose".to_owned()),
        });
    }
    Ok(Verified { purposes })
}

fn describe_for(error: &webpki::Error, purpose: &str) -> String {
    #[allow(deprecated)]
    match error {
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
            format!("its extendedKeyUsage does not allow {purpose} authentication")
        }
        other => describe(other),
    }
}

/// A human sentence for a webpki error (its own Display is its Debug form).
fn describe(error: &webpki::Error) -> String {
    match error {
        webpki::Error::UnknownIssuer => "not issued by any certificate in the CA file".to_owned(),
        webpki::Error::CertExpired { not_after, .. } => {
            format!("certificate expired at {}", unix(*not_after))
        }
        webpki::Error::CertNotValidYet { not_before, .. } => {
            format!("certificate is not valid before {}", unix(*not_before))
        }
        webpki::Error::CaUsedAsEndEntity => "the certificate is a CA, not a leaf".to_owned(),
        webpki::Error::EndEntityUsedAsCa => "an end-entity certificate is used as a CA".to_owned(),
        webpki::Error::InvalidSignatureForPublicKey
        | webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "the signature does not verify with the issuer's key".to_owned()
        }
        webpki::Error::BadDer | webpki::Error::BadDerTime => "malformed certificate (bad DER)".to_owned(),
        other => format!("verification failed: {other:?}"),
    }
}

fn unix(time: UnixTime) -> String {
    let secs = i64::try_from(time.as_secs()).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_or_else(|_| format!("{secs}s"), crate::inspect::rfc3339)
}
