//! A TCP relay in front of a Redis that can stop forwarding what Redis sends to the
//! connections that subscribed, without closing them: an inbox subscription that goes silent
//! while its connection stays open, which a plain `redis-server` cannot be made to do.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The relay; its tasks end when it is dropped.
pub(crate) struct MutingRelay {
    pub(crate) port: u16,
    muted: Arc<AtomicBool>,
    accepting: JoinHandle<()>,
}

impl MutingRelay {
    /// Relays a free loopback port to Redis on `target`.
    pub(crate) async fn start(target: u16) -> MutingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let muted = Arc::new(AtomicBool::new(false));
        let shared = Arc::clone(&muted);
        let accepting = tokio::spawn(async move {
            let mut pairs = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { continue };
                pairs.spawn(relay(client, server, Arc::clone(&shared)));
            }
        });
        MutingRelay { port, muted, accepting }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// While on, what Redis sends to a connection that has sent `SUBSCRIBE` is dropped.
    pub(crate) fn mute_subscriptions(&self, on: bool) {
        self.muted.store(on, Ordering::Relaxed);
    }
}

impl Drop for MutingRelay {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Copies both ways until either side closes.
async fn relay(client: TcpStream, server: TcpStream, muted: Arc<AtomicBool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let subscriber = Arc::new(AtomicBool::new(false));
    let marks = Arc::clone(&subscriber);
    let upstream = async move {
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            if buf[..n].windows(9).any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE")) {
                marks.store(true, Ordering::Relaxed);
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
