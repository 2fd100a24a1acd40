//! The registry of built-in plugin kinds, and building the chain from `[[plugins]]`.

use std::sync::Arc;

use gateway_plugin_api::{Plugin, PluginFactory};

use crate::config::{ConfigError, PluginConfig};

fn factories() -> Vec<Box<dyn PluginFactory>> {
    vec![Box::new(plugin_access_log::AccessLogFactory)]
}

/// Builds the chain in configuration order; an unknown kind names the known ones.
pub fn build_chain(configs: &[PluginConfig]) -> Result<Vec<Arc<dyn Plugin>>, ConfigError> {
    let factories = factories();
    configs
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
                .build(&c.table, &c.path)
                .map_err(|message| ConfigError::Plugin { message })
        })
        .collect()
}
