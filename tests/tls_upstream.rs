//! Upstream TLS (issue #14): the OpenAI stub served over HTTPS with a test CA (the control plane's
//! rustls listener in front of the stub's router), behind the real binary. Trusted when the provider
//! pins that CA; refused with a 502 in the caller's dialect and a clear log line when it does not
//! (the system roots do not know a test CA); a provider that requires a client certificate gets the
//! one the gateway is configured with, and refuses a gateway without one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{chat, Gateway, Upstreams, PRO_KEY};
use crate::tls_pki::{Issued, Pki};
use leaky_control_plane::tls::{server_config, TlsFiles, TlsListener};
use std::net::SocketAddr;

/// The OpenAI stub over HTTPS with `cert`, requiring a client certificate from `client_ca` if set.
async fn tls_stub(cert: &Issued, client_ca: Option<&std::path::Path>) -> SocketAddr {
    let files = TlsFiles {
        cert: cert.cert.clone(),
        key: cert.key.clone(),
        client_ca: client_ca.map(std::path::Path::to_path_buf),
    };
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = TlsListener::new(tcp, server_config(&files).unwrap()).unwrap();
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    let router = leaky_stubs::openai_router(leaky_stubs::Latency::Off);
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// The harness config with the `openai` provider moved to `https://localhost:<port>` and `tls` added.
fn config(up: &Upstreams, port: u16, tls: &str) -> String {
    let plain = format!("base_url: http://{}", up.stubs.openai);
    let secure = format!("base_url: https://localhost:{port}{tls}");
    let cfg = up.config("");
    assert!(cfg.contains(&plain));
    cfg.replacen(&plain, &secure, 1)
}

async fn chat_status(gw: &Gateway) -> (u16, serde_json::Value) {
    let r = gw.post_chat(PRO_KEY, &chat("gpt-4o-mini", "hi")).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn a_pinned_ca_is_trusted_and_an_unknown_one_is_refused_with_a_502() {
    let pki = Pki::new("upstream");
    let stub = tls_stub(&pki.server("stub", 2031), None).await;
    let up = Upstreams::start().await;

    let pinned = format!("\n    tls:\n      ca: {}", pki.ca_path.display());
    let gw = Gateway::start(&config(&up, stub.port(), &pinned)).await;
    let (status, body) = chat_status(&gw).await;
    assert_eq!(status, 200, "{body}\n{}", gw.log());
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );

    // The same upstream with the system roots: the test CA is unknown there.
    let gw = Gateway::start(&config(&up, stub.port(), "")).await;
    let (status, body) = chat_status(&gw).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"].is_string(),
        "OpenAI's error shape: {body}"
    );
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("TLS handshake with the upstream failed"))
        .unwrap_or_else(|| panic!("the log does not say why: {log}"));
    assert!(line.contains("\"level\":\"WARN\""), "{line}");
    assert!(line.contains("UnknownIssuer"), "{line}");
}

#[tokio::test]
async fn a_provider_requiring_a_client_certificate_gets_the_configured_one() {
    let pki = Pki::new("mtls-upstream");
    let gateway_cert = pki.client("gateway");
    let stub = tls_stub(&pki.server("stub", 2031), Some(&pki.ca_path)).await;
    let up = Upstreams::start().await;

    let with_cert = format!(
        "\n    tls:\n      ca: {}\n      client_cert: {}\n      client_key: {}",
        pki.ca_path.display(),
        gateway_cert.cert.display(),
        gateway_cert.key.display()
    );
    let gw = Gateway::start(&config(&up, stub.port(), &with_cert)).await;
    let (status, body) = chat_status(&gw).await;
    assert_eq!(status, 200, "{body}\n{}", gw.log());

    let without = format!("\n    tls:\n      ca: {}", pki.ca_path.display());
    let gw = Gateway::start(&config(&up, stub.port(), &without)).await;
    let (status, body) = chat_status(&gw).await;
    assert_eq!(status, 502, "{body}");
}
