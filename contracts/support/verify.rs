//! Provider verification of the committed pacts (shared by the providers' tests, each includes this
//! file with `#[path]` beside `pacts.rs`): Pact's verifier replays every interaction of a pact file
//! against the real provider — HTTP requests to a running service, or, for message pacts, a request
//! for each message to a small HTTP endpoint of the test that builds it with the provider's real
//! producing code ([`message_provider`]) — after setting up each interaction's provider state through
//! [`States`]. Any mismatch fails the test with the verifier's report.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use pact_models::provider_states::ProviderState;
use pact_verifier::callback_executors::ProviderStateExecutor;
use pact_verifier::{
    FilterInfo, NullRequestFilterExecutor, PactSource, ProviderInfo, ProviderTransport,
    VerificationOptions,
};
use serde_json::Value;

/// Sets up one provider state (by its name in the pact) before its interaction is replayed.
pub type StateFn =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The provider states of a verification: each name a pact uses must be known here, or the
/// interaction fails (a consumer cannot invent a state the provider never agreed to).
pub struct States(pub StateFn);

impl std::fmt::Debug for States {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("States")
    }
}

#[async_trait::async_trait]
impl ProviderStateExecutor for States {
    async fn call(
        self: Arc<Self>,
        _interaction_id: Option<String>,
        state: &ProviderState,
        setup: bool,
        _client: Option<&reqwest013::Client>,
    ) -> anyhow::Result<HashMap<String, Value>> {
        if setup {
            (self.0)(state.name.clone())
                .await
                .map_err(|e| anyhow::anyhow!("provider state `{}`: {e}", state.name))?;
        }
        Ok(HashMap::new())
    }

    fn teardown(&self) -> bool {
        false
    }
}

/// Where the provider answers: HTTP on a port, and/or messages from a message endpoint.
pub struct Provider {
    pub name: &'static str,
    pub http: Option<SocketAddr>,
    pub messages: Option<SocketAddr>,
}

/// Verifies the pact at `pact` against `provider`; `Err` carries the verifier's report of every
/// failed interaction.
pub async fn verify(pact: &Path, provider: &Provider, states: States) -> Result<(), String> {
    super::pacts::no_metrics();
    let mut transports = Vec::new();
    let mut host = "127.0.0.1".to_string();
    if let Some(addr) = provider.http {
        host = addr.ip().to_string();
        transports.push(transport("http", addr));
    }
    if let Some(addr) = provider.messages {
        host = addr.ip().to_string();
        transports.push(transport("message", addr));
    }
    #[allow(deprecated)]
    let info = ProviderInfo {
        name: provider.name.to_string(),
        host,
        transports,
        ..ProviderInfo::default()
    };
    let options = VerificationOptions::<NullRequestFilterExecutor> {
        coloured_output: false,
        request_timeout: 10_000,
        ..VerificationOptions::default()
    };
    let source = vec![PactSource::File(pact.display().to_string())];
    let result = pact_verifier::verify_provider_async(
        info,
        source,
        FilterInfo::None,
        vec![],
        &options,
        None,
        &Arc::new(states),
        None,
    )
    .await
    .map_err(|e| format!("the verifier failed: {e:#}"))?;
    if result.result {
        return Ok(());
    }
    let mut report = result.output.join("\n");
    for (interaction, mismatch) in &result.errors {
        report.push_str(&format!("\n- {interaction}: {mismatch:?}"));
    }
    Err(report)
}

fn transport(kind: &str, addr: SocketAddr) -> ProviderTransport {
    ProviderTransport {
        transport: kind.to_string(),
        port: Some(addr.port()),
        path: None,
        scheme: Some("http".to_string()),
    }
}

/// Builds the message the verifier asks for: the interaction's description and provider states in,
/// the message (JSON) out, or why the provider cannot produce it.
pub type MessageFn = Arc<dyn Fn(&str, &[String]) -> Result<Value, String> + Send + Sync>;

/// Serves `build` on a loopback port as Pact's message provider endpoint: the verifier POSTs
/// `{"description", "providerStates"}` and compares the answer's body with the pact's message.
pub async fn message_provider(build: MessageFn) -> SocketAddr {
    async fn handle(
        State(build): State<MessageFn>,
        Json(request): Json<Value>,
    ) -> Result<Json<Value>, (axum::http::StatusCode, String)> {
        let description = request["description"].as_str().unwrap_or_default();
        let states: Vec<String> = request["providerStates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .collect();
        build(description, &states)
            .map(Json)
            .map_err(|e| (axum::http::StatusCode::NOT_FOUND, e))
    }
    let app = axum::Router::new()
        .fallback(axum::routing::post(handle))
        .with_state(build);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}
