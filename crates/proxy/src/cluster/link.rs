//! The connections to Redis, for one server or a Redis Cluster.
//!
//! - One server (or Valkey): a connection manager (multiplexed, reconnecting) for presence,
//!   and two connections of the node's own (`direct.rs`): one that publishes, one for the
//!   node's inbox, each made again when it is lost.
//! - A Redis Cluster: one cluster connection in RESP3 for commands, and sharded pub/sub
//!   (`SSUBSCRIBE`, `SPUBLISH`), whose subscription the cluster client renews after a
//!   reconnection or a resharding. Each room's keys share a hash slot (`{room}`), so its
//!   scripts and pipelines run on one shard.

use std::sync::Arc;

use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Cmd, IntoConnectionInfo, Pipeline, PushInfo, PushKind, RedisFuture, TlsCertificates, Value};
use tokio::sync::{Mutex, MutexGuard, mpsc};

use super::direct::{self, Dialer, Published, Publisher, Subscription};
use super::error::BackplaneError;
use crate::config::ClusterConfig;

/// Longest pause between attempts to reach Redis again.
pub(crate) const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

/// How this node reaches Redis.
pub(crate) enum Link {
    Server { commands: ConnectionManager, dialer: Arc<Dialer> },
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
    Server(Subscription),
    Cluster(MutexGuard<'a, mpsc::UnboundedReceiver<PushInfo>>),
}

impl Inbox<'_> {
    /// The next payload; `None` once the subscription is lost.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        match self {
            Inbox::Server(subscription) => subscription.next().await,
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
        let tcp = TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(direct::keepalive(timeout))
            .set_user_timeout(direct::user_timeout(timeout));
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
                Ok::<_, BackplaneError>(Link::Cluster { commands, pushes: Mutex::new(rx) })
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
                Ok(Link::Server { commands, dialer: Arc::new(Dialer::new(config)?) })
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

    /// What publishes this node's packets: a connection of its own on one server, sharded
    /// publishing through the cluster connection on a Redis Cluster.
    pub(crate) fn outlet(&self) -> Outlet {
        match self {
            Link::Server { dialer, .. } => Outlet::Server(Publisher::new(Arc::clone(dialer))),
            Link::Cluster { commands, .. } => Outlet::Cluster(commands.clone()),
        }
    }

    /// Subscribes to `channel`.
    ///
    /// # Errors
    /// Redis's error.
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<Inbox<'_>, BackplaneError> {
        match self {
            Link::Server { dialer, .. } => Ok(Inbox::Server(dialer.subscribe(channel).await?)),
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

/// Where the publisher sends its packets.
pub(crate) enum Outlet {
    Server(Publisher),
    Cluster(ClusterConnection),
}

impl Outlet {
    /// Publishes each packet to its channel (an inbox); what became of each, in order.
    pub(crate) async fn publish(&mut self, packets: &[(Arc<str>, Bytes)]) -> Vec<Published> {
        match self {
            Outlet::Server(publisher) => publisher.publish(packets).await,
            Outlet::Cluster(commands) => {
                let sends = packets.iter().map(|(channel, packet)| {
                    let mut commands = commands.clone();
                    async move {
                        let publish = redis::cmd("SPUBLISH").arg(&**channel).arg(packet.as_ref()).to_owned();
                        // A connection that failed after the command went out (a timeout, a
                        // reset) may have delivered it; a refused connection or an error reply
                        // did not.
                        match publish.query_async::<u64>(&mut commands).await {
                            Ok(n) => Published::Received(n),
                            Err(e) if e.is_connection_refusal() => Published::NotSent(Arc::new(e.into())),
                            Err(e) if e.is_timeout() || e.is_io_error() || e.is_connection_dropped() => {
                                Published::Unanswered(Arc::new(e.into()))
                            }
                            Err(e) => Published::NotSent(Arc::new(e.into())),
                        }
                    }
                });
                futures_util::future::join_all(sends).await
            }
        }
    }
}
