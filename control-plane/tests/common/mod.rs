//! Test harness: a real PostgreSQL, one fresh database per test, and the admin API served in process on
//! a random loopback port.
//!
//! The server: `LEAKY_TEST_DATABASE_URL` (a URL of any database on a server whose user may
//! `CREATE DATABASE`; `scripts/test` starts one cluster per run and exports it) or, when unset, one
//! throwaway cluster per test process, started on first use (binaries from `LEAKY_PG_BIN` or
//! `/usr/lib/postgresql/<newest>/bin`; initdb `--auth=trust --no-sync`, `fsync=off`,
//! a free loopback port, data under `/tmp/leaky-pg-<pid>-<n>`, mode 0755 so user `postgres` can reach it;
//! as root initdb/pg_ctl run through `runuser -u postgres --`).
//!
//! Cleanup of a self-started cluster: Rust runs no destructor for statics at exit, and a "last test
//! stops it" scheme depends on test order, so each cluster gets a watchdog — a small `sh` loop, spawned
//! when the cluster starts, that polls the test process's pid and, once it is gone (passed, failed,
//! panicked or killed), runs `pg_ctl stop -m immediate` and deletes the directory. Its path is printed
//! to stderr in case a machine dies mid-run. The tests that stop and restart PostgreSQL always start
//! their own cluster, so they need the server binaries even when `LEAKY_TEST_DATABASE_URL` is set.
#![allow(dead_code)]

pub mod kafka;
// Also loaded by the other shared harnesses a test binary may include (each its own copy).
#[allow(clippy::duplicate_mod)]
mod ports;
use ports::free_port;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use anyhow::{bail, Context};
use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::{app, db, Roles};
use sqlx::PgPool;

/// PostgreSQL's server binaries: `LEAKY_PG_BIN`, else the newest `/usr/lib/postgresql/<major>/bin`
/// (Debian's layout; 15 on Debian 12).
pub fn pg_bin() -> String {
    if let Ok(dir) = std::env::var("LEAKY_PG_BIN") {
        return dir;
    }
    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    majors.sort_unstable();
    let major = majors.last().copied().unwrap_or(15);
    format!("/usr/lib/postgresql/{major}/bin")
}
pub const TOKEN: &str = "test-admin-token";

/// A throwaway PostgreSQL cluster on a loopback port.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A PostgreSQL tool, run as user `postgres` when we are root (initdb and postgres refuse root).
fn pg_tool(tool: &str) -> Command {
    let path = format!("{}/{tool}", pg_bin());
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let status = status.with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(())
}

impl Cluster {
    /// initdb + start, with a watchdog that stops and deletes it when this process exits.
    #[allow(clippy::print_stderr)] // tells where a cluster lives, should its watchdog die with the machine
    pub fn start() -> anyhow::Result<Cluster> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(format!(
            "/tmp/leaky-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        run(Command::new("chmod").arg("0755").arg(&dir), "chmod")?;
        if is_root() {
            run(Command::new("chown").arg("postgres:").arg(&dir), "chown")?;
        }
        let mut initdb = pg_tool("initdb");
        initdb.arg("-D").arg(dir.join("data"));
        initdb.args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(&mut initdb, "initdb")?;
        let cluster = Cluster {
            dir,
            port: free_port()?,
        };
        cluster.watchdog()?;
        cluster.restart()?;
        eprintln!(
            "test PostgreSQL on 127.0.0.1:{} in {}",
            cluster.port,
            cluster.dir.display()
        );
        Ok(cluster)
    }

    fn watchdog(&self) -> anyhow::Result<()> {
        let runas = if is_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {runas}{bin}/pg_ctl -D {dir}/data stop -m immediate; rm -rf {dir}",
            pid = std::process::id(),
            bin = pg_bin(),
            dir = self.dir.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning the cluster watchdog")?;
        Ok(())
    }

    /// Starts (again) on the same port and data.
    pub fn restart(&self) -> anyhow::Result<()> {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c shared_buffers=32MB -c max_connections=300",
            self.port,
            self.dir.display()
        );
        let mut ctl = pg_tool("pg_ctl");
        ctl.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"));
        ctl.args(["-w", "-o", &opts, "start"]);
        run(&mut ctl, "pg_ctl start")
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop(&self) -> anyhow::Result<()> {
        let mut ctl = pg_tool("pg_ctl");
        ctl.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-m", "fast", "stop"]);
        run(&mut ctl, "pg_ctl stop")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }
}

/// The server URL every test of this process shares.
pub fn server_url() -> anyhow::Result<String> {
    static SHARED: OnceLock<Result<String, String>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| match std::env::var("LEAKY_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Ok(url),
        _ => Cluster::start()
            .map(|c| c.url())
            .map_err(|e| format!("{e:#}")),
    });
    shared
        .clone()
        .map_err(|e| anyhow::anyhow!("test PostgreSQL: {e}"))
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

/// A new, empty database on `server` (named `cp_<random>`); returns its URL.
pub async fn fresh_db_on(server: &str) -> anyhow::Result<String> {
    let name = format!("cp_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPool::connect(server)
        .await
        .context("connecting to the test server")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(with_database(server, &name))
}

/// A new, empty database on the shared server.
pub async fn fresh_db() -> anyhow::Result<String> {
    fresh_db_on(&server_url()?).await
}

/// The admin API served in process over a real socket, on its own migrated database.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub pool: PgPool,
    pub db_url: String,
}

/// A migrated fresh database with the API in front of it.
pub async fn app() -> anyhow::Result<TestApp> {
    let url = fresh_db().await?;
    let pool = db::pool(&url, 8)?;
    db::migrate(&pool).await?;
    serve(url, pool).await
}

/// Serves the API for `pool` (already migrated) on 127.0.0.1:0.
pub async fn serve(db_url: String, pool: PgPool) -> anyhow::Result<TestApp> {
    let state = ApiState::new(pool.clone(), AdminToken::new(TOKEN));
    state.set_migrated();
    serve_state(db_url, state).await
}

/// Serves the API for `state` as it is (migrated or not) on 127.0.0.1:0.
pub async fn serve_state(db_url: String, state: ApiState) -> anyhow::Result<TestApp> {
    let pool = state.pool.clone();
    let router = app::router(state, &Roles::all());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(TestApp {
        base,
        http: reqwest::Client::new(),
        pool,
        db_url,
    })
}

impl TestApp {
    /// The status of an unauthenticated probe (`/healthz`, `/readyz`).
    pub async fn probe_status(&self, path: &str) -> anyhow::Result<u16> {
        let res = self.http.get(format!("{}{path}", self.base)).send().await?;
        Ok(res.status().as_u16())
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .req(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await?)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self.req(reqwest::Method::GET, path).send().await?)
    }

    /// Creates an org and returns its JSON.
    pub async fn org(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let res = self
            .post("/v1/orgs", serde_json::json!({ "name": name }))
            .await?;
        if res.status() != 201 {
            bail!("POST /v1/orgs: {} {}", res.status(), res.text().await?);
        }
        Ok(res.json().await?)
    }

    /// Number of audit rows.
    pub async fn audit_count(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM audit.events")
            .fetch_one(&self.pool)
            .await?)
    }
}

/// Asserts `res` is problem+json with `status` and `type` ending in `slug`; returns the body.
pub async fn problem(
    res: reqwest::Response,
    status: u16,
    slug: &str,
) -> anyhow::Result<serde_json::Value> {
    let got = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body: serde_json::Value = res.json().await.context("problem body is not JSON")?;
    assert_eq!(got, status, "status, body {body}");
    assert_eq!(ct, "application/problem+json", "content-type, body {body}");
    let ty = body["type"].as_str().unwrap_or("");
    assert_eq!(
        ty,
        format!("https://leaky-tokens.dev/problems/{slug}"),
        "type, body {body}"
    );
    assert_eq!(body["status"], status, "body {body}");
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "body {body}"
    );
    Ok(body)
}

/// The fields a validation problem names.
pub fn fields(problem: &serde_json::Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["field"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
