//! TLS on the control plane's listener (`--tls-cert`, `--tls-key`), and optional mutual TLS
//! (`--tls-client-ca`): with a client CA, the handshake requires a client certificate issued by it, so
//! only holders of such a certificate (the proxies) reach any endpoint: the config watch stream, ACKs,
//! the registry. A listener that people reach with a browser or curl is then better run as a separate
//! `--roles admin-api` process without `--tls-client-ca`.
//!
//! [`TlsListener`] is an `axum::serve::Listener`: TCP accepts run in a task of their own and each
//! handshake in its own task, bounded by [`HANDSHAKE_TIMEOUT`] and [`MAX_HANDSHAKES`] in flight, so a
//! client that connects and never sends a ClientHello neither blocks other clients nor holds anything
//! past the timeout. Certificates are read at start; rotating them takes a restart (docs/tls.md).
//! TLS 1.2 and 1.3 only (rustls offers nothing older); ALPN `http/1.1`.

// PEM parsing from rustls' own pki-types (rustls-pemfile is unmaintained: RUSTSEC-2025-0134).
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Longest a client may take from connect to a finished handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's accept queue.
pub const MAX_HANDSHAKES: usize = 256;

/// The listener's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate issued by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{what} `{}`: {why}", path.display())]
pub struct TlsError {
    pub what: &'static str,
    pub path: PathBuf,
    pub why: String,
}

fn error(what: &'static str, path: &Path, why: impl ToString) -> TlsError {
    TlsError {
        what,
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Every certificate of a PEM file (at least one).
pub fn certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| error(what, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(what, path, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(error(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The first private key of a PEM file.
pub fn private_key(path: &Path, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| error(what, path, e))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => error(what, path, "holds no PEM private key"),
        e => error(what, path, format!("not PEM: {e}")),
    })
}

/// The rustls server config of `files`: TLS 1.2+, ALPN `http/1.1`, client certificates required and
/// verified against `client_ca` when set.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&files.cert, "--tls-cert")?;
    let key = private_key(&files.key, "--tls-key")?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| error("--tls-cert", &files.cert, e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "--tls-client-ca")? {
                roots
                    .add(cert)
                    .map_err(|e| error("--tls-client-ca", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| error("--tls-client-ca", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        error(
            "--tls-cert",
            &files.cert,
            format!("does not go with the key: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener whose connections come out TLS-handshaken (see the module docs).
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp`; the accept task ends when the listener is dropped.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx));
        Ok(TlsListener { ready, local })
    }
}

/// Accepts connections and handshakes each in a task of its own.
async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (socket, peer) = tokio::select! {
            _ = tx.closed() => return,
            accepted = tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                }
                // Failed handshakes are the client's problem (wrong CA, no client certificate,
                // plain HTTP); one line at debug, nothing more.
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task has ended (it only does when the listener is dropped): no more clients.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_are_refused_naming_the_flag_and_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not pem\n").unwrap();
        let files = |cert: &Path, key: &Path| TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: None,
        };
        let missing = dir.join("missing.pem");
        let e = server_config(&files(&missing, &junk))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("--tls-cert `{}`", missing.display())),
            "{e}"
        );
        let e = server_config(&files(&junk, &junk)).unwrap_err().to_string();
        assert!(e.ends_with("holds no PEM certificate"), "{e}");
        assert_eq!(
            private_key(&junk, "--tls-key").unwrap_err().why,
            "holds no PEM private key"
        );
    }
}
