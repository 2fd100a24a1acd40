//! `mock-globus`: the test kit's mock Globus Auth + Groups API as a standalone server, for
//! end-to-end tests, benchmarks and trying `globus_auth` without a Globus app.
//!
//!   mock-globus --listen 127.0.0.1:8101 --client-id ID --client-secret S \
//!       --token AgAlice=alice@anl.gov --token AgBob=bob@uchicago.edu:group-id-1,group-id-2 \
//!       --login-user carol@anl.gov

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "the test kit's mock Globus Auth, never on the gateway's path"
)]

use std::time::Duration;

use clap::Parser;
use gateway_testkit::globus::{MockGlobus, TokenSpec};

#[derive(Debug, Parser)]
#[command(
    name = "mock-globus",
    about = "Mock Globus Auth (introspect, dependent tokens, my_groups, native-app login) for tests"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8101")]
    listen: String,
    /// The resource server's client id the gateway authenticates with.
    #[arg(long)]
    client_id: String,
    #[arg(long)]
    client_secret: String,
    /// TOKEN=USERNAME[:GROUP,GROUP...]: an active 48 h token for that user (repeatable).
    #[arg(long = "token")]
    tokens: Vec<String>,
    /// Delay added to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Who the authorize endpoint logs in (for `inference-auth-token authenticate`); without
    /// it, authorize answers 403 access_denied.
    #[arg(long)]
    login_user: Option<String>,
    /// Lifetime of the access tokens the code and refresh grants issue, in seconds.
    #[arg(long, default_value_t = 172_800)]
    access_token_lifetime: i64,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen).await?;
        let globus = MockGlobus::serve(listener, &args.client_id, &args.client_secret)?;
        globus.set_latency(Duration::from_millis(args.latency_ms));
        globus.set_access_token_lifetime(args.access_token_lifetime);
        if let Some(user) = &args.login_user {
            globus.set_login_user(user);
        }
        for entry in &args.tokens {
            let Some((token, rest)) = entry.split_once('=') else {
                eprintln!("--token `{entry}`: expected TOKEN=USERNAME[:GROUP,...]");
                std::process::exit(2);
            };
            let (username, groups) = rest.split_once(':').unwrap_or((rest, ""));
            let mut spec = TokenSpec::user(username, &args.client_id);
            spec.groups = groups
                .split(',')
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect();
            globus.add_token(token, spec);
        }
        println!("mock-globus listening on {}", globus.addr);
        tokio::signal::ctrl_c().await?;
        Ok(())
    })
}
