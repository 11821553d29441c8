//! TLS on the proxy and admin listeners (issue #14, "Encryption → In transit"), against the real binary
//! with certificates made per test (`tls_pki`): HTTPS with a client trusting the test CA, h2 chosen by
//! ALPN, TLS 1.1 refused, plain HTTP on the TLS port answered with a readable 400, a client that never
//! sends a ClientHello released at the head deadline, the certificate-expiry gauge, and a certificate
//! rotated on `SIGHUP` without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::{chat, eventually, Gateway, Upstreams, PRO_KEY};
use crate::tls_pki::{connect, Issued, Pki};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest any test waits for the server to do something.
const PATIENCE: Duration = Duration::from_secs(30);

/// The harness's config with `server` settings added.
fn config(up: &Upstreams, server: &str) -> String {
    up.config("")
        .replacen("server:\n", &format!("server:\n{server}"), 1)
}

fn tls_block(name: &str, cert: &Issued) -> String {
    format!(
        "  {name}:\n    cert: {}\n    key: {}\n",
        cert.cert.display(),
        cert.key.display()
    )
}

async fn start(server: &str) -> (Upstreams, Gateway) {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&config(&up, server)).await;
    (up, gw)
}

fn https(addr: SocketAddr, path: &str) -> String {
    format!("https://localhost:{}{path}", addr.port())
}

#[tokio::test]
async fn https_over_http1_and_h2_chosen_by_alpn() {
    let pki = Pki::new("proxy");
    let cert = pki.server("proxy", 2031);
    let (_up, gw) = start(&tls_block("tls", &cert)).await;

    // HTTP/1.1: a client that trusts only the test CA.
    let r = pki
        .reqwest()
        .post(https(gw.proxy, "/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .json(&chat("gpt-4o-mini", "hello over tls"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200, "{}", gw.log());
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );

    // h2: offered first, chosen by the server.
    let config = pki.rustls(&[b"h2", b"http/1.1"], rustls::ALL_VERSIONS);
    let tls = connect(gw.proxy, config).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    for (stream, expect) in [(false, "\"choices\""), (true, "data: [DONE]")] {
        let mut body = chat("gpt-4o-mini", "hello over h2");
        body["stream"] = stream.into();
        let request = http::Request::post(https(gw.proxy, "/v1/chat/completions"))
            .header("authorization", format!("Bearer {PRO_KEY}"))
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (response, mut send) = h2.send_request(request, false).unwrap();
        send.send_data(body.to_string().into(), true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200, "{}", gw.log());
        let mut recv = response.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.unwrap();
            let _ = recv.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains(expect), "stream={stream}: {text}");
    }
}

/// A TLS 1.1 ClientHello (legacy version 0x0302, no `supported_versions`), as an old client sends it.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02];
    hello.extend([7u8; 32]); // random
    hello.push(0); // no session id
    hello.extend([0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // two TLS 1.0/1.1 CBC suites
    hello.extend([0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00];
    handshake.extend(u16::try_from(hello.len()).unwrap().to_be_bytes());
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend(handshake);
    record
}

#[tokio::test]
async fn tls_1_1_is_refused_and_min_version_1_3_refuses_1_2() {
    let pki = Pki::new("versions");
    let cert = pki.server("proxy", 2031);
    let (_up, gw) = start(&tls_block("tls", &cert)).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    // No ServerHello: one fatal alert record (type 21, level 2; rustls says `handshake_failure`, as
    // it offers nothing a TLS 1.1 client can pick), then the connection closes.
    assert_eq!(answer.first(), Some(&21), "{answer:?}");
    assert_eq!(answer.get(5), Some(&2), "{answer:?}");
    assert_eq!(answer.len(), 7, "{answer:?}");
    // TLS 1.2 still works by default.
    let tls12 = pki.rustls(&[b"http/1.1"], &[&rustls::version::TLS12]);
    connect(gw.proxy, tls12.clone()).await.unwrap();

    let mut strict = tls_block("tls", &cert);
    strict.push_str("    min_version: \"1.3\"\n");
    let (_up2, gw2) = start(&strict).await;
    let refused = connect(gw2.proxy, tls12).await;
    assert!(refused.is_err(), "TLS 1.2 accepted under min_version 1.3");
    let tls13 = pki.rustls(&[b"http/1.1"], &[&rustls::version::TLS13]);
    connect(gw2.proxy, tls13).await.unwrap();
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_a_readable_400() {
    let pki = Pki::new("plain");
    let cert = pki.server("proxy", 2031);
    let (_up, gw) = start(&tls_block("tls", &cert)).await;
    let r = reqwest::Client::new()
        .get(format!("http://{}/v1/models", gw.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tls_required", "{body}");
    let refused = "leaky_connections_refused_total{listener=\"proxy\",reason=\"plain_http\"}";
    assert_eq!(gw.metric(refused).await, 1.0);
}

#[tokio::test]
async fn a_client_that_never_sends_a_client_hello_is_released_at_the_head_deadline() {
    let pki = Pki::new("silent");
    let cert = pki.server("proxy", 2031);
    let server = format!(
        // Long enough that the checks below run while the silent client still holds the slot, even
        // on a loaded machine; the test waits for the server's close, not for this time.
        "  max_connections: 1\n  header_timeout_ms: 15000\n{}",
        tls_block("tls", &cert)
    );
    let (_up, gw) = start(&server).await;
    let open = "leaky_connections_open{listener=\"proxy\"}";
    // The readiness check's TCP connection takes the only slot until the server sees it close: on a
    // loaded machine the silent client can be refused in its place (counted as `overloaded`); then
    // it connects again.
    let overloaded = "leaky_connections_refused_total{listener=\"proxy\",reason=\"overloaded\"}";
    let mut held = None;
    for _ in 0..5 {
        eventually("the slot is free", PATIENCE, Some(&gw), || async {
            gw.metric(open).await == 0.0
        })
        .await;
        let before = gw.metric(overloaded).await;
        let silent = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
        eventually(
            "the silent connection holds the slot or is refused",
            PATIENCE,
            Some(&gw),
            || async { gw.metric(open).await == 1.0 || gw.metric(overloaded).await > before },
        )
        .await;
        if gw.metric(overloaded).await == before {
            held = Some(silent);
            break;
        }
    }
    let mut silent = held.expect("the silent connection never got the slot");
    // The only slot is taken: another client is closed without a handshake.
    let config = pki.rustls(&[b"http/1.1"], rustls::ALL_VERSIONS);
    assert!(connect(gw.proxy, config.clone()).await.is_err());
    // The server closes the silent connection at the deadline; its slot is free again.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
        .await
        .expect("the silent connection was never closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    eventually("the slot is released", PATIENCE, Some(&gw), || async {
        gw.metric(open).await == 0.0
    })
    .await;
    let handshake = "leaky_connections_refused_total{listener=\"proxy\",reason=\"tls_handshake\"}";
    assert_eq!(gw.metric(handshake).await, 1.0);
    let r = pki
        .reqwest()
        .get(https(gw.proxy, "/v1/models"))
        .bearer_auth(PRO_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn h2_connections_keep_the_head_deadline_and_the_idle_timeout() {
    let pki = Pki::new("h2-limits");
    let cert = pki.server("proxy", 2031);
    let server = format!(
        "  header_timeout_ms: 2000\n  keepalive_timeout_ms: 1000\n{}",
        tls_block("tls", &cert)
    );
    let (_up, gw) = start(&server).await;
    let h2 = pki.rustls(&[b"h2"], rustls::ALL_VERSIONS);

    // TLS done, h2 chosen, no connection preface: closed at the head deadline.
    let mut silent = connect(gw.proxy, h2.clone()).await.unwrap();
    assert_eq!(silent.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut buf = Vec::new();
    let read = tokio::time::timeout(PATIENCE, silent.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "an h2 connection without a preface was never closed"
    );

    // One request, then nothing: the connection is closed after the idle timeout.
    let tls = connect(gw.proxy, h2).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(conn);
    let request = http::Request::get(https(gw.proxy, "/v1/models"))
        .header("authorization", format!("Bearer {PRO_KEY}"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    let closed = tokio::time::timeout(PATIENCE, driver).await;
    assert!(closed.is_ok(), "an idle h2 connection was never closed");
    eventually("no connection is held", PATIENCE, Some(&gw), || async {
        gw.metric("leaky_connections_open{listener=\"proxy\"}")
            .await
            == 0.0
    })
    .await;
}

/// The leaf certificate the server presents on a new connection.
async fn presented(addr: SocketAddr, pki: &Pki) -> Vec<u8> {
    let tls = connect(addr, pki.rustls(&[b"http/1.1"], rustls::ALL_VERSIONS))
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn expiry_gauge_and_a_certificate_rotated_on_sighup_without_a_restart() {
    let pki = Pki::new("rotate");
    let old = pki.server("proxy", 2031);
    let (_up, gw) = start(&tls_block("tls", &old)).await;
    let gauge = "leaky_tls_cert_expiry_timestamp_seconds{listener=\"proxy\"}";
    assert_eq!(gw.metric(gauge).await, old.not_after as f64);
    assert_eq!(presented(gw.proxy, &pki).await, old.der);

    // The same paths, new contents (as a certificate manager renews in place).
    let new = pki.server("renewed", 2033);
    std::fs::copy(&new.cert, &old.cert).unwrap();
    std::fs::copy(&new.key, &old.key).unwrap();
    let pid = gw.pid().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually(
        "the renewed certificate is served",
        PATIENCE,
        Some(&gw),
        || async { presented(gw.proxy, &pki).await == new.der },
    )
    .await;
    assert_eq!(gw.metric(gauge).await, new.not_after as f64);
    assert_eq!(gw.pid().to_string(), pid);

    // A renewal gone wrong (not a certificate): that reload fails, the served certificate stays.
    std::fs::write(&old.cert, "not a certificate\n").unwrap();
    let version = gw.config_version().await;
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually(
        "the failed reload is reported",
        PATIENCE,
        Some(&gw),
        || async { gw.admin_json("/admin/config").await["reload"]["last_result"] == "error" },
    )
    .await;
    let errors = gw.admin_json("/admin/config").await["reload"]["last_errors"].to_string();
    assert!(errors.contains("server.tls.cert"), "{errors}");
    assert!(errors.contains("holds no PEM certificate"), "{errors}");
    assert_eq!(gw.config_version().await, version);
    assert_eq!(presented(gw.proxy, &pki).await, new.der);
}

#[tokio::test]
async fn an_unreadable_certificate_fails_the_start_naming_the_setting() {
    let up = Upstreams::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&up, "  tls:\n    cert: missing.pem\n    key: missing.key\n");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
        .args(["proxy", "--config"])
        .arg(&path)
        .args(["--listen", &common::free_port().to_string()])
        .args(["--admin-listen", &common::free_port().to_string()])
        .env("LT_TEST_OPENAI_KEY", common::OPENAI_CREDENTIAL)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let missing = dir.path().join("missing.pem");
    assert!(
        err.contains(&format!("server.tls.cert `{}`", missing.display())),
        "{err}"
    );
}

/// The binary with `admin_tls`, whose readiness is polled over HTTPS (the harness polls plain HTTP).
struct AdminTls {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for AdminTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_admin_listener_speaks_tls_too() {
    let pki = Pki::new("admin");
    let cert = pki.server("admin", 2032);
    let up = Upstreams::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, config(&up, &tls_block("admin_tls", &cert))).unwrap();
    let admin = common::free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
        .args(["proxy", "--config"])
        .arg(&path)
        .args(["--listen", &common::free_port().to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .env("LT_TEST_OPENAI_KEY", common::OPENAI_CREDENTIAL)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _running = AdminTls { child, _dir: dir };
    let client = pki.reqwest();
    eventually(
        "the admin listener answers over https",
        PATIENCE,
        None,
        || async {
            let r = client.get(https(admin, "/healthz")).send().await;
            r.is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    let metrics = client
        .get(https(admin, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!(
        "leaky_tls_cert_expiry_timestamp_seconds{{listener=\"admin\"}} {}",
        cert.not_after
    );
    assert!(metrics.contains(&line), "{metrics}");
    assert!(!metrics.contains("leaky_tls_cert_expiry_timestamp_seconds{listener=\"proxy\"}"));
}
