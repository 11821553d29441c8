//! `server.tls`, `server.admin_tls` and a provider's `tls`: the shape only (both halves of a pair,
//! non-empty paths, TLS settings only on `https` providers). The files themselves are read by the
//! data plane when it builds a config version, since a document pushed by the control plane is
//! validated on a machine that does not hold them.

use crate::model::resilience::Deployment;
use crate::model::{ListenerTls, TlsVersion, UpstreamTls};
use crate::spec::{ListenerTlsSpec, ProviderSpec, TlsVersionSpec};
use crate::validate::Check;
use std::path::{Path, PathBuf};

/// A listener's `tls:` block; `None` when absent or in error (its errors are recorded).
pub(crate) fn listener(
    c: &mut Check<'_>,
    path: &str,
    spec: Option<&ListenerTlsSpec>,
    base_dir: &Path,
) -> Option<ListenerTls> {
    let spec = spec?;
    let cert = file(c, &format!("{path}.cert"), &spec.cert, base_dir);
    let key = file(c, &format!("{path}.key"), &spec.key, base_dir);
    Some(ListenerTls {
        cert: cert?,
        key: key?,
        min_version: match spec.min_version {
            None | Some(TlsVersionSpec::Tls12) => TlsVersion::Tls12,
            Some(TlsVersionSpec::Tls13) => TlsVersion::Tls13,
        },
    })
}

/// The `tls:` block of provider `p` (at `provider_path`), whose validated deployments are `deployments`.
pub(crate) fn upstream(
    c: &mut Check<'_>,
    provider_path: &str,
    p: &ProviderSpec,
    deployments: &[Deployment],
    base_dir: &Path,
) -> UpstreamTls {
    let Some(spec) = &p.tls else {
        return UpstreamTls::default();
    };
    let path = &format!("{provider_path}.tls");
    if !deployments.iter().any(|d| d.tls) {
        c.err(
            path,
            "`tls` applies to `https://` providers only: this provider's `base_url` (and every \
             deployment) is `http://`",
        );
    }
    let ca = spec
        .ca
        .as_deref()
        .and_then(|ca| file(c, &format!("{path}.ca"), ca, base_dir));
    let client_cert = match (&spec.client_cert, &spec.client_key) {
        (Some(cert), Some(key)) => {
            let cert = file(c, &format!("{path}.client_cert"), cert, base_dir);
            let key = file(c, &format!("{path}.client_key"), key, base_dir);
            cert.zip(key)
        }
        (None, None) => None,
        (Some(_), None) => {
            c.err(path, "`client_cert` needs `client_key`");
            None
        }
        (None, Some(_)) => {
            c.err(path, "`client_key` needs `client_cert`");
            None
        }
    };
    UpstreamTls { ca, client_cert }
}

/// A file setting: `${ENV}` interpolated, not empty, relative paths from the config's directory.
fn file(c: &mut Check<'_>, path: &str, value: &str, base_dir: &Path) -> Option<PathBuf> {
    let value = c.interpolated(path, value)?;
    if value.trim().is_empty() {
        c.err(path, "must name a PEM file");
        return None;
    }
    Some(base_dir.join(value))
}
