//! Throwaway servers the bench is tested against, on `127.0.0.1:0`.
//!
//! - [`broadcast_server`]: every text or binary frame a client sends goes to
//!   every connected client (the sender included) — the shape of the peer
//!   servers in `scripts/peers/`.
//! - [`pulsegate_server`]: just enough of the pulsegate JSON protocol for the
//!   bench: `welcome`, `sub`/`ok`, `pub`/`ok` with per-topic `seq`, `msg`
//!   deliveries, `ping`/`pong`; optionally drops every n-th delivery so tests
//!   can check that loss is detected.
//!
//! Both are one task per connection fed by a tokio broadcast channel. They
//! are test fixtures, not references: the real server is
//! `crates/pulsegate-server`. Dropping a [`TestServer`] stops it and every
//! connection task.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::broadcast;
use tokio::task::{JoinHandle, JoinSet};
use tokio_websockets::{Message, ServerBuilder};

/// Capacity of the fan-out channel; a receiver further behind loses messages
/// (visible to the bench as sequence gaps).
const CHANNEL_CAPACITY: usize = 1 << 16;

/// Accept queue length; the kernel caps it at `net.core.somaxconn` (4096 here).
const LISTEN_BACKLOG: u32 = 4096;

/// A running fixture server; stops on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl TestServer {
    /// `ws://127.0.0.1:PORT/ws`.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve<F, Fut>(addr: &str, per_conn: F) -> TestServer
where
    F: Fn(tokio_websockets::WebSocketStream<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // A std/tokio `bind` listens with a backlog of 128; thousands of
    // concurrent handshakes overflow it and stall in 1 s SYN retransmits.
    let addr: SocketAddr = addr.parse().expect("fixture address is ip:port");
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .expect("fixture socket");
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).expect("bind fixture server");
    let listener = socket.listen(LISTEN_BACKLOG).expect("listen");
    let addr = listener.local_addr().unwrap();
    let per_conn = Arc::new(per_conn);
    let accept = tokio::spawn(async move {
        // Owning the connection tasks here means aborting this task ends them.
        let mut conns = JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            while conns.try_join_next().is_some() {}
            let per_conn = Arc::clone(&per_conn);
            conns.spawn(async move {
                if let Ok((_req, ws)) = ServerBuilder::new().accept(tcp).await {
                    per_conn(ws).await;
                }
            });
        }
    });
    TestServer { addr, accept }
}

/// A broadcast server on `addr` (use `127.0.0.1:0` in tests).
pub async fn broadcast_server(addr: &str) -> TestServer {
    let (tx, _) = broadcast::channel::<Message>(CHANNEL_CAPACITY);
    serve(addr, move |mut ws| {
        let tx = tx.clone();
        let mut rx = tx.subscribe();
        async move {
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(m)) if m.is_text() || m.is_binary() => {
                            let _ = tx.send(m);
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    r = rx.recv() => match r {
                        Ok(m) => {
                            if ws.feed(m).await.is_err() {
                                break;
                            }
                            while let Ok(m) = rx.try_recv() {
                                if ws.feed(m).await.is_err() {
                                    break;
                                }
                            }
                            if ws.flush().await.is_err() {
                                break;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        }
    })
    .await
}

/// Options of the pulsegate fixture.
#[derive(Clone, Copy, Default)]
pub struct PulsegateOpts {
    /// Skip the delivery of every message whose seq is a multiple of this.
    pub drop_every: Option<u64>,
}

/// A pulsegate-protocol fixture on `addr`.
pub async fn pulsegate_server(addr: &str, opts: PulsegateOpts) -> TestServer {
    let (tx, _) = broadcast::channel::<(Arc<str>, Message)>(CHANNEL_CAPACITY);
    let seqs: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let conn_ids = Arc::new(std::sync::atomic::AtomicU64::new(0));
    serve(addr, move |mut ws| {
        let tx = tx.clone();
        let mut rx = tx.subscribe();
        let seqs = Arc::clone(&seqs);
        let conn = conn_ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            let welcome = format!(
                r#"{{"op":"welcome","conn":"c{conn}","node":"fixture","ping_interval_ms":25000}}"#
            );
            if ws.send(Message::text(welcome)).await.is_err() {
                return;
            }
            let mut topics: HashSet<String> = HashSet::new();
            loop {
                tokio::select! {
                    m = ws.next() => {
                        let m = match m {
                            Some(Ok(m)) if m.is_text() => m,
                            Some(Ok(_)) => continue,
                            _ => break,
                        };
                        let Ok(v) = serde_json::from_str::<serde_json::Value>(m.as_text().unwrap()) else {
                            continue;
                        };
                        let id = v.get("id").and_then(|i| i.as_u64());
                        let topic = v.get("topic").and_then(|t| t.as_str()).unwrap_or("").to_owned();
                        let reply = match v["op"].as_str() {
                            Some("sub") => {
                                topics.insert(topic);
                                id.map(|id| format!(r#"{{"op":"ok","id":{id}}}"#))
                            }
                            Some("pub") => {
                                let data = v.get("data").cloned().unwrap_or(serde_json::Value::Null);
                                let seq = {
                                    // Sequence and channel order agree because both
                                    // happen under this lock.
                                    let mut seqs = seqs.lock().unwrap();
                                    let seq = seqs.entry(topic.clone()).or_insert(0);
                                    *seq += 1;
                                    let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros();
                                    let frame = serde_json::json!({
                                        "op": "msg", "topic": topic, "seq": *seq,
                                        "epoch": "E1", "ts": ts as u64, "data": data,
                                    });
                                    if opts.drop_every.is_none_or(|n| *seq % n != 0) {
                                        let _ = tx.send((topic.as_str().into(), Message::text(frame.to_string())));
                                    }
                                    *seq
                                };
                                id.map(|id| format!(r#"{{"op":"ok","id":{id},"seq":{seq},"epoch":"E1"}}"#))
                            }
                            Some("ping") => Some(match id {
                                Some(id) => format!(r#"{{"op":"pong","id":{id},"ts":0}}"#),
                                None => r#"{"op":"pong","ts":0}"#.to_owned(),
                            }),
                            _ => id.map(|id| format!(
                                r#"{{"op":"error","id":{id},"code":"bad_request","message":"unknown op"}}"#
                            )),
                        };
                        if let Some(r) = reply {
                            if ws.send(Message::text(r)).await.is_err() {
                                break;
                            }
                        }
                    }
                    r = rx.recv() => match r {
                        Ok((topic, m)) => {
                            if topics.contains(&*topic) && ws.feed(m).await.is_err() {
                                break;
                            }
                            while let Ok((topic, m)) = rx.try_recv() {
                                if topics.contains(&*topic) && ws.feed(m).await.is_err() {
                                    break;
                                }
                            }
                            if ws.flush().await.is_err() {
                                break;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        }
    })
    .await
}
