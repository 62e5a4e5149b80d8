//! A TCP relay in front of a Redis that can stop forwarding what Redis sends to the
//! connections that subscribed, without closing them (an inbox subscription that goes silent
//! while its connection stays open), or slow down what the connections that publish send (a
//! slow link to Redis): what a plain `redis-server` cannot be made to do.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The relay; its tasks end when it is dropped.
pub(crate) struct MutingRelay {
    pub(crate) port: u16,
    muted: Arc<AtomicBool>,
    /// Bytes a second a publishing connection may send; 0 for no limit.
    rate: Arc<AtomicU64>,
    accepting: JoinHandle<()>,
}

impl MutingRelay {
    /// Relays a free loopback port to Redis on `target`.
    pub(crate) async fn start(target: u16) -> MutingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let muted = Arc::new(AtomicBool::new(false));
        let rate = Arc::new(AtomicU64::new(0));
        let (shared, limit) = (Arc::clone(&muted), Arc::clone(&rate));
        let accepting = tokio::spawn(async move {
            let mut pairs = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { continue };
                pairs.spawn(relay(client, server, Arc::clone(&shared), Arc::clone(&limit)));
            }
        });
        MutingRelay { port, muted, rate, accepting }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// While on, what Redis sends to a connection that has sent `SUBSCRIBE` is dropped.
    pub(crate) fn mute_subscriptions(&self, on: bool) {
        self.muted.store(on, Ordering::Relaxed);
    }

    /// Lets a connection that has sent `PUBLISH` send at most `bytes_per_second` (0: no limit).
    pub(crate) fn slow_publishing(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::Relaxed);
    }
}

impl Drop for MutingRelay {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Copies both ways until either side closes.
async fn relay(client: TcpStream, server: TcpStream, muted: Arc<AtomicBool>, rate: Arc<AtomicU64>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let subscriber = Arc::new(AtomicBool::new(false));
    let marks = Arc::clone(&subscriber);
    let upstream = async move {
        let mut buf = vec![0u8; 16 << 10];
        let mut publisher = false;
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            if buf[..n].windows(9).any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE")) {
                marks.store(true, Ordering::Relaxed);
            }
            publisher |= buf[..n].windows(7).any(|w| w.eq_ignore_ascii_case(b"PUBLISH"));
            let limit = rate.load(Ordering::Relaxed);
            if publisher && limit > 0 {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / limit as f64)).await;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
            if subscriber.load(Ordering::Relaxed) && muted.load(Ordering::Relaxed) {
                continue;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}
