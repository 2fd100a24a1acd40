//! Writing the gateway's own answers (errors and local JSON) to the client.

use bytes::Bytes;
use gateway_plugin_api::ApiError;
use pingora_core::protocols::http::ServerSession;
use pingora_http::ResponseHeader;

/// What was sent, for the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub status: u16,
    pub bytes: u64,
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
