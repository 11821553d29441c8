//! TLS material of one config version, read from the PEM files the config names: the proxy and admin
//! listeners' rustls server configs (TLS 1.2+ — rustls speaks nothing older — with ALPN `h2` and
//! `http/1.1`) and each `https` provider's pinned CA and client certificate.
//!
//! Everything here runs while a snapshot is built (start, reload, `SIGHUP`), never per connection: a
//! listener takes the serving version's acceptor with one atomic load, so a rotated certificate is
//! served from the next reload on, and an unreadable or mismatched file fails the reload (the previous
//! version, and its certificate, keep serving). Pingora's own loaders panic on bad input; every file is
//! parsed and checked here first, so what reaches Pingora is known to be well formed.

use leaky_config::{ListenerTls, Server, TlsVersion, UpstreamTls};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::tls::CaType;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
// PEM parsing from rustls' own pki-types (rustls-pemfile is unmaintained: RUSTSEC-2025-0134).
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a TLS file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{setting} `{}`: {why}", path.display())]
pub struct TlsError {
    /// The setting that names the file, e.g. `server.tls.cert`.
    pub setting: String,
    pub path: PathBuf,
    pub why: String,
}

fn error(setting: &str, path: &Path, why: impl Into<String>) -> TlsError {
    TlsError {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// One listener's TLS: the acceptor handshakes run on, and when its certificate expires.
pub struct ListenerCert {
    pub acceptor: Arc<Acceptor>,
    /// The leaf certificate's `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
}

/// The listeners' TLS of one config version (`None`: that listener's `tls` is not set).
#[derive(Default)]
pub struct ListenerCerts {
    pub proxy: Option<Arc<ListenerCert>>,
    pub admin: Option<Arc<ListenerCert>>,
}

impl ListenerCerts {
    /// Reads `server.tls` and `server.admin_tls`.
    pub fn load(server: &Server) -> Result<Self, TlsError> {
        let load = |tls: Option<&ListenerTls>, name: &str| -> Result<_, TlsError> {
            tls.map(|t| listener_cert(t, name).map(Arc::new))
                .transpose()
        };
        Ok(ListenerCerts {
            proxy: load(server.tls.as_ref(), "server.tls")?,
            admin: load(server.admin_tls.as_ref(), "server.admin_tls")?,
        })
    }
}

/// The rustls server config of `tls`: its chain and key (checked to match), its oldest version, ALPN
/// `h2` then `http/1.1`.
pub fn listener_cert(tls: &ListenerTls, setting: &str) -> Result<ListenerCert, TlsError> {
    let cert_setting = format!("{setting}.cert");
    let chain = certificates(&tls.cert, &cert_setting)?;
    let key = private_key(&tls.key, &format!("{setting}.key"))?;
    let not_after = not_after(&chain[0]).map_err(|why| error(&cert_setting, &tls.cert, why))?;
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| error(setting, &tls.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            error(
                &cert_setting,
                &tls.cert,
                format!("does not go with the key: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ListenerCert {
        acceptor: Arc::new(Acceptor::from_server_config(Arc::new(config))),
        not_after,
    })
}

/// Every certificate of a PEM file, at least one, each a parseable X.509 certificate.
pub fn certificates(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| error(setting, path, e.to_string()))?;
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| error(setting, path, format!("not PEM: {e}")))?;
        x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| error(setting, path, format!("not an X.509 certificate: {e}")))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(error(setting, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path, setting: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| error(setting, path, e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => error(setting, path, "holds no PEM private key"),
        e => error(setting, path, format!("not PEM: {e}")),
    })
}

/// A certificate's `notAfter` as Unix seconds.
fn not_after(cert: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    Ok(parsed.validity().not_after.timestamp())
}

/// A provider's TLS towards its `https` deployments, in Pingora's types, shared by every peer.
#[derive(Clone, Default)]
pub struct PeerTls {
    /// Trusted instead of the system roots.
    pub ca: Option<Arc<CaType>>,
    pub client_cert: Option<Arc<CertKey>>,
}

impl PeerTls {
    /// Reads the provider's `tls` files (`setting` is `providers.<name>.tls`).
    pub fn load(tls: &UpstreamTls, setting: &str) -> Result<Self, TlsError> {
        let ca = match &tls.ca {
            Some(path) => {
                let certs = certificates(path, &format!("{setting}.ca"))?;
                let wrapped: Box<CaType> = certs
                    .into_iter()
                    .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
                    .collect();
                Some(Arc::from(wrapped))
            }
            None => None,
        };
        let client_cert = match &tls.client_cert {
            Some((cert, key_path)) => {
                let chain = certificates(cert, &format!("{setting}.client_cert"))?;
                let key_setting = format!("{setting}.client_key");
                let key = private_key(key_path, &key_setting)?;
                let der = key.secret_der().to_vec();
                // Pingora re-detects the key's format from the bare DER (and panics if it cannot).
                PrivateKeyDer::try_from(der.as_slice())
                    .map_err(|e| error(&key_setting, key_path, e))?;
                Some(Arc::new(CertKey::new(
                    chain.into_iter().map(|c| c.to_vec()).collect(),
                    der,
                )))
            }
            None => None,
        };
        Ok(PeerTls { ca, client_cert })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_name_the_setting_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = certificates(&missing, "server.tls.cert").unwrap_err();
        assert!(e.to_string().starts_with("server.tls.cert `"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a pem file\n").unwrap();
        let e = certificates(&empty, "server.tls.cert").unwrap_err();
        assert!(e.to_string().ends_with("holds no PEM certificate"), "{e}");
        let e = private_key(&empty, "server.tls.key").unwrap_err();
        assert!(e.to_string().ends_with("holds no PEM private key"), "{e}");
    }
}
