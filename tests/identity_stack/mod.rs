//! The identity stack for the gateway-side identity tests: the real `leaky-tokens control-plane`
//! binary (every role, identity in dev mode, a real PostgreSQL and a throwaway Redis) whose config base
//! puts the `jwt` filter, pointed at the control plane's own `jwks_uri`, on the `capture` route; and
//! real proxies fed by it over the watch stream. Every process logs to a file the tests can read.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, Gateway, Upstreams};
use crate::pg;
use leaky_limit::redis_server::RedisServer;
use serde_json::{json, Value};

/// The control plane's bootstrap admin token.
pub const ADMIN: &str = "lt-test-identity-admin";
/// The org the test clients belong to (tokens carry it as `org`).
pub const ORG: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

pub struct Stack {
    child: Child,
    pub url: String,
    pub http: reqwest::Client,
    pub upstreams: Upstreams,
    pub dir: tempfile::TempDir,
    pub redis: RedisServer,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The capture route of `config`, authenticated by the control plane's tokens (audience `leaky`).
pub fn jwt_route(config: &str, cp: &str) -> String {
    let chain = format!(
        "    filters:\n      - kind: request-id\n      - kind: jwt\n        jwks_url: {cp}/.well-known/jwks.json\n        algorithms: [ES256, RS256, EdDSA]\n        issuer: {cp}\n        audiences: [leaky]\n        min_refresh_interval_seconds: 1\n"
    );
    let out = config.replace(
        "  - name: capture\n    prefix: /capture\n    upstream: { provider: capture, path_prefix: /echo }\n    filters: *chain\n",
        &format!("  - name: capture\n    prefix: /capture\n    upstream: {{ provider: capture, path_prefix: /echo }}\n{chain}"),
    );
    assert_ne!(out, config, "capture route replaced");
    out
}

impl Stack {
    /// Starts the control plane with `env` added (e.g. a master key) and waits for its first config
    /// version.
    pub async fn start(env: &[(&str, &str)]) -> Stack {
        let db = pg::fresh_db().await.unwrap();
        let redis = RedisServer::spawn().expect("redis-server");
        let upstreams = Upstreams::start().await;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().port();
        let url = format!("http://127.0.0.1:{port}");
        let base = dir.path().join("base.yaml");
        std::fs::write(&base, jwt_route(&upstreams.config(""), &url)).unwrap();
        let log = std::fs::File::create(dir.path().join("control-plane.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
            .args(["--log-format", "json", "control-plane", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--config-base")
            .arg(&base)
            .args(["--redis-url", &redis.url()])
            .env("LEAKY_DATABASE_URL", &db)
            .env("LEAKY_ADMIN_TOKEN", ADMIN)
            .env("LEAKY_IDENTITY_DEV", "1")
            .env("LT_TEST_OPENAI_KEY", crate::common::OPENAI_CREDENTIAL)
            .env("LEAKY_LOG", "debug,sqlx=warn,hyper=info,h2=info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let stack = Stack {
            child,
            url,
            http: reqwest::Client::new(),
            upstreams,
            dir,
            redis,
        };
        stack.wait_version().await;
        stack
    }

    /// Ready: a config version published and the first signing keys made (the rotation job's first
    /// run, RSA generation included).
    async fn wait_version(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let jwks = self
                .http
                .get(format!("{}/.well-known/jwks.json", self.url))
                .send()
                .await;
            let keys = match jwks {
                Ok(r) => r.json::<Value>().await.unwrap_or_default()["keys"]
                    .as_array()
                    .map_or(0, Vec::len),
                Err(_) => 0,
            };
            if keys >= 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no signing keys; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        loop {
            let res = self
                .http
                .get(format!("{}/v1/config/status", self.url))
                .bearer_auth(ADMIN)
                .send()
                .await;
            if let Ok(r) = res {
                let v: Value = r.json().await.unwrap_or_default();
                if v["version"].as_i64().is_some() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no config version; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("control-plane.log")).unwrap_or_default()
    }

    /// Stores `value` in the control plane's provider-credential vault as `name`.
    pub async fn store_credential(&self, name: &str, value: &str) {
        let res = self
            .http
            .put(format!("{}/v1/provider-credentials/{name}", self.url))
            .bearer_auth(ADMIN)
            .json(&json!({ "value": value }))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    }

    /// The control plane refuses a base with a literal credential (issue 14): each provider's literal
    /// in `base` (the imported test base has some) is stored in the vault under the provider's name
    /// and replaced by its `${secret:<name>}` reference, as an operator migrating would.
    pub async fn vault_literal_credentials(&self, base: &mut Value) {
        let providers = base["providers"].as_object_mut().unwrap();
        for (name, p) in providers.iter_mut() {
            let Some(literal) = p["credential"].as_str().filter(|c| !c.starts_with("${")) else {
                continue;
            };
            self.store_credential(name, literal).await;
            p["credential"] = json!(format!("${{secret:{name}}}"));
        }
    }

    /// A proxy fed by this control plane (`--control-plane`), with `env` added.
    pub async fn proxy(&self, instance: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("last-good.json");
        let source: Vec<OsString> = vec![
            "--control-plane".into(),
            self.url.clone().into(),
            "--instance-id".into(),
            instance.into(),
            "--config-cache".into(),
            cache.into(),
        ];
        let unused = dir.path().join("unused.yaml");
        let mut all = vec![
            ("LEAKY_CONTROL_PLANE_TOKEN", ADMIN),
            ("LEAKY_LOG", "debug,pingora_core=info,h2=info,hyper=info"),
        ];
        all.extend_from_slice(env);
        Gateway::spawn_with_source(dir, unused, &source, &all, "json").await
    }

    /// A new OAuth2 client for the gateway (audience `leaky`); `(client_id, client_secret)`.
    pub async fn client(&self, name: &str) -> (String, String) {
        let res = self
            .http
            .post(format!("{}/v1/identity/clients", self.url))
            .bearer_auth(ADMIN)
            .json(
                &json!({"name": name, "scopes": ["chat"], "audience": "leaky", "tier": "pro",
                          "org_id": ORG}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        let v: Value = res.json().await.unwrap();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["client_secret"].as_str().unwrap().to_owned(),
        )
    }

    /// A `client_credentials` access token.
    pub async fn token(&self, id: &str, secret: &str) -> String {
        let res = self
            .http
            .post(format!("{}/oauth2/token", self.url))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        let v: Value = res.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }

    /// Revokes `token` (RFC 7009) as client `id`.
    pub async fn revoke(&self, id: &str, secret: &str, token: &str) {
        let res = self
            .http
            .post(format!("{}/oauth2/revoke", self.url))
            .basic_auth(id, Some(secret))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }
}

/// The status of a call to `gw`'s capture route with `bearer`.
pub async fn call(gw: &Gateway, bearer: &str) -> u16 {
    gw.client
        .post(gw.url("/capture/x"))
        .bearer_auth(bearer)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
