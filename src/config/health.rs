//! `[pools.health]`: active checks, what counts as a passing answer, and panic routing.

use std::time::Duration;

use super::file::HealthSection;
use super::model::{duration_or, err};
use super::ConfigError;

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// Statuses that pass a check, as inclusive ranges.
    pub expect_status: Vec<(u16, u16)>,
    /// Route to every backend that accepts connections when too few are healthy.
    pub panic_routing: bool,
    /// Percent of healthy backends below which panic routing starts (0: only when none is).
    pub panic_threshold: u8,
}

impl HealthConfig {
    pub fn passes(&self, status: u16) -> bool {
        self.expect_status
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&status))
    }
}

/// The longest a check may wait: long enough for any server's health route, short enough
/// that a stuck check is noticed.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

pub(super) fn health_config(h: &HealthSection, at: &str) -> Result<HealthConfig, ConfigError> {
    let path = h.path.clone().unwrap_or_else(|| "/health".into());
    if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
        return Err(err(
            format!("{at}.path"),
            format!("`{path}` must be a URL path starting with `/`"),
        ));
    }
    let threshold = |value: Option<u32>, key: &str, default: u32| match value.unwrap_or(default) {
        0 => Err(err(format!("{at}.{key}"), "`0` must be at least 1")),
        n => Ok(n),
    };
    let interval = duration_or(
        &h.interval,
        &format!("{at}.interval"),
        Duration::from_secs(5),
    )?;
    if interval < Duration::from_millis(10) {
        return Err(err(
            format!("{at}.interval"),
            format!("`{interval:?}` is below the 10ms minimum"),
        ));
    }
    let timeout = duration_or(&h.timeout, &format!("{at}.timeout"), Duration::from_secs(1))?;
    if timeout < Duration::from_millis(10) || timeout > MAX_TIMEOUT {
        return Err(err(
            format!("{at}.timeout"),
            format!("`{timeout:?}` must be from 10ms to {MAX_TIMEOUT:?}"),
        ));
    }
    let panic_threshold = match h.panic_threshold.unwrap_or(0) {
        n @ 0..=100 => n as u8,
        n => {
            return Err(err(
                format!("{at}.panic_threshold"),
                format!("`{n}` must be a percentage from 0 to 100"),
            ))
        }
    };
    Ok(HealthConfig {
        path,
        interval,
        timeout,
        unhealthy_threshold: threshold(h.unhealthy_threshold, "unhealthy_threshold", 2)?,
        healthy_threshold: threshold(h.healthy_threshold, "healthy_threshold", 1)?,
        expect_status: expect_status(h.expect_status.as_ref(), &format!("{at}.expect_status"))?,
        panic_routing: h.panic_routing.unwrap_or(true),
        panic_threshold,
    })
}

/// `200`, `"2xx"`, or an array of those (default `"2xx"`).
fn expect_status(value: Option<&toml::Value>, at: &str) -> Result<Vec<(u16, u16)>, ConfigError> {
    let Some(value) = value else {
        return Ok(vec![(200, 299)]);
    };
    let entries: Vec<(String, &toml::Value)> = match value {
        toml::Value::Array(items) if items.is_empty() => {
            return Err(err(at, "an empty list would fail every check"))
        }
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{at}[{i}]"), v))
            .collect(),
        single => vec![(at.to_string(), single)],
    };
    entries
        .into_iter()
        .map(|(path, v)| {
            status_range(v).ok_or_else(|| {
                err(
                    path,
                    format!("`{v}` is neither a status from 100 to 599 nor a class like \"2xx\""),
                )
            })
        })
        .collect()
}

fn status_range(value: &toml::Value) -> Option<(u16, u16)> {
    match value {
        toml::Value::Integer(code) if (100..=599).contains(code) => {
            let code = u16::try_from(*code).ok()?;
            Some((code, code))
        }
        toml::Value::String(class) => {
            let digit = class.strip_suffix("xx").filter(|d| d.len() == 1)?;
            let digit = digit.parse::<u16>().ok()?;
            (1..=5)
                .contains(&digit)
                .then(|| (digit * 100, digit * 100 + 99))
        }
        _ => None,
    }
}
