//! The TCP API's TLS: TLS 1.3 only (the CLI and any current client speak it), ALPN
//! `http/1.1`, the certificate chain and key from `api.tls_cert` and `api.tls_key`. The key,
//! like the bearer token, must be readable by its owner only ([`read_secret`]).

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ServerConfig,
};
use tokio_rustls::TlsAcceptor;

use super::ServeError;

/// Reads a secret (a token, a private key), refusing a file that group or others may read
/// or write: whoever can read it can act as an operator over TCP.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, ServeError> {
    let io = |source| ServeError::SecretFile {
        path: path.into(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(ServeError::SecretExposed {
            path: path.into(),
            mode: mode & 0o777,
        });
    }
    std::fs::read(path).map_err(io)
}

/// The acceptor of the TCP API, from a PEM certificate chain and its PEM private key.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ServeError> {
    let tls = |path: &Path, detail: String| ServeError::Tls {
        path: path.into(),
        detail,
    };
    let pem = std::fs::read(cert).map_err(|e| tls(cert, e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(tls(cert, "no certificate in the file".into()));
    }
    let key_der =
        PrivateKeyDer::from_pem_slice(&read_secret(key)?).map_err(|e| tls(key, e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| tls(cert, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| tls(key, e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
