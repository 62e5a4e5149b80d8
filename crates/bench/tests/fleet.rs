//! The fleet scenarios of the real `ws-bench` binary at a small scale, so that they cannot rot:
//! `idle` (rooms of two, checkpoints), `connect --resume`, and `storm` restarting the real
//! `ws-proxy` binary with SIGKILL, and with SIGTERM under socket activation. Each checks that
//! every room is whole (and relays, for the storm); the figures are the benchmark's to report.
//!
//! `ws-proxy` is the workspace's binary next to `ws-bench`: `cargo test --workspace` (the
//! project's test command) builds it.

use std::path::{Path, PathBuf};
use std::process::Command;

use micronets_certgen::dev::{self, DevPki};

/// The `ws-proxy` binary built beside `ws-bench`.
fn ws_proxy() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_ws-bench")).with_file_name("ws-proxy");
    assert!(
        path.exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace)",
        path.display()
    );
    path
}

/// A free loopback port (bound, then given back).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The relay's configuration for `port`, written in `dir`.
fn relay_config(dir: &Path, pki: &DevPki, port: u16) -> PathBuf {
    let key = dir.join("ticket.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let toml = format!(
        "[listen]\nbind = \"127.0.0.1:{port}\"\n[tls]\nserver_cert = {:?}\nclient_ca = {:?}\nticket_key_file = {:?}\n[admin]\nbind = \"\"\n[shutdown]\ndrain_window = \"300ms\"\n[log]\nlevel = \"warn\"\n",
        pki.pkeycert(&dev::PROXY).display().to_string(),
        pki.root_cert().display().to_string(),
        key.display().to_string(),
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Runs `ws-bench --json` with `args` (bounded in time) and returns its report; a failed run
/// (rooms left broken count as lost deliveries) fails the test.
fn bench(pki: &DevPki, url: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new("timeout")
        .arg("300")
        .arg(env!("CARGO_BIN_EXE_ws-bench"))
        .args(["--pki", &pki.dir.display().to_string(), "--url", url, "--json"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}\n{stdout}\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn setup() -> (tempfile::TempDir, DevPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(dir.path().join("dev"));
    dev::ensure(&pki).unwrap();
    (dir, pki)
}

/// A relay process of the test's own, for the scenarios that measure an existing relay.
struct Relay(std::process::Child);

impl Relay {
    fn start(config: &Path, port: u16) -> Self {
        let child =
            Command::new(ws_proxy()).args(["--config", &config.display().to_string()]).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "the relay did not listen");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Relay(child)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn idle_fills_rooms_of_two_and_reports_checkpoints() {
    let (dir, pki) = setup();
    let port = free_port();
    let relay = Relay::start(&relay_config(dir.path(), &pki, port), port);
    let url = format!("wss://localhost:{port}/micronets/v1/ws-proxy/");
    let pid = relay.0.id().to_string();
    let report =
        bench(&pki, &url, &["--server-pid", &pid, "idle", "--count", "200", "--checkpoints", "100,200"]);
    let fleet = &report["fleet"];
    assert_eq!((fleet["rooms"].as_u64(), fleet["rooms_whole"].as_u64()), (Some(100), Some(100)), "{report}");
    assert_eq!(fleet["checkpoints"].as_array().map(Vec::len), Some(2), "{report}");
    assert!(fleet["server_cpu_us_per_connection"].is_number(), "{report}");
}

#[test]
fn connect_resume_reports_full_and_resumed_handshakes() {
    let (dir, pki) = setup();
    let port = free_port();
    let relay = Relay::start(&relay_config(dir.path(), &pki, port), port);
    let url = format!("wss://localhost:{port}/micronets/v1/ws-proxy/");
    let pid = relay.0.id().to_string();
    let report =
        bench(&pki, &url, &["--server-pid", &pid, "connect", "--count", "40", "--resume", "--rounds", "2"]);
    let resumption = &report["fleet"]["resumption"];
    assert_eq!(
        (resumption["resumed"].as_u64(), resumption["attempted"].as_u64()),
        (Some(80), Some(80)),
        "each round's second phase resumes every session: {report}"
    );
    assert_eq!(resumption["rounds"].as_array().map(Vec::len), Some(2), "{report}");
    let ratio = &resumption["ratio"];
    assert!(ratio["median"].as_f64().is_some_and(|m| m > 0.0), "{report}");
    assert!(ratio["min"].as_f64() <= ratio["median"].as_f64(), "{report}");
    assert!(ratio["median"].as_f64() <= ratio["max"].as_f64(), "{report}");
    assert_eq!(resumption["resumed_to_full"], ratio["median"], "{report}");
}

#[test]
fn a_storm_after_sigkill_and_after_sigterm_under_socket_activation_leaves_every_room_relaying() {
    let (dir, pki) = setup();
    let port = free_port();
    let config = relay_config(dir.path(), &pki, port);
    let url = format!("wss://localhost:{port}/micronets/v1/ws-proxy/");
    let command = format!("{} --config {}", ws_proxy().display(), config.display());
    for extra in [&["--signal", "kill"][..], &["--signal", "term", "--socket-activation", "1024"]] {
        let mut args = vec!["storm", "--count", "100", "--phase-timeout", "60", "--proxy-cmd", &command];
        args.extend_from_slice(extra);
        let report = bench(&pki, &url, &args);
        let fleet = &report["fleet"];
        assert_eq!(fleet["rooms_whole"].as_u64(), Some(50), "{extra:?}: {report}");
        assert_eq!(fleet["restart"]["rooms_relaying"].as_u64(), Some(50), "{extra:?}: {report}");
        assert!(fleet["restart"]["whole_after_listening_ms"]["max"].is_number(), "{report}");
        assert_eq!(fleet["restart"]["handshakes"]["resumed"].as_u64(), Some(100), "the key file: {report}");
    }
}
