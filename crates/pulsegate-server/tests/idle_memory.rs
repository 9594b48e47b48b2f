//! Heap bytes an idle, hibernated `/ws` connection costs the server,
//! counted exactly: a tracking global allocator tags every allocation made
//! on the server runtime's threads (each put in its own allocation group in
//! `on_thread_start`) and counts it until it is freed, wherever that
//! happens; the clients (on the test's own thread) are not counted. The test
//! holds [`CONNECTIONS`] idle connections until all of them hibernated,
//! divides the growth of the server's live heap by their number, prints the
//! allocations by size (what each connection holds), and fails when a
//! connection costs more than [`BUDGET`] bytes; then lets the heartbeat wake
//! them, answers the pings, and fails above [`AWAKE_BUDGET`].
//!
//! This is the allocator's view (requested bytes, no allocator overhead and
//! no page rounding); `pulsegate bench idle` measures the process RSS of the
//! release binary, which is what docs/BENCHMARKS.md reports.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use pulsegate_server::Config;
use pulsegate_testkit::{http, raise_nofile_limit, raw_upgrade};
use tracking_allocator::{
    AllocationGroupId, AllocationGroupToken, AllocationRegistry, AllocationTracker, Allocator,
};

/// Idle connections held.
const CONNECTIONS: usize = 1_000;
/// Most heap bytes one hibernated connection may hold. See
/// docs/ARCHITECTURE.md, memory.
const BUDGET: i64 = 2_048;
/// Most heap bytes one connection may hold while awake for a heartbeat (it
/// wrote a ping and read the pong): its run loop, the ping in its write
/// queue and a small read buffer — not a 4 KiB one for a 14-byte pong.
const AWAKE_BUDGET: i64 = 4_096;
/// The server's ping interval here: long enough for every connection to
/// hibernate first (after 2 s idle), so the heartbeat wakes them.
const PING_INTERVAL: Duration = Duration::from_secs(8);

/// Sizes counted one by one; larger ones share the last slot.
const SIZES: usize = 8_193;

#[global_allocator]
static ALLOC: Allocator<std::alloc::System> = Allocator::system();

static LIVE: AtomicI64 = AtomicI64::new(0);
static BY_SIZE: [AtomicI64; SIZES] = [const { AtomicI64::new(0) }; SIZES];
/// Allocations made, by size (never decremented).
static MADE_BY_SIZE: [AtomicI64; SIZES] = [const { AtomicI64::new(0) }; SIZES];

/// Counts what was allocated on a server thread (any group but the root
/// one) until it is freed, wherever it is freed.
struct ServerHeap;

fn account(size: usize, sign: i64) {
    LIVE.fetch_add(sign * size as i64, Relaxed);
    BY_SIZE[size.min(SIZES - 1)].fetch_add(sign, Relaxed);
    if sign > 0 {
        MADE_BY_SIZE[size.min(SIZES - 1)].fetch_add(1, Relaxed);
    }
}

impl AllocationTracker for ServerHeap {
    fn allocated(&self, _addr: usize, size: usize, _wrapped: usize, group: AllocationGroupId) {
        if group != AllocationGroupId::ROOT {
            account(size, 1);
        }
    }

    fn deallocated(
        &self,
        _addr: usize,
        size: usize,
        _wrapped: usize,
        source: AllocationGroupId,
        _current: AllocationGroupId,
    ) {
        if source != AllocationGroupId::ROOT {
            account(size, -1);
        }
    }
}

/// Puts the calling thread (a server runtime thread) in its own allocation
/// group for the rest of its life.
fn track_this_thread() {
    if let Some(token) = AllocationGroupToken::register() {
        std::mem::forget(Box::leak(Box::new(token)).enter());
    }
}

fn snapshot() -> (i64, Vec<i64>, Vec<i64>) {
    (
        LIVE.load(Relaxed),
        BY_SIZE.iter().map(|c| c.load(Relaxed)).collect(),
        MADE_BY_SIZE.iter().map(|c| c.load(Relaxed)).collect(),
    )
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let (_, _, body) = http(addr, "GET", "/metrics", &[], b"").await;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn wait_hibernating(addr: std::net::SocketAddr, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = metric(addr, "pulsegate_hibernating_connections").await as usize;
        if h >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {h} of {n} connections hibernated within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until at most `asleep` connections still hibernate (the heartbeat
/// woke the others).
async fn wait_awake(addr: std::net::SocketAddr, asleep: usize) {
    let deadline = Instant::now() + PING_INTERVAL + Duration::from_secs(20);
    while metric(addr, "pulsegate_hibernating_connections").await as usize > asleep {
        assert!(
            Instant::now() < deadline,
            "the heartbeat did not wake the connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn open(addr: std::net::SocketAddr, n: usize) -> Vec<pulsegate_testkit::RawWs> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, _, ws) = raw_upgrade(addr, "/ws", &[]).await;
        assert_eq!(status, 101);
        conns.push(ws);
    }
    conns
}

#[test]
fn an_idle_connection_holds_at_most_the_budget() {
    raise_nofile_limit();
    AllocationRegistry::set_global_tracker(ServerHeap).expect("one tracker");
    AllocationRegistry::enable_tracking();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(track_this_thread)
        .build()
        .expect("server runtime");
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    // Every client comes from 127.0.0.1.
    config.limits.handshake_rate_per_ip = 0;
    config.limits.max_connections_per_ip = 10_000;
    config.heartbeat.ping_interval = PING_INTERVAL;
    // The warm-up connections never answer pings; keep them open.
    config.heartbeat.pong_timeout = Duration::from_secs(60);
    config.validate().expect("config");
    let running = server_rt
        .block_on(async { server_rt.spawn(pulsegate_server::start(config)).await })
        .expect("join")
        .expect("server starts");
    let addr = running.local_addr();

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    client_rt.block_on(async {
        // Warm-up: maps and slabs that grow in steps, metrics families, the
        // timer wheel's levels.
        let warm = open(addr, 200).await;
        wait_hibernating(addr, warm.len()).await;
        let (before, sizes_before, made_before) = snapshot();

        let conns = open(addr, CONNECTIONS).await;
        wait_hibernating(addr, warm.len() + conns.len()).await;
        let (after, sizes_after, made_after) = snapshot();

        let per_conn = (after - before) / CONNECTIONS as i64;
        let mut rows: Vec<(usize, i64)> = sizes_after
            .iter()
            .zip(&sizes_before)
            .enumerate()
            .map(|(size, (a, b))| (size, a - b))
            .filter(|&(_, d)| d.abs() >= CONNECTIONS as i64 / 10)
            .collect();
        rows.sort_by_key(|&(size, d)| std::cmp::Reverse(size as i64 * d));
        println!("heap per idle connection: {per_conn} bytes");
        println!("{:>8} {:>10} {:>12}", "size", "per conn", "bytes/conn");
        for (size, d) in rows {
            let per = d as f64 / CONNECTIONS as f64;
            println!("{size:>8} {per:>10.2} {:>12.0}", per * size as f64);
        }
        // Allocated and freed again while connecting (the accept phase):
        // these share allocator size classes with what stays, and the holes
        // they leave between long-lived objects count in RSS.
        println!("transient allocations per connection, by size:");
        let mut transient: Vec<(usize, f64)> = made_after
            .iter()
            .zip(&made_before)
            .zip(sizes_after.iter().zip(&sizes_before))
            .enumerate()
            .map(|(size, ((ma, mb), (la, lb)))| {
                (size, ((ma - mb) - (la - lb)) as f64 / CONNECTIONS as f64)
            })
            .filter(|&(_, n)| n >= 0.5)
            .collect();
        transient.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (size, n) in transient.iter().take(25) {
            println!("{size:>8} {n:>10.2}");
        }
        assert!(
            per_conn <= BUDGET,
            "an idle connection holds {per_conn} heap bytes, over the {BUDGET}-byte budget"
        );

        // The heartbeat wakes them; each answers its ping (the first: 1).
        // (The warm-up ones were pinged at other times.)
        wait_awake(addr, warm.len() + CONNECTIONS / 20).await;
        let mut conns = conns;
        for c in conns.iter_mut() {
            c.send_frame(0xA, &1u64.to_be_bytes()).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (awake, _, _) = snapshot();
        let per_awake = (awake - before) / CONNECTIONS as i64;
        println!("heap per connection after a heartbeat's ping and pong: {per_awake} bytes");
        assert!(
            per_awake <= AWAKE_BUDGET,
            "a connection awake for a heartbeat holds {per_awake} heap bytes, over {AWAKE_BUDGET}"
        );
        drop((warm, conns));
    });
    running.terminate();
    drop(server_rt);
}
