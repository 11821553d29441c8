//! Glue between the CLI and Pingora's server: the stubs as a background service of `up`.

use async_trait::async_trait;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

struct Stubs(leaky_stubs::StubsConfig);

#[async_trait]
impl BackgroundService for Stubs {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = leaky_stubs::serve(self.0.clone(), stop).await {
            tracing::error!(error = %e, "provider stubs stopped");
        }
    }
}

/// Runs the provider stubs inside the Pingora server (on their own runtime).
pub fn add_stubs(server: &mut Server, cfg: leaky_stubs::StubsConfig) {
    let mut svc = background_service("stubs", Stubs(cfg));
    svc.threads = Some(2);
    server.add_service(svc);
}

pub trait ServerExt {
    /// Serves until SIGTERM/SIGINT; graceful stop waits the configured grace period.
    fn run_until_stopped(self);
}

impl ServerExt for Server {
    fn run_until_stopped(self) {
        self.run(pingora::server::RunArgs::default());
    }
}
