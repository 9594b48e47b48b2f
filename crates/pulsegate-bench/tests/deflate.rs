//! `--deflate` against a real pulsegate server (in this process, from
//! pulsegate-testkit): subscribers negotiate permessage-deflate and read
//! compressed deliveries through pulsegate-ws.

use std::time::Duration;

use pulsegate_bench::{fanout, CommonArgs, FanoutArgs, Proto};
use pulsegate_testkit::TestServer;

/// A server whose heartbeat fires several times during a run: a subscriber
/// that did not answer pings would be closed after ~1.25 s, during the
/// measured window (and counted as a disconnect). The pong timeout leaves
/// room for a loaded test machine.
async fn server(compression: bool) -> TestServer {
    TestServer::start_with(|c| {
        c.compression.enabled = compression;
        c.heartbeat.ping_interval = Duration::from_millis(250);
        c.heartbeat.pong_timeout = Duration::from_secs(1);
    })
    .await
}

fn args(url: String, deflate: bool) -> FanoutArgs {
    FanoutArgs {
        common: CommonArgs {
            url,
            proto: Proto::Pulsegate,
            quiet: true,
            connect_timeout: Duration::from_secs(5),
            ..Default::default()
        },
        subscribers: 20,
        publishers: 1,
        rate: 100.0,
        // Above compression.threshold (2048 B), so every delivery is compressed.
        payload: 4096,
        warmup: Duration::from_millis(300),
        duration: Duration::from_millis(1500),
        drain: Duration::from_secs(3),
        deflate,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_with_deflate_reads_compressed_deliveries() {
    let server = server(true).await;
    let r = fanout(&args(server.ws_url(), true)).await.unwrap();
    assert_eq!(r.subscribers_connected, 20, "{r}");
    assert_eq!(r.publish_errors, 0, "{r}");
    assert!(r.messages_published >= 140, "{r}");
    let d = &r.delivery;
    assert_eq!(d.deliveries_expected, r.messages_published * 20, "{r}");
    assert_eq!(d.deliveries_received, d.deliveries_expected, "{r}");
    assert_eq!((d.lost, d.duplicated, d.out_of_order), (0, 0, 0), "{r}");
    // Pings were answered: nobody was closed for a pong timeout.
    assert_eq!(d.subscriber_disconnects, 0, "{r}");
    assert_eq!(r.lag_ms.samples, d.deliveries_received);

    let z = r.deflate.as_ref().expect("deflate summary with --deflate");
    assert_eq!((z.offered, z.negotiated), (20, 20));
    assert!(z.wire_bytes < z.raw_bytes, "{z:?}");
    // Every bench message (warm-up included) arrived compressed; the small
    // welcome and ok frames did not.
    assert!(
        z.compressed_messages >= r.messages_published_total * 20,
        "{z:?}"
    );
    assert!(z.compressed_messages < z.messages, "{z:?}");
    assert!(
        z.raw_bytes >= r.messages_published_total * 20 * 4096,
        "{z:?}"
    );

    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["deflate"]["negotiated"], 20);
    assert!(v["deflate"]["wire_bytes"].as_u64().unwrap() > 0);
    assert!(r.to_string().contains("20/20 negotiated"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate_declined_by_the_server_still_delivers() {
    let server = server(false).await;
    let r = fanout(&args(server.ws_url(), true)).await.unwrap();
    assert_eq!(r.subscribers_connected, 20, "{r}");
    let d = &r.delivery;
    assert_eq!(d.deliveries_received, d.deliveries_expected, "{r}");
    assert_eq!((d.lost, d.duplicated, d.out_of_order), (0, 0, 0), "{r}");
    assert_eq!(d.subscriber_disconnects, 0, "{r}");
    let z = r.deflate.as_ref().unwrap();
    assert_eq!((z.offered, z.negotiated, z.compressed_messages), (20, 0, 0));
    // Uncompressed: the wire carries the payloads plus frame headers.
    assert!(z.wire_bytes > z.raw_bytes, "{z:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_there_is_no_deflate_summary() {
    let server = server(true).await;
    let mut a = args(server.ws_url(), false);
    a.subscribers = 5;
    a.duration = Duration::from_millis(500);
    let r = fanout(&a).await.unwrap();
    assert_eq!(
        r.delivery.deliveries_received,
        r.delivery.deliveries_expected
    );
    assert!(r.deflate.is_none());
    assert!(serde_json::to_value(&r).unwrap()["deflate"].is_null());
}

#[tokio::test]
async fn deflate_over_tls_is_refused_clearly() {
    let err = fanout(&args("wss://127.0.0.1:9/ws".into(), true))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("ws://"), "{err}");
}
