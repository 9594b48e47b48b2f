//! One WebSocket connection to a pulsegate server, with no reconnect.
//!
//! [`Connection`] is the building block of [`crate::publish`] and
//! [`crate::Subscriber`], and the raw tool for tests: it connects, negotiates
//! the codec, reads the `welcome` frame, and then sends [`ClientFrame`]s and
//! yields [`ServerFrame`]s. WebSocket pings are answered by tokio-websockets;
//! they only count as signs of life here. If the server goes silent for two
//! of its announced ping intervals (plus slack), [`Connection::next`] reports
//! a timeout instead of waiting forever on a dead peer.
//!
//! Nothing is buffered beyond the socket itself: frames are decoded one at a
//! time as the caller asks for them.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use pulsegate_proto::codec::{JSON_PROTOCOL, MSGPACK_PROTOCOL};
use pulsegate_proto::{ClientFrame, Codec, Id, ServerFrame};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_websockets::{CloseCode, Limits, MaybeTlsStream, Message, WebSocketStream};

use crate::options::parse_url;
use crate::{ClientError, ClientOptions};

/// Slack added to two ping intervals before a silent server counts as gone.
const LIVENESS_SLACK: Duration = Duration::from_secs(5);
/// How long [`Connection::close`] waits for the server to acknowledge.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The server's first frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Connection id, as in the server's logs and admin API.
    pub conn: String,
    /// Node name.
    pub node: String,
    /// How often the server sends WebSocket pings (zero = never).
    pub ping_interval: Duration,
}

/// The close frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// Close code; `None` when the frame had none.
    pub code: Option<u16>,
    /// Close reason (may be empty).
    pub reason: String,
}

/// The result of a successful `pub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The topic published to.
    pub topic: String,
    /// The sequence number the server assigned.
    pub seq: u64,
    /// The topic's epoch.
    pub epoch: String,
}

/// A single connection: connect, [`send`](Connection::send), [`next`](Connection::next).
pub struct Connection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    codec: Codec,
    welcome: Welcome,
    request_timeout: Duration,
    idle_timeout: Option<Duration>,
    last_activity: Instant,
    close: Option<CloseInfo>,
    finished: bool,
    next_id: u64,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("codec", &self.codec)
            .field("welcome", &self.welcome)
            .field("close", &self.close)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to the first URL of `opts` ([`ClientOptions::url`]), upgrades
    /// with the subprotocol of `opts.codec`, and waits for `welcome`, all
    /// within `opts.connect_timeout`.
    pub async fn connect(opts: &ClientOptions) -> Result<Connection, ClientError> {
        Self::connect_to(opts, &opts.url).await
    }

    /// As [`Connection::connect`], to `url` instead of the first URL of
    /// `opts` (e.g. one of its [`ClientOptions::urls`]); every other option
    /// applies.
    pub async fn connect_to(opts: &ClientOptions, url: &str) -> Result<Connection, ClientError> {
        let uri = parse_url(url)?;
        match tokio::time::timeout(opts.connect_timeout, Self::connect_inner(opts, url, uri)).await
        {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                what: "connecting and waiting for the welcome frame",
                after: opts.connect_timeout,
            }),
        }
    }

    async fn connect_inner(
        opts: &ClientOptions,
        url: &str,
        uri: http::Uri,
    ) -> Result<Self, ClientError> {
        let connect_error = |source| ClientError::Connect {
            url: url.to_owned(),
            source,
        };
        let protocol = match opts.codec {
            Codec::Json => JSON_PROTOCOL,
            Codec::MsgPack => MSGPACK_PROTOCOL,
        };
        let is_tls = uri.scheme_str() == Some("wss");
        let builder = tokio_websockets::ClientBuilder::from_uri(uri)
            .limits(Limits::default().max_payload_len(Some(opts.max_message_bytes)))
            .add_header(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static(protocol),
            )
            .map_err(connect_error)?;
        let connector;
        let builder = if is_tls {
            connector = opts.tls_connector()?;
            builder.connector(&connector)
        } else {
            builder
        };
        let (ws, response) = builder.connect().await.map_err(connect_error)?;

        // The server decides; no header means its default, JSON.
        let codec = match response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .map(|v| v.to_str().unwrap_or("").trim())
        {
            None => Codec::Json,
            Some(JSON_PROTOCOL) => Codec::Json,
            Some(MSGPACK_PROTOCOL) => Codec::MsgPack,
            Some(other) => {
                return Err(ClientError::Protocol(format!(
                    "server chose unknown subprotocol `{}`",
                    other.chars().take(64).collect::<String>()
                )))
            }
        };

        let mut conn = Connection {
            ws,
            codec,
            welcome: Welcome {
                conn: String::new(),
                node: String::new(),
                ping_interval: Duration::ZERO,
            },
            request_timeout: opts.request_timeout,
            idle_timeout: None,
            last_activity: Instant::now(),
            close: None,
            finished: false,
            next_id: 1,
        };
        match conn.next().await {
            Some(Ok(ServerFrame::Welcome {
                conn: id,
                node,
                ping_interval_ms,
            })) => {
                let ping_interval = Duration::from_millis(ping_interval_ms);
                conn.welcome = Welcome {
                    conn: id,
                    node,
                    ping_interval,
                };
                conn.idle_timeout = (ping_interval > Duration::ZERO).then(|| {
                    ping_interval
                        .saturating_mul(2)
                        .saturating_add(LIVENESS_SLACK)
                });
                Ok(conn)
            }
            Some(Ok(other)) => Err(ClientError::Protocol(format!(
                "expected a welcome frame first, got {other:?}"
            ))),
            Some(Err(e)) => Err(e),
            None => Err(conn.closed_error()),
        }
    }

    /// The codec the server agreed to.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The server's `welcome` frame.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The close frame the server sent, once [`Connection::next`] returned `None`.
    pub fn close_info(&self) -> Option<&CloseInfo> {
        self.close.as_ref()
    }

    /// A fresh numeric request id, unique on this connection.
    pub fn next_id(&mut self) -> Id {
        let id = self.next_id;
        self.next_id += 1;
        Id::Num(id)
    }

    /// Sends one frame in the connection's codec.
    pub async fn send(&mut self, frame: ClientFrame) -> Result<(), ClientError> {
        let bytes = self.codec.encode_client(&frame);
        self.send_raw(bytes, self.codec.is_binary()).await
    }

    /// Sends raw bytes as a text or binary message (for tests of malformed frames).
    pub async fn send_raw(&mut self, bytes: Bytes, binary: bool) -> Result<(), ClientError> {
        let msg = if binary {
            Message::binary(bytes)
        } else {
            // tokio-websockets requires text payloads to be UTF-8; check rather than trust.
            if std::str::from_utf8(&bytes).is_err() {
                return Err(ClientError::Protocol(
                    "refusing to send a text frame that is not UTF-8".into(),
                ));
            }
            Message::text(bytes)
        };
        self.ws.send(msg).await?;
        Ok(())
    }

    /// The next frame from the server. `None` once the connection is closed
    /// (see [`Connection::close_info`]); an `Err` for an undecodable frame
    /// ([`ClientError::Decode`], the connection stays usable), a broken
    /// connection ([`ClientError::WebSocket`]) or a silent server
    /// ([`ClientError::Timeout`]); after the latter two, `None` follows.
    ///
    /// Cancel-safe: dropping the future loses no frame.
    pub async fn next(&mut self) -> Option<Result<ServerFrame, ClientError>> {
        loop {
            if self.finished {
                return None;
            }
            let item = match self.idle_timeout {
                Some(idle) => {
                    match tokio::time::timeout_at(self.last_activity + idle, self.ws.next()).await {
                        Ok(item) => item,
                        Err(_) => {
                            self.finished = true;
                            return Some(Err(ClientError::Timeout {
                                what: "waiting for any traffic from the server (it pings every ping_interval_ms)",
                                after: idle,
                            }));
                        }
                    }
                }
                None => self.ws.next().await,
            };
            let msg = match item {
                None => {
                    self.finished = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.finished = true;
                    return Some(Err(ClientError::WebSocket(e)));
                }
                Some(Ok(msg)) => msg,
            };
            self.last_activity = Instant::now();
            if let Some((code, reason)) = msg.as_close() {
                let code = u16::from(code);
                self.close = Some(CloseInfo {
                    code: (code != u16::from(CloseCode::NO_STATUS_RECEIVED)).then_some(code),
                    reason: reason.to_owned(),
                });
                // tokio-websockets answers the close on the next poll, then ends the stream.
                continue;
            }
            if msg.is_ping() || msg.is_pong() {
                continue;
            }
            let codec = if msg.is_text() {
                Codec::Json
            } else {
                Codec::MsgPack
            };
            return Some(
                codec
                    .decode_server(msg.as_payload())
                    .map_err(ClientError::Decode),
            );
        }
    }

    /// The error describing why the connection ended: the server's close
    /// frame, or a lost connection.
    pub fn closed_error(&self) -> ClientError {
        match &self.close {
            Some(c) => ClientError::Closed {
                code: c.code,
                reason: c.reason.clone(),
            },
            None => ClientError::Closed {
                code: None,
                reason: "connection lost".into(),
            },
        }
    }

    /// Sends a request and waits (up to `request_timeout`) for the `ok` or
    /// `error` carrying its id. Other frames arriving meanwhile (messages,
    /// pongs) are discarded: use [`Connection::send`] and
    /// [`Connection::next`] when they matter.
    pub async fn request(&mut self, frame: ClientFrame) -> Result<ServerFrame, ClientError> {
        let Some(id) = frame.id().cloned() else {
            return Err(ClientError::Protocol(
                "a request needs an id to match its reply".into(),
            ));
        };
        let after = self.request_timeout;
        let deadline = Instant::now() + after;
        self.send(frame).await?;
        loop {
            let item = tokio::time::timeout_at(deadline, self.next())
                .await
                .map_err(|_| ClientError::Timeout {
                    what: "waiting for the reply to a request",
                    after,
                })?;
            match item {
                None => return Err(self.closed_error()),
                Some(Err(ClientError::Decode(e))) => {
                    tracing::warn!(error = %e, "ignoring undecodable frame while waiting for a reply");
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(reply)) => match &reply {
                    ServerFrame::Ok(r) if r.id.as_ref() == Some(&id) => return Ok(reply),
                    ServerFrame::Pong { id: Some(got), .. } if *got == id => return Ok(reply),
                    ServerFrame::Error {
                        id: Some(got),
                        code,
                        message,
                    } if *got == id => {
                        return Err(ClientError::Server {
                            code: *code,
                            message: message.clone(),
                        })
                    }
                    _ => {}
                },
            }
        }
    }

    /// Publishes `data` to `topic` and returns the assigned position.
    pub async fn publish(
        &mut self,
        topic: &str,
        data: &serde_json::Value,
    ) -> Result<Published, ClientError> {
        let id = self.next_id();
        let data = serde_json::to_vec(data)
            .map(Bytes::from)
            .map_err(|e| ClientError::Protocol(format!("payload does not serialise: {e}")))?;
        let reply = self
            .request(ClientFrame::Pub {
                id: Some(id),
                topic: topic.to_owned(),
                data,
            })
            .await?;
        match reply {
            ServerFrame::Ok(r) => match (r.seq, r.epoch) {
                (Some(seq), Some(epoch)) => Ok(Published {
                    topic: r.topic.unwrap_or_else(|| topic.to_owned()),
                    seq,
                    epoch,
                }),
                _ => Err(ClientError::Protocol(
                    "the ok reply to pub lacks `seq` or `epoch`".into(),
                )),
            },
            other => Err(ClientError::Protocol(format!(
                "unexpected reply to pub: {other:?}"
            ))),
        }
    }

    /// An application-level ping; returns the server's clock (µs since the Unix epoch).
    pub async fn ping(&mut self) -> Result<u64, ClientError> {
        let id = self.next_id();
        match self.request(ClientFrame::Ping { id: Some(id) }).await? {
            ServerFrame::Pong { ts, .. } => Ok(ts),
            other => Err(ClientError::Protocol(format!(
                "unexpected reply to ping: {other:?}"
            ))),
        }
    }

    /// Closes politely (code 1000) and waits briefly for the server's
    /// acknowledgement. Best effort: errors are ignored, the socket is
    /// dropped either way.
    pub async fn close(mut self) {
        if self.finished {
            return;
        }
        if self
            .ws
            .send(Message::close(Some(CloseCode::NORMAL_CLOSURE), ""))
            .await
            .is_err()
        {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Publishes one message over a fresh connection: connect, `pub`, wait for
/// the reply, close.
///
/// With [`ClientOptions::fallback_url`], a URL whose connection fails is
/// followed by the next one; once connected, the `pub` is sent once and its
/// outcome returned (a lost reply is not retried elsewhere, which could
/// store the message twice).
pub async fn publish(
    opts: &ClientOptions,
    topic: &str,
    data: serde_json::Value,
) -> Result<Published, ClientError> {
    opts.check_urls()?;
    let mut connected = Connection::connect(opts).await;
    for url in &opts.fallback_urls {
        match &connected {
            Err(e) if e.is_retryable() => connected = Connection::connect_to(opts, url).await,
            _ => break,
        }
    }
    let mut conn = connected?;
    let result = conn.publish(topic, &data).await;
    conn.close().await;
    result
}
