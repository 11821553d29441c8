//! The control plane's HTTP endpoints as the proxy calls them: the watch stream (`GET
//! /v1/config/watch`, read as NDJSON events with a silence limit), ACK/NACK (`POST /v1/config/acks`)
//! and the registry (`PUT /v1/registry/instances/{id}`, `POST .../heartbeat`). One `reqwest` client,
//! whose connections are reused across calls.

use super::event::Event;
use super::ndjson::{LineTooLong, Lines};
use super::ClientTls;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::json;
use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;
use tokio::time::Instant;

/// No line for this long: the stream is dead (three missed heartbeats).
pub const SILENCE: Duration = Duration::from_secs(30);
/// Connecting to the control plane.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One ACK or registry call, start to finish.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest event line: a document at the config size limit, JSON-escaped, with room for the envelope.
pub const MAX_LINE: usize = 2 * leaky_config::MAX_CONFIG_BYTES as usize + 64 * 1024;

/// Why a watch stream ended or could not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("connecting: {0}")]
    Connect(String),
    #[error("the control plane answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("reading the stream: {0}")]
    Read(String),
    #[error("the control plane closed the stream")]
    Ended,
    #[error("no event for {0:?}: the stream is dead")]
    Silent(Duration),
    #[error(transparent)]
    TooLong(#[from] LineTooLong),
    #[error("a malformed event: {0}")]
    Malformed(serde_json::Error),
}

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// An open watch stream, yielding events.
pub struct WatchStream {
    body: Body,
    lines: Lines,
    ready: VecDeque<Vec<u8>>,
    silence: Duration,
}

impl WatchStream {
    /// Events from `body` (chunks as they arrive); fails after `silence` without a complete line.
    pub fn new(
        body: impl Stream<Item = Result<Bytes, String>> + Send + 'static,
        silence: Duration,
        max_line: usize,
    ) -> Self {
        WatchStream {
            body: Box::pin(body),
            lines: Lines::new(max_line),
            ready: VecDeque::new(),
            silence,
        }
    }

    /// The next event. Any error ends the stream: the caller reconnects.
    pub async fn next_event(&mut self) -> Result<Event, StreamError> {
        let deadline = Instant::now() + self.silence;
        loop {
            if let Some(line) = self.ready.pop_front() {
                return Event::parse(&line).map_err(StreamError::Malformed);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Err(StreamError::Silent(self.silence)),
                Ok(None) => return Err(StreamError::Ended),
                Ok(Some(Err(e))) => return Err(StreamError::Read(e)),
                Ok(Some(Ok(chunk))) => self.ready.extend(self.lines.push(&chunk)?),
            }
        }
    }
}

/// `builder` trusting only `tls.ca` (when set) and presenting `tls.client_cert` (when set). The files
/// are read once, here, when the proxy starts.
fn with_tls(
    mut builder: reqwest::ClientBuilder,
    tls: &ClientTls,
) -> Result<reqwest::ClientBuilder, String> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{what} `{}`: {e}", path.display()))
    };
    if let Some(ca) = &tls.ca {
        let certs = reqwest::Certificate::from_pem_bundle(&read("--control-plane-ca", ca)?)
            .map_err(|e| format!("--control-plane-ca `{}`: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--control-plane-ca `{}`: holds no PEM certificate",
                ca.display()
            ));
        }
        // A private CA replaces the public roots: nothing else may stand in for the control plane.
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = &tls.client_cert {
        let mut pem = read("--control-plane-cert", cert)?;
        pem.push(b'\n');
        pem.extend(read("--control-plane-key", key)?);
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| format!("--control-plane-cert `{}`: {e}", cert.display()))?;
        builder = builder.identity(identity);
    }
    Ok(builder)
}

/// Where and as whom the proxy talks to its control plane.
#[derive(Clone)]
pub struct Endpoint {
    http: reqwest::Client,
    /// Without a trailing `/`.
    base: String,
    token: String,
    pub instance: String,
}

impl Endpoint {
    pub fn new(url: &str, token: &str, instance: &str, tls: &ClientTls) -> Result<Self, String> {
        let builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(15));
        let http = with_tls(builder, tls)?
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Endpoint {
            http,
            base: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            instance: instance.to_string(),
        })
    }

    /// Opens the watch stream.
    pub async fn watch(&self) -> Result<WatchStream, StreamError> {
        let request = self
            .http
            .get(format!("{}/v1/config/watch", self.base))
            .query(&[("instance", &self.instance)])
            .bearer_auth(&self.token)
            .send();
        // Bounded up to the response head only: the body is the stream, watched by `SILENCE`.
        let r = tokio::time::timeout(CALL_TIMEOUT, request)
            .await
            .map_err(|_| StreamError::Connect(format!("no response within {CALL_TIMEOUT:?}")))?
            .map_err(|e| StreamError::Connect(error_chain(&e)))?;
        let status = r.status().as_u16();
        if status != 200 {
            let body = r.text().await.unwrap_or_default();
            let body = body.chars().take(300).collect();
            return Err(StreamError::Status { status, body });
        }
        let body = r.bytes_stream().map(|c| c.map_err(|e| error_chain(&e)));
        Ok(WatchStream::new(body, SILENCE, MAX_LINE))
    }

    /// Reports the outcome of `version`: `Ok` is an ACK, `Err` a NACK with every error.
    pub async fn ack(&self, version: u64, outcome: &Result<(), Vec<String>>) -> Result<(), String> {
        let body = match outcome {
            Ok(()) => json!({"instance": self.instance, "version": version, "status": "ack"}),
            Err(errors) => {
                json!({"instance": self.instance, "version": version, "status": "nack", "errors": errors})
            }
        };
        let url = format!("{}/v1/config/acks", self.base);
        self.send(self.http.post(url).json(&body)).await.map(drop)
    }

    /// Registers this instance; `body` is the registry's `Registration`.
    pub async fn register(&self, body: &serde_json::Value) -> Result<u16, String> {
        let url = format!("{}/v1/registry/instances/{}", self.base, self.instance);
        self.send(self.http.put(url).json(body)).await
    }

    /// One registry heartbeat with the config version running; `Ok(404)`: register again.
    pub async fn heartbeat(&self, config_version: Option<u64>) -> Result<u16, String> {
        let url = format!(
            "{}/v1/registry/instances/{}/heartbeat",
            self.base, self.instance
        );
        let body = json!({ "config_version": config_version });
        match self.send(self.http.post(url).json(&body)).await {
            Err(e) if e.starts_with("404 ") => Ok(404),
            other => other,
        }
    }

    /// Sends with the token and the call timeout; a status other than 2xx is an error
    /// (`"<status> <body>"`).
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<u16, String> {
        let r = req
            .bearer_auth(&self.token)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = r.status().as_u16();
        if r.status().is_success() {
            return Ok(status);
        }
        let body: String = r
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        Err(format!("{status} {body}"))
    }
}

/// An error with its causes (`reqwest`'s own message hides the interesting part, e.g. `refused`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn stream(
        silence: Duration,
        max_line: usize,
    ) -> (mpsc::UnboundedSender<Result<Bytes, String>>, WatchStream) {
        let (tx, rx) = mpsc::unbounded_channel();
        let body =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        (tx, WatchStream::new(body, silence, max_line))
    }

    #[tokio::test(start_paused = true)]
    async fn events_arrive_across_chunk_boundaries_and_silence_kills_the_stream() {
        let (tx, mut s) = stream(SILENCE, 1024);
        tx.send(Ok(Bytes::from_static(b"{\"type\":\"heartbeat\",\"ver")))
            .unwrap();
        tx.send(Ok(Bytes::from_static(
            b"sion\":1}\n{\"type\":\"heartbeat\",\"version\":2}\n",
        )))
        .unwrap();
        assert!(matches!(
            s.next_event().await.unwrap(),
            Event::Heartbeat { version: Some(1) }
        ));
        assert!(matches!(
            s.next_event().await.unwrap(),
            Event::Heartbeat { version: Some(2) }
        ));
        // A partial line does not count as life: 30 s after the last event, the stream is dead.
        tx.send(Ok(Bytes::from_static(b"{\"type\":"))).unwrap();
        let start = Instant::now();
        let e = s.next_event().await.unwrap_err();
        assert!(matches!(e, StreamError::Silent(_)), "{e}");
        assert_eq!(start.elapsed(), SILENCE);
    }

    #[tokio::test]
    async fn an_over_long_line_a_bad_line_and_the_end_are_errors() {
        let (tx, mut s) = stream(SILENCE, 16);
        tx.send(Ok(Bytes::from_static(
            b"{\"type\":\"heartbeat\",\"version\":1}\n",
        )))
        .unwrap();
        assert!(matches!(
            s.next_event().await.unwrap_err(),
            StreamError::TooLong(_)
        ));
        let (tx, mut s) = stream(SILENCE, 1024);
        tx.send(Ok(Bytes::from_static(b"{oops\n"))).unwrap();
        assert!(matches!(
            s.next_event().await.unwrap_err(),
            StreamError::Malformed(_)
        ));
        drop(tx);
        assert!(matches!(
            s.next_event().await.unwrap_err(),
            StreamError::Ended
        ));
    }
}
