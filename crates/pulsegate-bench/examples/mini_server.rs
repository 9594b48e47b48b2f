//! Runs one of the bench's fixture servers as a process, for trying the
//! bench by hand or as the "minimal tokio + tokio-websockets broadcast
//! server" peer:
//!
//! ```text
//! cargo run --release -p pulsegate-bench --example mini_server -- broadcast 127.0.0.1:8090 300
//! cargo run --release -p pulsegate-bench --example mini_server -- pulsegate 127.0.0.1:8091 300
//! ```
//!
//! The last argument is how many seconds to run (default 600); the server
//! also stops on Ctrl-C.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = args.first().map(String::as_str).unwrap_or("broadcast");
    let addr = args.get(1).map(String::as_str).unwrap_or("127.0.0.1:8090");
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(600);
    let server = match kind {
        "broadcast" => support::broadcast_server(addr).await,
        "pulsegate" => support::pulsegate_server(addr, support::PulsegateOpts::default()).await,
        other => {
            eprintln!("unknown server kind {other:?}; use broadcast or pulsegate");
            std::process::exit(2);
        }
    };
    println!(
        "{kind} server on ws://{} (pid {}) for {secs}s",
        server.addr,
        std::process::id()
    );
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
