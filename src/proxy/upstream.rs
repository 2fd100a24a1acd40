//! The headers that cross the gateway: what the backend receives of the client's request,
//! and what the client receives of the backend's response.
//!
//! Edited as plain `http` parts: Pingora's header type keeps each name's case in a second
//! map, and every insert through it costs a few thousand instructions (case copy, name
//! re-parse, two map updates). Header-name case means nothing to HTTP/1.1 backends.

use std::sync::Arc;

use gateway_plugin_api::{ApiError, Plugin, RequestCtx};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};

use super::forwarded::{Forwarding, Origin};
use crate::errors;
use crate::routing::{Api, Backend, Pool};

/// Headers that describe one hop, not the message; never forwarded either way.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "upgrade" | "expect"
    )
}

/// What the backend never gets of a client's request header: hop-by-hop headers; the
/// client's credentials, which are for the gateway (every auth plugin reads
/// `Authorization`), and its cookies; and what a proxy in front says about the client,
/// kept only from trusted proxies (`X-Forwarded-For` / `-Proto` are rebuilt either way).
fn dropped_upstream(name: &str, trusted: bool) -> bool {
    is_hop_by_hop(name)
        || match name {
            "authorization" | "proxy-authorization" | "cookie" => true,
            "x-forwarded-for" | "x-forwarded-proto" => true,
            "x-forwarded-host" | "x-forwarded-port" | "x-real-ip" | "forwarded" => !trusted,
            _ => false,
        }
}

/// By `HeaderName` const: a `&str` name is parsed on every lookup.
pub(super) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Drops what the backend must not get (`dropped_upstream`, and whatever the sender's
/// `Connection` header names as hop-by-hop), then sets the forwarding headers (read before:
/// a trusted proxy's chain is kept and extended).
fn strip_and_forward(headers: &mut HeaderMap, origin: Origin) {
    let forwarding = Forwarding::of(headers, origin);
    // One pass over the names the request has, instead of a lookup per name it might have.
    let mut doomed = connection_named(headers);
    doomed.extend(
        headers
            .keys()
            .filter(|name| dropped_upstream(name.as_str(), origin.trusted))
            .cloned(),
    );
    for name in &doomed {
        headers.remove(name);
    }
    forwarding.insert_into(headers);
}

/// The client's request header as the backend gets it: the backend's own path and `Host`,
/// one `Content-Length` for the body the gateway read, no hop-by-hop headers, no client
/// credentials, forwarding headers from the real peer, the request id, the pool's key, and
/// whatever the plugins add.
#[expect(clippy::too_many_arguments, reason = "each is one input of the header")]
pub fn upstream_header(
    client: &RequestHeader,
    ctx: &mut RequestCtx,
    pool: &Pool,
    backend: &Backend,
    api: Api,
    body_len: usize,
    origin: Origin,
    plugins: &[Arc<dyn Plugin>],
) -> Result<RequestHeader, ApiError> {
    let mut parts = client.as_owned_parts();
    // Backends serve the plain OpenAI paths: drop the base path and cluster/framework.
    parts.uri = match client.uri.query() {
        None => api.uri(),
        Some(query) => format!("{}?{query}", api.path())
            .parse()
            .map_err(|e: http::uri::InvalidUri| errors::internal(&e.to_string()))?,
    };
    let headers = &mut parts.headers;
    strip_and_forward(headers, origin);
    headers.insert(header::HOST, backend.host.clone());
    // The body goes upstream whole, so it is framed by exactly one length.
    let single_length_ok = {
        let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
        let first = lengths.next();
        lengths.next().is_none()
            && first
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                == Some(body_len)
    };
    if headers.remove(header::TRANSFER_ENCODING).is_some() || !single_length_ok {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    }
    if headers.get(X_REQUEST_ID).map(|v| v.as_bytes()) != Some(ctx.request_id.as_bytes()) {
        headers.insert(X_REQUEST_ID, request_id_value(ctx)?);
    }
    if let Some(auth) = &pool.authorization {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    for plugin in plugins {
        plugin.on_upstream_request(headers, ctx);
    }
    Ok(RequestHeader::from(parts))
}

/// Headers the gateway and its plugins typically add to a response: the request id,
/// `X-Accel-Buffering`, OpenAI's six rate-limit headers.
const RESPONSE_HEADERS_ADDED: usize = 8;

/// The backend's response header as the client gets it (plain parts, as above).
pub fn downstream_header(
    upstream: &ResponseHeader,
    ctx: &mut RequestCtx,
    plugins: &[Arc<dyn Plugin>],
) -> Result<ResponseHeader, ApiError> {
    let mut parts = upstream.as_owned_parts();
    let headers = &mut parts.headers;
    remove_hop_by_hop(headers);
    // The copy has room for the backend's headers only: make room once for ours and the
    // plugins' (rate_limits adds six), where growing one at a time rehashed the map twice.
    headers.reserve(RESPONSE_HEADERS_ADDED);
    headers.insert(X_REQUEST_ID, request_id_value(ctx)?);
    let is_sse = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if is_sse {
        // Tell an nginx or tunnel in front of us not to buffer the stream either.
        headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    }
    let status = parts.status.as_u16();
    for plugin in plugins {
        plugin.on_response_header(status, headers, ctx);
    }
    Ok(ResponseHeader::from(parts))
}

/// The headers the sender's `Connection` header names as hop-by-hop (RFC 9110 §7.6.1),
/// except those the gateway re-frames or must keep: a client cannot strip `Host`, and the
/// message length is set by the gateway on the way up and checked by Pingora on the way
/// down.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| {
            ![
                header::HOST,
                header::CONTENT_LENGTH,
                header::TRANSFER_ENCODING,
            ]
            .contains(name)
        })
        .collect()
}

/// Removes the hop-by-hop headers, fixed and named by `Connection`.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut doomed = connection_named(headers);
    doomed.extend(
        headers
            .keys()
            .filter(|name| is_hop_by_hop(name.as_str()))
            .cloned(),
    );
    for name in &doomed {
        headers.remove(name);
    }
}

/// The request id as a header value; ids we generate are always valid, a client's was
/// already a header value.
fn request_id_value(ctx: &RequestCtx) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&ctx.request_id).map_err(|e| errors::internal(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    #[test]
    fn headers_named_by_connection_are_hop_by_hop_but_framing_and_host_stay() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Trace-Hop , host"),
            ("connection", "content-length,transfer-encoding, bad name"),
            ("keep-alive", "timeout=5"),
            ("x-trace-hop", "1"),
            ("host", "gw.example"),
            ("content-length", "12"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "host", "x-kept"]);
    }

    #[test]
    fn credentials_never_go_upstream() {
        let mut h = headers(&[
            ("authorization", "Bearer secret"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("cookie", "session=secret"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-kept", "yes"),
        ]);
        strip_and_forward(
            &mut h,
            Origin {
                peer: None,
                trusted: false,
            },
        );
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-forwarded-proto", "x-kept"]);
    }
}
