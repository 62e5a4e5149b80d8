//! Every scenario of the real `ws-bench` binary, with tiny parameters, against the proxy run
//! in this process (so `--server-pid` is this process), and the reference relay beside it: the
//! tool keeps working and its delivery checks pass. Figures are not asserted: they are the
//! benchmark's to report.

use std::process::Command;

use micronets_certgen::dev::{self, DevPki};
use micronets_proxy::{FileConfig, Overrides, Proxy};

#[path = "../../proxy/tests/proxy/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

/// The proxy, serving in this process until dropped.
struct Relay {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Relay {
    /// A relay with `extra` TOML (a `[cluster]` section makes it a node).
    async fn start(pki: &DevPki, extra: &str) -> Self {
        let toml = format!(
            "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = {:?}\nclient_ca = {:?}\n[rooms]\nmax_peers = 4\n[limits]\nslow_consumer_timeout = \"1s\"\n{extra}",
            pki.pkeycert(&dev::PROXY).display().to_string(),
            pki.root_cert().display().to_string(),
        );
        let config = FileConfig::parse(&toml).unwrap().into_config(&Overrides::default()).unwrap();
        let listener = tokio::net::TcpListener::bind(config.bind).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy::new(config).unwrap().connect().await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            proxy
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Relay { url: format!("wss://localhost:{port}/micronets/v1/ws-proxy/"), stop: Some(stop) }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs `ws-bench` with `args` against `relays` (bounded in time), checks its delivery report
/// and returns it.
async fn bench(relays: &[&Relay], pki: &DevPki, args: &[&str]) -> serde_json::Value {
    let pid = std::process::id().to_string();
    let mut all: Vec<String> = vec!["--pki".into(), pki.dir.display().to_string()];
    for relay in relays {
        all.extend(["--url".into(), relay.url.clone()]);
    }
    all.extend(["--server-pid".into(), pid, "--json".into()]);
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let run = tokio::task::spawn_blocking(move || {
        Command::new("timeout").arg("120").arg(env!("CARGO_BIN_EXE_ws-bench")).args(&all).output().unwrap()
    });
    let output = run.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}\n{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    for field in ["lost", "duplicated", "reordered", "corrupted"] {
        assert_eq!(report["delivery"][field], 0, "{args:?}: {report}");
    }
    assert_eq!(report["delivery"]["sent"], report["delivery"]["received"], "{report}");
    report
}

fn dev_pki(dir: &tempfile::TempDir) -> DevPki {
    let pki = DevPki::new(dir.path().join("dev"));
    dev::ensure(&pki).unwrap();
    pki
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_verifies_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dev_pki(&dir);
    let relay = Relay::start(&pki, "").await;
    let runs: [&[&str]; 6] = [
        &["pairs", "--rooms", "2", "--messages", "500", "--size", "300"],
        &["pairs", "--ping-pong", "--messages", "100", "--size", "256"],
        &["fanout", "--receivers", "3", "--messages", "300", "--size", "256"],
        &["connect", "--count", "20", "--concurrency", "4"],
        &["idle", "--count", "20"],
        &["slow", "--rooms", "2", "--messages", "300", "--size", "1024"],
    ];
    for scenario in runs {
        let report = bench(&[&relay], &pki, scenario).await;
        assert_eq!(report["scenario"], scenario[0]);
        let expected = match scenario[0] {
            "pairs" | "fanout" => "server_cpu_us_per_message",
            "connect" => "server_cpu_us_per_handshake",
            "idle" => "server_rss_bytes_per_connection",
            _ => "throughput_ratio_next_to_stalled_room",
        };
        assert!(report[expected].is_number(), "{scenario:?}: no {expected} in {report}");
    }
}

/// With --reference, ws-bench starts the reference relay itself, runs the scenario on both
/// `--runs` times, and reports each run's figures and their ratios; delivery is checked on
/// every run of both (the ratios themselves need more work than these tiny runs give the 10 ms
/// CPU clock). The reference relay ends with ws-bench.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_relay_runs_beside_the_relay_and_gives_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dev_pki(&dir);
    let relay = Relay::start(&pki, "").await;
    let runs: [(&[&str], &str); 5] = [
        (&["pairs", "--messages", "500", "--size", "256"], "server_cpu_us"),
        // The echoing peer leaves right after its last echo: the reference relay must still
        // deliver it (it once dropped it unflushed, about one run in eight).
        (&["pairs", "--ping-pong", "--messages", "200", "--size", "256"], "p99_us"),
        (&["fanout", "--receivers", "3", "--messages", "200", "--size", "256"], "server_cpu_us"),
        (&["connect", "--count", "20", "--concurrency", "4"], "server_cpu_us"),
        (&["idle", "--count", "400"], "rss_bytes_per_connection"),
    ];
    for (scenario, figure) in runs {
        let mut args = vec!["--reference", "--runs", "2"];
        args.extend_from_slice(scenario);
        let report = bench(&[&relay], &pki, &args).await;
        let comparison = &report["comparison"];
        assert_eq!(comparison["runs"], 2, "{scenario:?}: {report}");
        assert_eq!(comparison[figure]["relay"].as_array().map(Vec::len), Some(2), "{scenario:?}: {report}");
        assert_eq!(
            comparison[figure]["reference"].as_array().map(Vec::len),
            Some(2),
            "{scenario:?}: {report}"
        );
        assert!(report["reference"]["delivery"]["sent"].is_number(), "{scenario:?}: {report}");
        for field in ["lost", "duplicated", "reordered", "corrupted"] {
            assert_eq!(comparison["delivery"][field], 0, "{scenario:?}: {report}");
        }
        assert_eq!(comparison["delivery"]["sent"], comparison["delivery"]["received"], "{report}");
    }
    let left = Command::new("pgrep").args(["-f", "ws-bench.*reference-relay"]).output().unwrap();
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "a reference relay outlived ws-bench");
}

/// --runs without --reference is refused with a reason.
#[test]
fn runs_without_the_reference_are_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_ws-bench"))
        .args(["--runs", "3", "pairs", "--messages", "10"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--runs compares runs"), "{output:?}");
}

/// Two nodes of a cluster: each pair's peers land on different nodes, and every message
/// crosses Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_and_fanout_run_across_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dev_pki(&dir);
    let redis = redis_server::Redis::start().await;
    let node = |name: &str| format!("[cluster]\nredis_url = \"{}\"\nnode_id = \"{name}\"\n", redis.url());
    let one = Relay::start(&pki, &node("one")).await;
    let two = Relay::start(&pki, &node("two")).await;
    for scenario in [
        &["pairs", "--rooms", "2", "--messages", "500", "--size", "300"][..],
        &["pairs", "--ping-pong", "--messages", "100", "--size", "256"],
        &["fanout", "--receivers", "3", "--messages", "300", "--size", "256"],
    ] {
        let report = bench(&[&one, &two], &pki, scenario).await;
        assert!(report["server_cpu_us_per_message"].is_number(), "{scenario:?}: {report}");
    }
}
