//! Routing: request paths to routes, models to pools, pools to backends, and health.

pub mod backend;
pub mod health;
pub mod pool;
pub mod route;
pub mod table;

pub use pool::{Backend, NoBackend, Pool};
pub use route::{match_route, Api, Route, Target};
pub use table::{CurrentTable, ModelTable, Unresolved};

/// A backend's connection target with Pingora's defaults, for tests and tools; the gateway
/// builds its peers with its own timeouts (`proxy::peer`).
pub fn bare_peer(socket: std::net::SocketAddr) -> pingora_core::upstreams::peer::HttpPeer {
    pingora_core::upstreams::peer::HttpPeer::new(socket, false, String::new())
}
