//! The model table: which pools serve which model, and the choice among them.

use std::collections::HashMap;
use std::sync::Arc;

use std::net::SocketAddr;

use crate::config::PoolConfig;
use gateway_plugin_api::Principal;
use pingora_core::upstreams::peer::HttpPeer;

use super::pool::Pool;
use super::route::Target;

/// Why no pool was chosen for a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// No pool serves the model.
    UnknownModel,
    /// Pools serve it, but none on the requested cluster and framework.
    NotOnTarget,
    /// Only pools the principal may not use serve it.
    Forbidden,
}

/// The model table in force now (a reload replaces it): what background work reads each
/// time, instead of holding the table it started with.
pub type CurrentTable = Arc<dyn Fn() -> Arc<ModelTable> + Send + Sync>;

/// Model names hashed with foldhash, seeded per process like std's SipHash, at a fraction of
/// its cost: every request looks its model up here twice (routing, then its metrics label).
type ByModel = HashMap<String, Vec<Arc<Pool>>, foldhash::fast::RandomState>;

pub struct ModelTable {
    pub pools: Vec<Arc<Pool>>,
    by_model: ByModel,
}

impl ModelTable {
    /// `peer` builds the connection target of a backend (the proxy layer's settings).
    pub fn new(pools: &[PoolConfig], peer: &dyn Fn(SocketAddr) -> HttpPeer) -> ModelTable {
        ModelTable::reusing(pools, peer, None)
    }

    /// As [`ModelTable::new`], keeping the backends of `previous`'s pools of the same name that
    /// are configured alike (a reload: health state and counters carry over).
    pub fn reusing(
        pools: &[PoolConfig],
        peer: &dyn Fn(SocketAddr) -> HttpPeer,
        previous: Option<&ModelTable>,
    ) -> ModelTable {
        let before = |name: &str| previous?.pools.iter().find(|p| p.name == name).cloned();
        let pools: Vec<Arc<Pool>> = pools
            .iter()
            .map(|p| Arc::new(Pool::reusing(p, peer, before(&p.name).as_deref())))
            .collect();
        let mut by_model = ByModel::default();
        for pool in &pools {
            for model in &pool.models {
                by_model
                    .entry(model.clone())
                    .or_default()
                    .push(pool.clone());
            }
        }
        ModelTable { pools, by_model }
    }

    /// Chooses the pool for `model`: among those that serve it, match `target` and admit
    /// `principal`, pools with a healthy backend first (then pools in panic routing), then
    /// lower `priority`, then fewer requests in flight.
    pub fn resolve(
        &self,
        model: &str,
        target: Option<Target<'_>>,
        principal: Option<&Principal>,
    ) -> Result<Arc<Pool>, Unresolved> {
        let serving = self.by_model.get(model).ok_or(Unresolved::UnknownModel)?;
        let mut matching = serving
            .iter()
            .filter(|p| Target::admits(target, &p.cluster, &p.framework))
            .peekable();
        if matching.peek().is_none() {
            return Err(Unresolved::NotOnTarget);
        }
        matching
            .filter(|p| p.permits(principal))
            .min_by_key(|p| (p.preference(), p.priority, p.inflight()))
            .cloned()
            .ok_or(Unresolved::Forbidden)
    }

    /// Whether some pool serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.by_model.contains_key(model)
    }

    /// Pools matching `target` (all pools when `None`), in configuration order.
    pub fn pools_for<'a>(
        &'a self,
        target: Option<Target<'a>>,
    ) -> impl Iterator<Item = &'a Arc<Pool>> + 'a {
        self.pools
            .iter()
            .filter(move |p| Target::admits(target, &p.cluster, &p.framework))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::pool_toml;

    fn table() -> ModelTable {
        crate::test_support::table(&format!(
            "{}{}",
            pool_toml(
                "a",
                ("polaris", "vllm"),
                &["m1", "shared"],
                1,
                "priority = 1"
            ),
            pool_toml("b", ("sophia", "vllm"), &["shared"], 2, "priority = 0")
        ))
    }

    #[test]
    fn federated_prefers_healthy_then_priority() {
        let t = table();
        assert_eq!(t.resolve("shared", None, None).expect("pool").name, "b");
        t.pools[1].backends[0].eject();
        assert_eq!(t.resolve("shared", None, None).expect("pool").name, "a");
    }

    #[test]
    fn targeted_route_only_uses_its_cluster() {
        let t = table();
        let target = Target {
            cluster: "polaris",
            framework: "vllm",
        };
        assert_eq!(
            t.resolve("shared", Some(target), None).expect("pool").name,
            "a"
        );
        let err = t.resolve(
            "m1",
            Some(Target {
                cluster: "sophia",
                framework: "vllm",
            }),
            None,
        );
        assert_eq!(err.err(), Some(Unresolved::NotOnTarget));
    }

    #[test]
    fn unknown_model_is_unresolved() {
        let err = table().resolve("gpt-17", None, None).err();
        assert_eq!(err, Some(Unresolved::UnknownModel));
    }

    #[test]
    fn restricted_pools_admit_only_their_groups_and_domains() {
        let t = crate::test_support::table(&format!(
            "{}{}",
            pool_toml("open", ("c", "vllm"), &["public"], 1, ""),
            pool_toml(
                "closed",
                ("c", "vllm"),
                &["secret"],
                2,
                "allowed_groups = [\"g-secret\"]\nallowed_domains = [\"anl.gov\"]"
            )
        ));
        let member = Principal {
            username: "ada@anl.gov".into(),
            groups: vec!["g-secret".into()],
            ..Principal::default()
        };
        let outsider = Principal {
            username: "bob@example.org".into(),
            groups: vec!["g-secret".into()],
            ..Principal::default()
        };
        assert_eq!(
            t.resolve("secret", None, Some(&member)).expect("pool").name,
            "closed"
        );
        let err = t.resolve("secret", None, Some(&outsider)).err();
        assert_eq!(err, Some(Unresolved::Forbidden));
        assert_eq!(
            t.resolve("secret", None, None).err(),
            Some(Unresolved::Forbidden)
        );
        assert_eq!(
            t.resolve("public", None, Some(&outsider))
                .expect("pool")
                .name,
            "open"
        );
    }
}
