//! Every scenario of the real `ws-bench` binary, with tiny parameters, against the proxy run
//! in this process (so `--server-pid` is this process): the tool keeps working and its
//! delivery checks pass. Figures are not asserted: they are the benchmark's to report.

use std::process::Command;

use micronets_certgen::dev::{self, DevPki};
use micronets_proxy::{FileConfig, Overrides, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_verifies_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(dir.path().join("dev"));
    dev::ensure(&pki).unwrap();
    let toml = format!(
        "[listen]\nbind = \"127.0.0.1:0\"\n[tls]\nserver_cert = {:?}\nclient_ca = {:?}\n[rooms]\nmax_peers = 4\n[limits]\nslow_consumer_timeout = \"1s\"\n",
        pki.pkeycert(&dev::PROXY).display().to_string(),
        pki.root_cert().display().to_string(),
    );
    let config = FileConfig::parse(&toml).unwrap().into_config(&Overrides::default()).unwrap();
    let listener = tokio::net::TcpListener::bind(config.bind).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let proxy = Proxy::new(config).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        proxy
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await;
    });

    let url = format!("wss://localhost:{port}/micronets/v1/ws-proxy/");
    let pid = std::process::id().to_string();
    let runs: [&[&str]; 6] = [
        &["pairs", "--rooms", "2", "--messages", "500", "--size", "300"],
        &["pairs", "--ping-pong", "--messages", "100", "--size", "256"],
        &["fanout", "--receivers", "3", "--messages", "300", "--size", "256"],
        &["connect", "--count", "20", "--concurrency", "4"],
        &["idle", "--count", "20"],
        &["slow", "--rooms", "2", "--messages", "300", "--size", "1024"],
    ];
    for scenario in runs {
        let pki_dir = pki.dir.display().to_string();
        let mut args: Vec<String> = vec![
            "--url".into(),
            url.clone(),
            "--pki".into(),
            pki_dir,
            "--server-pid".into(),
            pid.clone(),
            "--json".into(),
        ];
        args.extend(scenario.iter().map(|s| (*s).to_owned()));
        let output = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_ws-bench")).args(&args).output().unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{scenario:?}\n{stdout}\n{stderr}");
        let report: serde_json::Value =
            serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        assert_eq!(report["scenario"], scenario[0]);
        for field in ["lost", "duplicated", "reordered", "corrupted"] {
            assert_eq!(report["delivery"][field], 0, "{scenario:?}: {report}");
        }
        assert_eq!(report["delivery"]["sent"], report["delivery"]["received"], "{report}");
        let expected = match scenario[0] {
            "pairs" | "fanout" => "server_cpu_us_per_message",
            "connect" => "server_cpu_us_per_handshake",
            "idle" => "server_rss_bytes_per_connection",
            _ => "throughput_ratio_next_to_stalled_room",
        };
        assert!(report[expected].is_number(), "{scenario:?}: no {expected} in {report}");
    }
    let _ = stop.send(());
    server.await.unwrap();
}
