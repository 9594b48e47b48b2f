//! Cost of permessage-deflate per message: `compress` (what the server does
//! once per message and worker thread) and `inflate` (what a client does per
//! message), on encoded `msg` frames shaped like telemetry, at levels 1 and
//! 6. The compressed size of each input is printed before the timings.
//!
//! `cargo bench -p pulsegate-ws --bench deflate`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pulsegate_ws::deflate::{compress, Inflater};

/// A `msg` frame whose `data` is an array of meter readings with varying
/// digits (not padding): roughly what a grid dashboard receives.
fn telemetry_frame(target: usize) -> Vec<u8> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut s = String::from(
        r#"{"op":"msg","topic":"grid/substation-17/feeders","seq":482913,"epoch":"d51753100","ts":1795704782819520,"data":["#,
    );
    let mut i = 0;
    while s.len() < target {
        if i > 0 {
            s.push(',');
        }
        let r = next();
        s.push_str(&format!(
            r#"{{"id":"feeder-{i:03}","v":{}.{:02},"a":{}.{:03},"hz":{}.{:03},"ok":{}}}"#,
            228 + r % 7,
            r % 100,
            (r >> 8) % 400,
            (r >> 16) % 1000,
            49 + (r >> 24) % 2,
            (r >> 32) % 1000,
            (r >> 40) % 50 != 0,
        ));
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate");
    for size in [2048usize, 8192, 65536] {
        let frame = telemetry_frame(size);
        for level in [1u32, 6] {
            let packed = compress(&frame, 15, level);
            println!(
                "telemetry {} B, level {level}: {} B compressed ({:.1}% of the original)",
                frame.len(),
                packed.len(),
                100.0 * packed.len() as f64 / frame.len() as f64
            );
            g.throughput(Throughput::Bytes(frame.len() as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("compress/level{level}"), frame.len()),
                &frame,
                |b, f| b.iter(|| compress(f, 15, level)),
            );
            if level == 1 {
                g.bench_with_input(BenchmarkId::new("inflate", frame.len()), &packed, |b, p| {
                    let mut inf = Inflater::new(15, true);
                    b.iter(|| inf.inflate(p, 1 << 20).expect("inflates"))
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
