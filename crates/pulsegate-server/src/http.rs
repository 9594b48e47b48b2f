//! Plain HTTP routes (everything that is not a WebSocket upgrade), served by hyper.
//!
//! `GET /healthz`, `GET /readyz`, `POST /api/publish/{topic}`,
//! `POST /api/publish`, `GET /api/topics/{topic}`, `GET /api/history/{topic}`,
//! `GET /api/stats`. Topics in paths are raw segments; other reserved
//! characters are percent-encoded. Every error is JSON `{"error":…,"message":…}`.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use pulsegate_core::{HubError, Message};
use pulsegate_proto::topic::validate_topic;
use serde_json::{json, value::RawValue, Value};

use crate::state::Shared;
use crate::stats::ServerStats;

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: &Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Resp {
    json_response(status, &json!({"error": code, "message": message.into()}))
}

/// Dispatches one HTTP request.
pub async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let resp = match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readyz(&shared),
        (&Method::GET, "/api/stats") => stats(&shared),
        (&Method::GET, "/ws" | "/echo") => error(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket: send Upgrade: websocket and Connection: Upgrade on a new connection",
        ),
        (&Method::POST, "/api/publish") => publish_batch(&shared, req).await,
        (&Method::POST, p) if p.starts_with("/api/publish/") => {
            let topic = decode_topic(&p["/api/publish/".len()..]);
            publish_one(&shared, topic, req).await
        }
        (&Method::GET, p) if p.starts_with("/api/topics/") => {
            last_value(&shared, decode_topic(&p["/api/topics/".len()..]))
        }
        (&Method::GET, p) if p.starts_with("/api/history/") => history(
            &shared,
            decode_topic(&p["/api/history/".len()..]),
            req.uri().query(),
        ),
        (_, "/healthz" | "/readyz" | "/api/stats" | "/api/publish") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{method} is not allowed on {path}"))
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", format!("no route for {method} {path}")),
    };
    Ok(resp)
}

fn decode_topic(raw: &str) -> Result<String, String> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "topic is not valid UTF-8 after percent-decoding".to_string())
}

fn readyz(shared: &Shared) -> Resp {
    match shared.not_ready() {
        None => json_response(StatusCode::OK, &json!({"status": "ready"})),
        Some(r) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready", "reason": r.as_str()}),
        ),
    }
}

fn stats(shared: &Shared) -> Resp {
    let hub = &shared.hub;
    let s = &shared.stats;
    let h = hub.stats();
    let (retained, retained_bytes) = hub.retained();
    json_response(
        StatusCode::OK,
        &json!({
            "node": shared.node,
            "connections": shared.active_connections(),
            "subscriptions": hub.subscription_count(),
            "topics": hub.topic_count(),
            "published": h.published.load(Relaxed),
            "published_http": s.published_http.load(Relaxed),
            "published_ws": s.published_ws.load(Relaxed),
            "enqueued": h.enqueued.load(Relaxed),
            "frames_out": s.frames_out.load(Relaxed),
            "history_messages": retained,
            "history_bytes": retained_bytes,
            "dropped": {
                "conflated": h.dropped_conflated.load(Relaxed),
                "queue_full": h.dropped_queue_full.load(Relaxed),
                "slow_consumer_close": h.dropped_slow_consumer.load(Relaxed),
                "connection_closed": h.dropped_connection_closed.load(Relaxed),
            },
            "slow_consumer_disconnects": h.slow_consumer_disconnects.load(Relaxed),
            "pong_timeouts": s.pong_timeouts.load(Relaxed),
            "hibernations": s.hibernations.load(Relaxed),
            "protocol_errors": s.protocol_errors.load(Relaxed),
        }),
    )
}

async fn read_body(shared: &Shared, req: Request<Incoming>) -> Result<Bytes, Resp> {
    let max = shared.config.limits.max_message_bytes;
    match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body larger than {max} bytes (limits.max_message_bytes)"),
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("reading body: {e}"),
        )),
    }
}

fn publish_error(e: HubError) -> Resp {
    match e {
        HubError::TooManyTopics(_) => error(StatusCode::TOO_MANY_REQUESTS, "limit", e.to_string()),
        HubError::Backplane(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "backplane_down",
            e.to_string(),
        ),
    }
}

fn stamp(m: &Message) -> Value {
    json!({"topic": &*m.topic, "seq": m.seq, "epoch": &*m.epoch})
}

async fn publish_one(
    shared: &Shared,
    topic: Result<String, String>,
    req: Request<Incoming>,
) -> Resp {
    let topic = match topic {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_topic", e),
    };
    if let Err(e) = validate_topic(&topic, shared.config.limits.max_topic_length) {
        return error(StatusCode::BAD_REQUEST, "bad_topic", e.to_string());
    }
    let body = match read_body(shared, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let data = match serde_json::from_slice::<&RawValue>(&body) {
        Ok(raw) => Bytes::copy_from_slice(raw.get().as_bytes()),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("body must be one JSON value: {e}"),
            )
        }
    };
    match shared.hub.publish(&topic, data) {
        Ok(m) => {
            ServerStats::inc(&shared.stats.published_http);
            json_response(StatusCode::OK, &stamp(&m))
        }
        Err(e) => publish_error(e),
    }
}

async fn publish_batch(shared: &Shared, req: Request<Incoming>) -> Resp {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item<'a> {
        topic: String,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let body = match read_body(shared, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let items: Vec<Item<'_>> = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("body must be a JSON array of {{\"topic\":…,\"data\":…}}: {e}"),
            )
        }
    };
    // All-or-nothing validation: nothing is published if any item is invalid.
    let max = shared.config.limits.max_topic_length;
    for (i, item) in items.iter().enumerate() {
        if let Err(e) = validate_topic(&item.topic, max) {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_topic",
                format!("item {i}: {e}"),
            );
        }
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match shared.hub.publish(
            &item.topic,
            Bytes::copy_from_slice(item.data.get().as_bytes()),
        ) {
            Ok(m) => {
                ServerStats::inc(&shared.stats.published_http);
                out.push(stamp(&m));
            }
            Err(e) => {
                // Items before `i` were published; say so explicitly.
                let mut r = publish_error(e);
                let body = json!({"error": "partial", "published": out, "failed_index": i});
                *r.body_mut() = Full::new(Bytes::from(body.to_string()));
                return r;
            }
        }
    }
    json_response(StatusCode::OK, &Value::Array(out))
}

fn last_value(shared: &Shared, topic: Result<String, String>) -> Resp {
    let topic = match topic {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_topic", e),
    };
    if let Err(e) = validate_topic(&topic, shared.config.limits.max_topic_length) {
        return error(StatusCode::BAD_REQUEST, "bad_topic", e.to_string());
    }
    match shared.hub.last_value(&topic) {
        Some(m) => json_response(StatusCode::OK, &message_json(&m)),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no value for topic `{topic}`"),
        ),
    }
}

fn message_json(m: &Message) -> Value {
    let data: Value = serde_json::from_slice(&m.data).unwrap_or(Value::Null);
    json!({"topic": &*m.topic, "seq": m.seq, "epoch": &*m.epoch, "ts": m.ts, "data": data})
}

/// Default and maximum `limit` of `/api/history`.
const HISTORY_DEFAULT_LIMIT: usize = 100;
const HISTORY_MAX_LIMIT: usize = 10_000;

fn history(shared: &Shared, topic: Result<String, String>, query: Option<&str>) -> Resp {
    let topic = match topic {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_topic", e),
    };
    if let Err(e) = validate_topic(&topic, shared.config.limits.max_topic_length) {
        return error(StatusCode::BAD_REQUEST, "bad_topic", e.to_string());
    }
    let mut since = 0u64;
    let mut limit = HISTORY_DEFAULT_LIMIT;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "since" => match v.parse() {
                Ok(n) => since = n,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "since must be a non-negative integer",
                    )
                }
            },
            "limit" => match v.parse::<usize>() {
                Ok(n) if n > 0 => limit = n.min(HISTORY_MAX_LIMIT),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "limit must be a positive integer",
                    )
                }
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("unknown query parameter `{k}` (use since, limit)"),
                )
            }
        }
    }
    match shared.hub.history(&topic, since, limit) {
        Some((epoch, last_seq, msgs)) => json_response(
            StatusCode::OK,
            &json!({
                "topic": topic,
                "epoch": &*epoch,
                "last_seq": last_seq,
                "messages": msgs.iter().map(|m| message_json(m)).collect::<Vec<_>>(),
            }),
        ),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no history for topic `{topic}`"),
        ),
    }
}
