//! The control plane over TLS with mutual TLS (issue #14): the real `leaky-tokens control-plane`
//! binary on a real PostgreSQL with `--tls-cert/--tls-key/--tls-client-ca`, and real proxies fed by it
//! over `https://` (`--control-plane-ca/-cert/-key`). A proxy holding a client certificate from that
//! CA gets its config and serves; one without a certificate, or with one from another CA, is refused
//! at the handshake and cannot start (no last-good cache); a plain client cannot even read the status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::pg;

use crate::common::{chat, free_port, Gateway, Upstreams, PRO_KEY};
use crate::tls_pki::{Issued, Pki};
use std::ffi::OsString;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "lt-test-tls-token";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client of the control plane trusting `pki`'s CA, presenting `identity` if given.
fn client(pki: &Pki, identity: Option<&Issued>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap());
    if let Some(id) = identity {
        let mut pem = std::fs::read(&id.cert).unwrap();
        pem.extend(std::fs::read(&id.key).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

/// The proxy's arguments towards the control plane at `url`, with `cert` as its client certificate.
fn proxy_source(
    url: &str,
    dir: &std::path::Path,
    pki: &Pki,
    cert: Option<&Issued>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--control-plane".into(),
        url.into(),
        "--instance-id".into(),
        "proxy-tls".into(),
        "--config-cache".into(),
        dir.join("last-good.json").into(),
        "--control-plane-ca".into(),
        pki.ca_path.clone().into(),
    ];
    if let Some(c) = cert {
        args.extend([
            "--control-plane-cert".into(),
            c.cert.clone().into(),
            "--control-plane-key".into(),
            c.key.clone().into(),
        ]);
    }
    args
}

#[tokio::test]
async fn only_a_proxy_with_a_client_certificate_from_the_ca_gets_its_config() {
    let db = pg::fresh_db().await.unwrap();
    let pki = Pki::new("control-plane");
    let server = pki.server("control-plane", 2031);
    let proxy_cert = pki.client("proxy-a");
    let up = Upstreams::start().await;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.yaml");
    std::fs::write(&base, up.config("")).unwrap();
    let port = free_port().port();
    let _cp = Killed(
        Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
            .args(["control-plane", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--config-base")
            .arg(&base)
            .arg("--tls-cert")
            .arg(&server.cert)
            .arg("--tls-key")
            .arg(&server.key)
            .arg("--tls-client-ca")
            .arg(&pki.ca_path)
            .env("LEAKY_DATABASE_URL", &db)
            .env("LEAKY_ADMIN_TOKEN", TOKEN)
            .env("LT_TEST_OPENAI_KEY", common::OPENAI_CREDENTIAL)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("https://localhost:{port}");
    let status = format!("{url}/v1/config/status");
    let trusted = client(&pki, Some(&proxy_cert));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = trusted.get(&status).bearer_auth(TOKEN).send().await;
        if let Ok(r) = r {
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            if body["version"].as_i64().is_some() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the control plane never published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No client certificate: refused at the handshake, before any HTTP.
    let refused = client(&pki, None)
        .get(&status)
        .bearer_auth(TOKEN)
        .send()
        .await;
    assert!(
        refused.is_err(),
        "served without a client certificate: {refused:?}"
    );

    // The proxy with its certificate starts on the pushed config and serves.
    let proxy_dir = tempfile::tempdir().unwrap();
    let source = proxy_source(&url, proxy_dir.path(), &pki, Some(&proxy_cert));
    let unused = proxy_dir.path().join("unused.yaml");
    let env = [("LEAKY_CONTROL_PLANE_TOKEN", TOKEN)];
    let gw = Gateway::spawn_with_source(proxy_dir, unused, &source, &env, "json").await;
    let r = gw
        .post_chat(PRO_KEY, &chat("gpt-4o-mini", "via mtls"))
        .await;
    assert_eq!(r.status(), 200, "{}", gw.log());
    let watching =
        || async { gw.admin_json("/admin/config").await["control_plane"]["connected"] == true };
    common::eventually(
        "the watch stream is open",
        Duration::from_secs(10),
        Some(&gw),
        watching,
    )
    .await;

    // Without a certificate, and with one from another CA: refused, so no config to start from.
    let elsewhere = Pki::new("elsewhere");
    let other = elsewhere.client("proxy-b");
    for (cert, alert) in [(None, "CertificateRequired"), (Some(&other), "UnknownCA")] {
        let d = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
            .arg("proxy")
            .args(proxy_source(&url, d.path(), &pki, cert))
            .args(["--listen", &free_port().to_string()])
            .args(["--admin-listen", &free_port().to_string()])
            .env("LEAKY_CONTROL_PLANE_TOKEN", TOKEN)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started without a valid certificate");
        assert!(err.contains("no config to start from"), "{err}");
        assert!(
            err.contains(&format!("received fatal alert: {alert}")),
            "{err}"
        );
    }
}
