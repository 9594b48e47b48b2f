//! Speaking to the server under test: the three protocols the bench drives.
//!
//! - `pulsegate`: our JSON subprotocol (`welcome`, `sub`/`ok`, `pub`, `msg`
//!   with a per-topic `seq`, `ping`/`pong`).
//! - `nats`: the NATS client protocol over nats-server's WebSocket port
//!   (`CONNECT`, `SUB`, `PUB`, `MSG`, `PING`/`PONG`).
//! - `broadcast`: a minimal peer where every frame a client sends is
//!   broadcast to every connected client; there is nothing to subscribe to.
//!
//! Everything protocol-specific lives here: opening a connection
//! ([`Target::open`]), the greeting and subscription handshakes
//! ([`Session::establish`], [`Session::subscribe`]), the frames to publish,
//! and [`decode`], which turns a received WebSocket message into
//! [`Incoming`] events. The scenarios only see those events.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

use crate::nats::{NatsEvent, NatsParser};
use crate::payload::{self, leading_u64, BenchData};

/// The protocol a scenario speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// The pulsegate JSON subprotocol (default).
    Pulsegate,
    /// NATS client protocol over nats-server's WebSocket listener.
    Nats,
    /// A plain broadcast server: every frame goes to every client.
    Broadcast,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pulsegate => "pulsegate",
            Self::Nats => "nats",
            Self::Broadcast => "broadcast",
        })
    }
}

impl Proto {
    /// Whether the protocol has topics; a broadcast server has exactly one
    /// implicit stream.
    pub fn has_topics(self) -> bool {
        !matches!(self, Self::Broadcast)
    }

    /// Whether deliveries carry a server-assigned sequence number; otherwise
    /// loss is detected from the `w`/`n` counters in the bench data.
    pub fn has_server_seq(self) -> bool {
        matches!(self, Self::Pulsegate)
    }

    /// The topic (subject) name for topic index `i`.
    pub fn topic_name(self, i: usize) -> String {
        match self {
            Self::Pulsegate => payload::pulsegate_topic(i),
            Self::Nats => payload::nats_subject(i),
            Self::Broadcast => String::new(),
        }
    }

    /// The frame that publishes `data` on `topic`; `id` asks a pulsegate
    /// server for an `ok` reply.
    pub fn publish_frame(self, topic: &str, id: Option<u64>, data: &str) -> Message {
        match self {
            Self::Pulsegate => Message::text(payload::pulsegate_pub_frame(id, topic, data)),
            Self::Nats => Message::binary(payload::nats_pub_frame(topic, data).into_bytes()),
            Self::Broadcast => Message::text(data.to_owned()),
        }
    }
}

/// A WebSocket client connection over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// A client WebSocket the protocol code can drive: tokio-websockets' [`Ws`],
/// or a connection framed by pulsegate-ws ([`crate::deflate::DeflateWs`],
/// `--deflate`). Both answer pings and close frames themselves.
pub trait WsIo:
    Stream<Item = Result<Message, tokio_websockets::Error>>
    + Sink<Message, Error = tokio_websockets::Error>
    + Unpin
{
}

impl<T> WsIo for T where
    T: Stream<Item = Result<Message, tokio_websockets::Error>>
        + Sink<Message, Error = tokio_websockets::Error>
        + Unpin
{
}

/// The server under test: its URL, resolved once, so that thousands of
/// connects do not each call `getaddrinfo`.
pub struct Target {
    /// The WebSocket URL as given.
    pub url: url::Url,
    addr: SocketAddr,
    builder: ClientBuilder<'static>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url.as_str())
            .field("addr", &self.addr)
            .finish()
    }
}

impl Target {
    /// Parses and resolves a `ws://` URL.
    pub async fn resolve(url: &str) -> anyhow::Result<Self> {
        let parsed =
            url::Url::parse(url).with_context(|| format!("--url {url:?} is not a valid URL"))?;
        if parsed.scheme() != "ws" {
            bail!(
                "--url must be a ws:// URL, got {url:?}; the bench targets servers on this machine \
                 and does not speak TLS"
            );
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| anyhow!("--url {url:?} has no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}:{port}"))?
            .next()
            .ok_or_else(|| anyhow!("{host}:{port} resolved to no address"))?;
        let builder = ClientBuilder::new()
            .uri(url)
            .with_context(|| format!("--url {url:?} is not a valid URI"))?;
        Ok(Self {
            url: parsed,
            addr,
            builder,
        })
    }

    /// The resolved socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connect with `TCP_NODELAY` (without it small frames stall ~40 ms
    /// behind Nagle and delayed ACKs) and the WebSocket upgrade.
    pub async fn open(&self) -> anyhow::Result<Ws> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("TCP connect to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let (ws, _response) = self
            .builder
            .connect_on(tcp)
            .await
            .context("WebSocket upgrade")?;
        Ok(ws)
    }
}

/// What a received frame means to the bench.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// Pulsegate `welcome` or NATS `INFO`.
    Welcome {
        /// How often the server wants a client ping, if it said.
        ping_interval_ms: Option<u64>,
    },
    /// A published message reaching a subscriber.
    Delivery {
        /// Server sequence number (pulsegate only).
        seq: Option<u64>,
        /// Server epoch, raw JSON text (pulsegate only).
        epoch: Option<&'a str>,
        /// The bench data, if the body is a bench message.
        data: Option<BenchData>,
    },
    /// Pulsegate `ok` (with the request id) or NATS `+OK`.
    Ok {
        /// Request id it answers.
        id: Option<u64>,
    },
    /// Pulsegate `error` or NATS `-ERR`.
    Error {
        /// Request id it answers.
        id: Option<u64>,
        /// Code and message.
        detail: String,
    },
    /// The server asks for a pong.
    ServerPing {
        /// Ping id to echo (pulsegate).
        id: Option<u64>,
    },
    /// Answer to our ping.
    Pong,
    /// Anything else (WebSocket control frames, unknown ops).
    Other,
}

#[derive(Deserialize)]
struct InFrame<'a> {
    #[serde(borrow)]
    op: std::borrow::Cow<'a, str>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    epoch: Option<&'a RawValue>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    ping_interval_ms: Option<u64>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// A `msg` frame exactly as pulsegate's JSON codec writes it (these fields,
/// in this order, no whitespace, no escapes in topic or epoch): its seq,
/// its epoch as raw JSON (with the quotes) and its data, read without a
/// JSON parser. Anything else is `None` and goes to serde.
fn exact_msg(bytes: &[u8]) -> Option<(u64, &str, &[u8])> {
    /// A JSON string without escapes at the start of `b` (opening quote
    /// included): its raw text and what follows.
    fn plain_str(b: &[u8]) -> Option<(&[u8], &[u8])> {
        let body = b.strip_prefix(b"\"")?;
        let end = body.iter().position(|&c| c == b'"' || c == b'\\')?;
        (body[end] == b'"').then(|| b.split_at(end + 2))
    }
    let rest = bytes.strip_prefix(b"{\"op\":\"msg\",\"topic\":")?;
    let (_, rest) = plain_str(rest)?;
    let (seq, rest) = leading_u64(rest.strip_prefix(b",\"seq\":")?)?;
    let (epoch, rest) = plain_str(rest.strip_prefix(b",\"epoch\":")?)?;
    let (_, rest) = leading_u64(rest.strip_prefix(b",\"ts\":")?)?;
    let data = rest.strip_prefix(b",\"data\":")?.strip_suffix(b"}")?;
    Some((seq, std::str::from_utf8(epoch).ok()?, data))
}

/// Decodes one received message into events (NATS frames may hold many).
pub fn decode(
    proto: Proto,
    nats: &mut NatsParser,
    msg: &Message,
    mut on: impl FnMut(Incoming<'_>),
) -> anyhow::Result<()> {
    if !(msg.is_text() || msg.is_binary()) {
        on(Incoming::Other);
        return Ok(());
    }
    let bytes: &[u8] = msg.as_payload();
    match proto {
        Proto::Broadcast => on(Incoming::Delivery {
            seq: None,
            epoch: None,
            data: BenchData::parse(bytes),
        }),
        Proto::Pulsegate => {
            if let Some((seq, epoch, data)) = exact_msg(bytes) {
                on(Incoming::Delivery {
                    seq: Some(seq),
                    epoch: Some(epoch),
                    data: BenchData::parse(data),
                });
                return Ok(());
            }
            let f: InFrame<'_> = serde_json::from_slice(bytes)
                .with_context(|| format!("undecodable frame {}", String::from_utf8_lossy(bytes)))?;
            on(match &*f.op {
                "msg" => Incoming::Delivery {
                    seq: f.seq,
                    epoch: f.epoch.map(RawValue::get),
                    data: f.data.and_then(|d| BenchData::parse(d.get().as_bytes())),
                },
                "ok" => Incoming::Ok { id: f.id },
                "error" => Incoming::Error {
                    id: f.id,
                    detail: format!(
                        "{}: {}",
                        f.code.as_deref().unwrap_or("?"),
                        f.message.as_deref().unwrap_or("")
                    ),
                },
                "welcome" => Incoming::Welcome {
                    ping_interval_ms: f.ping_interval_ms,
                },
                "ping" => Incoming::ServerPing { id: f.id },
                "pong" => Incoming::Pong,
                _ => Incoming::Other,
            });
        }
        Proto::Nats => nats.push(bytes, |e| {
            on(match e {
                NatsEvent::Info => Incoming::Welcome {
                    ping_interval_ms: None,
                },
                NatsEvent::Msg { payload, .. } => Incoming::Delivery {
                    seq: None,
                    epoch: None,
                    data: BenchData::parse(payload),
                },
                NatsEvent::Ping => Incoming::ServerPing { id: None },
                NatsEvent::Pong => Incoming::Pong,
                NatsEvent::Ok => Incoming::Ok { id: None },
                NatsEvent::Err(m) => Incoming::Error {
                    id: None,
                    detail: m.to_owned(),
                },
            })
        })?,
    }
    Ok(())
}

/// The answer to a server ping, if the protocol has one.
pub fn pong_frame(proto: Proto, id: Option<u64>) -> Option<Message> {
    match proto {
        Proto::Pulsegate => Some(Message::text(payload::pulsegate_pong_frame(id))),
        Proto::Nats => Some(Message::binary(&b"PONG\r\n"[..])),
        Proto::Broadcast => None,
    }
}

/// Upper bound on frames read while waiting for one handshake reply.
const MAX_FRAMES_PER_REPLY: usize = 10_000;

/// One client connection that has completed the protocol greeting, over
/// tokio-websockets ([`Ws`], the default) or any other [`WsIo`].
pub struct Session<W = Ws> {
    /// The socket; scenarios read deliveries from it directly.
    pub ws: W,
    /// The protocol spoken.
    pub proto: Proto,
    /// Buffer for NATS operations spanning frames.
    pub nats: NatsParser,
    /// Client ping interval the server asked for (pulsegate `welcome`).
    pub ping_interval: Option<Duration>,
    next_id: u64,
}

impl Session {
    /// Opens a connection and completes the greeting: waits for pulsegate's
    /// `welcome`; for NATS waits for `INFO`, sends `CONNECT` and a `PING`
    /// and waits for the `PONG`; nothing for broadcast. Callers bound it
    /// with a timeout.
    pub async fn establish(target: &Target, proto: Proto) -> anyhow::Result<Self> {
        let ws = target.open().await?;
        Self::greet(ws, proto).await
    }
}

impl<W: WsIo> Session<W> {
    /// The greeting on an already upgraded connection.
    pub async fn greet(ws: W, proto: Proto) -> anyhow::Result<Self> {
        let mut s = Self {
            ws,
            proto,
            nats: NatsParser::default(),
            ping_interval: None,
            next_id: 1,
        };
        match proto {
            Proto::Broadcast => {}
            Proto::Pulsegate => {
                let mut interval = None;
                s.await_reply("welcome", |inc| match inc {
                    Incoming::Welcome { ping_interval_ms } => {
                        interval = *ping_interval_ms;
                        Some(Ok(()))
                    }
                    Incoming::Error { detail, .. } => Some(Err(anyhow!("server error: {detail}"))),
                    _ => None,
                })
                .await?;
                s.ping_interval = interval.filter(|ms| *ms > 0).map(Duration::from_millis);
            }
            Proto::Nats => {
                s.await_reply("INFO", |inc| match inc {
                    Incoming::Welcome { .. } => Some(Ok(())),
                    _ => None,
                })
                .await?;
                s.ws.send(Message::binary(
                    &b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n"[..],
                ))
                .await?;
                s.await_nats_pong("CONNECT").await?;
            }
        }
        Ok(s)
    }

    /// Subscribes to topic `name` and waits for the server to confirm
    /// (pulsegate `ok`, NATS `PONG` after `SUB`); a no-op for broadcast.
    pub async fn subscribe(&mut self, name: &str) -> anyhow::Result<()> {
        match self.proto {
            Proto::Broadcast => Ok(()),
            Proto::Pulsegate => {
                let id = self.take_id();
                self.ws
                    .send(Message::text(payload::pulsegate_sub_frame(id, name)))
                    .await?;
                self.await_reply("sub ok", |inc| match inc {
                    Incoming::Ok { id: Some(i) } if *i == id => Some(Ok(())),
                    Incoming::Error {
                        id: Some(i),
                        detail,
                    } if *i == id => Some(Err(anyhow!("sub {name} rejected: {detail}"))),
                    _ => None,
                })
                .await
            }
            Proto::Nats => {
                let sid = self.take_id();
                self.ws
                    .send(Message::binary(
                        format!("SUB {name} {sid}\r\nPING\r\n").into_bytes(),
                    ))
                    .await?;
                self.await_nats_pong("SUB").await
            }
        }
    }

    /// A keepalive to send every [`Session::ping_interval`] (pulsegate app
    /// ping, NATS `PING`); `None` for broadcast.
    pub fn keepalive_frame(&mut self) -> Option<Message> {
        match self.proto {
            Proto::Pulsegate => Some(Message::text(payload::pulsegate_ping_frame(self.take_id()))),
            Proto::Nats => Some(Message::binary(&b"PING\r\n"[..])),
            Proto::Broadcast => None,
        }
    }

    /// Sends a close frame and waits, at most `within`, for the server's.
    pub async fn close(mut self, within: Duration) {
        let _ = tokio::time::timeout(within, self.ws.close()).await;
    }

    /// A fresh request id.
    pub fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn await_nats_pong(&mut self, what: &str) -> anyhow::Result<()> {
        self.await_reply(what, |inc| match inc {
            Incoming::Pong => Some(Ok(())),
            Incoming::Error { detail, .. } => Some(Err(anyhow!("NATS -ERR {detail}"))),
            _ => None,
        })
        .await
    }

    /// Reads frames until `want` decides, answering server pings meanwhile.
    async fn await_reply(
        &mut self,
        what: &str,
        mut want: impl FnMut(&Incoming<'_>) -> Option<anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        for _ in 0..MAX_FRAMES_PER_REPLY {
            let msg = match self.ws.next().await {
                Some(m) => m.with_context(|| format!("waiting for {what}"))?,
                None => bail!("connection closed while waiting for {what}"),
            };
            if let Some((code, reason)) = msg.as_close() {
                bail!("server closed the connection while waiting for {what}: {code:?} {reason}");
            }
            let mut outcome = None;
            let mut pings = Vec::new();
            decode(self.proto, &mut self.nats, &msg, |inc| {
                if let Incoming::ServerPing { id } = inc {
                    pings.push(id);
                } else if outcome.is_none() {
                    outcome = want(&inc);
                }
            })?;
            for id in pings {
                if let Some(pong) = pong_frame(self.proto, id) {
                    self.ws.send(pong).await?;
                }
            }
            if let Some(r) = outcome {
                return r;
            }
        }
        bail!("no {what} within {MAX_FRAMES_PER_REPLY} frames")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(proto: Proto, msg: Message) -> Vec<String> {
        let mut out = Vec::new();
        let mut nats = NatsParser::default();
        decode(proto, &mut nats, &msg, |e| out.push(format!("{e:?}"))).unwrap();
        out
    }

    #[test]
    fn exact_msg_frames_read_like_serde_and_the_rest_falls_back() {
        let frame = r#"{"op":"msg","topic":"bench/0","seq":42,"epoch":"E1","ts":1732400000123456,"data":{"t":5,"w":1,"n":2,"p":"xx"}}"#;
        assert_eq!(
            exact_msg(frame.as_bytes()),
            Some((42, "\"E1\"", &br#"{"t":5,"w":1,"n":2,"p":"xx"}"#[..]))
        );
        // Escapes, reordered fields or whitespace: serde's job, same events.
        for other in [
            r#"{"op":"msg","topic":"a\"b","seq":42,"epoch":"E1","ts":1,"data":{"t":5,"w":1,"n":2,"p":"xx"}}"#,
            r#"{"op":"msg","topic":"bench/0","epoch":"E1","seq":42,"ts":1,"data":{"t":5,"w":1,"n":2,"p":"xx"}}"#,
            r#"{"op":"msg","topic":"bench/0","seq":42,"epoch":"E\u0031","ts":1,"data":{"t":5,"w":1,"n":2,"p":"xx"}}"#,
            r#"{"op":"msg", "topic":"bench/0","seq":42,"epoch":"E1","ts":1,"data":{"t":5,"w":1,"n":2,"p":"xx"}}"#,
        ] {
            assert_eq!(exact_msg(other.as_bytes()), None, "{other}");
            let got = events(Proto::Pulsegate, Message::text(other.to_owned()));
            assert_eq!(got.len(), 1, "{other}");
            assert!(got[0].starts_with("Delivery"), "{other}: {got:?}");
        }
        assert_eq!(exact_msg(br#"{"op":"msg","topic":"t","seq":1"#), None);
        assert_eq!(exact_msg(b""), None);
    }

    #[test]
    fn pulsegate_frames_decode() {
        let msg = Message::text(
            r#"{"op":"msg","topic":"bench/0","seq":42,"epoch":"E1","ts":1732400000123456,"data":{"t":5,"w":1,"n":2,"p":"xx"}}"#,
        );
        let mut nats = NatsParser::default();
        let mut got = None;
        decode(Proto::Pulsegate, &mut nats, &msg, |e| {
            if let Incoming::Delivery { seq, epoch, data } = e {
                got = Some((seq, epoch.map(str::to_owned), data));
            }
        })
        .unwrap();
        assert_eq!(
            got,
            Some((
                Some(42),
                Some("\"E1\"".to_owned()),
                Some(BenchData { t: 5, w: 1, n: 2 })
            ))
        );
        assert_eq!(
            events(
                Proto::Pulsegate,
                Message::text(r#"{"op":"welcome","conn":"c","node":"n","ping_interval_ms":25000}"#)
            ),
            vec!["Welcome { ping_interval_ms: Some(25000) }"]
        );
        assert_eq!(
            events(
                Proto::Pulsegate,
                Message::text(r#"{"op":"ok","id":7,"seq":1,"epoch":"E"}"#)
            ),
            vec!["Ok { id: Some(7) }"]
        );
        assert_eq!(
            events(
                Proto::Pulsegate,
                Message::text(r#"{"op":"error","id":1,"code":"bad_topic","message":"no"}"#)
            ),
            vec!["Error { id: Some(1), detail: \"bad_topic: no\" }"]
        );
        assert_eq!(
            events(Proto::Pulsegate, Message::text(r#"{"op":"ping","id":4}"#)),
            vec!["ServerPing { id: Some(4) }"]
        );
        // A delivery whose data is not bench data is still a delivery.
        assert_eq!(
            events(
                Proto::Pulsegate,
                Message::text(r#"{"op":"msg","topic":"x","seq":1,"data":[1,2]}"#)
            ),
            vec!["Delivery { seq: Some(1), epoch: None, data: None }"]
        );
        let mut nats = NatsParser::default();
        assert!(decode(
            Proto::Pulsegate,
            &mut nats,
            &Message::text("not json"),
            |_| {}
        )
        .is_err());
    }

    #[test]
    fn nats_and_broadcast_frames_decode() {
        let frame = "MSG bench.0 1 26\r\n{\"t\":7,\"w\":0,\"n\":3,\"p\":\"\"}\r\nPING\r\n";
        assert_eq!(frame.split("\r\n").nth(1).unwrap().len(), 26);
        assert_eq!(
            events(Proto::Nats, Message::binary(frame.as_bytes().to_vec())),
            vec![
                "Delivery { seq: None, epoch: None, data: Some(BenchData { t: 7, w: 0, n: 3 }) }",
                "ServerPing { id: None }"
            ]
        );
        assert_eq!(
            events(
                Proto::Broadcast,
                Message::text(r#"{"t":9,"w":2,"n":0,"p":"x"}"#)
            ),
            vec!["Delivery { seq: None, epoch: None, data: Some(BenchData { t: 9, w: 2, n: 0 }) }"]
        );
        assert_eq!(
            events(Proto::Broadcast, Message::ping(&b""[..])),
            vec!["Other"]
        );
    }

    #[test]
    fn publish_frames_per_protocol() {
        let m = Proto::Nats.publish_frame("bench.0", None, "{}");
        assert!(m.is_binary());
        assert_eq!(&m.as_payload()[..], &b"PUB bench.0 2\r\n{}\r\n"[..]);
        let m = Proto::Broadcast.publish_frame("", Some(3), "{}");
        assert_eq!(m.as_text(), Some("{}"));
        let m = Proto::Pulsegate.publish_frame("bench/1", Some(3), "{}");
        assert_eq!(
            m.as_text(),
            Some(r#"{"op":"pub","id":3,"topic":"bench/1","data":{}}"#)
        );
    }
}
