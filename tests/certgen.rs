//! `certgen` as an operator uses it.

use std::fs;
use std::path::Path;

use crate::support::{Run, mode, openssl, run_bin};

fn certgen(dir: &Path, args: &[&str]) -> Run {
    run_bin(dir, "certgen", args)
}

const ROOT_CERT: &str = "micronets-ws-root.cert.pem";
const ROOT_KEY: &str = "micronets-ws-root.key.pem";

/// `certgen root` with a basename and an organization.
fn root(dir: &Path, base: &str, org: &str, extra: &[&str]) -> Run {
    let mut args = vec!["root", "--cert-basename", base, "--subject-org-name", org];
    args.extend_from_slice(extra);
    certgen(dir, &args)
}

/// The original README's root command, with our binary.
fn make_root(dir: &Path) {
    let org = "Micronets Websocket Root Cert";
    root(dir, "micronets-ws-root", org, &["--expiration-in-days", "3650"]).success();
}

/// `certgen leaf` signed by the given CA files.
fn leaf_signed_by(dir: &Path, base: &str, ca: (&str, &str), extra: &[&str]) -> Run {
    let mut args = vec!["leaf", "--cert-basename", base, "--subject-org-name", "Micronets Test Cert"];
    args.extend_from_slice(&["--ca-certfile", ca.0, "--ca-keyfile", ca.1]);
    args.extend_from_slice(extra);
    certgen(dir, &args)
}

/// A leaf signed by the root [`make_root`] made.
fn make_leaf(dir: &Path, base: &str, extra: &[&str]) -> Run {
    leaf_signed_by(dir, base, (ROOT_CERT, ROOT_KEY), extra)
}

#[test]
fn original_commands_issue_a_chain_that_openssl_and_webpki_accept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_root(dir);
    make_leaf(
        dir,
        "micronets-ws-proxy",
        &["--san-dns", "localhost", "--san-ip", "127.0.0.1", "--san-ip", "::1"],
    )
    .success()
    .stdout_has("micronets-ws-proxy.pkeycert.pem");

    assert_eq!(mode(&dir.join("micronets-ws-root.key.pem")), 0o600);
    assert_eq!(mode(&dir.join(ROOT_CERT)), 0o644);
    assert_eq!(mode(&dir.join("micronets-ws-proxy.key.pem")), 0o600);
    assert_eq!(mode(&dir.join("micronets-ws-proxy.pkeycert.pem")), 0o600);
    let cert = fs::read_to_string(dir.join("micronets-ws-proxy.cert.pem")).unwrap();
    let key = fs::read_to_string(dir.join("micronets-ws-proxy.key.pem")).unwrap();
    assert_eq!(fs::read_to_string(dir.join("micronets-ws-proxy.pkeycert.pem")).unwrap(), cert + &key);

    for purpose in ["sslserver", "sslclient"] {
        openssl(dir, &["verify", "-purpose", purpose, "-CAfile", ROOT_CERT, "micronets-ws-proxy.cert.pem"])
            .success()
            .stdout_has("OK");
    }
    certgen(dir, &["verify", "--ca", ROOT_CERT, "micronets-ws-proxy.pkeycert.pem"])
        .success()
        .stdout_has("client and server");

    let text =
        openssl(dir, &["x509", "-in", "micronets-ws-proxy.cert.pem", "-noout", "-text"]).success().stdout();
    for needle in [
        "CA:FALSE",
        "Digital Signature",
        "TLS Web Client Authentication",
        "TLS Web Server Authentication",
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
        "Authority Key Identifier",
        "CN = micronets-ws-proxy",
        "ecdsa-with-SHA256",
    ] {
        assert!(text.contains(needle), "leaf lacks {needle}:\n{text}");
    }
    let root = openssl(dir, &["x509", "-in", ROOT_CERT, "-noout", "-text"]).success().stdout();
    for needle in [
        "X509v3 Basic Constraints: critical",
        "CA:TRUE",
        "Certificate Sign, CRL Sign",
        "Subject Key Identifier",
        "CN = Micronets Websocket Root Cert",
    ] {
        assert!(root.contains(needle), "root lacks {needle}:\n{root}");
    }
}

#[test]
fn every_key_type_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_root(dir);
    for key_type in ["p256", "p384", "ed25519", "rsa2048", "rsa3072"] {
        make_leaf(dir, key_type, &["--key-type", key_type, "--usage", "client"]).success();
        openssl(
            dir,
            &["verify", "-purpose", "sslclient", "-CAfile", ROOT_CERT, &format!("{key_type}.cert.pem")],
        )
        .success();
        certgen(dir, &["verify", "--ca", ROOT_CERT, "--usage", "client", &format!("{key_type}.cert.pem")])
            .success();
    }
    let rsa = openssl(dir, &["x509", "-in", "rsa2048.cert.pem", "-noout", "-text"]).success().stdout();
    assert!(rsa.contains("Key Encipherment"), "RSA leaves get keyEncipherment:\n{rsa}");
    root(dir, "r", "x", &["--key-type", "dsa"]).code(64).stderr_has("unknown key type");
    // A validity past any date a certificate can hold is a clear error, not a panic.
    root(dir, "r", "x", &["--expiration-in-days", "4294967295"]).code(64).stderr_has("at most 36500");
}

#[test]
fn existing_files_are_never_overwritten_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_root(dir);
    let before = fs::read(dir.join(ROOT_CERT)).unwrap();
    root(dir, "micronets-ws-root", "x", &[]).code(1).stderr_has("micronets-ws-root.cert.pem already exists");
    assert_eq!(fs::read(dir.join(ROOT_CERT)).unwrap(), before);

    // One existing output is enough to refuse, and nothing else is written.
    fs::write(dir.join("gw.key.pem"), "keep me").unwrap();
    make_leaf(dir, "gw", &[]).code(1).stderr_has("gw.key.pem already exists");
    assert!(!dir.join("gw.cert.pem").exists());
    assert_eq!(fs::read_to_string(dir.join("gw.key.pem")).unwrap(), "keep me");

    make_leaf(dir, "gw", &["--force"]).success();
    assert_eq!(mode(&dir.join("gw.key.pem")), 0o600);
    root(dir, "micronets-ws-root", "x", &["--force-overwrite"]).success();
    assert_ne!(fs::read(dir.join(ROOT_CERT)).unwrap(), before);
}

#[test]
fn errors_name_the_file_or_value() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    root(dir, "missing/root", "x", &[]).code(1).stderr_has("output directory missing does not exist");
    make_root(dir);
    make_leaf(dir, "bad", &["--san-dns", "not a name"])
        .code(64)
        .stderr_has("invalid --san-dns value \"not a name\"");
    make_leaf(dir, "bad", &["--san-ip", "300.1.1.1"])
        .code(64)
        .stderr_has("invalid --san-ip value \"300.1.1.1\"");
    leaf_signed_by(dir, "x", ("nope.pem", ROOT_KEY), &[]).code(1).stderr_has("nope.pem");

    // A CA key that belongs to another certificate.
    root(dir, "other", "Other", &[]).success();
    leaf_signed_by(dir, "x", (ROOT_CERT, "other.key.pem"), &[])
        .code(1)
        .stderr_has("does not match CA certificate");
    // A leaf is not a CA.
    make_leaf(dir, "leaf", &[]).success();
    leaf_signed_by(dir, "x", ("leaf.cert.pem", "leaf.key.pem"), &[])
        .code(1)
        .stderr_has("not a CA certificate");
    // A file with no key in it.
    leaf_signed_by(dir, "x", (ROOT_CERT, ROOT_CERT), &[]).code(1).stderr_has("no usable private key");
    certgen(dir, &["bogus"]).code(64);
    certgen(dir, &["leaf", "--cert-basename", "x"]).code(64).stderr_has("--subject-org-name");
}

#[test]
fn inspect_prints_thumbprints_openssl_agrees_with() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_root(dir);
    make_leaf(dir, "gw", &["--common-name", "gw-001", "--san-dns", "gw.example.test"]).success();
    let json = certgen(dir, &["inspect", "--json", "gw.pkeycert.pem"]).success().stdout();
    let info: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    for key in [
        "subject",
        "issuer",
        "serial",
        "not_before",
        "not_after",
        "sans",
        "key_usage",
        "extended_key_usage",
        "sha1_thumbprint",
        "sha256_fingerprint",
    ] {
        assert!(info.get(key).is_some(), "missing {key} in {info}");
    }
    assert!(info["subject"].as_str().unwrap().contains("CN=gw-001"));
    assert_eq!(info["sans"], serde_json::json!(["DNS:gw.example.test"]));
    assert_eq!(info["extended_key_usage"], serde_json::json!(["serverAuth", "clientAuth"]));

    let sha1 = info["sha1_thumbprint"].as_str().unwrap();
    let sha256 = info["sha256_fingerprint"].as_str().unwrap();
    assert!(sha1.len() == 40 && sha1.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
    assert!(sha256.len() == 64 && sha256.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
    let openssl_sha1 =
        openssl(dir, &["x509", "-in", "gw.cert.pem", "-noout", "-fingerprint", "-sha1"]).success().stdout();
    assert!(openssl_sha1.replace(':', "").contains(sha1), "{openssl_sha1} vs {sha1}");
    let openssl_sha256 =
        openssl(dir, &["x509", "-in", "gw.cert.pem", "-noout", "-fingerprint", "-sha256"]).success().stdout();
    assert!(openssl_sha256.replace(':', "").contains(sha256));
    let serial = openssl(dir, &["x509", "-in", "gw.cert.pem", "-noout", "-serial"]).success().stdout();
    assert!(serial.contains(info["serial"].as_str().unwrap()), "{serial}");

    certgen(dir, &["inspect", "gw.cert.pem"])
        .success()
        .stdout_has("SHA-1 thumbprint:")
        .stdout_has("DNS:gw.example.test");
    certgen(dir, &["inspect", "gw.key.pem"]).code(1).stderr_has("gw.key.pem: no certificate found");
}

#[test]
fn verify_explains_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_root(dir);
    make_leaf(dir, "client", &["--usage", "client"]).success();
    certgen(dir, &["verify", "--ca", ROOT_CERT, "--usage", "server", "client.cert.pem"])
        .code(1)
        .stderr_has("does not allow server authentication");
    root(dir, "other", "Other", &[]).success();
    certgen(dir, &["verify", "--ca", "other.cert.pem", "client.cert.pem"])
        .code(1)
        .stderr_has("not issued by");
    certgen(dir, &["verify", "--ca", ROOT_CERT, ROOT_CERT]).code(1).stderr_has("CA, not a leaf");
}

#[test]
fn dev_creates_a_complete_pki_and_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    certgen(dir, &["dev", "--dir", "pki"])
        .success()
        .stdout_has("created [root, proxy, manager, gateway, test-client]");
    let pki = dir.join("pki");
    let names = ["micronets-ws-proxy", "micronets-manager", "micronets-gateway", "micronets-ws-test-client"];
    for name in names {
        let purpose = if name == "micronets-ws-proxy" { "sslserver" } else { "sslclient" };
        openssl(&pki, &["verify", "-purpose", purpose, "-CAfile", ROOT_CERT, &format!("{name}.cert.pem")])
            .success();
        assert_eq!(mode(&pki.join(format!("{name}.pkeycert.pem"))), 0o600);
    }
    let proxy =
        openssl(&pki, &["x509", "-in", "micronets-ws-proxy.cert.pem", "-noout", "-ext", "subjectAltName"])
            .success()
            .stdout();
    assert!(
        proxy.contains("DNS:localhost")
            && proxy.contains("IP Address:127.0.0.1")
            && proxy.contains("IP Address:0:0:0:0:0:0:0:1"),
        "{proxy}"
    );

    let snapshot = |dir: &Path| {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), fs::read(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot(&pki);
    certgen(dir, &["dev", "--dir", "pki"])
        .success()
        .stdout_has("created [], kept [root, proxy, manager, gateway, test-client]");
    assert_eq!(snapshot(&pki), before, "a second run changes nothing");

    fs::remove_file(pki.join("micronets-gateway.key.pem")).unwrap();
    certgen(dir, &["dev", "--dir", "pki"]).success().stdout_has("created [gateway]");
    openssl(&pki, &["verify", "-CAfile", ROOT_CERT, "micronets-gateway.cert.pem"]).success();
    assert_eq!(
        fs::read(pki.join("micronets-manager.pkeycert.pem")).unwrap(),
        before.iter().find(|(n, _)| n == "micronets-manager.pkeycert.pem").unwrap().1
    );

    fs::write(pki.join("micronets-ws-root.key.pem"), "garbage").unwrap();
    certgen(dir, &["dev", "--dir", "pki"])
        .success()
        .stdout_has("created [root, proxy, manager, gateway, test-client]");
}

/// The original scripts' commands (openssl, P-256, SEC1 key behind an EC PARAMETERS block, no
/// SAN, no EKU) make a root that certgen can sign with, and the leaf chains to it.
#[test]
fn original_openssl_root_signs_new_leaves() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-out", "orig-root.key.pem"]).success();
    let key = fs::read_to_string(dir.join("orig-root.key.pem")).unwrap();
    assert!(key.contains("BEGIN EC PARAMETERS") && key.contains("BEGIN EC PRIVATE KEY"), "{key}");
    fs::write(dir.join("root.ext"), "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n").unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-sha256",
            "-batch",
            "-subj",
            "/O=Micronets-WS-Root",
            "-key",
            "orig-root.key.pem",
            "-out",
            "orig-root.csr.pem",
        ],
    )
    .success();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "orig-root.csr.pem",
            "-signkey",
            "orig-root.key.pem",
            "-days",
            "3650",
            "-extfile",
            "root.ext",
            "-out",
            "orig-root.cert.pem",
        ],
    )
    .success();

    leaf_signed_by(dir, "new-gw", ("orig-root.cert.pem", "orig-root.key.pem"), &[]).success();
    openssl(dir, &["verify", "-CAfile", "orig-root.cert.pem", "new-gw.cert.pem"]).success();
    certgen(dir, &["verify", "--ca", "orig-root.cert.pem", "new-gw.pkeycert.pem"]).success();
}

/// `certgen revoke` creates the CRL, adds to it, keeps it idempotent, and openssl agrees that
/// the revoked certificate is revoked and the other is not.
#[test]
fn revoke_builds_a_crl_that_openssl_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_root(dir);
    make_leaf(dir, "gw-1", &["--usage", "client"]).success();
    make_leaf(dir, "gw-2", &["--usage", "client"]).success();
    let revoke = |which: &[&str]| {
        let mut args =
            vec!["revoke", "--ca-certfile", ROOT_CERT, "--ca-keyfile", ROOT_KEY, "--crl", "root.crl.pem"];
        args.extend_from_slice(which);
        certgen(dir, &args)
    };
    revoke(&["--cert", "gw-1.pkeycert.pem"])
        .success()
        .stdout_has("revoked; root.crl.pem lists 1 serial(s), CRL number 1");
    revoke(&["--cert", "gw-1.cert.pem"])
        .success()
        .stdout_has("was already revoked")
        .stdout_has("CRL number 2");
    assert_eq!(mode(&dir.join("root.crl.pem")), 0o644, "a CRL is public");
    let check = |leaf: &str| {
        openssl(dir, &["verify", "-crl_check", "-CAfile", ROOT_CERT, "-CRLfile", "root.crl.pem", leaf])
    };
    assert!(!check("gw-1.cert.pem").output.status.success(), "gw-1 is revoked");
    check("gw-2.cert.pem").success();

    let inspected = certgen(dir, &["inspect", "gw-2.cert.pem"]).success().stdout();
    let serial = inspected.lines().find_map(|l| l.trim().strip_prefix("serial:")).unwrap().trim().to_owned();
    revoke(&["--serial", &serial]).success().stdout_has("lists 2 serial(s), CRL number 3");
    assert!(!check("gw-2.cert.pem").output.status.success(), "gw-2 is revoked by serial");
    let text = openssl(dir, &["crl", "-in", "root.crl.pem", "-noout", "-text"]).success().stdout();
    assert!(text.contains(&serial), "{text}");

    revoke(&[]).code(64).stderr_has("--serial");
    revoke(&["--serial", "xyz"]).code(64).stderr_has("not hex");
    revoke(&["--serial", &serial, "--next-update-days", "4294967295"]).code(64).stderr_has("at most 36500");
    root(dir, "other-root", "Other", &[]).success();
    let other = ["revoke", "--ca-certfile", "other-root.cert.pem", "--ca-keyfile", "other-root.key.pem"];
    certgen(dir, &[&other[..], &["--crl", "root.crl.pem", "--cert", "gw-2.cert.pem"]].concat())
        .code(1)
        .stderr_has("issued by another CA");
}
