//! Who a request comes from, and what the backend is told about it: the real client behind
//! trusted proxies, and the `X-Forwarded-For` / `X-Forwarded-Proto` the upstream request
//! carries (from a trusted proxy its own chain is extended; from anyone else they restart at
//! the peer, so a client cannot forge them).

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use pingora_core::protocols::http::ServerSession;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Where a request came from, as the upstream request reports it.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// The TCP peer of this connection.
    pub peer: Option<IpAddr>,
    /// The peer is a configured trusted proxy: its forwarding headers are kept and extended.
    pub trusted: bool,
}

impl Origin {
    /// Where the request on `session` comes from; `trusts` says which peers are proxies
    /// whose forwarding headers are believed.
    pub fn of(session: &ServerSession, trusts: impl Fn(IpAddr) -> bool) -> Origin {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        Origin {
            peer,
            trusted: peer.is_some_and(trusts),
        }
    }
}

/// The client's address as the gateway judges it: the TCP peer, unless the peer is a trusted
/// proxy; then the rightmost `X-Forwarded-For` entry that is not itself a trusted proxy
/// (nginx's `real_ip_recursive`). An entry that is not an address ends the walk.
pub fn real_client(peer: IpAddr, headers: &HeaderMap, trusts: impl Fn(IpAddr) -> bool) -> IpAddr {
    if !trusts(peer) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(ip) = parse_forwarded_ip(entry.trim()) else {
            break;
        };
        client = ip;
        if !trusts(ip) {
            break;
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1` or `[::1]:80`.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

/// The forwarding headers an upstream request will carry, read from the client's request
/// before its own forwarding headers are dropped.
pub struct Forwarding {
    chain: Vec<u8>,
    proto: HeaderValue,
}

impl Forwarding {
    pub fn of(headers: &HeaderMap, origin: Origin) -> Forwarding {
        // Room for the usual chain, one address (45 bytes at most), without regrowing.
        let mut chain = Vec::with_capacity(48);
        let mut proto = HeaderValue::from_static("http");
        if origin.trusted {
            for value in headers.get_all(&X_FORWARDED_FOR) {
                if !chain.is_empty() {
                    chain.extend_from_slice(b", ");
                }
                chain.extend_from_slice(value.as_bytes().trim_ascii());
            }
            if let Some(p) = headers.get(&X_FORWARDED_PROTO) {
                if p == "https" || p == "http" {
                    proto = p.clone();
                }
            }
        }
        if let Some(peer) = origin.peer {
            if !chain.is_empty() {
                chain.extend_from_slice(b", ");
            }
            gateway_plugin_api::text::push_ip(&mut chain, peer);
        }
        Forwarding { chain, proto }
    }

    /// Sets the headers, replacing any of the same names.
    pub fn insert_into(self, headers: &mut HeaderMap) {
        if let (false, Ok(value)) = (self.chain.is_empty(), HeaderValue::from_bytes(&self.chain)) {
            headers.insert(X_FORWARDED_FOR, value);
        }
        headers.insert(X_FORWARDED_PROTO, self.proto);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    /// The forwarding headers of an upstream request for a client request with `pairs`.
    fn forwarded(pairs: &[(&'static str, &'static str)], origin: Origin) -> HeaderMap {
        let mut out = HeaderMap::new();
        Forwarding::of(&headers(pairs), origin).insert_into(&mut out);
        out
    }

    #[test]
    fn the_real_client_is_believed_only_through_trusted_proxies() {
        let trusts = |a: IpAddr| a == ip("10.0.0.1") || a == ip("10.0.0.2");
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2")]);
        assert_eq!(real_client(ip("10.0.0.1"), &h, trusts), ip("1.2.3.4"));
        assert_eq!(real_client(ip("5.5.5.5"), &h, trusts), ip("5.5.5.5"));
        let bad = headers(&[("x-forwarded-for", "1.2.3.4, nonsense")]);
        assert_eq!(real_client(ip("10.0.0.1"), &bad, trusts), ip("10.0.0.1"));
        let ported = headers(&[("x-forwarded-for", "[2001:db8::1]:4711")]);
        assert_eq!(
            real_client(ip("10.0.0.1"), &ported, trusts),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn forwarding_headers_restart_at_an_untrusted_peer() {
        let h = forwarded(
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "https"),
            ],
            Origin {
                peer: Some(ip("5.5.5.5")),
                trusted: false,
            },
        );
        assert_eq!(
            h.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"5.5.5.5"[..])
        );
        assert_eq!(
            h.get("x-forwarded-proto").map(|v| v.as_bytes()),
            Some(&b"http"[..])
        );

        let h = forwarded(
            &[
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-for", "10.0.0.9"),
                ("x-forwarded-proto", "https"),
            ],
            Origin {
                peer: Some(ip("10.0.0.1")),
                trusted: true,
            },
        );
        assert_eq!(
            h.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"1.2.3.4, 10.0.0.9, 10.0.0.1"[..])
        );
        assert_eq!(
            h.get("x-forwarded-proto").map(|v| v.as_bytes()),
            Some(&b"https"[..])
        );
    }
}
