//! Configuration: the TOML file format (`file`) turned into a validated model (`model`).

mod batch;
mod file;
mod health;
mod model;
mod server;
mod units;

use std::fmt;
use std::path::Path;

pub use batch::USER_PLACEHOLDER;
pub use model::{
    BackendConfig, BackendTls, Balance, BatchConfig, Config, EnvLookup, HealthConfig, PluginConfig,
    PoolConfig, ServerConfig, MAX_MODEL_NAME,
};

/// Why a configuration was refused. Every variant names the file or the TOML path.
#[derive(Debug)]
pub enum ConfigError {
    Read {
        file: String,
        message: String,
    },
    Syntax {
        path: String,
        message: String,
    },
    Invalid {
        path: String,
        message: String,
    },
    /// A plugin's own validation message, which already starts with its TOML path.
    Plugin {
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, message } => write!(f, "cannot read {file}: {message}"),
            ConfigError::Syntax { path, message } => write!(f, "{path}: {message}"),
            ConfigError::Invalid { path, message } => write!(f, "{path}: {message}"),
            ConfigError::Plugin { message } => f.write_str(message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Read {
            file: file.display().to_string(),
            message: e.to_string(),
        })?;
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, &|name| std::env::var(name).ok())
    }

    /// [`Config::parse`] with the environment variables `env` gives (secrets the file names).
    pub fn parse_with_env(text: &str, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let file: file::FileConfig =
            serde_path_to_error::deserialize(deserializer).map_err(|e| {
                let path = e.path().to_string();
                ConfigError::Syntax {
                    path: if path == "." { "config".into() } else { path },
                    message: e.into_inner().to_string().trim_end().to_string(),
                }
            })?;
        Config::build(file, env)
    }
}

#[cfg(test)]
mod tests;
