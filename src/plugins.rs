//! The registry of built-in plugin kinds, and building the chain from `[[plugins]]`.

use std::sync::Arc;

use gateway_plugin_api::{BuildContext, Env, Phase, Plugin, PluginFactory};

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

/// The plugins, grouped by the phase they serve. The phases run in their fixed order
/// whatever the order of `[[plugins]]`, which only orders plugins within a phase.
#[derive(Clone, Default)]
pub struct Chain {
    /// Every plugin, in phase order: the order the response hooks and `on_done` run in.
    pub all: Arc<[Arc<dyn Plugin>]>,
    /// What each plugin was built from, in `[[plugins]]` order: a reload keeps the instance
    /// (its counters, caches, connections) of an entry that did not change.
    pub built: Arc<[Built]>,
    pub authenticate: Arc<[Arc<dyn Plugin>]>,
    pub authorize: Arc<[Arc<dyn Plugin>]>,
    pub admit: Arc<[Arc<dyn Plugin>]>,
}

/// A plugin and the `[[plugins]]` table (and what the pools asked of it) it was built from.
#[derive(Clone)]
pub struct Built {
    pub table: toml::Table,
    pub groups_needed: bool,
    pub plugin: Arc<dyn Plugin>,
}

impl Chain {
    pub fn new(mut plugins: Vec<Arc<dyn Plugin>>) -> Chain {
        // Stable: plugins of one phase keep their configured order.
        plugins.sort_by_key(|p| p.phase());
        let of = |phase: Phase| -> Arc<[Arc<dyn Plugin>]> {
            plugins
                .iter()
                .filter(|p| p.phase() == phase)
                .cloned()
                .collect()
        };
        Chain {
            authenticate: of(Phase::Authenticate),
            authorize: of(Phase::Authorize),
            admit: of(Phase::Admit),
            all: plugins.into(),
            built: Arc::new([]),
        }
    }

    /// Whether some plugin authenticates: then requests none of them recognised get 401.
    pub fn authenticates(&self) -> bool {
        !self.authenticate.is_empty()
    }
}

/// How to get a credential, for the 401 when no authenticator recognised one: the hint of the
/// first of `authenticators` that has one.
pub fn credential_hint(authenticators: &[Arc<dyn Plugin>]) -> Option<&str> {
    authenticators.iter().find_map(|p| p.credential_hint())
}

/// Builds the chain; an unknown kind names the known ones.
pub fn build_chain(config: &Config, registry: &prometheus::Registry) -> Result<Chain, ConfigError> {
    build_chain_reusing(config, registry, &[])
}

/// As [`build_chain`], keeping each plugin of `previous` whose `[[plugins]]` table (and what
/// the pools ask of it) is unchanged: a reload keeps its rate-limit counters and auth cache.
pub fn build_chain_reusing(
    config: &Config,
    registry: &prometheus::Registry,
    previous: &[Built],
) -> Result<Chain, ConfigError> {
    let factories = factories();
    let groups_needed = config.pools.iter().any(|p| !p.allowed_groups.is_empty());
    let cx = BuildContext {
        groups_needed,
        registry: registry.clone(),
        env: Env::default(),
    };
    let built = config
        .plugins
        .iter()
        .map(|c| {
            let same = previous
                .iter()
                .find(|b| b.table == c.table && b.groups_needed == groups_needed);
            if let Some(kept) = same {
                return Ok(kept.clone());
            }
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
            let plugin = factory
                .build(&c.table, &c.path, &cx)
                .map_err(|message| ConfigError::Plugin { message })?;
            Ok(Built {
                table: c.table.clone(),
                groups_needed,
                plugin,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let mut chain = Chain::new(built.iter().map(|b| b.plugin.clone()).collect());
    chain.built = built.into();
    // A restriction nobody can satisfy is a configuration mistake, not a policy.
    if !chain.authenticates() {
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Auth(Option<&'static str>);

    impl Plugin for Auth {
        fn credential_hint(&self) -> Option<&str> {
            self.0
        }

        fn phase(&self) -> Phase {
            Phase::Authenticate
        }

        fn name(&self) -> &str {
            "auth"
        }
    }

    #[test]
    fn the_401_hint_is_the_first_authenticators_that_has_one() {
        let chain = |hints: &[Option<&'static str>]| {
            Chain::new(hints.iter().map(|h| Arc::new(Auth(*h)) as _).collect())
        };
        assert_eq!(credential_hint(&chain(&[]).authenticate), None);
        let chain = chain(&[None, Some("a"), Some("b")]);
        assert_eq!(credential_hint(&chain.authenticate), Some("a"));
        let globus = "get one with `inference-auth-token get_access_token`";
        assert_eq!(
            crate::errors::missing_token(Some(globus)).message,
            "Missing or unrecognised bearer token: send `Authorization: Bearer $MY_TOKEN` with a \
             valid access token (get one with `inference-auth-token get_access_token`)."
        );
        assert!(crate::errors::missing_token(None)
            .message
            .ends_with("with a valid access token."));
    }
}
