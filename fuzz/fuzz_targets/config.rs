//! `Config::from_toml_str` on arbitrary UTF-8: the parser behind
//! `pulsegate serve --config` and `check-config`. Errors are fine, panics are
//! not. When a document is accepted, `to_toml_string` (what
//! `check-config --print` writes) must not reveal a secret and, when no
//! secret is set (secrets are printed as "set (not shown)", so they cannot
//! be read back), must read back to an equal `Config`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsegate_server::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::from_toml_str(text) {
        Ok(c) => c,
        Err(e) => {
            // Printed to the operator.
            let _ = e.to_string();
            return;
        }
    };
    let printed = config.to_toml_string();

    // Keep in step with pulsegate_server::config::SECRET_KEYS.
    let mut secrets: Vec<String> = Vec::new();
    secrets.extend(config.admin.token.iter().map(|s| s.expose().to_owned()));
    secrets.extend(config.auth.jwt_hs256_secret.iter().map(|s| s.expose().to_owned()));
    secrets.extend(config.auth.api_keys.iter().map(|s| s.expose().to_owned()));
    if !secrets.is_empty() {
        let mut clean = config.clone();
        clean.admin.token = None;
        clean.auth.jwt_hs256_secret = None;
        clean.auth.api_keys.clear();
        let printed_clean = clean.to_toml_string();
        for s in &secrets {
            // A secret may coincide with ordinary output ("max_connections_…"):
            // only text that the secret itself brought in counts.
            assert!(
                !printed.contains(s.as_str()) || printed_clean.contains(s.as_str()),
                "to_toml_string reveals a secret\ninput:\n{text}\nprinted:\n{printed}"
            );
        }
        return;
    }

    match Config::from_toml_str(&printed) {
        Ok(again) => assert!(
            again == config,
            "to_toml_string does not read back to an equal Config\ninput:\n{text}\nprinted:\n{printed}"
        ),
        Err(e) => panic!("to_toml_string output is refused: {e}\ninput:\n{text}\nprinted:\n{printed}"),
    }
});
