//! `wss://` with a self-signed test CA: trusted only when added with
//! `ClientOptions::add_root_ca_pem_file`.
//!
//! The certificates in `tests/fixtures` come from `fixtures/gen.sh` (a test CA
//! and a server certificate for 127.0.0.1, valid until 2126; test-only keys).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pulsegate_client::{publish, ClientError, ClientOptions, Codec};
use pulsegate_proto::{ClientFrame, Reply, ServerFrame};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_websockets::Message;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Serves one TLS WebSocket connection that answers a single `pub`.
async fn serve_one_tls_publish(listener: TcpListener) -> Result<(), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let (tcp, _) = listener.accept().await.unwrap();
    let tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
    let (_, mut ws) = tokio_websockets::ServerBuilder::new()
        .accept(tls)
        .await
        .map_err(|e| e.to_string())?;
    let welcome = ServerFrame::Welcome {
        conn: "c".into(),
        node: "n".into(),
        ping_interval_ms: 25_000,
    };
    ws.send(Message::text(Codec::Json.encode(&welcome)))
        .await
        .unwrap();
    while let Some(Ok(msg)) = ws.next().await {
        if !msg.is_text() {
            continue;
        }
        if let Ok(ClientFrame::Pub { id, topic, .. }) = Codec::Json.decode(msg.as_payload()) {
            let ok = ServerFrame::Ok(Reply {
                id,
                topic: Some(topic),
                seq: Some(1),
                epoch: Some("E".into()),
                ..Reply::default()
            });
            ws.send(Message::text(Codec::Json.encode(&ok)))
                .await
                .unwrap();
        }
    }
    Ok(())
}

#[tokio::test]
async fn wss_works_with_the_extra_ca_and_fails_without_it() {
    // Trusted: the test CA is added.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("wss://{}/ws", listener.local_addr().unwrap());
    let server = tokio::spawn(serve_one_tls_publish(listener));
    let opts = ClientOptions::new(&url)
        .connect_timeout(Duration::from_secs(5))
        .add_root_ca_pem_file(fixture("ca.pem"))
        .unwrap();
    let published = publish(&opts, "a/b", serde_json::json!(true))
        .await
        .unwrap();
    assert_eq!((published.seq, published.epoch.as_str()), (1, "E"));
    server.await.unwrap().unwrap();

    // Untrusted: only the webpki roots.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("wss://{}/ws", listener.local_addr().unwrap());
    let server = tokio::spawn(serve_one_tls_publish(listener));
    let opts = ClientOptions::new(&url).connect_timeout(Duration::from_secs(5));
    match publish(&opts, "a/b", serde_json::json!(true)).await {
        Err(e @ ClientError::Connect { .. }) => {
            assert!(e.to_string().contains("UnknownIssuer"), "{e}")
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
    assert!(
        server.await.unwrap().is_err(),
        "the server saw the handshake fail"
    );
}
