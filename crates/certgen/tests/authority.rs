//! Library-level checks that need certificates the CLI cannot make: expired or crippled CAs,
//! expired leaves, a dev PKI about to expire.

use std::fs;
use std::path::Path;

use micronets_certgen::dev::{self, DevPki};
use micronets_certgen::files::{outputs, write_outputs};
use micronets_certgen::{Authority, Error, KeyType, LeafSpec, RootSpec, Usage, issue_root, verify};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use time::{Duration, OffsetDateTime};

fn write(dir: &Path, base: &str, cert_pem: &str, key: &KeyPair) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join(format!("{base}.cert.pem"));
    let key_path = dir.join(format!("{base}.key.pem"));
    fs::write(&cert, cert_pem).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert, key_path)
}

fn ca_params(not_after: OffsetDateTime, usages: Vec<KeyUsagePurpose>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::OrganizationName, "Test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = usages;
    params.not_before = OffsetDateTime::now_utc() - Duration::days(400);
    params.not_after = not_after;
    params
}

fn leaf_spec(days: u32) -> LeafSpec {
    LeafSpec {
        org: "Leaf".into(),
        common_name: "leaf".into(),
        days,
        key_type: KeyType::P256,
        usage: Usage::Client,
        dns_names: vec![],
        ip_addresses: vec![],
    }
}

#[test]
fn expired_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = ca_params(OffsetDateTime::now_utc() - Duration::days(1), vec![KeyUsagePurpose::KeyCertSign])
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = write(tmp.path(), "old", &cert.pem(), &key);
    let err = Authority::load(&cert_path, &key_path).err().unwrap();
    assert!(matches!(err, Error::NotUsableCa { .. }), "{err:?}");
    assert!(err.to_string().contains("expired on"), "{err}");
    assert!(err.to_string().contains("old.cert.pem"), "{err}");
}

#[test]
fn ca_without_key_cert_sign_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let cert =
        ca_params(OffsetDateTime::now_utc() + Duration::days(100), vec![KeyUsagePurpose::DigitalSignature])
            .self_signed(&key)
            .unwrap();
    let (cert_path, key_path) = write(tmp.path(), "weak", &cert.pem(), &key);
    let err = Authority::load(&cert_path, &key_path).err().unwrap();
    assert!(err.to_string().contains("keyCertSign"), "{err}");
}

#[test]
fn leaf_validity_never_passes_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let root =
        issue_root(&RootSpec { org: "R".into(), common_name: None, days: 10, key_type: KeyType::P256 })
            .unwrap();
    write_outputs(&outputs(&tmp.path().join("r"), &root, false), false).unwrap();
    let ca = Authority::load(&tmp.path().join("r.cert.pem"), &tmp.path().join("r.key.pem")).unwrap();
    let leaf = ca.issue_leaf(&leaf_spec(100)).unwrap();
    assert!(leaf.capped_to_ca);
    assert_eq!(leaf.not_after, root.not_after);
    let short = ca.issue_leaf(&leaf_spec(5)).unwrap();
    assert!(!short.capped_to_ca);
    assert!(short.not_after < root.not_after);
    assert!(matches!(ca.issue_leaf(&leaf_spec(0)), Err(Error::Invalid(_))));
}

#[test]
fn expired_leaf_fails_verification_with_the_date() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let ca_params =
        ca_params(OffsetDateTime::now_utc() + Duration::days(100), vec![KeyUsagePurpose::KeyCertSign]);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    fs::write(tmp.path().join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![]).unwrap();
    params.not_before = OffsetDateTime::now_utc() - Duration::days(10);
    params.not_after = OffsetDateTime::now_utc() - Duration::days(1);
    let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
    fs::write(tmp.path().join("leaf.pem"), leaf.pem()).unwrap();

    let err = verify::verify(&tmp.path().join("ca.pem"), &tmp.path().join("leaf.pem"), None).unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }));
    assert!(err.to_string().contains("certificate expired at"), "{err}");
}

#[test]
fn dev_reissues_an_identity_about_to_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = DevPki::new(tmp.path().join("dev"));
    dev::ensure(&pki).unwrap();
    let ca = Authority::load(&pki.root_cert(), &pki.file(dev::ROOT, ".key.pem")).unwrap();
    let gateway = &dev::CLIENTS[1];
    let soon = ca.issue_leaf(&leaf_spec(10)).unwrap();
    write_outputs(&outputs(&pki.dir.join(gateway.basename), &soon, true), true).unwrap();

    let report = dev::ensure(&pki).unwrap();
    assert_eq!(report.created, vec!["gateway"]);
    assert_eq!(report.kept, vec!["root", "proxy", "manager", "test-client"]);
    verify::verify(&pki.root_cert(), &pki.pkeycert(gateway), Some(Usage::Client)).unwrap();
}
