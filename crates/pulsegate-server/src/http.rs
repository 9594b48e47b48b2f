//! Plain HTTP routes (everything that is not a WebSocket upgrade), served by hyper.
//!
//! `GET /healthz`, `GET /readyz`, `POST /api/publish/{topic}`,
//! `POST /api/publish`, `GET /api/topics/{topic}`, `GET /api/history/{topic}`,
//! `GET /api/stats`, `GET /metrics`, `GET /dashboard`, and the admin API
//! (`GET /api/connections`, `DELETE /api/connections/{id}`, `GET /api/topics`).
//! Topics in paths are raw segments; other reserved characters are
//! percent-encoded. Every error is JSON `{"error":…,"message":…}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use pulsegate_core::{HubError, Message};
use pulsegate_proto::topic::validate_topic;
use serde_json::{json, value::RawValue, Value};

use crate::admin::{self, Credentials};
use crate::metrics::Source;
use crate::state::Shared;

/// The dashboard page (HTML, CSS and JS in one file, no external assets).
const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");

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

/// Dispatches one HTTP request from `peer`.
pub async fn route(
    shared: Arc<Shared>,
    peer: SocketAddr,
    client_cert: bool,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let creds = Credentials {
        authorization: header("authorization"),
        cookie: header("cookie"),
        query: req.uri().query(),
        forwarded: ["forwarded", "x-forwarded-for", "x-real-ip"]
            .iter()
            .any(|h| req.headers().contains_key(*h)),
    };
    let is_admin = admin::is_admin(&shared.config, creds, peer.ip());
    let mut caller = caller(&shared, creds.authorization);
    if let Caller::Open = caller {
        let mut chain = Vec::new();
        for v in req.headers().get_all("forwarded") {
            chain.extend(crate::clientip::forwarded_for(v.to_str().unwrap_or("")));
        }
        if chain.is_empty() {
            for v in req.headers().get_all("x-forwarded-for") {
                chain.extend(crate::clientip::x_forwarded_for(v.to_str().unwrap_or("")));
            }
        }
        let ip = crate::clientip::client_ip(&shared.trusted_proxies, peer.ip(), &chain);
        caller = Caller::Anonymous(ip.to_string());
    }
    // The admin API exists only with a token, and then needs it in the header.
    let admin_api = match &shared.config.admin.token {
        None => Err(error(
            StatusCode::NOT_FOUND,
            "admin_disabled",
            "the admin API is disabled: set admin.token to enable it",
        )),
        Some(_)
            if admin::has_token(
                &shared.config,
                Credentials {
                    authorization: creds.authorization,
                    ..Default::default()
                },
            ) =>
        {
            Ok(())
        }
        Some(_) => Err(unauthorized()),
    };
    let resp = match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readyz(&shared),
        (&Method::GET, "/api/stats") => {
            json_response(StatusCode::OK, &crate::livestats::stats_json(&shared))
        }
        (&Method::GET, "/metrics") => metrics(&shared, header("accept").unwrap_or("")),
        (&Method::GET, "/dashboard") => dashboard(&shared, creds, is_admin),
        (&Method::GET, "/api/connections") => match admin_api {
            Ok(()) => connections(&shared, req.uri().query()),
            Err(r) => r,
        },
        (&Method::DELETE, p) if p.starts_with("/api/connections/") => match admin_api {
            Ok(()) => kick(&shared, &p["/api/connections/".len()..]),
            Err(r) => r,
        },
        (&Method::GET, "/api/topics") => match admin_api {
            Ok(()) => topics(&shared, req.uri().query()),
            Err(r) => r,
        },
        (&Method::GET, p)
            if (p.starts_with("/api/topics/$") || p.starts_with("/api/history/$")) && !is_admin =>
        {
            error(StatusCode::FORBIDDEN, "forbidden", "`$` topics are for operators (admin.token)")
        }
        (&Method::GET, "/ws" | "/echo") => error(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket: send Upgrade: websocket and Connection: Upgrade on a new connection",
        ),
        (&Method::POST, p)
            if p.starts_with("/api/publish")
                && shared.config.tls.require_client_cert_for_publish
                && !client_cert =>
        {
            shared.metrics.publish_error("forbidden");
            error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "publishing needs a TLS client certificate (tls.require_client_cert_for_publish)",
            )
        }
        (&Method::POST, "/api/publish") => publish_batch(&shared, &caller, req).await,
        (&Method::POST, p) if p.starts_with("/api/publish/") => {
            let topic = decode_topic(&p["/api/publish/".len()..]);
            publish_one(&shared, &caller, topic, req).await
        }
        (&Method::GET, p) if p.starts_with("/api/topics/") => {
            last_value(&shared, &caller, decode_topic(&p["/api/topics/".len()..])).await
        }
        (&Method::GET, p) if p.starts_with("/api/history/") => {
            history(
                &shared,
                &caller,
                decode_topic(&p["/api/history/".len()..]),
                req.uri().query(),
            )
            .await
        }
        (_, "/healthz" | "/readyz" | "/api/stats" | "/api/publish" | "/metrics" | "/dashboard" | "/api/connections" | "/api/topics") => {
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

/// Who sent an HTTP request to the publish and read routes.
enum Caller {
    /// `auth.mode = "none"`: everyone may.
    Open,
    /// `auth.mode = "none"`, from this client IP (its publish rate bucket).
    Anonymous(String),
    /// A valid JWT or API key.
    Known(crate::auth::Identity),
    /// `auth.mode = "jwt"` and no valid credential.
    Refused(crate::auth::AuthError),
}

fn caller(shared: &Shared, authorization: Option<&str>) -> Caller {
    let Some(auth) = &shared.auth else {
        return Caller::Open;
    };
    let token = authorization
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = token else {
        return Caller::Refused(crate::auth::AuthError::Missing);
    };
    if let Some(id) = auth.api_key(token) {
        return Caller::Known(id);
    }
    match auth.verify(token) {
        Ok(id) => Caller::Known(id),
        Err(e) => Caller::Refused(e),
    }
}

/// `None` if `caller` may publish `size` more bytes now
/// (`limits.publish_rate`, `limits.publish_bytes_rate`), else 429.
fn rate_check(shared: &Shared, caller: &Caller, size: usize) -> Option<Resp> {
    let bucket = match caller {
        Caller::Anonymous(ip) => ip.as_str(),
        Caller::Known(id) => id.subject.as_str(),
        Caller::Open | Caller::Refused(_) => return None,
    };
    let over = shared.rates.http_publish(bucket, size).err()?;
    shared.metrics.rate_limited(over.label());
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        over.message(),
    );
    r.headers_mut()
        .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
    Some(r)
}

/// `None` if `caller` may act on `topic`, else the refusal: `op` is `pub` (publish grant) or
/// `read` (a subscribe grant covering the topic).
fn authorize(shared: &Shared, caller: &Caller, op: &str, topic: &str) -> Option<Resp> {
    match caller {
        Caller::Open | Caller::Anonymous(_) => None,
        Caller::Refused(e) => {
            shared.metrics.auth_failure(e.label());
            let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string());
            r.headers_mut().insert(
                "www-authenticate",
                hyper::header::HeaderValue::from_static("Bearer realm=\"pulsegate\""),
            );
            Some(r)
        }
        Caller::Known(id) => {
            let allowed = if op == "pub" {
                id.may_publish(topic)
            } else {
                id.may_subscribe(topic)
            };
            if allowed {
                None
            } else {
                shared.metrics.acl_denied(op);
                let verb = if op == "pub" { "publish to" } else { "read" };
                Some(error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("the token does not allow you to {verb} `{topic}`"),
                ))
            }
        }
    }
}

fn unauthorized() -> Resp {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send the admin token as `Authorization: Bearer <admin.token>`",
    );
    r.headers_mut().insert(
        "www-authenticate",
        hyper::header::HeaderValue::from_static("Bearer realm=\"pulsegate\""),
    );
    r
}

/// `GET /metrics`: OpenMetrics text when the scraper asks for it
/// (Prometheus does), the classic Prometheus text format (0.0.4) otherwise,
/// which is what `curl` and `promtool check metrics` read.
fn metrics(shared: &Arc<Shared>, accept: &str) -> Resp {
    if !shared.metrics.enabled() {
        return error(
            StatusCode::NOT_FOUND,
            "metrics_disabled",
            "metrics are disabled (metrics.enabled = false)",
        );
    }
    let registry = crate::metrics::registry(shared.clone());
    let mut text = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("encoding metrics: {e}"),
        );
    }
    let (content_type, text) = if accept.contains("application/openmetrics-text") {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::to_prometheus_text(&text),
        )
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(text)))
        .expect("static response parts are valid")
}

/// `GET /dashboard`. With `admin.token`: `?token=` sets the cookie and
/// redirects to the bare URL (so the token leaves the address bar and
/// history); the cookie or a Bearer header serves the page; anything else
/// is 401. Without a token: loopback clients only.
fn dashboard(shared: &Shared, creds: Credentials<'_>, is_admin: bool) -> Resp {
    let html = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/html; charset=utf-8")
            .header("cache-control", "no-store")
            .header("x-frame-options", "DENY")
            .header(
                "content-security-policy",
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:; img-src 'self' data:",
            )
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    let Some(token) = shared.config.admin.token.as_ref() else {
        return if is_admin {
            html(StatusCode::OK, DASHBOARD_HTML.to_string())
        } else {
            error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the dashboard is served to this machine only; set admin.token to open it to remote operators",
            )
        };
    };
    let query_ok =
        admin::query_token(creds.query).is_some_and(|q| admin::token_matches(&shared.config, &q));
    if query_ok {
        let secure = if shared.config.tls.cert.is_some() {
            "; Secure"
        } else {
            ""
        };
        return Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header("location", "/dashboard")
            .header("cache-control", "no-store")
            .header(
                "set-cookie",
                format!(
                    "{}={}; Path=/; HttpOnly; SameSite=Strict{secure}",
                    admin::COOKIE,
                    admin::cookie_value(token.expose())
                ),
            )
            .body(Full::new(Bytes::new()))
            .expect("static response parts are valid");
    }
    if is_admin {
        html(StatusCode::OK, DASHBOARD_HTML.to_string())
    } else {
        html(
            StatusCode::UNAUTHORIZED,
            "<!doctype html><title>pulsegate</title><p>Not authorised. Open <code>/dashboard?token=&lt;admin.token&gt;</code> once; the server then keeps you signed in with a cookie.</p>".to_string(),
        )
    }
}

/// Parses `offset` and `limit` of a paged admin listing.
fn paging(query: Option<&str>) -> Result<(usize, usize), String> {
    let (mut offset, mut limit) = (0usize, 100usize);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n = v.parse::<usize>();
        match (k, n) {
            ("offset", Ok(n)) => offset = n,
            ("limit", Ok(n)) if (1..=1000).contains(&n) => limit = n,
            ("offset" | "limit", _) => {
                return Err(
                    "offset must be an integer >= 0 and limit an integer in 1..=1000".into(),
                )
            }
            _ => return Err(format!("unknown query parameter `{k}` (use offset, limit)")),
        }
    }
    Ok((offset, limit))
}

fn connections(shared: &Shared, query: Option<&str>) -> Resp {
    let (offset, limit) = match paging(query) {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", m),
    };
    let all = shared.connections();
    let page: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|c| crate::livestats::conn_json(c))
        .collect();
    let next = (offset + page.len() < all.len()).then_some(offset + page.len());
    json_response(
        StatusCode::OK,
        &json!({"total": all.len(), "offset": offset, "next_offset": next, "connections": page}),
    )
}

fn kick(shared: &Shared, id: &str) -> Resp {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "connection id must be an integer (the `conn` of `welcome`)",
        );
    };
    if shared.kick(id) {
        json_response(
            StatusCode::OK,
            &json!({"closed": id.to_string(), "code": pulsegate_proto::close_code::KICKED}),
        )
    } else {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no live connection {id}"),
        )
    }
}

fn topics(shared: &Shared, query: Option<&str>) -> Resp {
    let (offset, limit) = match paging(query) {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", m),
    };
    let rates = shared.live.topic_rates();
    let page: Vec<Value> = rates
        .iter()
        .skip(offset)
        .take(limit)
        .map(crate::livestats::topic_json)
        .collect();
    let next = (offset + page.len() < rates.len()).then_some(offset + page.len());
    json_response(
        StatusCode::OK,
        &json!({"total": rates.len(), "offset": offset, "next_offset": next, "topics": page}),
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
    caller: &Caller,
    topic: Result<String, String>,
    req: Request<Incoming>,
) -> Resp {
    let topic = match topic {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_topic", e),
    };
    let resp = publish_one_inner(shared, caller, topic, req).await;
    count_refusal(shared, &resp);
    resp
}

async fn publish_one_inner(
    shared: &Shared,
    caller: &Caller,
    topic: String,
    req: Request<Incoming>,
) -> Resp {
    if let Err(e) = validate_topic(&topic, shared.config.limits.max_topic_length) {
        return error(StatusCode::BAD_REQUEST, "bad_topic", e.to_string());
    }
    if topic.starts_with('$') {
        return reserved_topic();
    }
    if let Some(r) = authorize(shared, caller, "pub", &topic) {
        return r;
    }
    let body = match read_body(shared, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let data = match serde_json::from_slice::<&RawValue>(&body) {
        Ok(raw) => match pulsegate_proto::codec::check_payload(raw.get()) {
            Ok(()) => Bytes::copy_from_slice(raw.get().as_bytes()),
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", e),
        },
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("body must be one JSON value: {e}"),
            )
        }
    };
    if let Some(r) = rate_check(shared, caller, data.len()) {
        return r;
    }
    match publish(shared, &topic, data).await {
        Ok(m) => json_response(StatusCode::OK, &stamp(&m)),
        Err(e) => publish_error(e),
    }
}

fn reserved_topic() -> Resp {
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "topics starting with `$` are reserved for the server",
    )
}

/// Publishes one HTTP message and records it in the metrics.
async fn publish(shared: &Shared, topic: &str, data: Bytes) -> Result<Arc<Message>, HubError> {
    let m = shared.publish(topic, data).await?;
    count_published(shared, &m);
    Ok(m)
}

fn count_published(shared: &Shared, m: &Message) {
    let metrics = &shared.metrics;
    metrics.published(Source::Http, m.data.len());
    metrics.observe(
        &metrics.publish_fanout,
        pulsegate_core::now_micros().saturating_sub(m.ts),
    );
}

/// Counts a refused publish by the class of its HTTP status.
fn count_refusal(shared: &Shared, resp: &Resp) {
    let reason = match resp.status() {
        StatusCode::OK => return,
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::TOO_MANY_REQUESTS => "limit",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "bad_request",
    };
    shared.metrics.publish_error(reason);
}

async fn publish_batch(shared: &Shared, caller: &Caller, req: Request<Incoming>) -> Resp {
    let resp = publish_batch_inner(shared, caller, req).await;
    count_refusal(shared, &resp);
    resp
}

async fn publish_batch_inner(shared: &Shared, caller: &Caller, req: Request<Incoming>) -> Resp {
    if let Caller::Refused(_) = caller {
        // Refuse before reading the body.
        if let Some(r) = authorize(shared, caller, "pub", "") {
            return r;
        }
    }
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
        if let Err(e) = pulsegate_proto::codec::check_payload(item.data.get()) {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("item {i}: {e}"),
            );
        }
        if let Err(e) = validate_topic(&item.topic, max) {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_topic",
                format!("item {i}: {e}"),
            );
        }
        if item.topic.starts_with('$') {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("item {i}: topics starting with `$` are reserved for the server"),
            );
        }
        if let Some(r) = authorize(shared, caller, "pub", &item.topic) {
            return r;
        }
    }
    for item in &items {
        if let Some(r) = rate_check(shared, caller, item.data.get().len()) {
            return r;
        }
    }
    let mut out = Vec::with_capacity(items.len());
    let mut i = 0;
    while i < items.len() {
        let topic = &items[i].topic;
        let data = |item: &Item<'_>| Bytes::copy_from_slice(item.data.get().as_bytes());
        // Consecutive items of one topic are published as one burst (one
        // lock, one queue entry per subscriber); in a cluster each goes
        // through the backplane on its own.
        let run = match shared.cluster.get() {
            Some(_) => 1,
            None => items[i..]
                .iter()
                .take_while(|it| it.topic == *topic)
                .count(),
        };
        let published = if run == 1 {
            publish(shared, topic, data(&items[i]))
                .await
                .map(|m| vec![m])
        } else {
            let msgs = shared
                .hub
                .publish_many(topic, items[i..i + run].iter().map(data));
            if let Ok(msgs) = &msgs {
                msgs.iter().for_each(|m| count_published(shared, m));
            }
            msgs
        };
        match published {
            Ok(msgs) => out.extend(msgs.iter().map(|m| stamp(m))),
            Err(e) => {
                // Items before `i` were published; say so explicitly (a
                // burst is refused whole, before any of it is stamped).
                let mut r = publish_error(e);
                let body = json!({"error": "partial", "published": out, "failed_index": i});
                *r.body_mut() = Full::new(Bytes::from(body.to_string()));
                return r;
            }
        }
        i += run;
    }
    json_response(StatusCode::OK, &Value::Array(out))
}

async fn last_value(shared: &Shared, caller: &Caller, topic: Result<String, String>) -> Resp {
    let topic = match topic {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_topic", e),
    };
    if let Err(e) = validate_topic(&topic, shared.config.limits.max_topic_length) {
        return error(StatusCode::BAD_REQUEST, "bad_topic", e.to_string());
    }
    if !topic.starts_with('$') {
        if let Some(r) = authorize(shared, caller, "read", &topic) {
            return r;
        }
    }
    let found = match shared.cluster.get() {
        Some(c) => match c.last_value(&topic).await {
            Ok(m) => m,
            Err(e) => return publish_error(e),
        },
        None => shared.hub.last_value(&topic),
    };
    match found {
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

async fn history(
    shared: &Shared,
    caller: &Caller,
    topic: Result<String, String>,
    query: Option<&str>,
) -> Resp {
    let topic = match topic {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_topic", e),
    };
    if let Err(e) = validate_topic(&topic, shared.config.limits.max_topic_length) {
        return error(StatusCode::BAD_REQUEST, "bad_topic", e.to_string());
    }
    if !topic.starts_with('$') {
        if let Some(r) = authorize(shared, caller, "read", &topic) {
            return r;
        }
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
    let found = match shared.cluster.get() {
        Some(c) => match c.history(&topic, since, limit).await {
            Ok(log) => log.map(|l| (l.epoch, l.last_seq, l.messages)),
            Err(e) => return publish_error(e),
        },
        None => shared.hub.history(&topic, since, limit),
    };
    match found {
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
