//! A real Eureka client from PyPI, `py_eureka_client`, against the control plane on a real port and a
//! real PostgreSQL: it registers (HTTP Basic from the server URL), the registry lists it under `/v1` and
//! `/eureka`, it discovers a gateway proxy registered through `/v1`, heartbeats, reads a delta with the
//! library's own XML decoder, and its shutdown cancels the registration.
//!
//! The Python: `LEAKY_TEST_PYTHON` (`scripts/test` provisions a venv with the pinned library and exports
//! it), else a venv this test provisions under `target/` the same way. No Python, no venv or no PyPI
//! is a failure, never a skip. The script is `tests/py/eureka_client.py`.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::TestApp;
use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

/// The library version `scripts/test` pins too.
const PY_EUREKA_CLIENT: &str = "0.13.3";

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("{what} failed ({}): {stderr}", out.status);
    }
    Ok(())
}

/// A Python with `py_eureka_client` importable.
fn python() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("LEAKY_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(format!("py-eureka-client-{PY_EUREKA_CLIENT}"));
    let python = venv.join("bin/python");
    let importable = |py: &Path| {
        Command::new(py)
            .args(["-c", "import py_eureka_client"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !importable(&python) {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )?;
        let pin = format!("py_eureka_client=={PY_EUREKA_CLIENT}");
        run(
            Command::new(venv.join("bin/pip")).args(["install", "--quiet", &pin]),
            "pip install py_eureka_client",
        )?;
    }
    Ok(python)
}

/// The Python client process, spoken to in lines.
struct Client {
    child: Child,
    io: Arc<Mutex<(ChildStdin, BufReader<ChildStdout>)>>,
}

impl Client {
    fn spawn(server: &str, port: u16) -> anyhow::Result<Client> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/eureka_client.py");
        let mut child = Command::new(python()?)
            .arg(script)
            .arg(server)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the Python Eureka client")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Client {
            child,
            io: Arc::new(Mutex::new((stdin, stdout))),
        })
    }

    /// Sends `command`, returns the JSON line the client answers (within 60 s); fails on any error
    /// the library reported.
    async fn step(&self, command: &str) -> anyhow::Result<Value> {
        let io = self.io.clone();
        let command = format!("{command}\n");
        let blocking = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let mut io = io.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            io.0.write_all(command.as_bytes())?;
            io.0.flush()?;
            let mut line = String::new();
            io.1.read_line(&mut line)?;
            Ok(line)
        });
        let line = tokio::time::timeout(Duration::from_secs(60), blocking).await???;
        let answer: Value =
            serde_json::from_str(&line).with_context(|| format!("client answered {line:?}"))?;
        assert_eq!(answer["errors"], json!([]), "{answer}");
        Ok(answer)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn v1_instance(app: &TestApp, id: &str) -> anyhow::Result<Option<Value>> {
    let body: Value = app.get("/v1/registry/instances").await?.json().await?;
    let items = body["items"].as_array().cloned().unwrap_or_default();
    Ok(items.into_iter().find(|i| i["id"] == id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_eureka_client_registers_discovers_the_gateway_and_cancels() -> anyhow::Result<()> {
    let app = common::app().await?;
    let proxy = json!({"role": "proxy", "address": "127.0.0.1:8080", "version": "0.4.0"});
    let res = app
        .req(Method::PUT, "/v1/registry/instances/proxy-1")
        .json(&proxy)
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    // Credentials in the URL, as Eureka clients take them: HTTP Basic with the admin token.
    let authority = app.base.trim_start_matches("http://");
    let server = format!("http://admin:{}@{authority}/eureka", common::TOKEN);
    let client = Client::spawn(&server, 18080)?;

    let started = client.step("start").await?;
    assert_eq!(started["library"], PY_EUREKA_CLIENT);
    assert_eq!(started["apps"], json!(["LEAKY-PROXY", "PY-BILLING"]));
    let proxies = json!([{"id": "proxy-1", "ip": "127.0.0.1", "port": 8080, "status": "UP"}]);
    assert_eq!(started["proxies"], proxies);

    let id = "127.0.0.1:py-billing:18080";
    let listed = v1_instance(&app, id).await?.context("not in /v1")?;
    assert_eq!(listed["app"], "PY-BILLING");
    assert_eq!(listed["role"], "py-billing");
    assert_eq!(listed["address"], "127.0.0.1:18080");
    assert_eq!(listed["version"], "1.2.3");
    assert_eq!(listed["status"], "up");
    let eureka: Value = app
        .req(Method::GET, &format!("/eureka/apps/PY-BILLING/{id}"))
        .header("accept", "application/json")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(eureka["instance"]["status"], "UP");
    assert_eq!(eureka["instance"]["metadata"]["management.port"], "18080");

    let beat = client.step("heartbeat").await?;
    assert_eq!(beat["apps_hashcode"], "UP_2_");
    assert_eq!(beat["apps"], json!(["LEAKY-PROXY", "PY-BILLING"]));
    let renewed = v1_instance(&app, id)
        .await?
        .context("gone after heartbeat")?;
    let at = |v: &Value| {
        let text = v["last_heartbeat_at"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        chrono::DateTime::parse_from_rfc3339(&text).with_context(|| text)
    };
    assert!(at(&renewed)? > at(&listed)?, "{renewed} vs {listed}");

    client.step("stop").await?;
    assert!(v1_instance(&app, id).await?.is_none(), "still registered");
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit.events WHERE object_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&app.pool)
            .await?;
    // Its shutdown registers it DOWN, then cancels.
    assert_eq!(
        actions,
        ["instance.register", "instance.register", "instance.cancel"]
    );
    Ok(())
}
