//! Credentials in the URL: used to authenticate (async-nats itself ignores
//! them), never shown in `Debug` output.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::config;
use pulsegate_backplane_nats::{NatsBackplane, NatsConfig};
use pulsegate_core::{now_micros, Backplane};
use pulsegate_testkit::services::free_port;
use tokio::sync::mpsc;

/// `nats-server -js` requiring `args` auth, killed on drop.
struct AuthServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl AuthServer {
    fn start(auth: &[&str]) -> AuthServer {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .args(auth)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server installed");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        AuthServer {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(url: String) -> std::sync::Arc<NatsBackplane> {
    let (tx, _rx) = mpsc::channel(16);
    let c = NatsConfig {
        op_timeout: Duration::from_millis(1500),
        ..config(&url, "auth")
    };
    NatsBackplane::connect(c, tx)
        .await
        .expect("connect returns")
}

#[tokio::test]
async fn user_and_password_from_the_url() {
    let server = AuthServer::start(&["--user", "bob", "--pass", "s3cr:t@"]);
    let good = connect(format!("nats://bob:s3cr%3At%40@127.0.0.1:{}", server.port)).await;
    assert!(good.is_up());
    let stamp = good
        .publish("t", Bytes::from_static(b"1"), now_micros())
        .await
        .unwrap();
    assert_eq!(stamp.seq, 1);
    let shown = format!("{good:?} {:?}", good.config());
    assert!(!shown.contains("s3cr"), "{shown}");

    let bad = connect(format!("nats://bob:wrong@127.0.0.1:{}", server.port)).await;
    assert!(!bad.is_up(), "a wrong password never comes up");
    assert!(bad
        .publish("t", Bytes::from_static(b"1"), now_micros())
        .await
        .is_err());
}

#[tokio::test]
async fn token_from_the_url() {
    let server = AuthServer::start(&["--auth", "tok3n"]);
    let good = connect(format!("nats://tok3n@127.0.0.1:{}", server.port)).await;
    assert!(good.is_up());
    good.publish("t", Bytes::from_static(b"1"), now_micros())
        .await
        .unwrap();
    let shown = format!("{good:?}");
    assert!(!shown.contains("tok3n"), "{shown}");
}
