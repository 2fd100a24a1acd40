//! Each (user, model) pair's rules, derived on the pair's first request and reused by the
//! next: deriving them (overrides matched, up to nine keys written) cost ~1.6k instructions
//! and a handful of allocations a request (callgrind), where a lookup costs two hashes.
//!
//! The cache lives in the plugin, so a reloaded configuration starts with an empty one.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use gateway_plugin_api::RequestCtx;

use super::checks::{limited_user, rules, Rules};
use crate::config::LimitsConfig;

/// Pairs kept at most (a pair with five rules takes under 1 KB: 16 MB at most). A full
/// cache is emptied and refills with the pairs still active: a client that cycles through
/// users (or, without authentication, addresses) costs itself the derivation again, never
/// the process memory.
const MAX_PAIRS: usize = 16_384;

/// Hashed with foldhash: randomly seeded like std's SipHash (names are client-chosen) and
/// several times cheaper on short keys.
type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Pairs {
    /// model → limited user → rules. Models are the configured ones (the core refuses the
    /// rest before the admit phase), so the outer map stays small.
    by_model: Map<Map<Arc<Rules>>>,
    len: usize,
}

#[derive(Default)]
pub struct RuleCache {
    pairs: RwLock<Pairs>,
}

impl RuleCache {
    /// The rules of this request's (user, model) pair: the cached ones when they were
    /// derived for the principal's current username and groups, otherwise fresh ones (then
    /// cached).
    pub fn rules_for(&self, cfg: &LimitsConfig, ctx: &RequestCtx, model: &str) -> Arc<Rules> {
        let user = limited_user(ctx);
        let principal = ctx.principal.as_deref();
        let username = principal.map(|p| p.username.as_str());
        let groups = principal.map(|p| p.groups.as_slice()).unwrap_or_default();
        // The map only ever holds whole entries, so one a panicking thread left is sound.
        let cached = {
            let pairs = self.pairs.read().unwrap_or_else(|e| e.into_inner());
            pairs
                .by_model
                .get(model)
                .and_then(|users| users.get(&*user))
                .filter(|rules| rules.derived_for(username, groups))
                .cloned()
        };
        if let Some(rules) = cached {
            return rules;
        }
        let fresh = Arc::new(rules(cfg, &user, username, groups, model));
        let mut pairs = self.pairs.write().unwrap_or_else(|e| e.into_inner());
        if pairs.len >= MAX_PAIRS {
            *pairs = Pairs::default();
        }
        let users = pairs.by_model.entry(model.into()).or_default();
        if users.insert((*user).into(), fresh.clone()).is_none() {
            pairs.len += 1;
        }
        fresh
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pairs.read().map(|p| p.len).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_plugin_api::Principal;

    fn cfg() -> LimitsConfig {
        let table: toml::Table = r#"
            kind = "rate_limits"
            [per_user]
            requests_per_minute = 10
            [[overrides]]
            group = "vip"
            [overrides.per_user]
            requests_per_minute = 1000
        "#
        .parse()
        .expect("toml");
        LimitsConfig::parse(&table, "plugins[0]").expect("config")
    }

    fn ctx(id: &str, groups: &[&str]) -> RequestCtx {
        let mut ctx = RequestCtx::new("r".into(), None);
        ctx.principal = Some(Arc::new(Principal {
            id: id.into(),
            username: format!("{id}@example.org"),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Principal::default()
        }));
        ctx
    }

    fn limit(rules: &Rules) -> u64 {
        rules.list[0].limit
    }

    #[test]
    fn a_pair_is_derived_once_and_shared() {
        let (cache, cfg) = (RuleCache::default(), cfg());
        let first = cache.rules_for(&cfg, &ctx("ada", &[]), "m");
        let second = cache.rules_for(&cfg, &ctx("ada", &[]), "m");
        assert!(Arc::ptr_eq(&first, &second));
        let other_model = cache.rules_for(&cfg, &ctx("ada", &[]), "n");
        assert!(!Arc::ptr_eq(&first, &other_model));
        assert_ne!(
            first.list[0].key,
            cache.rules_for(&cfg, &ctx("bob", &[]), "m").list[0].key
        );
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_change_of_groups_derives_the_rules_again() {
        let (cache, cfg) = (RuleCache::default(), cfg());
        assert_eq!(limit(&cache.rules_for(&cfg, &ctx("ada", &[]), "m")), 10);
        assert_eq!(
            limit(&cache.rules_for(&cfg, &ctx("ada", &["vip"]), "m")),
            1000
        );
        assert_eq!(limit(&cache.rules_for(&cfg, &ctx("ada", &[]), "m")), 10);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_full_cache_starts_over_instead_of_growing() {
        let (cache, cfg) = (RuleCache::default(), cfg());
        for n in 0..MAX_PAIRS + 10 {
            cache.rules_for(&cfg, &ctx(&format!("user-{n}"), &[]), "m");
        }
        assert_eq!(cache.len(), 10);
    }
}
