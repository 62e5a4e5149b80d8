//! The TLS stream's tests: real handshakes on loopback, what is held and when it is written.

use std::sync::Arc;

use micronets_certgen::dev::{self, DevPki};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::client::TlsStream as ClientStream;

use super::*;
use crate::config::{FileConfig, Overrides};

struct Pair {
    server: TlsStream,
    client: ClientStream<TcpStream>,
}

fn pki() -> (tempfile::TempDir, DevPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(dir.path().join("dev"));
    dev::ensure(&pki).unwrap();
    (dir, pki)
}

fn client_config(
    pki: &DevPki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    with_cert: bool,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(pki.root_cert()).unwrap() {
        roots.add(der.unwrap()).unwrap();
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
    let config = if with_cert {
        let pem = pki.pkeycert(&dev::CLIENTS[0]);
        let chain = CertificateDer::pem_file_iter(&pem).unwrap().map(Result::unwrap).collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&pem).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(config)
}

/// A server stream and a rustls client over loopback; `Err` is the server's handshake error.
async fn connect(
    pki: &DevPki,
    client: Arc<rustls::ClientConfig>,
) -> (io::Result<TlsStream>, io::Result<ClientStream<TcpStream>>) {
    let config = FileConfig::dev(pki).into_config(&Overrides::default()).unwrap();
    let server = crate::edge::tls::server_config(&config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(server, tcp).await
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let client = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await;
    (accepting.await.unwrap(), client)
}

async fn pair(pki: &DevPki, versions: &[&'static rustls::SupportedProtocolVersion]) -> Pair {
    let (server, client) = connect(pki, client_config(pki, versions, true)).await;
    Pair { server: server.unwrap(), client: client.unwrap() }
}

/// Nothing held but the session: what an idle connection costs.
fn holds_no_buffer(stream: &TlsStream) -> bool {
    stream.incoming.capacity() == 0 && stream.outgoing.capacity() == 0 && stream.plain.capacity() == 0
}

#[tokio::test]
async fn a_megabyte_crosses_both_ways_in_tls13_and_tls12_and_no_buffer_stays() {
    let (_dir, pki) = pki();
    for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
        let Pair { mut server, mut client } = pair(&pki, versions).await;
        let tls13 = versions[0] == &rustls::version::TLS13;
        assert!(holds_no_buffer(&server) || (tls13 && server.holding), "after the handshake");
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            let mut back = vec![0u8; sent.len()];
            client.read_exact(&mut back).await.unwrap();
            (client, back)
        });
        let mut got = vec![0u8; data.len()];
        server.read_exact(&mut got).await.unwrap();
        assert!(got == data, "received intact");
        // Written back as two slices, the way the framing writes a header and a payload.
        let (head, tail) = got.split_at(3);
        let mut slices = [IoSlice::new(head), IoSlice::new(tail)];
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            let n = std::future::poll_fn(|cx| Pin::new(&mut server).poll_write_vectored(cx, slices))
                .await
                .unwrap();
            IoSlice::advance_slices(&mut slices, n);
        }
        server.flush().await.unwrap();
        let (mut client, back) = writer.await.unwrap();
        assert!(back == data, "sent back intact");
        // Large writes keep the send buffer (not zeroed for each); small ones, like the
        // pings an idle connection gets, give it back once they have drained it twice.
        assert!(server.outgoing.capacity() > 0, "kept while large writes flow: {versions:?}");
        for _ in 0..2 {
            server.write_all(b"ping").await.unwrap();
            server.flush().await.unwrap();
            let mut ping = [0u8; 4];
            client.read_exact(&mut ping).await.unwrap();
            assert_eq!(&ping, b"ping");
        }
        assert!(holds_no_buffer(&server), "drained: {versions:?}");
    }
}

#[tokio::test]
async fn tls13_tickets_wait_for_the_first_write_and_resume_the_next_session() {
    let (_dir, pki) = pki();
    let config = FileConfig::dev(&pki).into_config(&Overrides::default()).unwrap();
    let server_config = crate::edge::tls::server_config(&config).unwrap();
    let client_config = client_config(&pki, &[&rustls::version::TLS13], true);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    for round in ["full", "resumed"] {
        let (accepted, tcp) = tokio::join!(listener.accept(), TcpStream::connect(addr));
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&client_config));
        let name = ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(
            accept(Arc::clone(&server_config), accepted.unwrap().0),
            connector.connect(name, tcp.unwrap())
        );
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        let kind = server.session().handshake_kind();
        let expected =
            if round == "full" { rustls::HandshakeKind::Full } else { rustls::HandshakeKind::Resumed };
        assert_eq!(kind, Some(expected), "{round}");
        assert!(server.holding && server.queued() > 0, "{round}: the tickets are held");
        // Loopback delivers a write before it returns: had the tickets been sent, they
        // would be waiting in the client's socket now.
        let mut peek = [0u8; 1];
        let waiting = client.get_ref().0.try_read(&mut peek);
        assert!(
            matches!(&waiting, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "{round}: nothing sent before the first write: {waiting:?}"
        );
        server.write_all(b"HTTP/1.1 101").await.unwrap();
        server.flush().await.unwrap();
        assert!(!server.holding && holds_no_buffer(&server), "{round}: all sent");
        let mut answer = [0u8; 12];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 101");
    }
}

#[tokio::test]
async fn a_message_a_little_over_the_queue_is_taken_in_one_write() {
    let (_dir, pki) = pki();
    let Pair { mut server, mut client } = pair(&pki, &[&rustls::version::TLS13]).await;
    // The client reads all along, so that the socket always takes what is written.
    let (total, expected) = tokio::sync::oneshot::channel::<usize>();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut expected = std::pin::pin!(expected);
        let mut want = None;
        while want.is_none_or(|w| got.len() < w) {
            tokio::select! {
                n = client.read(&mut buf) => got.extend_from_slice(&buf[..n.unwrap()]),
                w = &mut expected, if want.is_none() => want = Some(w.unwrap()),
            }
        }
        got.len()
    });
    let (head, payload) = ([0x82u8, 127, 0, 0, 0, 0, 0, 1, 0, 0], vec![7u8; MAX_QUEUED]);
    let slices = [IoSlice::new(&head), IoSlice::new(&payload)];
    let n = std::future::poll_fn(|cx| Pin::new(&mut server).poll_write_vectored(cx, &slices)).await.unwrap();
    assert_eq!(n, head.len() + payload.len(), "the frame's header does not leave a tail for a second write");
    // More than one record past the queue's size is left for the next write.
    let big = vec![7u8; MAX_QUEUED + 2 * MAX_PLAINTEXT];
    let m = std::future::poll_fn(|cx| Pin::new(&mut server).poll_write_vectored(cx, &[IoSlice::new(&big)]))
        .await
        .unwrap();
    assert!(m < big.len(), "the queue is bounded: {m}");
    server.flush().await.unwrap();
    total.send(n + m).unwrap();
    assert_eq!(reader.await.unwrap(), n + m);
}

#[tokio::test]
async fn a_key_update_from_the_client_is_followed() {
    let (_dir, pki) = pki();
    let Pair { mut server, mut client } = pair(&pki, &[&rustls::version::TLS13]).await;
    client.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    server.read_exact(&mut buf).await.unwrap();
    client.get_mut().1.refresh_traffic_keys().unwrap();
    client.write_all(b"after!").await.unwrap();
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!");
    server.write_all(b"answer").await.unwrap();
    server.flush().await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"answer");
}

#[tokio::test]
async fn close_notify_ends_the_stream_and_a_bare_close_is_an_unexpected_end() {
    let (_dir, pki) = pki();
    let Pair { mut server, mut client } = pair(&pki, &[&rustls::version::TLS13]).await;
    client.shutdown().await.unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(server.read(&mut buf).await.unwrap(), 0, "close_notify: a clean end");
    server.shutdown().await.unwrap();

    // The TCP stream ends without close_notify: cut, not closed.
    let Pair { mut server, mut client } = pair(&pki, &[&rustls::version::TLS13]).await;
    client.get_mut().0.shutdown().await.unwrap();
    let end = server.read(&mut buf).await.unwrap_err();
    assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof, "{end}");
}

#[tokio::test]
async fn garbage_after_the_handshake_fails_the_stream_cleanly() {
    let (_dir, pki) = pki();
    let Pair { mut server, mut client } = pair(&pki, &[&rustls::version::TLS13]).await;
    // An application-data record whose ciphertext is noise.
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    record.extend((0..0x40).map(|i| i as u8));
    client.get_mut().0.write_all(&record).await.unwrap();
    let mut buf = [0u8; 8];
    let error = server.read(&mut buf).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    assert!(server.write_all(b"more").await.is_err(), "a failed session sends no data");
    assert!(server.read(&mut buf).await.is_err(), "nor reads any");
    let _ = server.shutdown().await;
}

#[tokio::test]
async fn a_refused_handshake_names_its_reason_and_alerts_the_client() {
    let (_dir, pki) = pki();
    let (server, client) = connect(&pki, client_config(&pki, &[&rustls::version::TLS12], false)).await;
    let error = server.err().unwrap();
    assert_eq!(crate::edge::tls::handshake_failure(&error).0, "no_client_certificate");
    let alert = client.err().unwrap().to_string();
    assert!(alert.contains("CertificateRequired") || alert.contains("HandshakeFailure"), "{alert}");
}
