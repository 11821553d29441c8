//! A real Cassandra node for tests: `LEAKY_TEST_CASSANDRA` when set (what `scripts/test` starts),
//! else one per test process, started on first use through `scripts/lib/cassandra.sh` and stopped by
//! a watchdog once the process is gone (Rust drops no statics). A test that stops and restarts its
//! node starts a [`PrivateNode`] of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

// Also loaded by the other shared harnesses a test binary may include (each its own copy).
#[allow(clippy::duplicate_mod)]
#[path = "../../../control-plane/tests/common/ports.rs"]
mod ports;
use ports::{free_port, script};

fn cassandra_sh(cmd: &str, dir: &Path, port: u16) -> anyhow::Result<()> {
    let script = script("cassandra.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(". '{}' && {cmd} \"$0\" \"$1\"", script.display()))
        .arg(dir)
        .arg(port.to_string())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cassandra.sh {cmd} failed (java 17 and maven are needed):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A node in its own directory, stopped (and its directory removed) by a watchdog when this process
/// ends.
pub struct PrivateNode {
    pub dir: PathBuf,
    pub port: u16,
}

impl PrivateNode {
    #[allow(clippy::print_stderr)]
    pub fn start() -> anyhow::Result<PrivateNode> {
        let dir = tempfile::tempdir()?.keep();
        let port = free_port()?;
        cassandra_sh("cassandra_start", &dir, port)?;
        let script = script("cassandra.sh");
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; . '{s}' && cassandra_stop '{d}'; rm -rf '{d}'",
            pid = std::process::id(),
            s = script.display(),
            d = dir.display(),
        );
        Command::new("bash").arg("-c").arg(watchdog).spawn()?;
        eprintln!(
            "test cassandra on 127.0.0.1:{port}, data in {}",
            dir.display()
        );
        Ok(PrivateNode { dir, port })
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the node (drain, then exit); its data stays.
    pub fn stop(&self) -> anyhow::Result<()> {
        cassandra_sh("cassandra_stop", &self.dir, self.port)
    }

    /// Starts the node again on the same port and data.
    pub fn restart(&self) -> anyhow::Result<()> {
        cassandra_sh("cassandra_start", &self.dir, self.port)
    }
}

/// The node every test of this process shares.
pub fn node() -> anyhow::Result<String> {
    static SHARED: OnceLock<Result<String, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var("LEAKY_TEST_CASSANDRA") {
            Ok(addr) if !addr.is_empty() => Ok(addr),
            _ => PrivateNode::start()
                .map(|n| n.addr())
                .map_err(|e| format!("{e:#}")),
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A keyspace name no other test uses.
pub fn keyspace(name: &str) -> String {
    format!(
        "t_{name}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}
