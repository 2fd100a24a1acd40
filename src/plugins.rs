//! The registry of built-in plugin kinds, and building the chain from `[[plugins]]`.

use std::sync::Arc;

use gateway_plugin_api::{BuildContext, Plugin, PluginFactory};

use crate::config::{Config, ConfigError};

fn factories() -> Vec<Box<dyn PluginFactory>> {
    vec![
        Box::new(plugin_access_log::AccessLogFactory),
        Box::new(plugin_api_keys::ApiKeysFactory),
        Box::new(plugin_globus_auth::GlobusAuthFactory),
        Box::new(plugin_jwt_auth::JwtAuthFactory),
        Box::new(plugin_rate_limits::RateLimitsFactory),
    ]
}

/// Builds the chain in configuration order; an unknown kind names the known ones.
pub fn build_chain(
    config: &Config,
    registry: &prometheus::Registry,
) -> Result<Vec<Arc<dyn Plugin>>, ConfigError> {
    let factories = factories();
    let cx = BuildContext {
        groups_needed: config.pools.iter().any(|p| !p.allowed_groups.is_empty()),
        registry: registry.clone(),
    };
    let chain = config
        .plugins
        .iter()
        .map(|c| {
            let factory = factories
                .iter()
                .find(|f| f.kind() == c.kind)
                .ok_or_else(|| {
                    let known: Vec<&str> = factories.iter().map(|f| f.kind()).collect();
                    ConfigError::Invalid {
                        path: format!("{}.kind", c.path),
                        message: format!(
                            "`{}` is not a known plugin kind (known: {})",
                            c.kind,
                            known.join(", ")
                        ),
                    }
                })?;
            factory
                .build(&c.table, &c.path, &cx)
                .map_err(|message| ConfigError::Plugin { message })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A restriction nobody can satisfy is a configuration mistake, not a policy.
    if !chain.iter().any(|p| p.authenticates()) {
        if let Some((i, pool)) = config
            .pools
            .iter()
            .enumerate()
            .find(|(_, p)| p.is_restricted())
        {
            let key = if pool.allowed_groups.is_empty() {
                "allowed_domains"
            } else {
                "allowed_groups"
            };
            return Err(ConfigError::Invalid {
                path: format!("pools[{i}].{key}"),
                message: "access rules need an authentication plugin in [[plugins]] (globus_auth, jwt_auth or api_keys)".into(),
            });
        }
    }
    Ok(chain)
}
