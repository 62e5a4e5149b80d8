//! The connections to Redis, for one server or a Redis Cluster.
//!
//! - One server (or Valkey): a connection manager (multiplexed, reconnecting) for commands,
//!   and a dedicated pub/sub connection for the node's inbox, made again when it is lost.
//! - A Redis Cluster: one cluster connection in RESP3 for commands, and sharded pub/sub
//!   (`SSUBSCRIBE`, `SPUBLISH`), whose subscription the cluster client renews after a
//!   reconnection or a resharding. Each room's keys share a hash slot (`{room}`), so its
//!   scripts and pipelines run on one shard.

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Cmd, IntoConnectionInfo, Pipeline, PushInfo, PushKind, RedisFuture, TlsCertificates, Value};
use tokio::sync::{Mutex, MutexGuard, mpsc};

use super::error::BackplaneError;
use crate::config::ClusterConfig;

/// Longest pause between attempts to reach Redis again.
pub(crate) const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

/// How this node reaches Redis.
pub(crate) enum Link {
    Server { client: redis::Client, commands: ConnectionManager },
    Cluster { commands: ClusterConnection, pushes: Mutex<mpsc::UnboundedReceiver<PushInfo>> },
}

/// A handle for commands, cheap to clone.
#[derive(Clone)]
pub(crate) enum Commands {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Server(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Server(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

/// A subscription to the inbox: the payloads published to it.
pub(crate) enum Inbox<'a> {
    Server(PubSubStream),
    Cluster(MutexGuard<'a, mpsc::UnboundedReceiver<PushInfo>>),
}

impl Inbox<'_> {
    /// The next payload; `None` once the subscription is lost.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        match self {
            Inbox::Server(stream) => {
                stream.next().await.map(|m| Bytes::copy_from_slice(m.get_payload_bytes()))
            }
            Inbox::Cluster(pushes) => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    PushKind::SMessage => {
                        if let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) {
                            return Some(Bytes::from(payload));
                        }
                    }
                    PushKind::Disconnection => return None,
                    _ => {}
                }
            },
        }
    }
}

impl Link {
    /// Connects, within `command_timeout` (twice, for the connection and a first command).
    ///
    /// # Errors
    /// Why Redis cannot be used.
    pub(crate) async fn connect(config: &ClusterConfig) -> Result<Link, BackplaneError> {
        let timeout = config.command_timeout;
        let root = match &config.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|source| BackplaneError::CaFile { path: path.clone(), source })?,
            ),
            None => None,
        };
        let certificates = || TlsCertificates { client_tls: None, root_cert: root.clone() };
        // A silent Redis (a black hole) is noticed by the kernel too, not only by the command
        // timeouts: unacknowledged writes abort the connection after three command timeouts,
        // and an idle one (the inbox's) is probed from one command timeout on (the kernel
        // counts whole seconds).
        let probe = timeout.max(std::time::Duration::from_secs(1));
        let keepalive = socket2::TcpKeepalive::new().with_time(probe).with_interval(probe).with_retries(3);
        let tcp =
            TcpSettings::default().set_nodelay(true).set_keepalive(keepalive).set_user_timeout(timeout * 3);
        let connecting = async {
            if config.redis_cluster {
                let seeds: Vec<&str> = config.redis_url.split(',').map(str::trim).collect();
                let (tx, rx) = mpsc::unbounded_channel();
                let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .tcp_settings(tcp)
                    // A command is never sent twice: a note published twice would be
                    // delivered twice.
                    .retries(0);
                if root.is_some() {
                    builder = builder.certs(certificates());
                }
                let commands = builder.build()?.get_async_connection().await?;
                Ok(Link::Cluster { commands, pushes: Mutex::new(rx) })
            } else {
                let info = config.redis_url.as_str().into_connection_info()?.set_tcp_settings(tcp);
                let client = match root {
                    Some(_) => redis::Client::build_with_tls(info, certificates())?,
                    None => redis::Client::open(info)?,
                };
                let manager = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_max_delay(MAX_BACKOFF);
                let commands = client.get_connection_manager_with_config(manager).await?;
                Ok::<_, redis::RedisError>(Link::Server { client, commands })
            }
        };
        let link = tokio::time::timeout(timeout * 2, connecting)
            .await
            .map_err(|_| BackplaneError::Timeout(timeout * 2))??;
        let mut commands = link.commands();
        let ping = redis::cmd("PING");
        tokio::time::timeout(timeout, ping.query_async::<String>(&mut commands))
            .await
            .map_err(|_| BackplaneError::Timeout(timeout))??;
        Ok(link)
    }

    pub(crate) fn commands(&self) -> Commands {
        match self {
            Link::Server { commands, .. } => Commands::Server(commands.clone()),
            Link::Cluster { commands, .. } => Commands::Cluster(commands.clone()),
        }
    }

    /// The publish command: sharded on a Redis Cluster.
    pub(crate) fn publish(&self) -> &'static str {
        match self {
            Link::Server { .. } => "PUBLISH",
            Link::Cluster { .. } => "SPUBLISH",
        }
    }

    /// Subscribes to `channel`.
    ///
    /// # Errors
    /// Redis's error.
    pub(crate) async fn subscribe(&self, channel: &str) -> redis::RedisResult<Inbox<'_>> {
        match self {
            Link::Server { client, .. } => {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok(Inbox::Server(pubsub.into_on_message()))
            }
            Link::Cluster { commands, pushes } => {
                // The one reader of the cluster's pushes holds them while subscribed; the
                // guard is given back when the subscription is made again.
                let pushes = pushes.lock().await;
                commands.clone().ssubscribe(channel).await?;
                Ok(Inbox::Cluster(pushes))
            }
        }
    }
}
