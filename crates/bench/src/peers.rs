//! The benchmark's peers: identities minted from the PKI, connections, the HELLO exchange.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use micronets_certgen::{Authority, KeyType, LeafSpec, Usage};
use micronets_client::connect::{ConnectOptions, Ws, connect};
use micronets_client::tls::TlsOptions;
use tokio_tungstenite::tungstenite::Message;

/// Where peers get their certificates.
pub(crate) struct Identities {
    root_cert: PathBuf,
    authority: Authority,
    dir: PathBuf,
}

impl Identities {
    /// Uses `pki` (a `certgen dev` directory); minted certificates go to a fresh temp dir.
    pub(crate) fn new(pki: &Path) -> Result<Self> {
        let root_cert = pki.join("micronets-ws-root.cert.pem");
        let authority = Authority::load(&root_cert, &pki.join("micronets-ws-root.key.pem"))
            .with_context(|| format!("loading the CA of {}", pki.display()))?;
        let dir = std::env::temp_dir().join(format!("ws-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Identities { root_cert, authority, dir })
    }

    /// The root certificate every peer trusts.
    pub(crate) fn root_cert(&self) -> PathBuf {
        self.root_cert.clone()
    }

    /// The pkeycert of identity `n` (one certificate per peer of a room: the relay replaces a
    /// member when the same certificate joins again).
    pub(crate) fn cert(&self, n: usize) -> Result<PathBuf> {
        let base = self.dir.join(format!("peer-{n}"));
        let path = micronets_certgen::files::with_suffix(&base, ".pkeycert.pem");
        if !path.exists() {
            let issued = self.authority.issue_leaf(&LeafSpec {
                org: "ws-bench".into(),
                common_name: format!("bench-peer-{n}"),
                days: 2,
                key_type: KeyType::P256,
                usage: Usage::Client,
                dns_names: Vec::new(),
                ip_addresses: Vec::new(),
            })?;
            micronets_certgen::files::write_issued(&base, &issued, true, true)?;
        }
        Ok(path)
    }

    /// Connects identity `n` to `room` (full handshake: every connection builds its own TLS
    /// configuration, so there is no session resumption).
    pub(crate) async fn connect(&self, base_url: &str, room: &str, n: usize) -> Result<Ws> {
        let options = ConnectOptions {
            url: format!("{base_url}{room}"),
            tls: TlsOptions {
                client_cert: Some(self.cert(n)?),
                ca_cert: Some(self.root_cert.clone()),
                ..TlsOptions::default()
            },
            via: None,
            headers: Vec::new(),
            timeout: Duration::from_secs(30),
            max_frame_bytes: 16 << 20,
            local_address: None,
        };
        Ok(connect(&options).await?)
    }
}

impl Drop for Identities {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends our HELLO.
pub(crate) async fn hello(ws: &mut Ws, id: &str) -> Result<()> {
    let text = format!(
        r#"{{"message":{{"messageId":0,"messageType":"CONN:HELLO","requiresResponse":false,"peerClass":"ws-bench","peerId":"{id}"}}}}"#
    );
    ws.send(Message::text(text)).await?;
    Ok(())
}

/// Reads frames until one of `message_type` arrives.
pub(crate) async fn expect(ws: &mut Ws, message_type: &str) -> Result<()> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.as_str().contains(message_type) => return Ok(()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                bail!("closed while waiting for {message_type}: {frame:?}")
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => bail!("waiting for {message_type}: {e}"),
            Ok(None) => bail!("connection ended while waiting for {message_type}"),
            Err(_) => bail!("no {message_type} within 30 s"),
        }
    }
}

/// Two peers of one room, past the HELLO exchange. Both connect before either says HELLO, so
/// that a relay that holds nothing for a peer not yet there (the reference relay) pairs them
/// too.
pub(crate) async fn pair(ids: &Identities, url_a: &str, url_b: &str, room: &str) -> Result<(Ws, Ws)> {
    let mut a = ids.connect(url_a, room, 0).await?;
    let mut b = ids.connect(url_b, room, 1).await?;
    hello(&mut a, "a").await?;
    hello(&mut b, "b").await?;
    expect(&mut a, "CONN:HELLO").await?;
    expect(&mut b, "CONN:HELLO").await?;
    Ok((a, b))
}
