//! The hot path: publish one message to a topic with N subscribers —
//! stamp, retain, encode once, push into N outboxes — and a burst of 64
//! (`Hub::publish_many`, a publisher pipelining: one run per outbox).
//! Draining the outboxes (the connection tasks' job) is excluded from the
//! timing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pulsegate_core::{Hub, HubConfig, Outbox, OutboxLimits, SlowConsumerPolicy};
use pulsegate_proto::{Codec, Pattern};

fn publish_fanout(c: &mut Criterion) {
    fanout_group(c, "publish_fanout", 1, &[1, 100, 1000, 10_000]);
}

/// Bursts of 64 messages; the throughput is per message delivered.
fn publish_burst(c: &mut Criterion) {
    fanout_group(c, "publish_burst_64", 64, &[100, 1000, 10_000]);
}

fn fanout_group(c: &mut Criterion, name: &str, burst: usize, sizes: &[usize]) {
    let mut group = c.benchmark_group(name);
    let payload = Bytes::from(format!("{{\"w\":1520,\"pad\":\"{}\"}}", "x".repeat(40)));
    for &n in sizes {
        let hub = Hub::new(HubConfig::default());
        let pattern = Pattern::parse("site/a/power", 256).unwrap();
        let outboxes: Vec<Arc<Outbox>> = (0..n as u64)
            .map(|id| {
                let codec = if id % 10 == 0 {
                    Codec::MsgPack
                } else {
                    Codec::Json
                };
                let ob = Outbox::new(
                    id,
                    codec,
                    OutboxLimits {
                        max_messages: 1 << 20,
                        max_bytes: 1 << 30,
                        policy: SlowConsumerPolicy::Disconnect,
                    },
                );
                hub.subscribe(&ob, &pattern, false, &[], |_| Bytes::from_static(b"{}"));
                ob
            })
            .collect();
        let mut scratch = std::collections::VecDeque::new();
        let mut drain = |outboxes: &[Arc<Outbox>]| {
            for ob in outboxes {
                scratch.clear();
                let _ = ob.take_batch(&mut scratch, usize::MAX, usize::MAX);
            }
        };
        drain(&outboxes);
        group.throughput(Throughput::Elements((n * burst) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let chunk = (iters - done).min(64);
                    let start = Instant::now();
                    for _ in 0..chunk {
                        if burst == 1 {
                            hub.publish("site/a/power", payload.clone()).unwrap();
                        } else {
                            let data = std::iter::repeat_n(payload.clone(), burst);
                            hub.publish_many("site/a/power", data).unwrap();
                        }
                    }
                    spent += start.elapsed();
                    drain(&outboxes);
                    done += chunk;
                }
                spent
            })
        });
    }
    group.finish();
}

fn encode_msg(c: &mut Criterion) {
    let data = br#"{"w":1520,"v":230.1,"site":"a"}"#;
    c.bench_function("encode_msg_json", |b| {
        b.iter(|| {
            Codec::Json.encode_msg("site/a/power", 42, "a8b9c6780", 1_732_400_000_123_456, data)
        })
    });
    c.bench_function("encode_msg_msgpack", |b| {
        b.iter(|| {
            Codec::MsgPack.encode_msg("site/a/power", 42, "a8b9c6780", 1_732_400_000_123_456, data)
        })
    });
}

criterion_group!(benches, publish_fanout, publish_burst, encode_msg);
criterion_main!(benches);
