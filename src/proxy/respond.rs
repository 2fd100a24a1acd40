//! Writing the gateway's own answers (errors and local JSON) to the client.

use bytes::Bytes;
use gateway_plugin_api::{ApiError, RequestCtx, RequestSummary};
use pingora_core::protocols::http::ServerSession;
use pingora_http::ResponseHeader;

use crate::errors;

/// How long an unread request body is drained after an early error answer.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// What was sent, for the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub status: u16,
    pub bytes: u64,
}

impl Sent {
    /// What a forwarded answer sent, as the forwarder recorded it.
    pub fn of(summary: &RequestSummary) -> Sent {
        Sent {
            status: summary.status,
            bytes: summary.bytes_sent,
        }
    }
}

pub async fn json(
    session: &mut ServerSession,
    status: u16,
    body: Vec<u8>,
    request_id: &str,
    extra: &[(&'static str, String)],
) -> Sent {
    let len = body.len();
    let written = async {
        let mut header = ResponseHeader::build(status, Some(4 + extra.len()))?;
        header.insert_header("content-type", "application/json")?;
        header.insert_header("content-length", len.to_string())?;
        header.insert_header("x-request-id", request_id)?;
        for (name, value) in extra {
            header.insert_header(*name, value.as_str())?;
        }
        session.write_response_header(Box::new(header)).await?;
        session.write_response_body(Bytes::from(body), true).await?;
        session.finish_body().await
    }
    .await;
    if let Err(e) = written {
        log::debug!(request_id = request_id; "could not write response: {e}");
        return Sent { status, bytes: 0 };
    }
    Sent {
        status,
        bytes: len as u64,
    }
}

pub async fn error(session: &mut ServerSession, err: &ApiError, request_id: &str) -> Sent {
    json(session, err.status, err.body(), request_id, &err.headers).await
}

/// A local route's JSON answer.
pub async fn reply(
    session: &mut ServerSession,
    ctx: &RequestCtx,
    status: u16,
    body: &serde_json::Value,
) -> Sent {
    match serde_json::to_vec(body) {
        Ok(bytes) => json(session, status, bytes, &ctx.request_id, &[]).await,
        Err(e) => error(session, &errors::internal(&e.to_string()), &ctx.request_id).await,
    }
}

/// The answer to a request some phase refused (or the gateway failed): the error, logged
/// when it is the gateway's or a backend's fault, and a lingering close when the client may
/// still be sending its body.
pub async fn refuse(
    session: &mut ServerSession,
    ctx: &RequestCtx,
    err: &ApiError,
    summary: &mut RequestSummary,
) -> Sent {
    summary.error_code = Some(err.code);
    if err.status >= 500 {
        log::warn!(
            request_id = ctx.request_id.as_str(), route = ctx.route, code = err.code;
            "{}", err.message
        );
    }
    let unread_body = !session.is_body_done();
    if unread_body {
        // The body may still be on the wire; never parse it as the next request.
        session.set_keepalive(None);
    }
    let sent = error(session, err, &ctx.request_id).await;
    if unread_body {
        // Lingering close: a client still sending would get a reset instead of our answer
        // if we closed now, so discard (never buffer or parse) its body for a bounded while.
        let _ = tokio::time::timeout(LINGER, session.drain_request_body()).await;
    }
    sent
}

/// A stored file's bytes (batch inputs and results), read from disk in chunks as the client
/// takes them: a 200 MB result is never held in memory.
pub async fn file(
    session: &mut ServerSession,
    ctx: &RequestCtx,
    path: &std::path::Path,
    len: u64,
) -> Sent {
    use tokio::io::AsyncReadExt;
    let mut opened = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => {
            let err = errors::internal(&format!("reading a stored file: {e}"));
            return error(session, &err, &ctx.request_id).await;
        }
    };
    let mut sent = 0u64;
    let written = async {
        let mut header = ResponseHeader::build(200, Some(3))?;
        header.insert_header("content-type", "application/octet-stream")?;
        header.insert_header("content-length", len.to_string())?;
        header.insert_header("x-request-id", ctx.request_id.as_str())?;
        session.write_response_header(Box::new(header)).await?;
        let mut buf = vec![0u8; 64 * 1024];
        while sent < len {
            let want = buf.len().min((len - sent) as usize);
            let n = match buf.get_mut(..want) {
                Some(slice) => opened.read(slice).await.unwrap_or(0),
                None => 0,
            };
            if n == 0 {
                // The file shrank under us: end the response short rather than hang.
                break;
            }
            let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
            session.write_response_body(chunk, false).await?;
            sent += n as u64;
        }
        session.finish_body().await
    }
    .await;
    if let Err(e) = written {
        log::debug!(request_id = ctx.request_id.as_str(); "could not send a file: {e}");
    }
    Sent {
        status: 200,
        bytes: sent,
    }
}
