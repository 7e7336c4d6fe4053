//! TLS for the Open Inference Protocol listeners (`--tls-cert`, `--tls-key`):
//! the server's certificate chain and private key read from PEM files, and a
//! rustls server configuration per application protocol (the `ring`
//! provider, TLS 1.2 and 1.3, no client certificates), each offering its
//! ALPN name: `h2` for gRPC, `http/1.1` for REST and `/metrics`. A client
//! that offers ALPN names without ours is refused in the handshake.
//!
//! The handshake itself runs in the accept loop ([`conn`](super::conn)),
//! under the header timeout, before the connection is handed to its server.

use crate::error::{Error, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The application protocol a listener speaks, offered by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2: gRPC (`h2`).
    H2,
    /// HTTP/1.1: REST and `/metrics` (`http/1.1`).
    Http1,
}

impl Alpn {
    /// The protocol's ALPN identifier (RFC 7301's registry).
    fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http1 => b"http/1.1",
        }
    }
}

/// The server's certificate and key, loaded once: a TLS acceptor for each
/// application protocol.
#[derive(Clone)]
pub struct Tls {
    h2: TlsAcceptor,
    http1: TlsAcceptor,
    /// The certificate file, for the log.
    cert: Arc<Path>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("cert", &self.cert).finish_non_exhaustive()
    }
}

/// An error about the file given to `flag`.
fn invalid(flag: &str, path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Argument(format!("{flag} {}: {why}", path.display()))
}

/// The bytes of `path` (given to `flag`); an error names the file.
fn read(flag: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| invalid(flag, path, format_args!("cannot read it: {e}")))
}

/// Every `CERTIFICATE` block of a PEM file, in order (the server's own first).
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_slice_iter(pem).collect::<std::result::Result<Vec<_>, _>>().map_err(|e| invalid("--tls-cert", path, format_args!("not a valid PEM file: {e}")))?;
    if chain.is_empty() {
        return Err(invalid("--tls-cert", path, "no certificate in it: expected a PEM certificate chain (-----BEGIN CERTIFICATE-----), the server's certificate first"));
    }
    Ok(chain)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => invalid(
            "--tls-key",
            path,
            "no private key in it: expected a PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
        ),
        e => invalid("--tls-key", path, format_args!("not a valid PEM file: {e}")),
    })
}

impl Tls {
    /// Reads the certificate chain `cert` and its private key `key` (PEM)
    /// and checks that they go together. Every error names the file and
    /// what was expected. Warns when the key file is readable by other users.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self> {
        let chain = certificates(cert, &read("--tls-cert", cert)?)?;
        let key_der = private_key(key, &read("--tls-key", key)?)?;
        if let Ok(meta) = std::fs::metadata(key) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!("--tls-key {}: the private key is readable by other users (mode {mode:04o}): chmod 600 it", key.display());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let acceptor = |alpn: Alpn| -> Result<TlsAcceptor> {
            let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::Argument(format!("TLS: the ring provider's protocol versions: {e}")))?
                .with_no_client_auth()
                .with_single_cert(chain.clone(), key_der.clone_key())
                .map_err(|e| {
                    Error::Argument(format!(
                        "--tls-cert {} and --tls-key {}: {e}: expected the private key of the chain's first certificate (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA P-256/P-384 or Ed25519)",
                        cert.display(),
                        key.display()
                    ))
                })?;
            config.alpn_protocols = vec![alpn.id().to_vec()];
            Ok(TlsAcceptor::from(Arc::new(config)))
        };
        Ok(Self { h2: acceptor(Alpn::H2)?, http1: acceptor(Alpn::Http1)?, cert: cert.into() })
    }

    /// The acceptor of a listener that speaks `alpn`.
    pub fn acceptor(&self, alpn: Alpn) -> TlsAcceptor {
        match alpn {
            Alpn::H2 => self.h2.clone(),
            Alpn::Http1 => self.http1.clone(),
        }
    }

    /// The certificate file.
    pub fn cert(&self) -> &Path {
        &self.cert
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_a_certificate_or_key_is_refused_naming_it() {
        let path = Path::new("/x/cert.pem");
        let e = certificates(path, b"not a pem file\n").expect_err("no certificate").to_string();
        assert!(e.contains("--tls-cert /x/cert.pem") && e.contains("no certificate"), "{e}");
        let e = private_key(Path::new("/x/key.pem"), b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").expect_err("no key").to_string();
        assert!(e.contains("--tls-key /x/key.pem") && e.contains("no private key"), "{e}");
    }

    #[test]
    fn a_broken_pem_block_is_refused() {
        let e = certificates(Path::new("c.pem"), b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").expect_err("bad base64").to_string();
        assert!(e.contains("--tls-cert c.pem"), "{e}");
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let e = read("--tls-key", Path::new("/nonexistent/key.pem")).expect_err("missing").to_string();
        assert!(e.contains("--tls-key /nonexistent/key.pem: cannot read it"), "{e}");
    }
}
