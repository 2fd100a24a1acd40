use gateway_plugin_api::{BuildContext, Env};
use serde_json::json;

use super::*;

const NOW: i64 = 1_800_000_000;
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

/// A build context whose environment holds only `VERDICT_TEST_SECRET`: the process's own
/// is shared with tests running in parallel.
fn cx() -> BuildContext {
    BuildContext {
        env: Env::new(|name| (name == "VERDICT_TEST_SECRET").then(|| "s".to_string())),
        ..BuildContext::default()
    }
}

fn cfg(extra: &str) -> GlobusConfig {
    let text = format!("kind = \"globus_auth\"\nclient_id = \"{CLIENT}\"\nclient_secret_env = \"VERDICT_TEST_SECRET\"\n{extra}");
    GlobusConfig::parse(&text.parse().expect("toml"), "plugins[0]", &cx()).expect("config")
}

/// An active token as Globus describes it, for a user who logged in with two identities.
fn token() -> serde_json::Value {
    json!({
        "active": true, "token_type": "Bearer", "scope": "openid https://auth.globus.org/scopes/x/action_all",
        "client_id": "native-app", "sub": "id-gmail", "username": "ada@gmail.com", "name": "Ada",
        "aud": [CLIENT, "other"], "iss": "https://auth.globus.org", "exp": NOW + 3600, "iat": NOW - 100,
        "identity_set": ["id-gmail", "id-anl"],
        "identity_set_detail": [
            {"sub": "id-gmail", "username": "ada@gmail.com", "name": "Ada", "identity_provider": "idp-google", "identity_provider_display_name": "Google"},
            {"sub": "id-anl", "username": "ada@anl.gov", "name": "Ada L.", "identity_provider": "idp-anl", "identity_provider_display_name": "Argonne National Laboratory"}
        ],
        "session_info": {"session_id": "s1", "authentications": {"id-anl": {"idp": "idp-anl", "auth_time": NOW - 200}}},
        "policy_evaluations": {"pol-1": {"evaluation": true}, "pol-2": {"evaluation": false}}
    })
}

fn judge_json(v: serde_json::Value, c: &GlobusConfig) -> Result<Accepted, Rejection> {
    let r: Introspection = serde_json::from_value(v).expect("introspection");
    judge_at(&r, c, NOW)
}

fn code(result: Result<Accepted, Rejection>) -> &'static str {
    result.err().map(|r| r.code).unwrap_or("accepted")
}

#[test]
fn accepts_an_active_token_for_us_with_the_primary_identity() {
    let a = judge_json(token(), &cfg("")).expect("accepted");
    assert_eq!(a.principal.username, "ada@gmail.com");
    assert_eq!(a.principal.id, "id-gmail");
    assert_eq!(a.principal.identity_provider.as_deref(), Some("Google"));
    assert_eq!(a.ttl, Duration::from_secs(600), "capped by cache_ttl");
}

#[test]
fn cache_ttl_never_outlives_the_token() {
    let mut t = token();
    t["exp"] = json!(NOW + 42);
    assert_eq!(
        judge_json(t, &cfg("")).expect("accepted").ttl,
        Duration::from_secs(42)
    );
}

#[test]
fn refusals_have_their_own_codes() {
    let c = cfg("");
    assert_eq!(
        code(judge_json(json!({"active": false}), &c)),
        "token_inactive"
    );
    let mut t = token();
    t["exp"] = json!(NOW - 3600);
    let r = judge_json(t, &c).expect_err("expired");
    assert_eq!(r.code, "token_expired");
    assert!(
        r.message.contains("expired at 2027-01-15T07:00:00Z"),
        "{}",
        r.message
    );
    let mut t = token();
    t["aud"] = json!(["someone-else"]);
    assert_eq!(code(judge_json(t, &c)), "wrong_audience");
    let scoped = cfg("required_scope = \"https://auth.globus.org/scopes/y/action_all\"");
    assert_eq!(code(judge_json(token(), &scoped)), "missing_scope");
}

#[test]
fn expiry_allows_the_configured_leeway() {
    let mut t = token();
    t["exp"] = json!(NOW - 10);
    assert_eq!(code(judge_json(t, &cfg(""))), "accepted");
}

#[test]
fn audience_check_can_be_turned_off() {
    let mut t = token();
    t["aud"] = json!([]);
    assert_eq!(
        code(judge_json(t, &cfg("check_audience = false"))),
        "accepted"
    );
}

#[test]
fn identity_comes_from_an_authenticated_allowed_domain() {
    let a = judge_json(token(), &cfg("authorized_idp_domains = [\"anl.gov\"]")).expect("accepted");
    assert_eq!(a.principal.username, "ada@anl.gov");
    assert_eq!(a.principal.id, "id-anl");
    // gmail is in the identity set but not in this session's authentications.
    let r = judge_json(
        token(),
        &cfg("authorized_idp_domains = [\"gmail.com\", \"uchicago.edu\"]"),
    )
    .expect_err("refused");
    assert_eq!(r.code, "wrong_identity_provider");
    assert!(
        r.message.contains("gmail.com, uchicago.edu"),
        "{}",
        r.message
    );
}

#[test]
fn every_configured_policy_must_pass() {
    assert_eq!(
        code(judge_json(token(), &cfg("policies = [\"pol-1\"]"))),
        "accepted"
    );
    assert_eq!(
        code(judge_json(
            token(),
            &cfg("policies = [\"pol-1\", \"pol-2\"]")
        )),
        "policy_failed"
    );
    assert_eq!(
        code(judge_json(token(), &cfg("policies = [\"pol-3\"]"))),
        "policy_failed"
    );
}

#[test]
fn service_accounts_skip_session_checks() {
    let c = cfg("authorized_idp_domains = [\"anl.gov\"]\npolicies = [\"pol-2\"]\nservice_accounts = [\"svc@clients.auth.globus.org\"]");
    let t = json!({"active": true, "sub": "svc-id", "username": "svc@clients.auth.globus.org", "aud": [CLIENT], "exp": NOW + 100});
    let a = judge_json(t, &c).expect("accepted");
    assert!(a.service_account);
    assert_eq!(a.principal.id, "svc-id");
}

#[test]
fn config_errors_name_the_path() {
    let parse = |text: &str| {
        GlobusConfig::parse(&text.parse().expect("toml"), "plugins[3]", &cx())
            .err()
            .unwrap_or_default()
    };
    assert!(parse("kind = \"globus_auth\"\nclient_id = \"x\"")
        .starts_with("plugins[3].client_secret_file: missing"));
    assert!(parse(
        "kind = \"globus_auth\"\nclient_id = \"x\"\nclient_secret_env = \"SURELY_NOT_SET_42\""
    )
    .starts_with("plugins[3].client_secret_env: environment variable `SURELY_NOT_SET_42`"));
    assert!(
        parse("kind = \"globus_auth\"\nclient_id = \"x\"\nclient_secret = \"inline\"")
            .contains("unknown field `client_secret`")
    );
    assert!(parse("kind = \"globus_auth\"\nclient_id = \"x\"\nclient_secret_env = \"VERDICT_TEST_SECRET\"\ncache_ttl = \"long\"")
        .starts_with("plugins[3].cache_ttl: `long`"));
}
