//! The native-app login (OAuth 2.0 authorization code with PKCE S256): print the authorize
//! URL (and open a browser where there is one), read the code the user pastes back, exchange
//! it. On an HPC login node there is no browser: the user opens the URL on their laptop, logs
//! in, and Globus's auth-code page shows the code to copy.

use std::io::{BufRead, Read};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::globus::{Globus, GrantError};
use crate::store::Tokens;
use crate::Fail;

/// A PKCE verifier (43 URL-safe characters from 32 random bytes) and its S256 challenge.
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Result<Pkce, Fail> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| Fail::Failed(format!("no randomness from the system: {e}")))?;
        let verifier = URL_SAFE_NO_PAD.encode(bytes);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Ok(Pkce {
            verifier,
            challenge,
        })
    }
}

/// Where Globus sends a native app's user after login: a page that shows the code.
pub fn redirect_uri(globus: &Globus<'_>) -> String {
    globus.settings.auth_endpoint("/v2/web/auth-code")
}

pub fn authorize_url(globus: &Globus<'_>, pkce: &Pkce, force_login: bool) -> String {
    let s = globus.settings;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("client_id", &s.client_id)
        .append_pair("redirect_uri", &redirect_uri(globus))
        .append_pair("scope", &s.scope)
        .append_pair("state", "_default")
        .append_pair("response_type", "code")
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256")
        // A refresh token, so `get_access_token` works for months without a browser.
        .append_pair("access_type", "offline");
    if force_login {
        // Switching accounts: Globus asks for a login even with a session in the browser.
        query.append_pair("prompt", "login");
    }
    format!(
        "{}?{}",
        s.auth_endpoint("/v2/oauth2/authorize"),
        query.finish()
    )
}

/// Opens `url` in a browser when this session has one: `$BROWSER` (its `%s` replaced by the
/// URL, else the URL appended), else `xdg-open` under a graphical session, else `open` on
/// macOS. Says whether one was started; failures only mean the user opens it by hand.
pub fn open_browser(url: &str) -> bool {
    let command: Option<Vec<String>> = match std::env::var("BROWSER") {
        Ok(b) if !b.trim().is_empty() => {
            let first = b.split(':').next().unwrap_or_default();
            let mut parts: Vec<String> = first.split_whitespace().map(str::to_string).collect();
            if parts.iter().any(|p| p.contains("%s")) {
                parts = parts.into_iter().map(|p| p.replace("%s", url)).collect();
            } else {
                parts.push(url.to_string());
            }
            Some(parts)
        }
        _ if cfg!(target_os = "macos") => Some(vec!["open".into(), url.into()]),
        _ if std::env::var_os("DISPLAY").is_some()
            || std::env::var_os("WAYLAND_DISPLAY").is_some() =>
        {
            Some(vec!["xdg-open".into(), url.into()])
        }
        _ => None,
    };
    let Some((program, args)) = command.as_ref().and_then(|c| c.split_first()) else {
        return false;
    };
    std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// The code the user pastes: what Globus's page shows is short and alphanumeric; anything
/// else is refused here, not sent.
fn check_code(line: &str) -> Result<String, Fail> {
    let code = line.trim();
    if code.is_empty() {
        return Err(Fail::Failed("no authorization code was entered".into()));
    }
    if code.len() > 512
        || !code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return Err(Fail::Failed(
            "that is not an authorization code (copy the code the Globus page shows, and only it)"
                .into(),
        ));
    }
    Ok(code.to_string())
}

/// The whole login: URL, browser, code from stdin, exchange.
pub async fn login(
    globus: &Globus<'_>,
    no_browser: bool,
    force_login: bool,
) -> Result<Tokens, Fail> {
    let pkce = Pkce::new()?;
    let url = authorize_url(globus, &pkce, force_login);
    eprintln!("Log in with Globus by opening this address in a browser:\n\n  {url}\n");
    if !no_browser && open_browser(&url) {
        eprintln!("(A browser was opened; if nothing appeared, open the address yourself.)\n");
    }
    eprint!("After logging in, paste the authorization code shown by Globus here: ");
    let line = read_line_bounded(&mut std::io::stdin().lock())
        .map_err(|e| Fail::Failed(format!("reading the code: {e}")))?;
    eprintln!();
    let code = check_code(&line)?;
    match globus
        .exchange_code(&code, &pkce.verifier, &redirect_uri(globus))
        .await
    {
        Ok(tokens) => Ok(tokens),
        Err(GrantError::Refused(m)) => Err(Fail::Failed(format!(
            "{m}. A code works once, within minutes of the login: run `inference-auth-token authenticate` again"
        ))),
        Err(GrantError::Unreachable(m)) => Err(Fail::Failed(m)),
    }
}

/// One line, at most 4 KiB of it (a pasted code is short; a pasted file is not a code).
fn read_line_bounded(input: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    input.take(4096).read_line(&mut line)?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_the_s256_of_the_verifier() {
        let p = Pkce::new().expect("pkce");
        assert_eq!(p.verifier.len(), 43);
        assert_eq!(p.challenge.len(), 43);
        let again = URL_SAFE_NO_PAD.encode(Sha256::digest(p.verifier.as_bytes()));
        assert_eq!(p.challenge, again);
        assert_ne!(Pkce::new().expect("pkce").verifier, p.verifier);
    }

    #[test]
    fn only_a_code_is_sent() {
        assert_eq!(check_code("  AbC123\n").ok().as_deref(), Some("AbC123"));
        for bad in ["", "\n", "a b", "code;rm -rf", &"x".repeat(600)] {
            assert!(check_code(bad).is_err(), "{bad}");
        }
    }
}
