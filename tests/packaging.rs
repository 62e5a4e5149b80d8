//! What the package ships: the systemd unit passes `systemd-analyze verify` and keeps its
//! hardening. (`scripts/check-deb` checks the built `.deb` itself.)

use std::path::Path;

use crate::support::{bin, run_in};

const UNIT: &str = include_str!("../docs/systemd/ws-proxy.service");

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let found = std::process::Command::new("systemd-analyze").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: install Debian's systemd package (scripts/test does, as root)"
    );
    let tmp = tempfile::tempdir().unwrap();
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let unit = UNIT.replace("/usr/bin/ws-proxy", &bin("ws-proxy").display().to_string());
    let path = tmp.path().join("ws-proxy.service");
    std::fs::write(&path, unit).unwrap();
    let run = run_in(tmp.path(), Path::new("systemd-analyze"), &["verify", path.to_str().unwrap()]).success();
    let complaints: Vec<&str> = run
        .output
        .stderr
        .split(|&b| b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok())
        .filter(|l| l.contains("ws-proxy.service"))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify complains:\n{}", complaints.join("\n"));
}

#[test]
fn the_systemd_unit_is_hardened_and_notifies() {
    let settings: Vec<&str> = UNIT.lines().filter(|l| !l.starts_with('#') && l.contains('=')).collect();
    for wanted in [
        "Type=notify",
        "WatchdogSec=30s",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "User=micronets-ws-proxy",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "ReadOnlyPaths=/etc/micronets",
        "LimitNOFILE=65536",
    ] {
        assert!(settings.contains(&wanted), "the unit lacks {wanted:?}");
    }
}
