//! Where the tool's settings come from, per key, first found wins: a flag, an environment
//! variable, the user's config file, the site's config file, the default the site compiled
//! in (`INFERENCE_AUTH_DEFAULT_*` at build time), the built-in default. Every value is checked
//! here, before it reaches a URL, a file path or a request.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

use crate::Fail;

/// The site-wide config file (a conffile of the package).
pub const SYSTEM_CONFIG: &str = "/etc/inference-auth-token/config.toml";

/// The keys a config file may set, and the flags (with their environment variables): the
/// same names, with underscores in the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Values {
    pub client_id: Option<String>,
    pub gateway_client_id: Option<String>,
    pub scope: Option<String>,
    pub app_name: Option<String>,
    pub auth_url: Option<String>,
    pub gateway_url: Option<String>,
    pub ca_file: Option<String>,
}

impl Values {
    fn get(&self, key: &str) -> Option<&String> {
        match key {
            "client_id" => self.client_id.as_ref(),
            "gateway_client_id" => self.gateway_client_id.as_ref(),
            "scope" => self.scope.as_ref(),
            "app_name" => self.app_name.as_ref(),
            "auth_url" => self.auth_url.as_ref(),
            "gateway_url" => self.gateway_url.as_ref(),
            "ca_file" => self.ca_file.as_ref(),
            _ => None,
        }
    }
}

/// What the command line said: a config file to read instead of the usual ones, and the
/// flags (or their environment variables, through clap).
#[derive(Debug, Default, Clone)]
pub struct Given {
    pub config: Option<PathBuf>,
    pub flags: Values,
}

/// The resolved settings, each with where it came from (`config` prints them).
#[derive(Debug)]
pub struct Settings {
    /// The native app's client id (a public client: no secret).
    pub client_id: String,
    /// The scope requested, and the resource server (the gateway's client id) it belongs to:
    /// the stored token is the one Globus issued for that resource server.
    pub scope: String,
    pub resource_server: String,
    pub app_name: String,
    pub auth_url: Url,
    pub gateway_url: Option<Url>,
    pub ca_file: Option<PathBuf>,
    pub origins: Vec<(&'static str, String, String)>,
}

/// Defaults a site compiles in: `INFERENCE_AUTH_DEFAULT_CLIENT_ID=… cargo build`.
fn compiled_in(key: &str) -> Option<&'static str> {
    let value = match key {
        "client_id" => option_env!("INFERENCE_AUTH_DEFAULT_CLIENT_ID"),
        "gateway_client_id" => option_env!("INFERENCE_AUTH_DEFAULT_GATEWAY_CLIENT_ID"),
        "scope" => option_env!("INFERENCE_AUTH_DEFAULT_SCOPE"),
        "app_name" => option_env!("INFERENCE_AUTH_DEFAULT_APP_NAME"),
        "auth_url" => option_env!("INFERENCE_AUTH_DEFAULT_AUTH_URL"),
        "gateway_url" => option_env!("INFERENCE_AUTH_DEFAULT_GATEWAY_URL"),
        _ => None,
    };
    value.filter(|v| !v.is_empty())
}

/// The environment variable of each flag (clap reads it; the name is shown with the value).
fn env_name(key: &str) -> &'static str {
    match key {
        "client_id" => "INFERENCE_AUTH_CLIENT_ID",
        "gateway_client_id" => "INFERENCE_AUTH_GATEWAY_CLIENT_ID",
        "scope" => "INFERENCE_AUTH_SCOPE",
        "app_name" => "INFERENCE_AUTH_APP_NAME",
        "auth_url" => "INFERENCE_AUTH_GLOBUS_URL",
        "gateway_url" => "INFERENCE_GATEWAY_URL",
        "ca_file" => "INFERENCE_AUTH_CA_FILE",
        _ => "",
    }
}

fn built_in(key: &str) -> Option<&'static str> {
    match key {
        "app_name" => Some("inference_app"),
        "auth_url" => Some("https://auth.globus.org"),
        _ => None,
    }
}

/// The user's config file: `$XDG_CONFIG_HOME/inference-auth-token/config.toml`, else under
/// `~/.config`.
fn user_config() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| crate::store::home().ok().map(|h| h.join(".config")))?;
    Some(base.join("inference-auth-token").join("config.toml"))
}

fn read_file(path: &Path) -> Result<Values, Fail> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail::Usage(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        Fail::Usage(format!(
            "config file {}: {}",
            path.display(),
            e.to_string().trim_end()
        ))
    })
}

/// A Globus client id: a UUID (it also names a directory of the token path).
fn check_uuid(key: &str, value: &str, origin: &str) -> Result<(), Fail> {
    let shape = value.len() == 36
        && value.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if shape {
        Ok(())
    } else {
        Err(Fail::Usage(format!(
            "{key} `{}` (from {origin}) is not a Globus client id (a UUID)",
            value.escape_debug()
        )))
    }
}

/// HTTPS, or plain HTTP to this machine only: tokens never cross a network in the clear.
fn check_url(key: &str, value: &str, origin: &str) -> Result<Url, Fail> {
    let bad = |why: &str| {
        Fail::Usage(format!(
            "{key} `{}` (from {origin}) {why}",
            value.escape_debug()
        ))
    };
    let url = Url::parse(value).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    let local = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match url.scheme() {
        "https" => {}
        "http" if local => {}
        "http" => return Err(bad("must be https (plain http only to localhost)")),
        _ => return Err(bad("must be an https URL")),
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad("must not carry a query, fragment or user name"));
    }
    Ok(url)
}

/// `app_name` names a directory of the token path.
fn check_app_name(value: &str, origin: &str) -> Result<(), Fail> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Fail::Usage(format!(
            "app_name `{}` (from {origin}) must be 1-64 letters, digits, `.`, `_` or `-`",
            value.escape_debug()
        )))
    }
}

/// The resource server of a Globus scope string (`https://auth.globus.org/scopes/<rs>/<name>`).
fn scope_resource_server(scope: &str) -> Option<&str> {
    let rest = scope.strip_prefix("https://auth.globus.org/scopes/")?;
    let (rs, name) = rest.split_once('/')?;
    (!rs.is_empty() && !name.is_empty() && !scope.contains(char::is_whitespace)).then_some(rs)
}

impl Settings {
    pub fn resolve(given: &Given) -> Result<Settings, Fail> {
        let mut files: Vec<(PathBuf, Values)> = Vec::new();
        match &given.config {
            // A config file named explicitly must exist.
            Some(path) => files.push((path.clone(), read_file(path)?)),
            None => {
                for path in user_config()
                    .into_iter()
                    .chain([PathBuf::from(SYSTEM_CONFIG)])
                {
                    if path.exists() {
                        files.push((path.clone(), read_file(&path)?));
                    }
                }
            }
        }
        let mut origins = Vec::new();
        let mut get = |key: &'static str| -> Option<(String, String)> {
            let found = given
                .flags
                .get(key)
                .map(|v| {
                    (
                        v.clone(),
                        format!("--{} / {}", key.replace('_', "-"), env_name(key)),
                    )
                })
                .or_else(|| {
                    files.iter().find_map(|(path, f)| {
                        f.get(key).map(|v| (v.clone(), path.display().to_string()))
                    })
                })
                .or_else(|| compiled_in(key).map(|v| (v.to_string(), "the build".into())))
                .or_else(|| built_in(key).map(|v| (v.to_string(), "built-in default".into())));
            if let Some((v, o)) = &found {
                origins.push((key, v.clone(), o.clone()));
            }
            found
        };
        let (client_id, client_origin) = get("client_id").ok_or_else(|| {
            Fail::Usage(
                "no client id: the site sets it at build or in /etc/inference-auth-token/config.toml; \
                 or pass --client-id, INFERENCE_AUTH_CLIENT_ID or client_id in ~/.config/inference-auth-token/config.toml"
                    .into(),
            )
        })?;
        check_uuid("client_id", &client_id, &client_origin)?;
        let gateway = get("gateway_client_id");
        let scope = match (get("scope"), &gateway) {
            (Some((scope, origin)), _) => {
                if scope_resource_server(&scope).is_none() {
                    return Err(Fail::Usage(format!(
                        "scope `{}` (from {origin}) is not a Globus scope `https://auth.globus.org/scopes/<gateway client id>/<name>`",
                        scope.escape_debug()
                    )));
                }
                scope
            }
            (None, Some((id, origin))) => {
                check_uuid("gateway_client_id", id, origin)?;
                format!("https://auth.globus.org/scopes/{id}/action_all")
            }
            (None, None) => {
                return Err(Fail::Usage(
                    "no gateway scope: set gateway_client_id (or scope) by flag, environment or config file".into(),
                ))
            }
        };
        let resource_server = scope_resource_server(&scope)
            .unwrap_or_default()
            .to_string();
        let (app_name, app_origin) = get("app_name").unwrap_or_default();
        check_app_name(&app_name, &app_origin)?;
        let (auth, auth_origin) = get("auth_url").unwrap_or_default();
        let auth_url = check_url("auth_url", &auth, &auth_origin)?;
        let gateway_url = match get("gateway_url") {
            Some((v, origin)) => Some(check_url("gateway_url", &v, &origin)?),
            None => None,
        };
        let ca_file = get("ca_file").map(|(v, _)| PathBuf::from(v));
        Ok(Settings {
            client_id,
            scope,
            resource_server,
            app_name,
            auth_url,
            gateway_url,
            ca_file,
            origins,
        })
    }

    /// A Globus Auth endpoint under `auth_url` (`/v2/oauth2/token`, ...).
    pub fn auth_endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.auth_url.as_str().trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_or_local() {
        assert!(check_url("auth_url", "https://auth.globus.org", "x").is_ok());
        assert!(check_url("auth_url", "http://127.0.0.1:9000", "x").is_ok());
        assert!(check_url("auth_url", "http://auth.example.org", "x").is_err());
        assert!(check_url("auth_url", "ftp://auth.example.org", "x").is_err());
        assert!(check_url("auth_url", "https://a.org/?x=1", "x").is_err());
    }

    #[test]
    fn client_ids_and_app_names_are_safe_path_parts() {
        assert!(check_uuid("client_id", "58fdd3bc-e1c3-4ce5-80ea-8d6b87cfb944", "x").is_ok());
        assert!(check_uuid("client_id", "../../etc", "x").is_err());
        assert!(check_app_name("inference_app", "x").is_ok());
        for bad in ["", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_app_name(bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_scope_names_its_resource_server() {
        assert_eq!(
            scope_resource_server("https://auth.globus.org/scopes/681c10cc/action_all"),
            Some("681c10cc")
        );
        assert_eq!(scope_resource_server("openid"), None);
        assert_eq!(
            scope_resource_server("https://auth.globus.org/scopes/a/x openid"),
            None
        );
    }
}
