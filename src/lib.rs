//! inference-gateway: an OpenAI-compatible edge proxy for LLM inference, on Pingora.
//!
//! `config` turns the TOML file into a validated model; `routing` maps paths, models, pools
//! and backends; `proxy` is the HTTP application; `server` assembles Pingora services.

pub mod batch;
pub mod cli;
pub mod config;
pub mod descriptors;
pub mod errors;
pub mod logging;
pub mod metrics;
pub mod plugins;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod tls;
pub mod upgrade;

#[cfg(test)]
mod test_support;
