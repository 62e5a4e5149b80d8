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
}

impl Redis {
    pub(crate) async fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server is installed (scripts/test installs it)");
            if answers(port, &mut child).await {
                return Redis { child, port, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start");
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
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
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        assert!(answers(self.port, &mut child).await, "redis-server restarted");
        self.child = child;
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
