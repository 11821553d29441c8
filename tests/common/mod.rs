//! Harness for the integration tests: the real `leaky-tokens` binary on free ports with a temp config,
//! in front of in-process upstreams (the provider stubs, and a capture server that reports exactly what
//! it received).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod capture;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PRO_KEY: &str = "lt-test-pro";
pub const LIMITED_KEY: &str = "lt-test-limited";
pub const EXPIRED_KEY: &str = "lt-test-expired";
/// What the gateway's OpenAI credential interpolates to (set in the child's environment).
pub const OPENAI_CREDENTIAL: &str = "sk-from-environment";

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// A free loopback port for the gateway, which must be given a port (Pingora cannot report the port
/// it bound for 0).
///
/// Ports come from a per-process counter *below* the kernel's ephemeral range (32768+), where every
/// in-process server of the tests binds `:0`; a port taken from `:0` and released could be handed to
/// one of those servers before the gateway binds it. Each candidate is test-bound first, which skips
/// ports other processes hold; the process id spreads concurrent test binaries apart.
pub fn free_port() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = (std::process::id() % 60) * 200;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // 20000..32000: below the ephemeral range whatever the offset.
        let port = u16::try_from(20_000 + (offset + n) % 12_000).unwrap();
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().unwrap();
        }
    }
}

pub struct Upstreams {
    pub stubs: leaky_stubs::BoundStubs,
    pub capture: capture::Capture,
}

impl Upstreams {
    pub async fn start() -> Upstreams {
        let cfg = leaky_stubs::StubsConfig {
            openai: "127.0.0.1:0".parse().unwrap(),
            gemini: "127.0.0.1:0".parse().unwrap(),
            qwen: "127.0.0.1:0".parse().unwrap(),
            latency: leaky_stubs::Latency::Off,
            ..Default::default()
        };
        let (stubs, serve) = leaky_stubs::bind(cfg).await.unwrap();
        tokio::spawn(serve);
        Upstreams {
            stubs,
            capture: capture::Capture::start().await,
        }
    }

    /// A full config: the shipped route layout plus a `capture` provider reachable through `/v1`
    /// (models `capture-*`) and `/capture` (which allows any endpoint: `/capture/x`, `/capture/stream` …).
    pub fn config(&self, extra_keys: &str) -> String {
        let s = &self.stubs;
        let c = self.capture.addr;
        format!(
            r#"server:
  threads: 2
  max_body_bytes: 10485760
providers:
  openai:
    base_url: http://{openai}
    credential: ${{LT_TEST_OPENAI_KEY}}
    models: [gpt-4o, gpt-4o-mini]
  gemini:
    base_url: http://{gemini}
    auth: goog-api-key
    credential: gemini-credential
    models: [gemini-2.5-flash]
  gemini-openai:
    base_url: http://{gemini}
    credential: gemini-credential
    models: [gemini-2.5-flash]
  qwen:
    base_url: http://{qwen}
    credential: ${{LT_TEST_UNSET:-qwen-credential}}
    models: [qwen-plus]
  capture:
    base_url: http://{c}
    credential: capture-credential
    models: [capture-1]
    idle_timeout_ms: 60000
routes:
  - name: v1
    prefix: /v1
    upstream:
      by_model:
        - {{ models: ["gpt-*", "o*"], provider: openai, path_prefix: /v1 }}
        - {{ models: ["gemini-*"], provider: gemini-openai, path_prefix: /v1beta/openai }}
        - {{ models: ["qwen-*"], provider: qwen, path_prefix: /compatible-mode/v1 }}
        - {{ models: ["capture-*"], provider: capture, path_prefix: /echo }}
    filters: &chain
      - kind: request-id
      - kind: api-key
    forward_headers: ["x-stub-*"]  # the stubs' diagnostics (x-stub-saw-*) back to the tests
  - name: gemini
    prefix: /gemini/v1beta
    dialect: google
    upstream: {{ provider: gemini, path_prefix: /v1beta }}
    filters: *chain
    forward_headers: ["x-stub-*"]
  - name: gemini-v1
    prefix: /gemini/v1
    dialect: google
    upstream: {{ provider: gemini, path_prefix: /v1 }}
    filters: *chain
    forward_headers: ["x-stub-*"]
  - name: qwen
    prefix: /qwen/api/v1
    dialect: dashscope
    upstream: {{ provider: qwen, path_prefix: /api/v1 }}
    filters: *chain
  - name: capture
    prefix: /capture
    upstream: {{ provider: capture, path_prefix: /echo }}
    filters: *chain
    forward_headers: [x-custom]
    endpoints: {{ allow: [{{ method: "*", path: "/**" }}] }} # a test surface: any endpoint
tiers:
  pro: {{ priority: normal }}
  free: {{ priority: low }}
keys:
  - {{ id: test-pro, sha256: {pro}, user: alice, org: acme, tier: pro }}
  - {{ id: test-limited, sha256: {limited}, user: bob, tier: free, models: [gpt-4o-mini] }}
  - {{ id: test-expired, sha256: {expired}, user: carol, tier: free, expires_at: "2001-01-01T00:00:00Z" }}
{extra_keys}"#,
            openai = s.openai,
            gemini = s.gemini,
            qwen = s.qwen,
            pro = sha256_hex(PRO_KEY.as_bytes()),
            limited = sha256_hex(LIMITED_KEY.as_bytes()),
            expired = sha256_hex(EXPIRED_KEY.as_bytes()),
        )
    }
}

/// The gateway binary, running until dropped.
pub struct Gateway {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub client: reqwest::Client,
}

impl Gateway {
    pub async fn start(config: &str) -> Gateway {
        Self::start_with(config, &[]).await
    }

    /// Starts with `config` and extra environment variables.
    pub async fn start_with(config: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gateway.yaml");
        std::fs::write(&config_path, config).unwrap();
        Self::spawn(dir, config_path, env, "json").await
    }

    /// Starts with `config`, logging in the text format (what a terminal shows).
    pub async fn start_text_log(config: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gateway.yaml");
        std::fs::write(&config_path, config).unwrap();
        Self::spawn(dir, config_path, &[], "text").await
    }

    /// Starts on a config file that already exists (e.g. the shipped `config/dev.yaml`).
    pub async fn start_file(path: &std::path::Path, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn(dir, path.to_path_buf(), env, "json").await
    }

    async fn spawn(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        env: &[(&str, &str)],
        log_format: &str,
    ) -> Gateway {
        let source = [
            std::ffi::OsString::from("--config"),
            config_path.clone().into(),
        ];
        Self::spawn_with_source(dir, config_path, &source, env, log_format).await
    }

    /// Starts with `source` as the config arguments (`--config FILE`, or `--control-plane URL ...`);
    /// `config_path` is what `write_config` replaces.
    pub async fn spawn_with_source(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        source: &[std::ffi::OsString],
        env: &[(&str, &str)],
        log_format: &str,
    ) -> Gateway {
        let (proxy, admin) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
            .args(["--log-format", log_format, "proxy"])
            .args(source)
            .args([
                "--listen",
                &proxy.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .env("LT_TEST_OPENAI_KEY", OPENAI_CREDENTIAL)
            .env_remove("LT_TEST_UNSET")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .build()
            .unwrap();
        let gw = Gateway {
            child,
            proxy,
            admin,
            dir,
            config_path,
            client,
        };
        gw.wait_ready().await;
        gw
    }

    async fn wait_ready(&self) {
        let ready = format!("http://{}/readyz", self.admin);
        let up = || async {
            let admin_up =
                matches!(self.client.get(&ready).send().await, Ok(r) if r.status() == 200);
            admin_up && tokio::net::TcpStream::connect(self.proxy).await.is_ok()
        };
        eventually(
            "the gateway becomes ready",
            Duration::from_secs(20),
            Some(self),
            up,
        )
        .await;
        // Ready must mean *this* gateway: a process that failed to bind has exited.
        assert!(self.running(), "the gateway exited; log:\n{}", self.log());
    }

    fn running(&self) -> bool {
        // `try_wait` needs `&mut`; /proc tells whether the child is alive (and not a zombie).
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .is_ok_and(|stat| stat.split_whitespace().nth(2) != Some("Z"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// The usage record of request `rid` in the gateway's JSON log (waits up to 10 s for the sink
    /// to write it).
    pub async fn usage_record(&self, rid: &str) -> serde_json::Value {
        let find = || {
            self.log().lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["request_id"] == rid && v.get("source").is_some()).then_some(v)
            })
        };
        eventually(
            "the usage record is logged",
            Duration::from_secs(10),
            Some(self),
            || {
                let found = find().is_some();
                async move { found }
            },
        )
        .await;
        find().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub async fn admin_text(&self, path: &str) -> String {
        self.client
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// An admin endpoint's JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let r = self.client.get(self.admin_url(path)).send().await.unwrap();
        r.json().await.unwrap()
    }

    pub async fn config_version(&self) -> u64 {
        self.admin_json("/admin/config").await["version"]
            .as_u64()
            .unwrap()
    }

    /// Polls `/admin/config` until the version differs from `from`; returns the new version and the
    /// time it took. Panics after `within`.
    pub async fn wait_version_change(&self, from: u64, within: Duration) -> (u64, Duration) {
        let start = Instant::now();
        loop {
            let v = self.config_version().await;
            if v != from {
                return (v, start.elapsed());
            }
            assert!(
                start.elapsed() < within,
                "config version still {from} after {within:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Value of a metric sample line (exact label set as rendered) or 0.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.admin_text("/metrics").await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// `POST /v1/chat/completions` with `key` as the bearer token.
    pub async fn post_chat(&self, key: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (Pingora's graceful stop) and waits for the process to exit; panics after
    /// `within`.
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {within:?} after SIGTERM; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Replaces the config file the way editors do: write a sibling, then rename over it.
    pub fn write_config(&self, text: &str) {
        let tmp = self.dir.path().join(".gateway.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it holds; panics with `what` (and the gateway log, if given) after `within`.
/// The tests wait on conditions this way, never on fixed sleeps.
pub async fn eventually<F, Fut>(what: &str, within: Duration, log: Option<&Gateway>, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} (not within {within:?}); log:\n{}",
            log.map(Gateway::log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn chat(model: &str, content: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

/// The admin token of configs made by `with_admin_token`.
pub const ADMIN_TOKEN: &str = "lt-test-admin-token";

/// `config` (one with a `server:` section, as `Upstreams::config` makes) with `server.admin_token`.
pub fn with_admin_token(config: &str) -> String {
    config.replacen(
        "server:\n",
        &format!("server:\n  admin_token: {ADMIN_TOKEN}\n"),
        1,
    )
}

/// Serves `router` on a free loopback port for the rest of the test; returns its address.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    addr
}

/// A provider's `deployments:` entries (indented for `providers.<name>.deployments`), named a, b, c...
/// in the order of `addrs`.
pub fn deployments_yaml(addrs: &[SocketAddr]) -> String {
    let mut list = String::new();
    for (i, addr) in addrs.iter().enumerate() {
        let name = (b'a' + i as u8) as char;
        list.push_str(&format!(
            "      - {{ name: {name}, base_url: http://{addr} }}\n"
        ));
    }
    list
}

/// Resident memory of process `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `r=` of `policy` in the IETF `RateLimit` response field: what is left after this request's
/// reservation.
pub fn ratelimit_remaining(h: &reqwest::header::HeaderMap, policy: &str) -> u64 {
    let field = h["ratelimit"].to_str().unwrap();
    let item = field
        .split(", ")
        .find(|i| i.starts_with(&format!("\"{policy}\";")))
        .unwrap_or_else(|| panic!("no {policy} in {field}"));
    item.split(';')
        .find_map(|kv| kv.strip_prefix("r="))
        .unwrap()
        .parse()
        .unwrap()
}
