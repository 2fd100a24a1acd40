//! The `[batch]` section: where batch state lives, the limits a batch is held to, and the
//! filesystem roots path-based batches may read and write.

use std::path::PathBuf;
use std::time::Duration;

use super::file::BatchSection;
use super::model::{duration_or, err};
use super::units::parse_size;
use super::ConfigError;

/// The placeholder a root may contain: the principal's username before `@`.
pub const USER_PLACEHOLDER: &str = "{user}";

/// A PostgreSQL job store shared by replicas.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedStore {
    /// `postgres://user@host:port/db`, without a password.
    pub url: String,
    /// From `store_password_file` or `store_password_env`, read when the config is loaded.
    pub password: Option<String>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(f, "SharedStore({})", self.url)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// Uploaded and result files (`files/`) live here, and, without `store`, the SQLite job
    /// store (`batches.sqlite3`). Replicas sharing `store` must share this directory too.
    pub state_dir: PathBuf,
    /// `None`: SQLite in `state_dir` (one gateway). `Some`: PostgreSQL, shared by replicas.
    pub store: Option<SharedStore>,
    /// How long a replica's claim on a line holds without being renewed: how soon another
    /// replica takes over the lines of one that died.
    pub lease: Duration,
    /// Most lines in one input file (OpenAI: 50,000).
    pub max_lines: u64,
    /// Largest input file or upload (OpenAI: 200 MB).
    pub max_file_size: u64,
    /// How long uploaded files are kept (OpenAI: 30 days).
    pub file_expiry: Duration,
    /// Batches one user may have validating, in progress, finalizing or cancelling at once.
    pub max_active_per_user: u64,
    /// Attempts per line for transient failures (connect, 5xx, 429, timeout).
    pub max_attempts: u32,
    /// First wait before a retry; doubles per attempt, at most a minute.
    pub retry_backoff: Duration,
    /// The longest one line may take, from connect to the last byte of its answer.
    pub line_timeout: Duration,
    /// Largest answer a line may get; larger ones are that line's error.
    pub max_response_size: u64,
    /// Roots (absolute, may contain `{user}`) path-based input files must resolve inside.
    /// Empty: path-based batches are refused.
    pub allowed_input_roots: Vec<String>,
    pub allowed_output_roots: Vec<String>,
    /// Where results go when a path-based batch names no `output_folder_path`.
    pub default_output_folder: Option<String>,
    /// The input file must belong to the local account named like the user.
    pub require_owner: bool,
    /// Permissions of result files written for path-based batches.
    pub result_file_mode: u32,
}

pub fn batch_config(
    section: &BatchSection,
    env: super::model::EnvLookup<'_>,
) -> Result<BatchConfig, ConfigError> {
    let at = |key: &str| format!("batch.{key}");
    let state_dir = PathBuf::from(
        section
            .state_dir
            .as_deref()
            .unwrap_or("/var/lib/inference-gateway"),
    );
    if !state_dir.is_absolute() {
        return Err(err(
            at("state_dir"),
            format!("`{}` must be an absolute path", state_dir.display()),
        ));
    }
    let max_lines = section.max_lines.unwrap_or(50_000);
    if !(1..=10_000_000).contains(&max_lines) {
        return Err(err(
            at("max_lines"),
            format!("`{max_lines}` must be from 1 to 10000000"),
        ));
    }
    let max_file_size = size_or(&section.max_file_size, &at("max_file_size"), 200_000_000)?;
    let max_response_size = size_or(
        &section.max_response_size,
        &at("max_response_size"),
        64 << 20,
    )?;
    let max_active_per_user = section.max_active_per_user.unwrap_or(2);
    if !(1..=10_000).contains(&max_active_per_user) {
        return Err(err(
            at("max_active_per_user"),
            format!("`{max_active_per_user}` must be from 1 to 10000"),
        ));
    }
    let max_attempts = section.max_attempts.unwrap_or(5);
    if !(1..=100).contains(&max_attempts) {
        return Err(err(
            at("max_attempts"),
            format!("`{max_attempts}` must be from 1 to 100"),
        ));
    }
    let retry_backoff = duration_or(
        &section.retry_backoff,
        &at("retry_backoff"),
        Duration::from_secs(1),
    )?;
    if retry_backoff > Duration::from_secs(60) {
        return Err(err(
            at("retry_backoff"),
            format!("`{retry_backoff:?}` is over the one-minute ceiling of a retry wait"),
        ));
    }
    let line_timeout = duration_or(
        &section.line_timeout,
        &at("line_timeout"),
        Duration::from_secs(600),
    )?;
    if line_timeout < Duration::from_millis(100) {
        return Err(err(
            at("line_timeout"),
            format!("`{line_timeout:?}` is under 100ms"),
        ));
    }
    let result_file_mode = match section.result_file_mode.as_deref() {
        None => 0o640,
        Some(text) => u32::from_str_radix(text, 8)
            .ok()
            .filter(|m| *m <= 0o777 && m & 0o600 == 0o600)
            .ok_or_else(|| {
                err(
                    at("result_file_mode"),
                    format!("`{text}` is not an octal mode like \"0640\" that lets the owner read and write"),
                )
            })?,
    };
    let lease = duration_or(&section.lease, &at("lease"), Duration::from_secs(30))?;
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&lease) {
        return Err(err(
            at("lease"),
            format!("`{lease:?}` must be from 1s to 10m"),
        ));
    }
    Ok(BatchConfig {
        store: shared_store(section, env)?,
        lease,
        state_dir,
        max_lines,
        max_file_size,
        file_expiry: duration_or(
            &section.file_expiry,
            &at("file_expiry"),
            Duration::from_secs(30 * 24 * 3600),
        )?,
        max_active_per_user,
        max_attempts,
        retry_backoff,
        line_timeout,
        max_response_size,
        allowed_input_roots: roots(&section.allowed_input_roots, &at("allowed_input_roots"))?,
        allowed_output_roots: roots(&section.allowed_output_roots, &at("allowed_output_roots"))?,
        default_output_folder: match &section.default_output_folder {
            None => None,
            Some(folder) => {
                check_root(folder, &at("default_output_folder"))?;
                Some(folder.clone())
            }
        },
        require_owner: section.require_owner.unwrap_or(false),
        result_file_mode,
    })
}

/// `store`: a PostgreSQL URL with no password in it; the password from a file or the
/// environment, never inline.
fn shared_store(
    section: &BatchSection,
    env: super::model::EnvLookup<'_>,
) -> Result<Option<SharedStore>, ConfigError> {
    let Some(url) = &section.store else {
        if section.store_password_file.is_some() || section.store_password_env.is_some() {
            return Err(err(
                "batch.store",
                "missing: store_password_file / store_password_env are for a PostgreSQL `store`",
            ));
        }
        return Ok(None);
    };
    let shown: String = url.chars().take(200).collect();
    let parsed = url::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "postgres" | "postgresql") && u.host_str().is_some());
    let Some(parsed) = parsed else {
        return Err(err(
            "batch.store",
            format!("`{shown}` is not a URL like \"postgres://user@host:5432/database\""),
        ));
    };
    if parsed.password().is_some() {
        return Err(err(
            "batch.store",
            "has a password in it; put it in a file (store_password_file) or an environment variable (store_password_env)",
        ));
    }
    let password = match (&section.store_password_file, &section.store_password_env) {
        (Some(_), Some(_)) => {
            return Err(err(
                "batch.store_password_env",
                "set store_password_file or store_password_env, not both",
            ))
        }
        (Some(file), None) => Some(
            std::fs::read_to_string(file)
                .map(|p| p.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| {
                    err(
                        "batch.store_password_file",
                        format!("cannot read `{file}`: {e}"),
                    )
                })?,
        ),
        (None, Some(var)) => Some(env(var).filter(|p| !p.is_empty()).ok_or_else(|| {
            err(
                "batch.store_password_env",
                format!("environment variable `{var}` is not set or is empty"),
            )
        })?),
        (None, None) => None,
    };
    Ok(Some(SharedStore {
        url: url.clone(),
        password,
    }))
}

fn size_or(value: &Option<String>, path: &str, default: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => match parse_size(text) {
            Ok(0) => Err(err(path, format!("`{text}` must be more than 0"))),
            Ok(n) => Ok(n),
            Err(m) => Err(err(path, m)),
        },
    }
}

fn roots(values: &[String], path: &str) -> Result<Vec<String>, ConfigError> {
    for (i, root) in values.iter().enumerate() {
        check_root(root, &format!("{path}[{i}]"))?;
    }
    Ok(values.to_vec())
}

/// A root is absolute, has no `.`/`..` component, and uses `{user}` only as a whole
/// component (so one user's name can never reach into another's tree).
fn check_root(root: &str, path: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| err(path, format!("`{root}` {why}"));
    if !root.starts_with('/') {
        return Err(bad("must be an absolute path"));
    }
    for part in root.split('/').skip(1) {
        if part == "." || part == ".." {
            return Err(bad("must not contain `.` or `..`"));
        }
        if part.contains(USER_PLACEHOLDER) && part != USER_PLACEHOLDER {
            return Err(bad("may use {user} only as a whole path component"));
        }
        if part.contains(['{', '}']) && part != USER_PLACEHOLDER {
            return Err(bad("has a placeholder other than {user}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BatchConfig, ConfigError> {
        let section: BatchSection = toml::from_str(text).expect("toml");
        batch_config(&section, &|name| {
            (name == "PGPASS").then(|| "secret".to_string())
        })
    }

    #[test]
    fn a_shared_store_takes_its_password_from_outside_the_file() {
        let c = parse("store = \"postgres://gw@db:5432/batches\"\nstore_password_env = \"PGPASS\"")
            .expect("valid");
        let store = c.store.expect("store");
        assert_eq!(store.password.as_deref(), Some("secret"));
        assert!(!format!("{store:?}").contains("secret"));
        for (text, key) in [
            ("store = \"postgres://gw:pw@db/b\"", "batch.store"),
            ("store = \"mysql://db/b\"", "batch.store"),
            (
                "store = \"postgres://db/b\"\nstore_password_env = \"NOPE\"",
                "batch.store_password_env",
            ),
            ("store_password_env = \"PGPASS\"", "batch.store"),
            (
                "store = \"postgres://db/b\"\nstore_password_file = \"/nonexistent\"",
                "batch.store_password_file",
            ),
            ("lease = \"0s\"", "batch.lease"),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.starts_with(key), "{text}: {e}");
        }
    }

    #[test]
    fn defaults_are_openai_limits() {
        let c = parse("").expect("defaults");
        assert_eq!(c.max_lines, 50_000);
        assert_eq!(c.max_file_size, 200_000_000);
        assert_eq!(c.max_active_per_user, 2);
        assert!(c.allowed_input_roots.is_empty());
        assert_eq!(c.result_file_mode, 0o640);
    }

    #[test]
    fn errors_name_the_key_and_value() {
        for (text, key, value) in [
            ("state_dir = \"rel\"", "batch.state_dir", "rel"),
            ("max_lines = 0", "batch.max_lines", "0"),
            (
                "allowed_input_roots = [\"/a/../b\"]",
                "batch.allowed_input_roots[0]",
                "/a/../b",
            ),
            (
                "allowed_output_roots = [\"/x/u{user}\"]",
                "batch.allowed_output_roots[0]",
                "/x/u{user}",
            ),
            (
                "allowed_input_roots = [\"/x/{home}\"]",
                "batch.allowed_input_roots[0]",
                "/x/{home}",
            ),
            (
                "result_file_mode = \"0044\"",
                "batch.result_file_mode",
                "0044",
            ),
            ("max_file_size = \"lots\"", "batch.max_file_size", "lots"),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.starts_with(key), "{e}");
            assert!(e.contains(value), "{e}");
        }
    }
}
