//! Sending one batch line to one backend and reading its whole answer.
//!
//! The same connector, peers and failure rules as interactive requests: a refused connect
//! ejects the backend, a timed-out one marks it failing, and answers count as evidence of
//! life for the health checks. Unlike an interactive request, a line is retried after
//! transient failures (5xx, 429, timeouts, connection errors): nobody is waiting on this
//! exact connection, and the worker bounds the attempts.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession as UpstreamSession;
use pingora_http::RequestHeader;

use crate::config::BatchConfig;
use crate::proxy::PeerSettings;
use crate::routing::backend::{connect_failure, ConnectFailure};
use crate::routing::{Backend, Pool};

pub struct LineSender {
    connector: Connector,
    peers: PeerSettings,
    line_timeout: Duration,
    max_response_size: u64,
}

/// What one attempt got.
pub enum Attempt {
    /// The backend answered (any status).
    Answered {
        status: u16,
        body: Bytes,
        request_id: Option<String>,
    },
    /// Nothing usable came back; worth another attempt.
    Transient(String),
    /// This line cannot succeed (e.g. its answer is larger than allowed).
    Fatal(&'static str, String),
}

impl LineSender {
    pub fn new(peers: PeerSettings, config: &BatchConfig) -> LineSender {
        LineSender {
            connector: Connector::new(None),
            peers,
            line_timeout: config.line_timeout,
            max_response_size: config.max_response_size,
        }
    }

    /// Sends `body` to `url` on `backend`, bounded by `line_timeout` as a whole.
    pub async fn send(
        &self,
        pool: &Pool,
        backend: &Backend,
        url: &str,
        body: Bytes,
        request_id: &str,
    ) -> Attempt {
        match tokio::time::timeout(
            self.line_timeout,
            self.exchange(pool, backend, url, body, request_id),
        )
        .await
        {
            Ok(attempt) => attempt,
            Err(_) => Attempt::Transient(format!(
                "no complete answer within line_timeout ({:?})",
                self.line_timeout
            )),
        }
    }

    async fn exchange(
        &self,
        pool: &Pool,
        backend: &Backend,
        url: &str,
        body: Bytes,
        request_id: &str,
    ) -> Attempt {
        let (mut upstream, _reused) = match self.connector.get_http_session(&backend.peer).await {
            Ok(s) => s,
            Err(e) => {
                match connect_failure(&e) {
                    ConnectFailure::TimedOut => {
                        backend.fail();
                    }
                    ConnectFailure::Refused => {
                        backend.eject();
                    }
                    ConnectFailure::Local => {}
                }
                return Attempt::Transient(format!("connecting to {}: {e}", backend.address));
            }
        };
        self.peers.prepare(&mut upstream);
        let header = match request_header(pool, backend, url, body.len(), request_id) {
            Ok(h) => h,
            Err(e) => return Attempt::Fatal("invalid_request", e),
        };
        if let Err(e) = write(&mut upstream, header, body).await {
            return Attempt::Transient(format!("sending to {}: {e}", backend.address));
        }
        if let Err(e) = upstream.read_response_header().await {
            return Attempt::Transient(format!("reading from {}: {e}", backend.address));
        }
        let (status, request_id) = match upstream.response_header() {
            Some(h) => (
                h.status.as_u16(),
                h.headers
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.chars().take(200).collect()),
            ),
            None => return Attempt::Transient("no response header".into()),
        };
        let mut answer = BytesMut::new();
        loop {
            match upstream.read_response_body().await {
                Ok(Some(chunk)) => {
                    if (answer.len() + chunk.len()) as u64 > self.max_response_size {
                        return Attempt::Fatal(
                            "response_too_large",
                            format!(
                                "the answer is larger than max_response_size ({} bytes)",
                                self.max_response_size
                            ),
                        );
                    }
                    answer.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Attempt::Transient(format!("reading from {}: {e}", backend.address))
                }
            }
        }
        if status < 500 {
            backend.saw_progress();
        }
        self.connector
            .release_http_session(upstream, &backend.peer, Some(self.peers.keepalive_timeout))
            .await;
        Attempt::Answered {
            status,
            body: answer.freeze(),
            request_id,
        }
    }
}

fn request_header(
    pool: &Pool,
    backend: &Backend,
    url: &str,
    len: usize,
    request_id: &str,
) -> Result<RequestHeader, String> {
    let mut header =
        RequestHeader::build("POST", url.as_bytes(), Some(5)).map_err(|e| e.to_string())?;
    let set = |h: &mut RequestHeader, name: &'static str, value: String| {
        h.insert_header(name, value).map_err(|e| e.to_string())
    };
    set(&mut header, "host", backend.address.clone())?;
    set(&mut header, "content-type", "application/json".into())?;
    set(&mut header, "content-length", len.to_string())?;
    set(&mut header, "x-request-id", request_id.into())?;
    if let Some(auth) = &pool.authorization {
        header
            .insert_header("authorization", auth.clone())
            .map_err(|e| e.to_string())?;
    }
    Ok(header)
}

async fn write(
    upstream: &mut UpstreamSession,
    header: RequestHeader,
    body: Bytes,
) -> pingora_error::Result<()> {
    upstream.write_request_header(Box::new(header)).await?;
    upstream.write_request_body(body, true).await?;
    upstream.finish_request_body().await
}
