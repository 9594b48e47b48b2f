//! `wss://` and `https://` on one TLS listener, with a self-signed
//! certificate for 127.0.0.1/localhost made at test time (rcgen) and
//! trusted explicitly by the client (rustls, aws-lc-rs provider).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_websockets::{ClientBuilder, Connector, Message};

use pulsegate_testkit::{TestServer, STEP_TIMEOUT};

/// A certificate for 127.0.0.1 and localhost, written as PEM files into a
/// temporary directory that lives as long as this value.
struct SelfSigned {
    _dir: tempfile::TempDir,
    cert_path: PathBuf,
    key_path: PathBuf,
    cert_der: CertificateDer<'static>,
}

fn self_signed() -> SelfSigned {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("certificate generated");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).expect("write key");
    SelfSigned {
        _dir: dir,
        cert_path,
        key_path,
        cert_der: certified.cert.der().clone(),
    }
}

/// A client config that trusts exactly `cert`.
fn client_config(cert: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("add root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

async fn tls_server(cert: &SelfSigned) -> TestServer {
    TestServer::start_with(|c| {
        c.tls.cert = Some(cert.cert_path.clone());
        c.tls.key = Some(cert.key_path.clone());
    })
    .await
}

/// Next text frame as JSON, skipping pings.
async fn next_json<S>(ws: &mut tokio_websockets::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .expect("frame in time")
            .expect("stream open")
            .expect("valid frame");
        if let Some(t) = m.as_text() {
            return serde_json::from_str(t).expect("JSON");
        }
    }
}

#[tokio::test]
async fn wss_subscribe_and_publish_round_trip() {
    let cert = self_signed();
    let server = tls_server(&cert).await;
    let connector = Connector::Rustls(tokio_rustls::TlsConnector::from(client_config(
        &cert.cert_der,
    )));
    let url = format!("wss://{}/ws", server.addr);
    let connect = || async {
        let (ws, _) = ClientBuilder::new()
            .uri(&url)
            .expect("url")
            .connector(&connector)
            .connect()
            .await
            .expect("wss upgrade succeeds");
        ws
    };

    let mut subscriber = connect().await;
    assert_eq!(next_json(&mut subscriber).await["op"], "welcome");
    let mut publisher = connect().await;
    assert_eq!(next_json(&mut publisher).await["op"], "welcome");

    subscriber
        .send(Message::text(
            json!({"op": "sub", "id": 1, "topic": "site/a/power"}).to_string(),
        ))
        .await
        .expect("send");
    assert_eq!(
        next_json(&mut subscriber).await,
        json!({"op": "ok", "id": 1})
    );
    publisher
        .send(Message::text(
            json!({"op": "pub", "id": 2, "topic": "site/a/power", "data": {"w": 1520}}).to_string(),
        ))
        .await
        .expect("send");
    let ok = next_json(&mut publisher).await;
    assert_eq!(
        (&ok["op"], &ok["id"], &ok["seq"]),
        (&json!("ok"), &json!(2), &json!(1))
    );
    let m = next_json(&mut subscriber).await;
    assert_eq!(
        (&m["op"], &m["topic"], &m["seq"], &m["data"]),
        (
            &json!("msg"),
            &json!("site/a/power"),
            &json!(1),
            &json!({"w": 1520})
        )
    );
}

#[tokio::test]
async fn wss_is_refused_by_a_client_that_does_not_trust_the_certificate() {
    let cert = self_signed();
    let server = tls_server(&cert).await;
    let other = self_signed();
    let connector = Connector::Rustls(tokio_rustls::TlsConnector::from(client_config(
        &other.cert_der,
    )));

    let result = ClientBuilder::new()
        .uri(&format!("wss://{}/ws", server.addr))
        .expect("url")
        .connector(&connector)
        .connect()
        .await;
    let Err(err) = result else {
        panic!("the TLS handshake must fail with an untrusted certificate")
    };
    let err = err.to_string();
    assert!(err.contains("certificate"), "{err}");
}

/// One HTTPS request with `Connection: close`; returns (status, body).
async fn https_get(addr: SocketAddr, cert: &CertificateDer<'static>, path: &str) -> (u16, Value) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(client_config(cert));
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    // A peer closing without close_notify is an UnexpectedEof error after the data.
    let _ = tokio::time::timeout(STEP_TIMEOUT, tls.read_to_end(&mut buf))
        .await
        .expect("response in time");
    let text = String::from_utf8(buf).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, serde_json::from_str(body).expect("JSON body"))
}

#[tokio::test]
async fn https_serves_the_http_routes_on_the_same_listener() {
    let cert = self_signed();
    let server = tls_server(&cert).await;

    assert_eq!(
        https_get(server.addr, &cert.cert_der, "/healthz").await,
        (200, json!({"status": "ok"}))
    );
    assert_eq!(
        https_get(server.addr, &cert.cert_der, "/readyz").await,
        (200, json!({"status": "ready"}))
    );
}

/// A TLS handshake with a client that trusts exactly `cert`: `Ok` or the error.
async fn handshake(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, std::io::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("name").to_owned();
    tokio_rustls::TlsConnector::from(client_config(cert))
        .connect(name, tcp)
        .await
}

#[tokio::test]
async fn sighup_reload_serves_the_new_certificate_and_keeps_open_connections() {
    let first = self_signed();
    let server = tls_server(&first).await;
    let url = format!("wss://{}/ws", server.addr);
    let connector = Connector::Rustls(tokio_rustls::TlsConnector::from(client_config(
        &first.cert_der,
    )));
    let (mut open, _) = ClientBuilder::new()
        .uri(&url)
        .expect("url")
        .connector(&connector)
        .connect()
        .await
        .expect("wss with the first certificate");
    assert_eq!(next_json(&mut open).await["op"], "welcome");

    // A broken pair on disk: reload fails, the first certificate stays in service.
    std::fs::write(&first.cert_path, "not a certificate").unwrap();
    let err = server.running().reload_tls().unwrap_err();
    assert!(err.to_string().contains("tls.cert"), "{err}");
    assert!(handshake(server.addr, &first.cert_der).await.is_ok());

    // A new pair at the same paths: new handshakes get it.
    let second = self_signed();
    std::fs::copy(&second.cert_path, &first.cert_path).unwrap();
    std::fs::copy(&second.key_path, &first.key_path).unwrap();
    server.running().reload_tls().expect("reload");
    assert!(handshake(server.addr, &second.cert_der).await.is_ok());
    assert!(handshake(server.addr, &first.cert_der).await.is_err());

    // The connection made before the reload still works.
    open.send(Message::text(json!({"op": "ping", "id": 1}).to_string()))
        .await
        .expect("send");
    assert_eq!(next_json(&mut open).await["op"], "pong");
}

/// A CA and a client certificate it signed, for mTLS publishers.
struct ClientPki {
    _dir: tempfile::TempDir,
    ca_path: PathBuf,
    client_cert: CertificateDer<'static>,
    client_key: Vec<u8>,
}

fn client_pki() -> ClientPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["publisher-1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    ClientPki {
        _dir: dir,
        ca_path,
        client_cert: cert.der().clone(),
        client_key: key.serialize_der(),
    }
}

/// Trusts `server`; presents `client` (certificate, PKCS#8 key) when given.
fn mtls_config(
    server: &CertificateDer<'static>,
    client: Option<(&CertificateDer<'static>, &[u8])>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![cert.clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.to_vec()).into(),
            )
            .unwrap(),
    })
}

/// `POST /api/publish/{topic}` over TLS with `config`; the HTTP status, or
/// `None` if the TLS handshake failed.
async fn https_publish(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    topic: &str,
) -> Option<u16> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap().to_owned();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .ok()?;
    let req = format!(
        "POST /api/publish/{topic} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1\r\n\r\n1"
    );
    tls.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(STEP_TIMEOUT, tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn mtls_publishers_need_a_client_certificate_subscribers_do_not() {
    let server_cert = self_signed();
    let pki = client_pki();
    let server = TestServer::start_with(|c| {
        c.tls.cert = Some(server_cert.cert_path.clone());
        c.tls.key = Some(server_cert.key_path.clone());
        c.tls.client_ca = Some(pki.ca_path.clone());
        c.tls.require_client_cert_for_publish = true;
    })
    .await;
    let with_cert = mtls_config(
        &server_cert.cert_der,
        Some((&pki.client_cert, &pki.client_key)),
    );
    let without = mtls_config(&server_cert.cert_der, None);

    assert_eq!(
        https_publish(server.addr, with_cert.clone(), "m/a").await,
        Some(200)
    );
    assert_eq!(
        https_publish(server.addr, without.clone(), "m/a").await,
        Some(403)
    );
    // A certificate from another CA fails the handshake itself.
    let stranger = client_pki();
    let foreign = mtls_config(
        &server_cert.cert_der,
        Some((&stranger.client_cert, &stranger.client_key)),
    );
    assert_eq!(https_publish(server.addr, foreign, "m/a").await, None);

    let url = format!("wss://{}/ws", server.addr);
    let connect = |config: Arc<rustls::ClientConfig>| {
        let url = url.clone();
        async move {
            let connector = Connector::Rustls(tokio_rustls::TlsConnector::from(config));
            let (mut ws, _) = ClientBuilder::new()
                .uri(&url)
                .unwrap()
                .connector(&connector)
                .connect()
                .await
                .expect("wss upgrade");
            assert_eq!(next_json(&mut ws).await["op"], "welcome");
            ws
        }
    };
    let mut subscriber = connect(without.clone()).await;
    subscriber
        .send(Message::text(
            json!({"op": "sub", "id": 1, "topic": "m/#"}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut subscriber).await["op"], "ok");
    subscriber
        .send(Message::text(
            json!({"op": "pub", "id": 2, "topic": "m/b", "data": 1}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut subscriber).await["code"], "forbidden");
    let mut publisher = connect(with_cert).await;
    publisher
        .send(Message::text(
            json!({"op": "pub", "id": 3, "topic": "m/b", "data": 2}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut publisher).await["op"], "ok");
    let m = next_json(&mut subscriber).await;
    assert_eq!(
        (m["topic"].clone(), m["data"].clone()),
        (json!("m/b"), json!(2))
    );
}
