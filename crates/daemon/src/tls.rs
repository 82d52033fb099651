//! TLS for the node's API and its calls to other nodes (rustls, with the
//! aws-lc-rs provider object_store's client already uses).
//!
//! - `tls_cert` + `tls_key`: the API is served over HTTPS only.
//! - `tls_ca` as well: the CA that signed every node's certificate. A
//!   client may present a certificate it signed (mutual TLS); the internal
//!   routes (Raft, joins, pings) then require one, and this node presents
//!   its own certificate to the others and checks theirs against the CA.
//!   Users' clients (lockstepctl, producers, model servers) need no
//!   certificate: they present the API token as before.

use crate::config::TlsFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// A node's TLS settings, loaded and checked.
#[derive(Clone)]
pub struct Tls {
    /// Where they were read from (two configurations are equal when they
    /// name the same files).
    pub files: TlsFiles,
    /// What the API listener presents and which client certificates it
    /// accepts.
    pub server: Arc<rustls::ServerConfig>,
    /// For calls to other nodes (with `tls_ca`): trusts the CA, presents
    /// this node's certificate.
    pub client: Option<rustls::ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .field("mutual", &self.client.is_some())
            .finish()
    }
}

impl PartialEq for Tls {
    fn eq(&self, other: &Tls) -> bool {
        self.files == other.files
    }
}

impl Eq for Tls {}

/// Why the TLS files cannot be used, with the config key at fault.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct TlsError {
    pub key: &'static str,
    pub message: String,
}

fn err(key: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        key,
        message: message.into(),
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(key, format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(
            key,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        err(
            "tls_key",
            format!(
                "{}: {e} (a PEM private key: PKCS#8, PKCS#1 or SEC1)",
                path.display()
            ),
        )
    })
}

/// Loads the certificate (its chain), its key and, if given, the CA.
pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
    let (cert, key, ca) = (&files.cert, &files.key, files.ca.as_deref());
    let chain = certs("tls_cert", cert)?;
    let key_der = private_key(key)?;
    let provider = provider();
    let roots = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs("tls_ca", ca)? {
                roots
                    .add(c)
                    .map_err(|e| err("tls_ca", format!("{}: {e}", ca.display())))?;
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("tls_cert", e.to_string()))?;
    let builder = match &roots {
        // any client may connect; one that presents a certificate must
        // present one the CA signed (the internal routes require that)
        Some(roots) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| err("tls_ca", e.to_string()))?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(chain.clone(), key_der.clone_key())
        .map_err(|e| {
            err(
                "tls_key",
                format!("does not go with tls_cert {}: {e}", cert.display()),
            )
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = match roots {
        Some(roots) => Some(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| err("tls_ca", e.to_string()))?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| err("tls_key", e.to_string()))?,
        ),
        None => None,
    };
    Ok(Tls {
        server: Arc::new(server),
        client,
        files,
    })
}
