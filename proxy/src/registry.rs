//! Deployment states by deployment and settings, shared by every config version, and the active
//! health checks that probe them (on the background service). Apart from `balancer` so that the
//! balancer's algorithms do not depend on the upstream client the probes use.

use crate::background::Background;
use crate::balancer::{DeploymentState, Probe};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Deployment states by deployment and settings, shared by every config version.
pub struct Registry {
    states: Mutex<HashMap<String, Weak<DeploymentState>>>,
    /// Where health checks run.
    background: Background,
}

impl Registry {
    pub fn new(background: Background) -> Self {
        Registry {
            states: Mutex::default(),
            background,
        }
    }

    /// The state of deployment `d` of `provider` with these settings: the existing one when nothing
    /// changed, else a fresh one (and its health-check task, when `probe` is given).
    pub fn state(
        &self,
        provider: &leaky_config::Provider,
        d: &leaky_config::resilience::Deployment,
        bulkhead: &leaky_config::resilience::Bulkhead,
        probe: Option<Probe>,
    ) -> Arc<DeploymentState> {
        let label = format!("{}/{}", provider.name, d.name);
        let key = format!(
            "{label}@{}:{}|{:?}|{:?}|{:?}|{:?}|{}|{bulkhead:?}",
            d.host, d.port, provider.breaker, provider.health_check, d.rpm, d.tpm, d.max_concurrent
        );
        let mut map = self.states.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = map.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        let state = Arc::new(DeploymentState::new(
            &label,
            &provider.breaker,
            provider.health_check.as_ref(),
            d,
            bulkhead,
        ));
        map.insert(key, Arc::downgrade(&state));
        if let Some(p) = probe {
            spawn_health_check(&self.background, Arc::downgrade(&state), p);
        }
        state
    }
}

/// Probes the deployment every interval until no config version uses it any more.
fn spawn_health_check(background: &Background, state: Weak<DeploymentState>, p: Probe) {
    let task = async move {
        let transport = pingora::connectors::TransportConnector::new(None);
        loop {
            tokio::time::sleep(p.check.interval).await;
            let Some(s) = state.upgrade() else { return };
            let ok = crate::upstream::probe(&transport, &p, p.check.timeout).await;
            s.on_probe(ok);
        }
    };
    background.spawn(task);
}
