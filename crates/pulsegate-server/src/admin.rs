//! Who is an operator: the admin token check shared by the admin API, the
//! dashboard page and WebSocket upgrades (which decides who may read the
//! `$sys/` topics).
//!
//! With `admin.token` set, a request is admin when it carries the token as
//! `Authorization: Bearer <token>`, as `?token=<token>` (dashboard links
//! only; query strings end up in proxy logs), or as the dashboard cookie.
//! The cookie holds a digest of the token, not the token, and is HttpOnly
//! and SameSite=Strict, so page scripts and other sites cannot use it.
//! Comparisons are constant-time. Without `admin.token`, only loopback
//! peers are admin (a local operator), and the admin API is off.

use std::net::IpAddr;

use subtle::ConstantTimeEq;

use crate::config::Config;

/// Name of the dashboard's session cookie.
pub const COOKIE: &str = "pulsegate_admin";

/// What a request carries that may prove it is an operator.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// Raw `Authorization` header.
    pub authorization: Option<&'a str>,
    /// Raw `Cookie` header.
    pub cookie: Option<&'a str>,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// A proxy forwarded the request (`Forwarded`/`X-Forwarded-For`/`X-Real-IP`).
    pub forwarded: bool,
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The cookie value for `token`: a digest, so the browser never stores the token.
pub fn cookie_value(token: &str) -> String {
    sha1_smol::Sha1::from(format!("pulsegate-dashboard\0{token}"))
        .digest()
        .to_string()
}

/// The `token` query parameter, percent-decoded.
pub fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let v = kv.strip_prefix("token=")?;
        percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    })
}

/// Whether `candidate` is the configured token (constant-time).
pub fn token_matches(config: &Config, candidate: &str) -> bool {
    config
        .admin
        .token
        .as_ref()
        .is_some_and(|t| ct_eq(candidate, t.expose()))
}

/// Whether the request carries the configured token (header, query or cookie).
/// Always false when no token is configured.
pub fn has_token(config: &Config, creds: Credentials<'_>) -> bool {
    let Some(token) = config.admin.token.as_ref().map(|t| t.expose()) else {
        return false;
    };
    let bearer = creds
        .authorization
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim);
    if bearer.is_some_and(|b| ct_eq(b, token)) {
        return true;
    }
    if query_token(creds.query).is_some_and(|q| ct_eq(&q, token)) {
        return true;
    }
    let expected = cookie_value(token);
    creds.cookie.is_some_and(|c| {
        c.split(';').any(|kv| {
            kv.trim()
                .strip_prefix(COOKIE)
                .and_then(|r| r.strip_prefix('='))
                .is_some_and(|v| ct_eq(v.trim(), &expected))
        })
    })
}

/// Whether a client may act as operator: the token when one is configured,
/// else being on this machine — and not relayed by a proxy on this machine
/// (which would make every remote client look local).
pub fn is_admin(config: &Config, creds: Credentials<'_>, peer: IpAddr) -> bool {
    match config.admin.token {
        Some(_) => has_token(config, creds),
        None => !creds.forwarded && (peer.is_loopback() || peer.to_canonical().is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config(token: Option<&str>) -> Config {
        let mut c = Config::default();
        c.admin.token = token.map(Secret::new);
        c
    }

    #[test]
    fn token_in_header_query_or_cookie() {
        let c = config(Some("0123456789abcdef"));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let creds = |a, k, q| Credentials {
            authorization: a,
            cookie: k,
            query: q,
            forwarded: false,
        };
        assert!(is_admin(
            &c,
            creds(Some("Bearer 0123456789abcdef"), None, None),
            ip
        ));
        assert!(!is_admin(
            &c,
            creds(Some("Bearer 0123456789abcdeX"), None, None),
            ip
        ));
        assert!(is_admin(
            &c,
            creds(None, None, Some("a=1&token=0123456789abcdef")),
            ip
        ));
        let cookie = format!("x=1; {COOKIE}={}", cookie_value("0123456789abcdef"));
        assert!(is_admin(&c, creds(None, Some(&cookie), None), ip));
        assert!(!is_admin(
            &c,
            creds(None, Some("pulsegate_admin=0123456789abcdef"), None),
            ip
        ));
        // A token is required even from loopback once configured.
        assert!(!is_admin(
            &c,
            Credentials::default(),
            "127.0.0.1".parse().unwrap()
        ));
    }

    #[test]
    fn without_token_only_loopback() {
        let c = config(None);
        assert!(is_admin(
            &c,
            Credentials::default(),
            "127.0.0.1".parse().unwrap()
        ));
        assert!(is_admin(&c, Credentials::default(), "::1".parse().unwrap()));
        assert!(!is_admin(
            &c,
            Credentials::default(),
            "192.168.1.2".parse().unwrap()
        ));
        let proxied = Credentials {
            forwarded: true,
            ..Default::default()
        };
        assert!(!is_admin(&c, proxied, "127.0.0.1".parse().unwrap()));
        assert!(!has_token(
            &c,
            Credentials {
                query: Some("token=x"),
                ..Default::default()
            }
        ));
    }
}
