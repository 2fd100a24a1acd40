//! The checks one request is held to, and the keys their state lives under.
//!
//! Keys: `{prefix}:<what>:<scope>:<subject>`, e.g. `{igw}:rpm:u:<user id>`. The `{prefix}` hash tag puts every key of a
//! request in one Redis Cluster slot; in the user × model key the user is length-prefixed,
//! so no user or model name (both may hold `:` or `|`) can make two pairs share a key.

use std::borrow::Cow;
use std::sync::Arc;

use gateway_plugin_api::RequestCtx;

use crate::config::{LimitsConfig, ScopeLimits};
use crate::store::{Check, Key, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    UserModel,
    Model,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::UserModel => "user_model",
            Scope::Model => "model",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Requests,
    Tokens,
    Concurrent,
}

impl What {
    pub fn label(self) -> &'static str {
        match self {
            What::Requests => "requests",
            What::Tokens => "tokens",
            What::Concurrent => "concurrent",
        }
    }

    fn key_part(self) -> &'static str {
        match self {
            What::Requests => ":rpm",
            What::Tokens => ":tpm",
            What::Concurrent => ":conc",
        }
    }
}

/// One limit a (user, model) pair is held to, as the configuration sets it: a request adds
/// its cost. Kept with what it is about (for the 429 message and the metrics).
pub struct Rule {
    pub key: Key,
    pub kind: Kind,
    pub limit: u64,
    pub scope: Scope,
    pub what: What,
}

/// The rules of one (user, model) pair, with the username and groups they were derived
/// from: a principal's id stays while those may change, and then the rules do too.
pub struct Rules {
    pub list: Vec<Rule>,
    username: Option<Box<str>>,
    groups: Box<[String]>,
}

impl Rules {
    /// Whether these rules were derived for this username and these groups.
    pub fn derived_for(&self, username: Option<&str>, groups: &[String]) -> bool {
        self.username.as_deref() == username && *self.groups == *groups
    }
}

/// The checks of one request: its pair's rules, each with this request's cost.
pub struct Plan {
    pub rules: Arc<Rules>,
    pub checks: Vec<Check>,
    /// Tokens reserved up front (before each budget's own cap).
    pub reserved: u64,
}

impl Plan {
    pub fn new(rules: Arc<Rules>, ctx: &RequestCtx, default_max_tokens: u64) -> Plan {
        let reserved = reservation(ctx, default_max_tokens);
        let checks = rules
            .list
            .iter()
            .map(|rule| {
                let cost = match rule.what {
                    What::Tokens => reserved,
                    What::Requests | What::Concurrent => 1,
                };
                Check {
                    key: rule.key.clone(),
                    kind: rule.kind,
                    limit: rule.limit,
                    cost: cost.min(rule.limit),
                }
            })
            .collect();
        Plan {
            rules,
            checks,
            reserved,
        }
    }
}

/// Tokens a request may use at most: the prompt estimate (4 body bytes a token) plus
/// `max_tokens` (or the configured default) for each of its `n` choices. Saturating: the
/// core bounds `max_tokens` and `n`, and this never wraps even if it did not.
pub fn reservation(ctx: &RequestCtx, default_max_tokens: u64) -> u64 {
    let completion = ctx
        .max_tokens
        .unwrap_or(default_max_tokens)
        .saturating_mul(u64::from(ctx.choices.max(1)));
    (ctx.body_bytes / 4).saturating_add(completion)
}

/// Whom a request's limits count against: the principal's id, else its username, else the
/// client's address.
pub fn limited_user(ctx: &RequestCtx) -> Cow<'_, str> {
    match &ctx.principal {
        Some(p) if !p.id.is_empty() => Cow::Borrowed(&p.id),
        Some(p) => Cow::Borrowed(&p.username),
        None => ctx.client_addr.map_or(Cow::Borrowed("anonymous"), |a| {
            Cow::Owned(a.ip().to_string())
        }),
    }
}

/// The username a 429 message names.
pub fn shown_user(ctx: &RequestCtx) -> Cow<'_, str> {
    match &ctx.principal {
        Some(p) => Cow::Borrowed(&p.username),
        None => limited_user(ctx),
    }
}

/// A rule's key, `{tag}<what><subject...>`, in one allocation (`format!` cost ~1k
/// instructions a key).
fn key(tag: &str, what: What, subject: &[&str]) -> Key {
    let len = tag.len() + what.key_part().len() + subject.iter().map(|p| p.len()).sum::<usize>();
    let mut key = String::with_capacity(len);
    key.push_str(tag);
    key.push_str(what.key_part());
    for part in subject {
        key.push_str(part);
    }
    key.into()
}

/// The rules the configuration sets for `user` (the limited user, see [`limited_user`]) on
/// `model`, given the principal's username and groups (overrides match on those).
pub fn rules(
    cfg: &LimitsConfig,
    user: &str,
    username: Option<&str>,
    groups: &[String],
    model: &str,
) -> Rules {
    let limits = cfg.effective(model, username, groups);
    let tag = cfg.key_tag.as_str();
    let mut list = Vec::new();
    let mut add = |scope: Scope, subject: &[&str], l: &ScopeLimits| {
        let mut push = |what: What, limit: Option<u64>, kind: Kind| {
            if let Some(limit) = limit {
                list.push(Rule {
                    key: key(tag, what, subject),
                    kind,
                    limit,
                    scope,
                    what,
                });
            }
        };
        push(What::Requests, l.requests_per_minute, Kind::Rate);
        push(What::Tokens, l.tokens_per_minute, Kind::Rate);
        push(What::Concurrent, l.max_concurrent, Kind::Concurrency);
    };
    if limits.user != ScopeLimits::default() {
        add(Scope::User, &[":u:", user], &limits.user);
    }
    if limits.user_model != ScopeLimits::default() {
        let mut digits = itoa::Buffer::new();
        let user_len = digits.format(user.len());
        let subject = [":um:", user_len, ":", user, ":", model];
        add(Scope::UserModel, &subject, &limits.user_model);
    }
    if limits.model != ScopeLimits::default() {
        add(Scope::Model, &[":m:", model], &limits.model);
    }
    Rules {
        list,
        username: username.map(Box::from),
        groups: groups.into(),
    }
}

/// The 429 message's description of a limit.
pub fn describe(scope: Scope, what: What, user: &str, model: &str, limit: u64) -> String {
    let what = match what {
        What::Requests => format!("{limit} requests per minute"),
        What::Tokens => format!("{limit} tokens per minute"),
        What::Concurrent => format!("{limit} concurrent requests"),
    };
    match scope {
        Scope::User => format!("{what} for user `{user}`"),
        Scope::UserModel => format!("{what} for user `{user}` on model `{model}`"),
        Scope::Model => format!("{what} for model `{model}` (all users)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_plugin_api::Principal;

    fn cfg() -> LimitsConfig {
        let table: toml::Table = "kind = \"rate_limits\"\n[per_user_model]\nrequests_per_minute = 5\n[per_user]\nmax_concurrent = 2\n[per_model]\ntokens_per_minute = 100\n"
            .parse()
            .expect("toml");
        LimitsConfig::parse(&table, "plugins[0]").expect("config")
    }

    fn ctx(user: &str) -> RequestCtx {
        let mut ctx = RequestCtx::new("r".into(), None);
        ctx.principal = Some(std::sync::Arc::new(Principal {
            id: user.into(),
            username: user.into(),
            ..Principal::default()
        }));
        ctx
    }

    fn plan(cfg: &LimitsConfig, ctx: &RequestCtx, model: &str) -> Plan {
        let principal = ctx.principal.as_ref().expect("principal");
        let user = limited_user(ctx);
        let rules = rules(
            cfg,
            &user,
            Some(&principal.username),
            &principal.groups,
            model,
        );
        Plan::new(Arc::new(rules), ctx, cfg.default_max_tokens)
    }

    fn user_model_key(user: &str, model: &str) -> Key {
        let plan = plan(&cfg(), &ctx(user), model);
        plan.rules
            .list
            .iter()
            .find(|rule| rule.scope == Scope::UserModel)
            .map(|rule| rule.key.clone())
            .expect("user x model key")
    }

    #[test]
    fn separators_in_names_cannot_make_two_pairs_share_a_key() {
        assert_ne!(user_model_key("a|b", "c"), user_model_key("a", "b|c"));
        assert_ne!(user_model_key("a:1:b", "c"), user_model_key("a", "1:b:c"));
        assert_ne!(user_model_key("a:", "b"), user_model_key("a", ":b"));
    }

    #[test]
    fn keys_are_written_as_the_module_documents() {
        let keys: Vec<String> = plan(&cfg(), &ctx("ada"), "m")
            .checks
            .into_iter()
            .map(|c| c.key.to_string())
            .collect();
        assert_eq!(
            keys,
            ["{igw}:conc:u:ada", "{igw}:rpm:um:3:ada:m", "{igw}:tpm:m:m"]
        );
    }

    #[test]
    fn every_key_of_a_request_shares_one_hash_tag() {
        let plan = plan(&cfg(), &ctx("ada"), "m");
        assert_eq!(plan.checks.len(), 3);
        for check in &plan.checks {
            assert!(check.key.starts_with("{igw}:"), "{}", check.key);
        }
    }

    #[test]
    fn reservations_saturate_and_costs_stay_within_the_limit() {
        let mut c = ctx("ada");
        c.max_tokens = Some(u64::MAX);
        c.choices = u32::MAX;
        c.body_bytes = u64::MAX;
        assert_eq!(reservation(&c, 10), u64::MAX);
        let plan = plan(&cfg(), &c, "m");
        assert!(plan.checks.iter().all(|check| check.cost <= check.limit));
        let tokens = plan.checks.iter().find(|check| check.limit == 100);
        assert_eq!(tokens.map(|check| check.cost), Some(100));
    }

    #[test]
    fn rules_know_what_they_were_derived_for() {
        let groups = ["g1".to_string()];
        let rules = rules(&cfg(), "id-1", Some("ada"), &groups, "m");
        assert!(rules.derived_for(Some("ada"), &groups));
        assert!(!rules.derived_for(Some("bob"), &groups));
        assert!(!rules.derived_for(Some("ada"), &[]));
        assert!(!rules.derived_for(None, &groups));
    }
}
