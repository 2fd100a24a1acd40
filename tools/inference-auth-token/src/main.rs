//! `inference-auth-token`: the user's side of Globus Auth for inference-gateway. Log in once
//! (`authenticate`), then `export MY_TOKEN=$(inference-auth-token get_access_token)` prints a
//! valid access token, refreshed when needed, for months without a browser.

mod globus;
mod login;
mod settings;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use globus::{now, Globus, GrantError};
use settings::{Given, Settings, Values};
use store::{Locked, TokenStore, Tokens};

/// Refresh an access token this close to its expiry (a job started now gets a token that
/// outlives its first minutes).
const REFRESH_MARGIN_SECONDS: i64 = 300;

/// How a command failed; each kind has its exit code.
#[derive(Debug)]
pub enum Fail {
    /// Bad flags or settings: exit 2.
    Usage(String),
    /// No usable login: the user must run `authenticate`: exit 3.
    Login(String),
    /// Anything else (Globus or the gateway unreachable or refusing): exit 1.
    Failed(String),
}

const AFTER_HELP: &str = "\
Settings (each from a flag, its environment variable, ~/.config/inference-auth-token/config.toml,
/etc/inference-auth-token/config.toml, or the defaults the site built in; `config` shows them).

Tokens are stored in ~/.globus/app/<client_id>/<app_name>/tokens.json (0600), the file the
Python inference-auth-token.py script uses.

Exit codes: 0 success; 1 Globus Auth or the gateway failed or refused; 2 bad usage or
settings; 3 not logged in, or the login expired or was revoked (run `authenticate`).";

#[derive(Debug, Parser)]
#[command(name = "inference-auth-token", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    options: Options,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Options {
    /// Config file to read instead of the user's and the site's.
    #[arg(long, env = "INFERENCE_AUTH_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Globus client id of this native app (public client, no secret).
    #[arg(long, env = "INFERENCE_AUTH_CLIENT_ID", global = true)]
    client_id: Option<String>,
    /// The gateway's Globus client id: the scope is https://auth.globus.org/scopes/<it>/action_all.
    #[arg(long, env = "INFERENCE_AUTH_GATEWAY_CLIENT_ID", global = true)]
    gateway_client_id: Option<String>,
    /// The scope to request, when it is not <gateway client id>/action_all.
    #[arg(long, env = "INFERENCE_AUTH_SCOPE", global = true)]
    scope: Option<String>,
    /// Names the token directory [default: inference_app].
    #[arg(long, env = "INFERENCE_AUTH_APP_NAME", global = true)]
    app_name: Option<String>,
    /// Globus Auth [default: https://auth.globus.org].
    #[arg(long, env = "INFERENCE_AUTH_GLOBUS_URL", global = true)]
    auth_url: Option<String>,
    /// The gateway's API base, e.g. https://inference.example.org/resource_server (for whoami).
    #[arg(long, env = "INFERENCE_GATEWAY_URL", global = true)]
    gateway_url: Option<String>,
    /// PEM file of CA certificates to trust besides the public ones (a site's own CA).
    #[arg(long, env = "INFERENCE_AUTH_CA_FILE", global = true)]
    ca_file: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log in with Globus (once; a stored login is kept unless --force).
    Authenticate {
        /// Forget (and revoke) the stored login and log in again, e.g. to switch accounts.
        #[arg(long)]
        force: bool,
        /// Do not try to open a browser; print the address only.
        #[arg(long)]
        no_browser: bool,
    },
    /// Print a valid access token on stdout (refreshing it when needed), and nothing else.
    #[command(name = "get_access_token", visible_alias = "get-access-token")]
    GetAccessToken,
    /// Revoke the stored tokens at Globus and delete them.
    Logout,
    /// Ask the gateway who it takes you for (its /whoami), e.g. to understand a 403.
    Whoami,
    /// Show the settings in effect, where each came from, and the token file.
    Config,
}

fn given(o: &Options) -> Given {
    Given {
        config: o.config.clone(),
        flags: Values {
            client_id: o.client_id.clone(),
            gateway_client_id: o.gateway_client_id.clone(),
            scope: o.scope.clone(),
            app_name: o.app_name.clone(),
            auth_url: o.auth_url.clone(),
            gateway_url: o.gateway_url.clone(),
            ca_file: o.ca_file.clone(),
        },
    }
}

/// "47 h 59 min" of a number of seconds.
fn human(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// A valid access token from the store, refreshed when it expires within the margin.
async fn valid_token(locked: &Locked<'_>, globus: &Globus<'_>) -> Result<Tokens, Fail> {
    let tokens = locked.load()?.ok_or_else(|| {
        Fail::Login("not logged in: run `inference-auth-token authenticate`".into())
    })?;
    let left = tokens.expires_at_seconds - now();
    if left > REFRESH_MARGIN_SECONDS {
        return Ok(tokens);
    }
    let Some(refresh) = tokens.refresh_token.clone() else {
        if left > 0 {
            return Ok(tokens);
        }
        return Err(Fail::Login(
            "the access token has expired and there is no refresh token: run `inference-auth-token authenticate --force`".into(),
        ));
    };
    match globus.refresh(&refresh).await {
        Ok(mut fresh) => {
            // Who logged in does not change with a refresh (the Python SDK records it).
            fresh.identity_id = tokens.identity_id.clone();
            locked.save(&fresh)?;
            Ok(fresh)
        }
        Err(GrantError::Refused(m)) => Err(Fail::Login(format!(
            "{m}. Your Globus login has expired or was revoked: run `inference-auth-token authenticate --force`"
        ))),
        // Globus is unreachable, but the token still works for a while: use it.
        Err(GrantError::Unreachable(m)) if left > 10 => {
            eprintln!("warning: could not refresh the token ({m}); it is valid for {} more", human(left));
            Ok(tokens)
        }
        Err(GrantError::Unreachable(m)) => Err(Fail::Failed(m)),
    }
}

/// Revokes what a forgotten login held; says what could not be revoked.
async fn revoke_all(globus: &Globus<'_>, tokens: &Tokens) -> Result<(), String> {
    let mut failures = Vec::new();
    for token in tokens.refresh_token.iter().chain([&tokens.access_token]) {
        if let Err(GrantError::Refused(m) | GrantError::Unreachable(m)) = globus.revoke(token).await
        {
            failures.push(m);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

async fn authenticate(
    globus: &Globus<'_>,
    store: &TokenStore,
    force: bool,
    no_browser: bool,
) -> Result<(), Fail> {
    {
        let locked = store.lock()?;
        if force {
            if let Some(old) = locked.forget()? {
                if let Err(m) = revoke_all(globus, &old).await {
                    eprintln!("warning: the old tokens could not be revoked ({m}); they were deleted here");
                }
                eprintln!("Forgot the stored login.");
            }
        } else if locked.load()?.is_some() {
            match valid_token(&locked, globus).await {
                Ok(t) => {
                    eprintln!(
                        "Already logged in (the access token is valid for {}); tokens in {}.\nUse `authenticate --force` to log in again or as someone else.",
                        human(t.expires_at_seconds - now()),
                        store.path().display()
                    );
                    return Ok(());
                }
                Err(Fail::Login(m)) => eprintln!("{m}\nLogging in again."),
                Err(e) => return Err(e),
            }
        }
        // The lock is not held while the user logs in: that takes minutes.
    }
    let tokens = login::login(globus, no_browser, force).await?;
    store.lock()?.save(&tokens)?;
    eprintln!(
        "Logged in. Tokens stored in {} (the access token is valid for {}; it is refreshed as needed).",
        store.path().display(),
        human(tokens.expires_at_seconds - now())
    );
    Ok(())
}

async fn logout(globus: &Globus<'_>, store: &TokenStore) -> Result<(), Fail> {
    let locked = store.lock()?;
    match locked.forget()? {
        None => eprintln!("Not logged in; nothing to do."),
        Some(old) => {
            revoke_all(globus, &old).await.map_err(|m| {
                Fail::Failed(format!(
                    "the tokens were deleted here but not revoked at Globus: {m}"
                ))
            })?;
            eprintln!("Logged out: the tokens were revoked and deleted.");
        }
    }
    Ok(())
}

async fn whoami(globus: &Globus<'_>, store: &TokenStore) -> Result<(), Fail> {
    let base = globus.settings.gateway_url.clone().ok_or_else(|| {
        Fail::Usage("whoami needs the gateway's address: --gateway-url, INFERENCE_GATEWAY_URL or gateway_url in a config file".into())
    })?;
    let token = valid_token(&store.lock()?, globus).await?.access_token;
    let url = format!("{}/whoami", base.as_str().trim_end_matches('/'));
    let resp = globus
        .http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .map_err(|e| {
            Fail::Failed(format!(
                "cannot reach the gateway at {url}: {}",
                globus::describe(&e)
            ))
        })?;
    let status = resp.status();
    let body = globus::bounded_body(resp).await.map_err(Fail::Failed)?;
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    if status.is_success() {
        let text = json
            .and_then(|j| serde_json::to_string_pretty(&j).ok())
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        println!("{text}");
        return Ok(());
    }
    let message = json
        .as_ref()
        .and_then(|j| j.pointer("/error/message").or_else(|| j.get("detail")))
        .and_then(|m| m.as_str())
        .map(|m| m.chars().take(500).collect::<String>())
        .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
    Err(Fail::Failed(format!(
        "the gateway answered {status}: {message}"
    )))
}

fn show_config(settings: &Settings, store: &TokenStore) {
    for (key, value, origin) in &settings.origins {
        println!("{key} = {value:?}    # from {origin}");
    }
    println!("scope (requested) = {:?}", settings.scope);
    let state = if store.path().exists() {
        "exists"
    } else {
        "not yet created"
    };
    println!("# tokens file: {} ({state})", store.path().display());
}

async fn run(cli: Cli) -> Result<(), Fail> {
    let settings = Settings::resolve(&given(&cli.options))?;
    let store = TokenStore::new(&settings)?;
    let globus = Globus {
        settings: &settings,
        http: globus::http_client(&settings)?,
    };
    match cli.command {
        Command::Authenticate { force, no_browser } => {
            authenticate(&globus, &store, force, no_browser).await
        }
        Command::GetAccessToken => {
            let tokens = valid_token(&store.lock()?, &globus).await?;
            println!("{}", tokens.access_token);
            Ok(())
        }
        Command::Logout => logout(&globus, &store).await,
        Command::Whoami => whoami(&globus, &store).await,
        Command::Config => {
            show_config(&settings, &store);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("inference-auth-token: error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(fail) => {
            let (code, message) = match fail {
                Fail::Failed(m) => (1, m),
                Fail::Usage(m) => (2, m),
                Fail::Login(m) => (3, m),
            };
            eprintln!("inference-auth-token: error: {message}");
            ExitCode::from(code)
        }
    }
}
