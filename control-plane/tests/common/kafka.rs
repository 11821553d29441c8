//! A real Kafka broker for tests: `LEAKY_TEST_KAFKA` when set (what `scripts/test` starts), else one
//! per test process, started on first use through `scripts/lib/kafka.sh` and stopped by a watchdog
//! once the process is gone (Rust drops no statics). Included by the control plane's, the analytics
//! crate's and the root package's tests.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

// Also loaded by the other shared harnesses a test binary may include (each its own copy).
#[allow(clippy::duplicate_mod)]
#[path = "ports.rs"]
mod ports;
use ports::{free_port, script};

fn kafka_sh(cmd: &str, dir: &Path, port: u16) -> anyhow::Result<()> {
    let script = script("kafka.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(". '{}' && {cmd} \"$0\" \"$1\"", script.display()))
        .arg(dir)
        .arg(port.to_string())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kafka.sh {cmd} failed (java and maven are needed):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Starts a broker in a fresh directory with a watchdog that stops it when this process ends (its
/// path goes to stderr in case a machine dies mid-run).
#[allow(clippy::print_stderr)]
fn start_own_broker() -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?.keep();
    let port = free_port()?;
    kafka_sh("kafka_start", &dir, port)?;
    let script = script("kafka.sh");
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; . '{s}' && kafka_stop '{d}' {port}; rm -rf '{d}'",
        pid = std::process::id(),
        s = script.display(),
        d = dir.display(),
    );
    Command::new("bash").arg("-c").arg(watchdog).spawn()?;
    eprintln!("test kafka on 127.0.0.1:{port}, data in {}", dir.display());
    Ok(format!("127.0.0.1:{port}"))
}

/// The broker every test of this process uses.
pub fn brokers() -> anyhow::Result<String> {
    static SHARED: OnceLock<Result<String, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var("LEAKY_TEST_KAFKA") {
            Ok(addr) if !addr.is_empty() => Ok(addr),
            _ => start_own_broker().map_err(|e| format!("{e:#}")),
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A new topic with `partitions` partitions that no other test uses.
pub async fn topic(brokers: &str, name: &str, partitions: i32) -> anyhow::Result<String> {
    let topic = format!("test.{name}.{}", uuid::Uuid::new_v4().simple());
    topic_named(brokers, &topic, partitions).await?;
    Ok(topic)
}

/// Creates topic `topic` (an error if it exists).
pub async fn topic_named(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(&[t], &opts).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}
