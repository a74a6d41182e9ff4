//! TLS for the Postgres protocol and the HTTP endpoint (rustls with ring),
//! from a PEM certificate chain and private key (`--tls-cert`,
//! `--tls-key`). One acceptor serves both listeners.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::error::{EddyError, Result};

/// The acceptor for the certificate chain in `cert` and the key in `key`.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        EddyError::InvalidParameter(format!("{what} {}: {e}", path.display()))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("--tls-cert", cert, &e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad("--tls-cert", cert, &e))?;
    if chain.is_empty() {
        return Err(bad("--tls-cert", cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("--tls-key", key, &e))?;
    let config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| EddyError::InvalidParameter(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| EddyError::InvalidParameter(format!("--tls-cert/--tls-key: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
