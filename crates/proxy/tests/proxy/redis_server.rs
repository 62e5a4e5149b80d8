//! A `redis-server` of a test's own on a free loopback port, for the cluster tests (shared by
//! the proxy's tests and the end-to-end tests).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the server may take to answer.
const START: Duration = Duration::from_secs(10);

/// A `redis-server` of this test's own, stopped (by PID) when dropped.
pub(crate) struct Redis {
    child: Child,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
    /// Whether it is a node of a Redis Cluster.
    clustered: bool,
}

/// Starts `redis-server` on `port` with its files in `dir`.
fn spawn(port: u16, dir: &std::path::Path, clustered: bool) -> Child {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--unixsocket")
        .arg(dir.join("redis.sock"))
        .args(["--unixsocketperm", "700"])
        .stdout(Stdio::null());
    if clustered {
        command.args(["--cluster-enabled", "yes", "--cluster-config-file", &format!("nodes-{port}.conf")]);
    }
    command.spawn().expect("redis-server is installed (scripts/test installs it)")
}

/// A free port whose cluster bus port (10,000 above it) is free too.
fn free_port(clustered: bool) -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !clustered {
            return port;
        }
        let bus =
            port.checked_add(10_000).filter(|bus| std::net::TcpListener::bind(("127.0.0.1", *bus)).is_ok());
        if bus.is_some() {
            return port;
        }
    }
}

impl Redis {
    pub(crate) async fn start() -> Redis {
        Redis::start_node(false).await
    }

    async fn start_node(clustered: bool) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port(clustered);
            let mut child = spawn(port, dir.path(), clustered);
            if answers(port, &mut child).await {
                return Redis { child, port, dir, clustered };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start");
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's Unix socket, as a `redis+unix://` URL with `query`.
    pub(crate) fn socket_url(&self, query: &str) -> String {
        format!("redis+unix://{}?{query}", self.dir.path().join("redis.sock").display())
    }

    /// Sends one inline command and returns Redis's first reply line.
    pub(crate) async fn command(&self, command: &str) -> String {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        tcp.write_all(format!("{command}\r\n").as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            tcp.read_exact(&mut byte).await.unwrap();
            reply.push(byte[0]);
        }
        String::from_utf8_lossy(&reply).trim_end().to_owned()
    }

    /// A server that speaks only TLS, with the certificate and key in `pkeycert`; its URL is
    /// `rediss://localhost:<port>`.
    pub(crate) async fn start_tls(pkeycert: &std::path::Path, ca: &std::path::Path) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port(false);
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--tls-auth-clients", "no", "--tls-cert-file"])
            .arg(pkeycert)
            .arg("--tls-key-file")
            .arg(pkeycert)
            .arg("--tls-ca-cert-file")
            .arg(ca)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = tokio::time::Instant::now() + START;
        loop {
            let ping = Command::new("redis-cli")
                .args(["--tls", "--cacert"])
                .arg(ca)
                .args(["-h", "localhost", "-p", &port.to_string(), "ping"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&ping.stdout).trim() == "PONG" {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "redis-server with TLS did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Redis { child, port, dir, clustered: false }
    }

    /// Sends the server a signal (`STOP` makes it a black hole: connections stay open, and
    /// nothing answers; `CONT` brings it back).
    pub(crate) fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Stops the server, at once, as a crash would.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port, empty.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        let mut child = spawn(self.port, self.dir.path(), self.clustered);
        assert!(answers(self.port, &mut child).await, "redis-server restarted");
        self.child = child;
    }
}

/// A Redis Cluster of three primaries, each with a slice of the hash slots.
pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<Redis>,
}

impl RedisCluster {
    pub(crate) async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(Redis::start_node(true).await);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let created = create.args(["--cluster-replicas", "0", "--cluster-yes"]).output().unwrap();
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let deadline = tokio::time::Instant::now() + START;
        for node in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "the cluster never became ok");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        RedisCluster { nodes }
    }

    /// The nodes' URLs, comma-separated.
    pub(crate) fn urls(&self) -> String {
        self.nodes.iter().map(Redis::url).collect::<Vec<_>>().join(",")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // A stopped server dies of SIGKILL too; resuming it first is harmless.
        let _ = Command::new("kill").arg("-CONT").arg(self.child.id().to_string()).status();
        self.kill();
    }
}

/// Waits until the server on `port` answers PING, or the child has exited.
async fn answers(port: u16, child: &mut Child) -> bool {
    let deadline = tokio::time::Instant::now() + START;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)).await {
            let mut reply = [0u8; 7];
            if tcp.write_all(b"PING\r\n").await.is_ok() && tcp.read_exact(&mut reply).await.is_ok() {
                return &reply == b"+PONG\r\n";
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
