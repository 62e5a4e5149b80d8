//! How a benchmark peer reaches the relay under test or the reference relay: WebSocket frames,
//! seen by the scenarios only as a sink and a stream of bytes, so both are measured by the same
//! code.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::peers::{Identities, hello};

/// Frames out.
pub(crate) type FrameSink = Pin<Box<dyn Sink<Bytes, Error = anyhow::Error> + Send>>;
/// Frames in.
pub(crate) type FrameStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// A connected peer.
pub(crate) struct Conn {
    pub(crate) sink: FrameSink,
    pub(crate) stream: FrameStream,
}

/// Where the peers connect.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// The relay: `wss://host:port/prefix/` (rooms are appended), one URL per node.
    Relay(Vec<String>),
    /// The reference relay (`reference.rs`) at this URL: the same protocol, but it holds
    /// nothing for a peer that is not there yet and tells no peer of anything.
    Reference(String),
}

impl Target {
    /// Connects identity `n` to `room`; for the relay, also sends a HELLO (`announce`).
    pub(crate) async fn connect(&self, ids: &Identities, room: &str, n: usize) -> Result<Conn> {
        let mut ws = ids.connect(node_url(self.urls(), n), room, n).await?;
        hello(&mut ws, &format!("peer-{n}")).await?;
        Ok(ws_conn(ws))
    }

    /// Connects the two peers of a room and waits until either can send to the other.
    pub(crate) async fn pair(&self, ids: &Identities, room: &str) -> Result<(Conn, Conn)> {
        let urls = self.urls();
        let (a, b) = crate::peers::pair(ids, node_url(urls, 0), node_url(urls, 1), room).await?;
        Ok((ws_conn(a), ws_conn(b)))
    }

    /// The URLs peers connect to, one per node.
    pub(crate) fn urls(&self) -> &[String] {
        match self {
            Target::Relay(urls) => urls,
            Target::Reference(url) => std::slice::from_ref(url),
        }
    }
}

/// The node peer `n` connects to: the nodes in turn.
pub(crate) fn node_url(urls: &[String], n: usize) -> &str {
    urls.get(n % urls.len().max(1)).map_or("", String::as_str)
}

/// A WebSocket whose data frames are seen as bytes (text frames out, any data frame in).
pub(crate) fn ws_conn(ws: micronets_client::connect::Ws) -> Conn {
    let (sink, stream) = ws.split();
    let sink = sink.sink_map_err(anyhow::Error::from).with(|bytes: Bytes| async move {
        let text = Utf8Bytes::try_from(bytes).context("benchmark frames are UTF-8")?;
        anyhow::Ok(Message::Text(text))
    });
    let stream = stream.filter_map(|message| async move {
        match message {
            Ok(Message::Text(text)) => Some(Ok(Bytes::from(text))),
            Ok(Message::Binary(bytes)) => Some(Ok(bytes)),
            Ok(Message::Close(frame)) => Some(Err(anyhow::anyhow!("closed: {frame:?}"))),
            Ok(_) => None,
            Err(e) => Some(Err(e.into())),
        }
    });
    Conn { sink: Box::pin(sink), stream: Box::pin(stream) }
}

/// The relay's own server TLS configuration (its `tls::server_config`), built for the PKI's
/// proxy certificate: the reference relay and ws-proxy do exactly the same TLS work.
pub(crate) fn relay_tls(pki: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let server_pem = pki.join("micronets-ws-proxy.pkeycert.pem");
    let toml = format!(
        "[tls]\nserver_cert = {:?}\nclient_ca = {:?}\n",
        server_pem.display().to_string(),
        pki.join("micronets-ws-root.cert.pem").display().to_string()
    );
    let file = micronets_proxy::FileConfig::parse(&toml).map_err(anyhow::Error::msg)?;
    let config = file.into_config(&micronets_proxy::Overrides::default())?;
    Ok(micronets_proxy::tls::server_config(&config)?)
}
