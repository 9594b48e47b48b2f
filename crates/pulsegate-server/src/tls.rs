//! TLS termination with rustls (aws-lc-rs provider only), for `wss://`.
//!
//! The certificate and key are held behind a resolver that can swap them:
//! `SIGHUP` (or [`crate::Running::reload_tls`]) reads `tls.cert` and
//! `tls.key` again, and new handshakes use the new pair while established
//! connections keep theirs. A pair that does not load is refused and the old
//! one stays in service, so a bad deploy cannot take the listener down.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::StartError;

/// The served certificate, swappable at run time.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// The TLS side of the listener: the acceptor and what reloads it.
#[derive(Clone)]
pub struct Tls {
    /// Accepts TLS connections with the current certificate.
    pub acceptor: TlsAcceptor,
    current: Arc<Current>,
    provider: Arc<CryptoProvider>,
    cert: PathBuf,
    key: PathBuf,
}

fn load(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<CertifiedKey, StartError> {
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
    CertifiedKey::from_der(certs, key_der, provider)
        .map_err(|e| StartError::Tls(format!("tls.cert/tls.key do not form a usable pair: {e}")))
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Verifies client certificates against the CAs in `ca`; clients without one pass.
fn client_verifier(
    provider: &Arc<CryptoProvider>,
    ca: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, StartError> {
    let err =
        |e: &dyn std::fmt::Display| StartError::Tls(format!("tls.client_ca {}: {e}", ca.display()));
    let certs = rustls_pemfile::certs(&mut BufReader::new(File::open(ca).map_err(|e| err(&e))?))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| err(&e))?;
    }
    if roots.is_empty() {
        return Err(err(&"no CA certificate in the file"));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| err(&e))
}

impl Tls {
    /// Loads the pair and builds the acceptor: TLS 1.2 and 1.3 with rustls'
    /// safe default cipher suites, ALPN `http/1.1`. With `client_ca`, clients
    /// are asked for a certificate (optional) that must chain to it.
    pub fn new(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Tls, StartError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let current = Arc::new(Current(RwLock::new(Arc::new(load(&provider, cert, key)?))));
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StartError::Tls(e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => builder.with_client_cert_verifier(client_verifier(&provider, ca)?),
        };
        let mut config = builder.with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            provider,
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Reads the certificate and key files again; on success new handshakes
    /// use them. On failure the current pair stays and the error is returned.
    pub fn reload(&self) -> Result<(), StartError> {
        let fresh = load(&self.provider, &self.cert, &self.key)?;
        *self.current.0.write() = Arc::new(fresh);
        Ok(())
    }
}
