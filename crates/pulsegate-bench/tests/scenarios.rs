//! Every scenario, with small numbers, against the fixture servers in
//! `support/` (and against a real nats-server when one is installed).

mod support;

use std::time::Duration;

use pulsegate_bench::{
    churn, fanout, idle, throughput, ChurnArgs, CommonArgs, FanoutArgs, IdleArgs, Proto,
    ThroughputArgs,
};
use support::{broadcast_server, pulsegate_server, PulsegateOpts};

fn common(url: String, proto: Proto) -> CommonArgs {
    CommonArgs {
        url,
        proto,
        quiet: true,
        connect_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

fn small_fanout(url: String, proto: Proto) -> FanoutArgs {
    FanoutArgs {
        common: common(url, proto),
        subscribers: 20,
        publishers: 1,
        rate: 200.0,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(2),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_against_a_broadcast_server_delivers_everything() {
    let server = broadcast_server("127.0.0.1:0").await;
    let r = fanout(&small_fanout(server.url(), Proto::Broadcast))
        .await
        .unwrap();
    assert_eq!(r.subscribers_connected, 20);
    assert_eq!(r.handshake_errors, 0);
    // 200 msg/s for 1 s, give or take the tick at the window's edge.
    assert!(
        (195..=205).contains(&r.messages_published),
        "{}",
        r.messages_published
    );
    assert_eq!(r.delivery.deliveries_expected, r.messages_published * 20);
    assert_eq!(
        r.delivery.deliveries_received,
        r.delivery.deliveries_expected
    );
    assert_eq!(r.delivery.undelivered, 0);
    assert_eq!(
        (
            r.delivery.lost,
            r.delivery.duplicated,
            r.delivery.out_of_order
        ),
        (0, 0, 0)
    );
    assert_eq!(r.lag_ms.samples, r.delivery.deliveries_received);
    assert!(r.lag_ms.p50 > 0.0 && r.lag_ms.p50 <= r.lag_ms.p99 && r.lag_ms.p99 <= r.lag_ms.max);
    assert!(r.deliveries_per_sec > 3000.0, "{}", r.deliveries_per_sec);
    // The JSON report is one object with the documented keys.
    let v = serde_json::to_value(&r).unwrap();
    for key in [
        "subscribers_connected",
        "handshake_errors",
        "messages_published",
        "deliveries_expected",
        "deliveries_received",
        "lost",
        "duplicated",
        "out_of_order",
        "deliveries_per_sec",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert!(v["lag_ms"]["p999"].is_number());
    assert_eq!(v["proto"], "broadcast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_pulsegate_with_topics_and_publishers() {
    let server = pulsegate_server("127.0.0.1:0", PulsegateOpts::default()).await;
    let mut args = small_fanout(server.url(), Proto::Pulsegate);
    args.publishers = 2;
    args.topics = 3;
    args.subscribers = 30;
    // Our own PID: the fixture runs in this process, so CPU is readable.
    args.common.server_pid = Some(std::process::id());
    let r = fanout(&args).await.unwrap();
    assert_eq!(r.subscribers_connected, 30);
    assert_eq!(r.messages_published_total, r.publish_acks);
    assert_eq!(r.publish_errors, 0);
    // Every topic has 10 subscribers, so expected = published × 10.
    assert_eq!(r.delivery.deliveries_expected, r.messages_published * 10);
    assert_eq!(
        r.delivery.deliveries_received,
        r.delivery.deliveries_expected
    );
    assert_eq!(
        (
            r.delivery.lost,
            r.delivery.duplicated,
            r.delivery.out_of_order
        ),
        (0, 0, 0)
    );
    assert_eq!(r.delivery.epoch_changes, 0);
    assert!(r.server_cpu_seconds.is_some());
    assert!(r.deliveries_per_server_cpu_second.is_some());
    assert_eq!(r.server_probe, format!("pid {}", std::process::id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_detects_lost_messages() {
    let server = pulsegate_server(
        "127.0.0.1:0",
        PulsegateOpts {
            drop_every: Some(10),
        },
    )
    .await;
    let mut args = small_fanout(server.url(), Proto::Pulsegate);
    args.subscribers = 5;
    let r = fanout(&args).await.unwrap();
    let total = r.messages_published_total;
    // Every 10th message is dropped for every subscriber; the last may be a
    // tail loss, which sequence gaps cannot see.
    let gaps = r.delivery.lost;
    assert!(
        gaps >= 5 * (total / 10 - 1) && gaps <= 5 * (total / 10),
        "lost {gaps} of {total} x 5"
    );
    assert!(r.delivery.undelivered > 0);
    assert_eq!(r.delivery.duplicated, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_fails_clearly_when_nothing_listens() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut args = small_fanout(format!("ws://127.0.0.1:{port}/ws"), Proto::Pulsegate);
    args.subscribers = 3;
    let err = fanout(&args).await.unwrap_err().to_string();
    assert!(err.contains("no subscriber could connect"), "{err}");
    assert!(err.contains("TCP connect"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_counts_acknowledged_publishes() {
    let server = pulsegate_server("127.0.0.1:0", PulsegateOpts::default()).await;
    let r = throughput(&ThroughputArgs {
        common: common(server.url(), Proto::Pulsegate),
        subscribers: 5,
        publishers: 2,
        window: 32,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(3),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(r.messages_published > 1000, "{}", r.messages_published);
    assert!(r.publishes_per_sec > 1000.0);
    assert_eq!(r.publish_errors, 0);
    assert_eq!(r.delivery.deliveries_expected, r.messages_published * 5);
    assert_eq!(r.delivery.duplicated + r.delivery.out_of_order, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_against_a_broadcast_server() {
    let server = broadcast_server("127.0.0.1:0").await;
    let r = throughput(&ThroughputArgs {
        common: common(server.url(), Proto::Broadcast),
        subscribers: 5,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(3),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(r.messages_published > 1000, "{}", r.messages_published);
    assert!(r.deliveries_per_sec > 1000.0, "{}", r.deliveries_per_sec);
    // The publisher's own echoes pace it, so nothing piles up in the server.
    assert!(r.publish_acks >= r.messages_published, "{}", r.publish_acks);
    assert_eq!(
        r.delivery.deliveries_received,
        r.delivery.deliveries_expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_connections_and_reads_server_memory() {
    let server = pulsegate_server("127.0.0.1:0", PulsegateOpts::default()).await;
    let r = idle(&IdleArgs {
        common: CommonArgs {
            server_pid: Some(std::process::id()),
            concurrency: 50,
            ..common(server.url(), Proto::Pulsegate)
        },
        connections: 300,
        hold: Duration::from_millis(500),
    })
    .await
    .unwrap();
    assert_eq!(r.connected, 300);
    assert_eq!(r.handshake_errors, 0);
    assert_eq!(r.dropped_during_hold, 0);
    assert_eq!(r.handshake_ms.samples, 300);
    assert!(r.ready_ms.p50 >= r.handshake_ms.p50);
    assert!(r.handshakes_per_sec > 100.0, "{}", r.handshakes_per_sec);
    assert!(r.server_rss_before_bytes.is_some() && r.server_rss_after_bytes.is_some());
    assert!(r.bytes_per_connection.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_refuses_more_connections_than_file_descriptors() {
    let err = idle(&IdleArgs {
        common: common("ws://127.0.0.1:9/ws".into(), Proto::Pulsegate),
        connections: 10_000_000,
        ..Default::default()
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("RLIMIT_NOFILE"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_completes_cycles() {
    let server = pulsegate_server("127.0.0.1:0", PulsegateOpts::default()).await;
    let r = churn(&ChurnArgs {
        common: common(server.url(), Proto::Pulsegate),
        rate: 100.0,
        duration: Duration::from_secs(1),
        topics: 2,
    })
    .await
    .unwrap();
    assert_eq!(r.attempted, 100);
    assert_eq!(r.completed, 100, "{:?}", r.error_examples);
    assert_eq!((r.errors, r.timeouts, r.skipped_at_capacity), (0, 0, 0));
    assert_eq!(r.cycle_ms.samples, 100);
    assert!(r.cycles_per_sec > 80.0, "{}", r.cycles_per_sec);
}

/// A real nats-server (Debian package `nats-server`) with a WebSocket
/// listener; skipped when the binary is not installed.
struct NatsServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    fn start() -> Option<Self> {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (client_port, ws_port) = (free(), free());
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{client_port}\nwebsocket {{ host: 127.0.0.1, port: {ws_port}, no_tls: true }}\n"
            ),
        )
        .unwrap();
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", ws_port)).is_ok() {
                return Some(Self {
                    child,
                    port: ws_port,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_against_nats_server() {
    let Some(nats) = NatsServer::start() else {
        eprintln!("nats-server not installed; skipping");
        return;
    };
    let mut args = small_fanout(format!("ws://127.0.0.1:{}", nats.port), Proto::Nats);
    args.topics = 2;
    args.publishers = 2;
    args.common.server_pid = Some(nats.child.id());
    let r = fanout(&args).await.unwrap();
    assert_eq!(
        r.subscribers_connected, 20,
        "{:?}",
        r.handshake_error_examples
    );
    assert_eq!(r.delivery.deliveries_expected, r.messages_published * 10);
    assert_eq!(
        r.delivery.deliveries_received,
        r.delivery.deliveries_expected
    );
    assert_eq!(
        (
            r.delivery.lost,
            r.delivery.duplicated,
            r.delivery.out_of_order
        ),
        (0, 0, 0)
    );
    assert!(r.server_cpu_seconds.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_against_nats_server_is_paced_by_pongs() {
    let Some(nats) = NatsServer::start() else {
        eprintln!("nats-server not installed; skipping");
        return;
    };
    let r = throughput(&ThroughputArgs {
        common: common(format!("ws://127.0.0.1:{}", nats.port), Proto::Nats),
        subscribers: 5,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(3),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(r.messages_published > 1000, "{}", r.messages_published);
    assert_eq!(
        r.delivery.deliveries_received,
        r.delivery.deliveries_expected
    );
    assert_eq!(
        r.delivery.lost + r.delivery.duplicated + r.delivery.out_of_order,
        0
    );
}

#[tokio::test]
async fn server_readings_from_a_prometheus_endpoint() {
    use pulsegate_bench::probe::ServerProbe;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        for _ in 0..3 {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /metrics HTTP/1.0\r\n"));
            let body = "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\nprocess_resident_memory_bytes 4096\n";
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
        }
    });
    let url = format!("http://{addr}/metrics");
    let probe = ServerProbe::detect(None, &url).await;
    assert_eq!(probe, ServerProbe::Metrics(url));
    assert_eq!(probe.cpu_seconds().await, Some(1.5));
    assert_eq!(probe.rss_bytes().await, Some(4096));
    server.await.unwrap();

    // Nothing listening: no readings, no error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let none = ServerProbe::detect(None, &format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(none, ServerProbe::None);
    assert_eq!(none.cpu_seconds().await, None);
}
