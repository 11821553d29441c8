//! A throwaway `redis-server` for tests: spawned on a free local port with persistence off,
//! killed on drop, and restartable on the same port (to test outages and recovery).
//!
//! Test support only (std only, no dependency, never on the request path). It is always compiled so
//! the crate's own integration tests can use it without a self dev-dependency.
#![doc(hidden)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The message a test fails with when no server binary is installed.
pub const NOT_FOUND: &str = "redis-server not found: ./scripts/test installs it (apt redis-server)";

/// A running (or deliberately stopped) `redis-server` child process.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Finds `redis-server` on `PATH`, spawns it on a free port and waits until it answers `PING`.
    pub fn spawn() -> std::io::Result<Self> {
        let binary = find_binary().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, NOT_FOUND.to_string())
        })?;
        let mut last_err = None;
        // A free port can be taken by someone else between probing and binding: try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let mut server = Self {
                binary: binary.clone(),
                port,
                child: None,
            };
            match server.start() {
                Ok(()) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL: an abrupt outage) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)); waits for `PING`.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        // The port was ours a moment ago; the kernel may need a moment to release it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.start() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                // A test helper's synchronous wait, never on a runtime thread.
                #[allow(clippy::disallowed_methods)]
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn start(&mut self) -> std::io::Result<()> {
        let port = self.port.to_string();
        let mut child = Command::new(&self.binary)
            .args([
                "--port",
                port.as_str(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "redis-server on port {port} exited at start: {status}"
                )));
            }
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("redis-server on port {port} did not answer PING within 10 s"),
                ));
            }
            #[allow(clippy::disallowed_methods)] // a synchronous wait, see `restart`
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-server` on `PATH`, if any.
pub fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Whether a Redis server on `port` answers `PING` with `+PONG`.
pub fn ping(port: u16) -> bool {
    let Ok(addr) = format!("127.0.0.1:{port}").parse() else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(n) => buf[..n].starts_with(b"+PONG"),
        Err(_) => false,
    }
}
