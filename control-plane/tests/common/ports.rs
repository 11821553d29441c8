//! The repository's `scripts/lib` from any test crate, and loopback ports for the servers the tests
//! start themselves (PostgreSQL, Kafka, Cassandra). Included by the control plane's, the analytics
//! crate's and the root package's test harnesses.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `scripts/lib/NAME` of the repository, from a member crate or from the root package.
pub fn script(name: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let here = manifest.join("scripts/lib").join(name);
    if here.exists() {
        here
    } else {
        manifest.join("../scripts/lib").join(name)
    }
}

/// A free port for a server started in another process, from `scripts/lib/ports.sh`: below the
/// kernel's ephemeral range and remembered across the run's picks. A port from `bind(:0)` is free
/// when picked, but any outgoing connection may be given it before the server binds it, and a
/// server stopped and started again on the same port (the fault tests) leaves it open to that for
/// the whole time it is down: a test run lost its restarted Cassandra node exactly so.
pub fn free_port() -> anyhow::Result<u16> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(". \"$0\" && free_port")
        .arg(script("ports.sh"))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ports.sh free_port failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}
