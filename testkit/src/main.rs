//! `mock-openai`: the test kit's mock vLLM-style backend as a standalone server.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "the test kit's mock backend, never on the gateway's path"
)]

use std::time::Duration;

use clap::Parser;
use gateway_testkit::{Fault, MockBackend, MockConfig};

#[derive(Debug, Parser)]
#[command(
    name = "mock-openai",
    about = "Mock OpenAI-compatible (vLLM dialect) backend for tests and benchmarks"
)]
struct Args {
    /// Address to listen on (loopback only is recommended).
    #[arg(long, default_value = "127.0.0.1:8001")]
    listen: String,
    /// Models served (repeat or comma-separate).
    #[arg(long, value_delimiter = ',', default_value = "facebook/opt-125m")]
    models: Vec<String>,
    /// Delay before the first token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    first_token_ms: u64,
    /// Gap between streamed tokens, in milliseconds.
    #[arg(long, default_value_t = 0)]
    token_gap_ms: u64,
    /// Tokens generated per request (capped by the request's max_tokens).
    #[arg(long, default_value_t = 8)]
    tokens: u32,
    /// Fault mode: none, hang, reset, unhealthy, status=NNN.
    #[arg(long, default_value = "none")]
    fault: Fault,
    /// One generation at a time, with /health and /v1/models blocked meanwhile (like
    /// llama-cpp-python's server).
    #[arg(long)]
    serial: bool,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // uvicorn's (vLLM's server) default backlog; tokio's default is 1024, which a burst
        // of new connections from the gateway overflows into resets.
        let addr: std::net::SocketAddr = args.listen.parse().map_err(|e| {
            std::io::Error::other(format!("--listen `{}`: {e} (want IP:port)", args.listen))
        })?;
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(2048)?;
        let config = MockConfig {
            models: args.models,
            first_token_delay: Duration::from_millis(args.first_token_ms),
            token_gap: Duration::from_millis(args.token_gap_ms),
            tokens: args.tokens,
            fault: args.fault,
            serial: args.serial,
            ..MockConfig::default()
        };
        let mock = MockBackend::serve(listener, config);
        println!("mock-openai listening on {}", mock.addr);
        tokio::signal::ctrl_c().await?;
        Ok(())
    })
}
