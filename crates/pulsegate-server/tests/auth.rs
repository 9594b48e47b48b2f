//! `auth.mode = "jwt"` against a real server: the three ways to bring a
//! token to the upgrade, the `auth` message and its timeout, expiry and
//! refresh, topic ACLs with `{sub}`, the HTTP publish and read API with JWTs
//! and API keys, RS256 and ES256 keys (PEM and JWKS), and refused tokens
//! (expired, forged, `alg: none`).

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use pulsegate_server::config::{AuthMode, Secret};
use pulsegate_testkit::{http, upgrade_status, TestServer, WsClient};
use serde_json::{json, Value};
use support::recv_msg;

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";
const API_KEY: &str = "publisher-api-key-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs_token(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A token for `sub` valid for `secs`, with the given grants.
fn token_for(sub: &str, secs: u64, subscribe: &[&str], publish: &[&str]) -> String {
    hs_token(json!({"sub": sub, "exp": now() + secs, "subscribe": subscribe, "publish": publish}))
}

async fn jwt_server(tweak: impl FnOnce(&mut pulsegate_server::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt_hs256_secret = Some(Secret::new(SECRET));
        c.auth.api_keys = vec![Secret::new(API_KEY)];
        tweak(c);
    })
    .await
}

async fn connect_bearer(server: &TestServer, token: &str) -> WsClient {
    let auth = format!("Bearer {token}");
    let mut c = WsClient::connect_with(&server.ws_url(), &[("Authorization", &auth)])
        .await
        .expect("upgrade with a valid token");
    assert_eq!(c.recv_json().await["op"], "welcome");
    c
}

async fn post(server: &TestServer, path: &str, bearer: Option<&str>, body: &str) -> (u16, Value) {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let (status, _, body) = http(server.addr, "POST", path, &headers, body.as_bytes()).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn acls_decide_what_a_token_may_subscribe_and_publish() {
    let server = jwt_server(|_| {}).await;
    let t = token_for(
        "alice",
        300,
        &["users/{sub}/#", "site/+/power"],
        &["users/{sub}/out"],
    );
    let mut c = connect_bearer(&server, &t).await;
    for (topic, allowed) in [
        ("users/alice/#", true),
        ("site/a/power", true),
        ("site/+/power", true),
        ("users/bob/#", false),
        ("site/#", false),
        ("#", false),
        ("users/+/inbox", false),
    ] {
        let r = c
            .request(json!({"op": "sub", "id": topic, "topic": topic}))
            .await;
        let want = if allowed { "ok" } else { "error" };
        assert_eq!(r["op"], want, "sub {topic}: {r}");
        if !allowed {
            assert_eq!(r["code"], "forbidden", "{r}");
        }
    }
    // alice is subscribed to her own topic: the message comes before the `ok`.
    c.send_json(json!({"op": "pub", "id": 1, "topic": "users/alice/out", "data": 1}))
        .await;
    let m = recv_msg(&mut c).await;
    assert_eq!(m["topic"], "users/alice/out");
    assert_eq!(c.recv_json().await["op"], "ok");
    let r = c
        .request(json!({"op": "pub", "id": 2, "topic": "users/bob/out", "data": 1}))
        .await;
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{r}"
    );
}

#[tokio::test]
async fn a_token_comes_as_bearer_header_query_or_subprotocol() {
    let server = jwt_server(|_| {}).await;
    let t = token_for("bob", 300, &["a/#"], &[]);
    let q = format!("{}?token={t}", server.ws_url());
    let mut c = WsClient::connect_with(&q, &[]).await.expect("query token");
    assert_eq!(c.recv_json().await["op"], "welcome");
    let r = c
        .request(json!({"op": "sub", "id": 1, "topic": "a/b"}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");

    // Subprotocol: our protocol plus `bearer.<jwt>`; the server selects ours.
    let protocols = format!("pulsegate.v1.json, bearer.{t}");
    let (status, head, _ws) = pulsegate_testkit::raw_upgrade(
        server.addr,
        "/ws",
        &[("Sec-WebSocket-Protocol", &protocols)],
    )
    .await;
    assert_eq!(status, 101, "{head}");
    assert_eq!(
        pulsegate_testkit::header_value(&head, "sec-websocket-protocol"),
        Some("pulsegate.v1.json")
    );

    // A bad token on the upgrade is refused before it.
    let auth = "Bearer not-a-jwt".to_string();
    assert_eq!(
        upgrade_status(&server.ws_url(), &[("Authorization", &auth)]).await,
        401
    );
    let expired = hs_token(json!({"sub": "x", "exp": now() - 600}));
    let auth = format!("Bearer {expired}");
    assert_eq!(
        upgrade_status(&server.ws_url(), &[("Authorization", &auth)]).await,
        401
    );
    let forged = encode(
        &Header::default(),
        &json!({"sub": "x", "exp": now() + 60, "subscribe": ["#"]}),
        &EncodingKey::from_secret(b"some-other-secret-of-32-bytes-or-more"),
    )
    .unwrap();
    let auth = format!("Bearer {forged}");
    assert_eq!(
        upgrade_status(&server.ws_url(), &[("Authorization", &auth)]).await,
        401
    );
    // alg: none, claiming everything.
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "x", "exp": now() + 60, "subscribe": ["#"], "publish": ["#"]}))
    );
    let auth = format!("Bearer {none}");
    assert_eq!(
        upgrade_status(&server.ws_url(), &[("Authorization", &auth)]).await,
        401
    );
}

#[tokio::test]
async fn without_a_token_a_connection_must_authenticate_in_time() {
    let server = jwt_server(|c| c.auth.timeout = Duration::from_millis(800)).await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    let r = c.request(json!({"op": "sub", "id": 1, "topic": "a"})).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("authenticate first"),
        "{r}"
    );
    let t = token_for("carol", 300, &["a"], &[]);
    let r = c.request(json!({"op": "auth", "id": 2, "token": t})).await;
    assert_eq!(r["op"], "ok", "{r}");
    assert!(r["exp"].as_u64().unwrap() > now(), "{r}");
    let r = c.request(json!({"op": "sub", "id": 3, "topic": "a"})).await;
    assert_eq!(r["op"], "ok", "{r}");
    // Authenticated: the auth timeout no longer applies.
    assert!(c.try_recv_json(Duration::from_millis(1200)).await.is_none());

    let (mut idle, _) = WsClient::connect(&server.ws_url()).await;
    let bad = idle
        .request(json!({"op": "auth", "id": 1, "token": "garbage"}))
        .await;
    assert_eq!(bad["code"], "forbidden", "{bad}");
    let close = idle.recv_close(Duration::from_secs(5)).await;
    assert_eq!(close.map(|c| c.0), Some(4005));
}

#[tokio::test]
async fn an_expiring_token_closes_the_connection_unless_refreshed() {
    let server = jwt_server(|c| c.auth.leeway = Duration::ZERO).await;
    let short = token_for("dave", 2, &["a"], &[]);
    let mut refreshed = connect_bearer(&server, &short).await;
    let mut expiring = connect_bearer(&server, &short).await;
    let fresh = token_for("dave", 300, &["a"], &[]);
    let r = refreshed
        .request(json!({"op": "auth", "id": 1, "token": fresh}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    // Another subject cannot take over the connection.
    let other = token_for("eve", 300, &["#"], &[]);
    let r = refreshed
        .request(json!({"op": "auth", "id": 2, "token": other}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");

    let close = expiring.recv_close(Duration::from_secs(6)).await;
    assert_eq!(close.map(|c| c.0), Some(4004));
    // The refreshed one is still served.
    let r = refreshed.request(json!({"op": "ping", "id": 3})).await;
    assert_eq!(r["op"], "pong", "{r}");
}

#[tokio::test]
async fn http_publish_and_reads_need_a_jwt_or_api_key() {
    let server = jwt_server(|_| {}).await;
    let (status, body) = post(&server, "/api/publish/site/a", None, "1").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let (status, _) = post(
        &server,
        "/api/publish/site/a",
        Some("wrong-key-0123456789"),
        "1",
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = post(&server, "/api/publish/site/a", Some(API_KEY), "1").await;
    assert_eq!(status, 200, "{body}");

    let writer = token_for("w", 300, &["site/#"], &["site/b"]);
    let (status, body) = post(&server, "/api/publish/site/b", Some(&writer), "2").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&server, "/api/publish/site/c", Some(&writer), "3").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    // A batch is all or nothing: one forbidden item publishes none.
    let batch = r#"[{"topic":"site/b","data":4},{"topic":"site/c","data":5}]"#;
    let (status, _) = post(&server, "/api/publish", Some(&writer), batch).await;
    assert_eq!(status, 403);

    let auth = format!("Bearer {writer}");
    let (status, _, body) = http(
        server.addr,
        "GET",
        "/api/topics/site/b",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, v["seq"].clone()), (200, json!(1)), "{v}");
    let key = format!("Bearer {API_KEY}");
    let (status, _, _) = http(
        server.addr,
        "GET",
        "/api/history/site/b",
        &[("Authorization", &key)],
        b"",
    )
    .await;
    assert_eq!(status, 403, "an API key publishes but does not read");
    let (status, _, _) = http(server.addr, "GET", "/api/topics/site/b", &[], b"").await;
    assert_eq!(status, 401);

    let (_, m) = get_metrics(&server).await;
    assert!(
        m.contains(r#"pulsegate_acl_denials_total{op="pub"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"pulsegate_acl_denials_total{op="read"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"pulsegate_auth_failures_total{reason="missing"} 2"#),
        "{m}"
    );
}

async fn get_metrics(server: &TestServer) -> (u16, String) {
    let (status, _, body) = http(server.addr, "GET", "/metrics", &[], b"").await;
    (status, String::from_utf8(body).unwrap())
}

/// Writes `text` to a file in a fresh temporary directory (kept alive by the guard).
fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[tokio::test]
async fn rs256_pem_and_es256_jwks_keys_verify_their_tokens_only() {
    // RS256 with a PEM public key.
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let (_d1, pem) = temp_file("rsa.pub.pem", &rsa.public_key_pem());
    let server = TestServer::start_with(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt_public_key_file = Some(pem.clone());
    })
    .await;
    let claims = json!({"sub": "r", "exp": now() + 60, "subscribe": ["x"]});
    let signed = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let mut c = connect_bearer(&server, &signed).await;
    let r = c.request(json!({"op": "sub", "id": 1, "topic": "x"})).await;
    assert_eq!(r["op"], "ok", "{r}");
    // HS256 signed with the public key's text must not pass (key confusion).
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(rsa.public_key_pem().as_bytes()),
    )
    .unwrap();
    let auth = format!("Bearer {confused}");
    assert_eq!(
        upgrade_status(&server.ws_url(), &[("Authorization", &auth)]).await,
        401
    );

    // ES256 from a JWKS, chosen by kid.
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = ec.public_key_raw();
    assert_eq!((raw.len(), raw[0]), (65, 4), "uncompressed P-256 point");
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
    }]});
    let (_d2, jwks_path) = temp_file("jwks.json", &jwks.to_string());
    let server = TestServer::start_with(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwks_file = Some(jwks_path.clone());
    })
    .await;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let signed = encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let mut c = connect_bearer(&server, &signed).await;
    let r = c.request(json!({"op": "sub", "id": 1, "topic": "x"})).await;
    assert_eq!(r["op"], "ok", "{r}");
    header.kid = Some("unknown".into());
    let other_kid = encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let auth = format!("Bearer {other_kid}");
    assert_eq!(
        upgrade_status(&server.ws_url(), &[("Authorization", &auth)]).await,
        401
    );
}

#[test]
fn auth_config_errors_name_the_key() {
    use pulsegate_server::Config;
    let err = Config::from_toml_str("[auth]\nmode = \"jwt\"\n").unwrap_err();
    assert!(err.to_string().contains("auth.mode"), "{err}");
    let err = Config::from_toml_str("[auth]\nmode = \"jwt\"\njwt_hs256_secret = \"short\"\n")
        .unwrap_err();
    assert!(err.to_string().contains("auth.jwt_hs256_secret"), "{err}");
    assert!(!err.to_string().contains("short"), "secret echoed: {err}");
    let err =
        Config::from_toml_str("[auth]\njwt_hs256_secret = \"0123456789abcdef0123456789abcdef\"\n")
            .unwrap_err();
    assert!(err.to_string().contains("auth.mode = \"jwt\""), "{err}");
    let err = Config::from_toml_str("[auth]\nmode = \"oauth\"\n").unwrap_err();
    assert!(err.to_string().contains("auth.mode"), "{err}");
}
