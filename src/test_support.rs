//! Helpers the unit tests share.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Config;
use crate::routing::{bare_peer, ModelTable};

/// A header map from static name/value pairs.
pub fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

/// The model table of a configuration text (its `[[pools]]`).
pub fn table(text: &str) -> ModelTable {
    ModelTable::new(&Config::parse(text).expect("config").pools, &bare_peer)
}

/// One `[[pools]]` entry with a single backend on 127.0.0.1:`port`; `extra` lines follow.
pub fn pool_toml(
    name: &str,
    (cluster, framework): (&str, &str),
    models: &[&str],
    port: u16,
    extra: &str,
) -> String {
    let models: Vec<String> = models.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "[[pools]]\nname = {name:?}\ncluster = {cluster:?}\nframework = {framework:?}\nmodels = [{}]\nbackends = [\"127.0.0.1:{port}\"]\n{extra}\n",
        models.join(", ")
    )
}
