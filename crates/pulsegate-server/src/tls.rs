//! TLS termination with rustls (aws-lc-rs provider only), for `wss://`.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::StartError;

/// Builds an acceptor from PEM files: TLS 1.2 and 1.3 with rustls' safe
/// default cipher suites, ALPN `http/1.1`.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, StartError> {
    let tls_err = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        StartError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let certs = rustls_pemfile::certs(&mut BufReader::new(
        File::open(cert).map_err(|e| tls_err("tls.cert: cannot open", cert, &e))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| tls_err("tls.cert: bad PEM in", cert, &e))?;
    if certs.is_empty() {
        return Err(tls_err("tls.cert: no certificate in", cert, &"empty"));
    }
    let key_der = rustls_pemfile::private_key(&mut BufReader::new(
        File::open(key).map_err(|e| tls_err("tls.key: cannot open", key, &e))?,
    ))
    .map_err(|e| tls_err("tls.key: bad PEM in", key, &e))?
    .ok_or_else(|| tls_err("tls.key: no private key in", key, &"empty"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| StartError::Tls(format!("tls.cert/tls.key do not form a usable pair: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
