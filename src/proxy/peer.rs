//! How the gateway connects to backends, built once from `[server]`: the connect timeout
//! goes into each backend's peer (Pingora's connector applies it); the idle timeout onto each
//! upstream session's reads and the keep-alive timeout onto its release (Pingora's HTTP
//! session does not read them from the peer).

use std::net::SocketAddr;
use std::time::Duration;

use pingora_core::protocols::http::client::HttpSession as UpstreamSession;
use pingora_core::upstreams::peer::HttpPeer;

use crate::config::ServerConfig;

#[derive(Debug, Clone, Copy)]
pub struct PeerSettings {
    pub connect_timeout: Duration,
    /// The longest a backend may stay silent (while generating, or mid-stream).
    pub idle_timeout: Duration,
    /// How long an idle upstream connection is kept for reuse.
    pub keepalive_timeout: Duration,
}

impl PeerSettings {
    pub fn new(server: &ServerConfig) -> PeerSettings {
        PeerSettings {
            connect_timeout: server.upstream_connect_timeout,
            idle_timeout: server.upstream_idle_timeout,
            keepalive_timeout: server.upstream_keepalive_timeout,
        }
    }

    /// The peer for a backend at `socket` (plain HTTP/1.1).
    pub fn peer(&self, socket: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(socket, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer
    }

    /// Applies the idle timeout to reads on a session just taken from the connector, and
    /// reads the response header without keeping its names' case: the client's response is
    /// built from the parsed names (`upstream::downstream_header`), so the case map Pingora
    /// fills per header (a hash and an insert each) would never be read.
    pub fn prepare(&self, session: &mut UpstreamSession) {
        session.set_read_timeout(Some(self.idle_timeout));
        if let UpstreamSession::H1(h1) = session {
            h1.set_keep_header_case(false);
        }
    }
}
