//! Routing: request paths to routes, models to pools, pools to backends, and health.

pub mod backend;
pub mod health;
pub mod pool;
pub mod route;
pub mod table;

pub use pool::{Backend, NoBackend, Pool};
pub use route::{match_route, Api, Route, Target};
pub use table::ModelTable;
