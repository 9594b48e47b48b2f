//! The client against a real pulsegate server on 127.0.0.1:0.
//!
//! The server is `pulsegate-testkit`'s `TestServer`, in the test's runtime.
//! These tests pin the parts of the protocol the client relies on: publish
//! replies in both codecs, snapshot, `since` recovery (recovered and
//! not_recovered), and the drain close with its reconnect hint.

use std::time::Duration;

use pulsegate_client::{
    parse_reconnect_after, publish, ClientOptions, Codec, Event, Position, Subscriber,
};
use pulsegate_testkit::TestServer;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(5);

async fn start_server() -> TestServer {
    TestServer::start_with(|c| c.server.drain_period = Duration::from_millis(200)).await
}

async fn next(sub: &mut Subscriber) -> Event {
    timeout(STEP, sub.next())
        .await
        .expect("an event in time")
        .expect("no error")
}

async fn subscribed(sub: &mut Subscriber) -> (Vec<String>, Vec<String>) {
    match next(sub).await {
        Event::Subscribed {
            recovered,
            not_recovered,
        } => (recovered, not_recovered),
        other => panic!("expected Subscribed, got {other:?}"),
    }
}

async fn message(sub: &mut Subscriber) -> (String, u64, serde_json::Value) {
    match next(sub).await {
        Event::Msg {
            topic, seq, data, ..
        } => (topic, seq, data),
        other => panic!("expected Msg, got {other:?}"),
    }
}

#[tokio::test]
async fn publish_snapshot_and_live_messages_in_both_codecs() {
    let server = start_server().await;
    for (i, codec) in [Codec::Json, Codec::MsgPack].into_iter().enumerate() {
        let opts = ClientOptions::new(server.ws_url()).codec(codec);
        let topic = format!("site/{i}/power");
        let first = publish(&opts, &topic, serde_json::json!({"w": 1}))
            .await
            .unwrap();
        assert_eq!((first.topic.as_str(), first.seq), (topic.as_str(), 1));

        let mut sub = Subscriber::new(opts.clone(), format!("site/{i}/+"), true, false);
        assert_eq!(subscribed(&mut sub).await, (vec![], vec![]));
        assert_eq!(
            message(&mut sub).await,
            (topic.clone(), 1, serde_json::json!({"w": 1})),
            "snapshot ({codec:?})"
        );
        let second = publish(&opts, &topic, serde_json::json!({"w": 2}))
            .await
            .unwrap();
        assert_eq!((second.seq, &second.epoch), (2, &first.epoch));
        assert_eq!(
            message(&mut sub).await,
            (topic.clone(), 2, serde_json::json!({"w": 2})),
            "live ({codec:?})"
        );
        sub.close().await;
    }
}

#[tokio::test]
async fn resume_replays_exactly_what_was_missed() {
    let server = start_server().await;
    let opts = ClientOptions::new(server.ws_url());
    let mut epoch = String::new();
    for w in 1..=5 {
        epoch = publish(&opts, "site/a/power", serde_json::json!(w))
            .await
            .unwrap()
            .epoch;
    }
    publish(&opts, "site/b/power", serde_json::json!(0))
        .await
        .unwrap();

    let mut sub = Subscriber::new(opts, "site/+/power", false, true);
    sub.set_position(
        "site/a/power",
        Position {
            epoch: epoch.clone(),
            seq: 2,
        },
    );
    sub.set_position(
        "site/b/power",
        Position {
            epoch: "an-epoch-the-server-never-had".into(),
            seq: 9,
        },
    );
    assert_eq!(
        subscribed(&mut sub).await,
        (
            vec!["site/a/power".to_string()],
            vec!["site/b/power".to_string()]
        )
    );
    for seq in 3..=5 {
        assert_eq!(
            message(&mut sub).await,
            ("site/a/power".to_string(), seq, serde_json::json!(seq))
        );
    }
    assert_eq!(
        sub.position("site/a/power"),
        Some(&Position { epoch, seq: 5 })
    );
    assert_eq!(sub.position("site/b/power"), None, "forgotten: resync");
}

#[tokio::test]
async fn drain_closes_with_1001_and_a_hint_the_subscriber_honours() {
    let server = start_server().await;
    let opts = ClientOptions::new(server.ws_url());
    let mut sub = Subscriber::new(opts, "site/#", false, true);
    subscribed(&mut sub).await;
    server.running().drain();
    match next(&mut sub).await {
        Event::Disconnected {
            code,
            reason,
            retry_in,
        } => {
            assert_eq!(code, Some(1001));
            let hint = parse_reconnect_after(&reason)
                .unwrap_or_else(|| panic!("no reconnect_after_ms in `{reason}`"));
            assert!(
                retry_in >= hint * 9 / 10 && retry_in <= hint * 11 / 10,
                "retry_in {retry_in:?} vs hint {hint:?}"
            );
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
}
