//! Command line: `run` and `check`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub const DEFAULT_CONFIG: &str = "/etc/inference-gateway/gateway.toml";

#[derive(Debug, Parser)]
#[command(
    name = "inference-gateway",
    version,
    about = "OpenAI-compatible edge proxy for LLM inference"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the gateway.
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Take the listening sockets over from the running gateway (zero-downtime binary
        /// upgrade): start this, then send SIGQUIT to the old process, which hands its sockets
        /// over through `server.upgrade_socket` and drains its connections.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a configuration file and exit (non-zero with the error when invalid).
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}
