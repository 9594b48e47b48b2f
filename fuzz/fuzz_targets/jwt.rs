//! Token verification with `auth.mode = "jwt"` on arbitrary input: what
//! every upgrade, `auth` message and authenticated HTTP request runs on a
//! client-supplied string. The header, the claims and the signature are
//! parsed before anything is trusted, so none of it may panic.
//!
//! Byte 0 picks how the input is used: as a whole token; as a header and
//! claims JSON (split at the first `\n`) signed with the configured HS256
//! secret — so the claim parsing and ACL expansion behind a *valid*
//! signature are reached too. A verified identity's grants must then answer
//! `may_subscribe` / `may_publish` without panicking, and a grant never
//! reaches a `$` topic through a wildcard.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pulsegate_server::auth::Authenticator;
use pulsegate_server::config::{AuthConfig, AuthMode, Secret};

const SECRET: &str = "fuzzing-hs256-secret-of-32-bytes!!";

fn auth() -> &'static Authenticator {
    static A: OnceLock<Authenticator> = OnceLock::new();
    A.get_or_init(|| {
        let cfg = AuthConfig {
            mode: AuthMode::Jwt,
            jwt_hs256_secret: Some(Secret::new(SECRET)),
            api_keys: vec![Secret::new("fuzz-api-key-0123456789")],
            ..AuthConfig::default()
        };
        Authenticator::from_config(&cfg)
            .expect("valid config")
            .expect("jwt mode")
    })
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// An HS256 signature over `header.claims` with the configured secret.
fn sign(signing_input: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
    b64(aws_lc_rs::hmac::sign(&key, signing_input.as_bytes()).as_ref())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let a = auth();
    let claims_text;
    let token = if mode % 2 == 0 {
        claims_text = None;
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let text = String::from_utf8_lossy(rest).into_owned();
        let (header, claims) = match text.split_once('\n') {
            Some((h, c)) => (h.to_string(), c.to_string()),
            None => (r#"{"alg":"HS256","typ":"JWT"}"#.to_string(), text.clone()),
        };
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let sig = sign(&input);
        claims_text = Some(claims);
        format!("{input}.{sig}")
    };
    let _ = a.api_key(&token);
    match a.verify(&token) {
        Ok(id) => {
            for probe in ["a", "a/b", "#", "+/x", "users/alice/#"] {
                let _ = id.may_subscribe(probe);
            }
            let _ = id.may_publish("a/b");
            // Wildcard grants never reach the server's `$` topics: a grant
            // for `$sys/stats` can only come from claims that spell a `$`.
            let reaches_sys = id.may_subscribe("$sys/stats") || id.may_publish("$sys/stats");
            if let Some(claims) = &claims_text {
                assert!(
                    !reaches_sys || claims.contains('$'),
                    "a grant reaches $sys/stats without a `$` in the claims: {claims}"
                );
            }
        }
        Err(e) => {
            let _ = (e.to_string(), e.label());
        }
    }
});
