//! The two ways a benchmark peer talks: WebSocket frames through the relay under test, or
//! length-prefixed frames through the floor (a bare mTLS byte forwarder). Scenarios see only a
//! sink and a stream of frames, so both are measured by the same code.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

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
    /// The floor forwarder at this address.
    Floor(std::net::SocketAddr),
}

impl Target {
    /// Connects identity `n` to `room`; for the relay, also sends a HELLO (`announce`).
    pub(crate) async fn connect(&self, ids: &Identities, room: &str, n: usize) -> Result<Conn> {
        match self {
            Target::Relay(urls) => {
                let mut ws = ids.connect(node_url(urls, n), room, n).await?;
                hello(&mut ws, &format!("peer-{n}")).await?;
                Ok(ws_conn(ws))
            }
            Target::Floor(addr) => floor_connect(*addr, ids, room, n).await,
        }
    }

    /// Connects the two peers of a room and waits until either can send to the other.
    pub(crate) async fn pair(&self, ids: &Identities, room: &str) -> Result<(Conn, Conn)> {
        match self {
            Target::Relay(urls) => {
                let (a, b) = crate::peers::pair(ids, node_url(urls, 0), node_url(urls, 1), room).await?;
                Ok((ws_conn(a), ws_conn(b)))
            }
            // The floor pairs two connections as soon as both have named the room.
            Target::Floor(_) => Ok((self.connect(ids, room, 0).await?, self.connect(ids, room, 1).await?)),
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

async fn floor_connect(addr: std::net::SocketAddr, ids: &Identities, room: &str, n: usize) -> Result<Conn> {
    let options = micronets_client::tls::TlsOptions {
        client_cert: Some(ids.cert(n)?),
        ca_cert: Some(ids.root_cert()),
        ..Default::default()
    };
    let config = micronets_client::tls::client_config(&options)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls =
        tokio_rustls::TlsConnector::from(config).connect(ServerName::try_from("localhost")?, tcp).await?;
    tls.write_all(format!("{room}\n").as_bytes()).await?;
    // Without a flush the line can stay in the TLS session's buffer, and both ends then wait
    // for each other (what made `idle` through the floor hang).
    tls.flush().await?;
    // The floor acknowledges with one byte once the connection is registered.
    let ack = tokio::io::AsyncReadExt::read_u8(&mut tls)
        .await
        .context("the floor closed before its acknowledgement")?;
    anyhow::ensure!(ack == b'+', "unexpected acknowledgement byte {ack:#x} from the floor");
    let framed = Framed::new(tls, LengthDelimitedCodec::new());
    let (sink, stream) = framed.split();
    let sink = sink.sink_map_err(anyhow::Error::from);
    let stream = stream.map(|frame| frame.map(|b| b.freeze()).map_err(anyhow::Error::from));
    Ok(Conn { sink: Box::pin(sink), stream: Box::pin(stream) })
}

/// The floor: a minimal mutual-TLS forwarder. Each connection names its room on a first line
/// and gets one byte back (`+`) once registered; the second connection of a room is spliced to
/// the first, bytes copied both ways. No
/// WebSocket, no envelope: what relaying costs at the least with the same TLS.
pub(crate) async fn floor_server(bind: std::net::SocketAddr, pki: &Path) -> Result<()> {
    let server_pem: PathBuf = pki.join("micronets-ws-proxy.pkeycert.pem");
    let tls = relay_tls(pki, &server_pem)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind(bind).await?;
    eprintln!("floor listening on {}", listener.local_addr()?);
    let waiting: Arc<
        std::sync::Mutex<
            std::collections::HashMap<String, tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
        >,
    > = Arc::default();
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let waiting = Arc::clone(&waiting);
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else { return };
            let mut room = Vec::new();
            loop {
                let Ok(byte) = tokio::io::AsyncReadExt::read_u8(&mut tls).await else { return };
                if byte == b'\n' || room.len() > 256 {
                    break;
                }
                room.push(byte);
            }
            let room = String::from_utf8_lossy(&room).into_owned();
            if tls.write_all(b"+").await.is_err() || tls.flush().await.is_err() {
                return;
            }
            let peer = waiting.lock().map(|mut w| w.remove(&room)).ok().flatten();
            match peer {
                Some(mut other) => {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut other).await;
                }
                None => {
                    if let Ok(mut w) = waiting.lock() {
                        w.insert(room, tls);
                    }
                }
            }
        });
    }
}

/// The relay's own server TLS configuration (its `tls::server_config`), built for the PKI's
/// proxy certificate: the floor and the relay do exactly the same TLS work.
fn relay_tls(pki: &Path, server_pem: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let toml = format!(
        "[tls]\nserver_cert = {:?}\nclient_ca = {:?}\n",
        server_pem.display().to_string(),
        pki.join("micronets-ws-root.cert.pem").display().to_string()
    );
    let file = micronets_proxy::FileConfig::parse(&toml).map_err(anyhow::Error::msg)?;
    let config = file.into_config(&micronets_proxy::Overrides::default())?;
    Ok(micronets_proxy::tls::server_config(&config)?)
}
