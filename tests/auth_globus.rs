//! The `globus_auth` plugin through the real binary against the mock Globus Auth: the check
//! matrix, caching, single-flight, groups, and outages.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::Duration;

use common::*;
use gateway_testkit::globus::{MockGlobus, TokenSpec};
use serde_json::Value;

const CLIENT_ID: &str = "6b2a3c4d-0000-4000-8000-00000000beef";
const SECRET: &str = "resource-server-secret";
const LLAMA_GROUP: &str = "aaaaaaaa-1111-2222-3333-444444444444";

struct Setup {
    gw: Gateway,
    globus: MockGlobus,
    _mock: MockBackend,
}

/// A gateway with globus_auth (secret from a file) in front of one open and one group-only pool.
async fn setup(plugin_extra: &str, secret: &str) -> Setup {
    setup_with_server(plugin_extra, secret, "").await
}

async fn setup_with_server(plugin_extra: &str, secret: &str, server_extra: &str) -> Setup {
    let globus = MockGlobus::start(CLIENT_ID, SECRET)
        .await
        .expect("mock globus");
    let secret_file = tempfile::NamedTempFile::new().expect("secret file");
    std::fs::write(secret_file.path(), format!("{secret}\n")).expect("write secret");
    let (_, secret_path) = secret_file.keep().expect("keep");
    let plugins = format!(
        "[[plugins]]\nkind = \"globus_auth\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\n{}{plugin_extra}\n",
        secret_path.display(),
        globus.plugin_urls()
    );
    let (gw, mock) = open_and_secret_pools(server_extra, &plugins, "local", LLAMA_GROUP).await;
    Setup {
        gw,
        globus,
        _mock: mock,
    }
}

async fn chat_as(gw: &Gateway, token: &str, model: &str) -> (u16, Value) {
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let auth = bearer(token);
    let resp = post_json_with(
        &gw.api("/v1/chat/completions"),
        &body,
        &[("authorization", &auth)],
    )
    .await;
    let status = resp.status().as_u16();
    if status == 401 {
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_check_matrix() {
    let s = setup("authorized_idp_domains = [\"anl.gov\"]\npolicies = [\"mfa-policy\"]\nservice_accounts = [\"svc@clients.auth.globus.org\"]", SECRET).await;
    let mut good = TokenSpec::user("ada@anl.gov", CLIENT_ID);
    good.policies.insert("mfa-policy".into(), true);
    s.globus.add_token("AgGood", good.clone());
    let mut expired = good.clone();
    expired.expires_in = -3600;
    s.globus.add_token("AgExpired", expired);
    let mut foreign = good.clone();
    foreign.aud = vec!["another-resource-server".into()];
    s.globus.add_token("AgForeign", foreign);
    let mut no_mfa = good.clone();
    no_mfa.policies.insert("mfa-policy".into(), false);
    s.globus.add_token("AgNoMfa", no_mfa);
    let mut gmail = TokenSpec::user("ada@gmail.com", CLIENT_ID);
    gmail.policies.insert("mfa-policy".into(), true);
    s.globus.add_token("AgGmail", gmail);
    s.globus.add_token(
        "AgService",
        TokenSpec::user("svc@clients.auth.globus.org", CLIENT_ID),
    );
    let mut inactive = good.clone();
    inactive.active = false;
    s.globus.add_token("AgRevoked", inactive);

    assert_eq!(chat_as(&s.gw, "AgGood", MODEL).await.0, 200);
    assert_eq!(
        chat_as(&s.gw, "AgService", MODEL).await.0,
        200,
        "service accounts skip idp and policy checks"
    );
    for (token, want) in [
        ("AgExpired", "token_expired"),
        ("AgForeign", "wrong_audience"),
        ("AgNoMfa", "policy_failed"),
        ("AgGmail", "wrong_identity_provider"),
        ("AgRevoked", "token_inactive"),
        ("AgNeverIssued", "token_inactive"),
    ] {
        let (status, body) = chat_as(&s.gw, token, MODEL).await;
        assert_eq!((status, code(&body)), (401, want), "{token}: {body}");
        assert_eq!(body["error"]["type"], "authentication_error");
    }
    let (_, body) = chat_as(&s.gw, "AgGmail", MODEL).await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("anl.gov"));
    let (_, body) = chat_as(&s.gw, "AgExpired", MODEL).await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("expired at"));

    // No token, token hash or secret in any log line.
    let logs = format!(
        "{}{}",
        s.gw.stderr(),
        std::fs::read_to_string(s.gw.dir.path().join("access.log")).unwrap_or_default()
    );
    for needle in ["AgGood", "AgExpired", "AgGmail", SECRET] {
        assert!(!logs.contains(needle), "{needle} leaked into logs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_decide_access_and_whoami_shows_them() {
    let s = setup("", SECRET).await;
    let mut member = TokenSpec::user("ada@anl.gov", CLIENT_ID);
    member.groups = vec![LLAMA_GROUP.into(), "other-group".into()];
    s.globus.add_token("AgMember", member);
    s.globus
        .add_token("AgOutsider", TokenSpec::user("bob@uchicago.edu", CLIENT_ID));

    assert_eq!(chat_as(&s.gw, "AgMember", SECRET_MODEL).await.0, 200);
    let (status, body) = chat_as(&s.gw, "AgOutsider", SECRET_MODEL).await;
    assert_eq!((status, code(&body)), (403, "permission_denied"));
    assert_eq!(chat_as(&s.gw, "AgOutsider", MODEL).await.0, 200);

    let me = get_json_with(
        &s.gw.api("/whoami"),
        &[("authorization", "Bearer AgMember")],
    )
    .await;
    assert_eq!(me["username"], "ada@anl.gov");
    assert_eq!(me["auth_method"], "globus");
    assert_eq!(me["identity_provider"], "anl.gov");
    assert!(me["groups"]
        .as_array()
        .is_some_and(|g| g.iter().any(|x| x == LLAMA_GROUP)));
    let models = get_json_with(
        &s.gw.api("/v1/models"),
        &[("authorization", "Bearer AgOutsider")],
    )
    .await;
    assert_eq!(models["data"].as_array().map(Vec::len), Some(1));
    // Each token was introspected once and its groups fetched once; the rest came from cache.
    assert_eq!(s.globus.introspections(), 2);
    assert_eq!(count(&s.globus.state.stats.group_calls), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_with_one_fresh_token_cause_one_introspection() {
    let s = setup("", SECRET).await;
    s.globus
        .add_token("AgFresh", TokenSpec::user("ada@anl.gov", CLIENT_ID));
    s.globus.set_latency(Duration::from_millis(300));
    let (url, body) = (s.gw.api("/v1/chat/completions"), chat_body(false));
    let requests = (0..200).map(|_| async {
        post_json_with(&url, &body, &[("authorization", "Bearer AgFresh")])
            .await
            .status()
            .as_u16()
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(s.globus.introspections(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn rejections_are_cached_too() {
    let s = setup("", SECRET).await;
    for _ in 0..5 {
        assert_eq!(chat_as(&s.gw, "AgUnknown", MODEL).await.0, 401);
    }
    assert_eq!(s.globus.introspections(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_keeps_cached_users_and_refuses_new_ones_with_503() {
    let s = setup("retry_after = \"7s\"", SECRET).await;
    s.globus
        .add_token("AgKnown", TokenSpec::user("ada@anl.gov", CLIENT_ID));
    s.globus
        .add_token("AgNew", TokenSpec::user("bob@anl.gov", CLIENT_ID));
    assert_eq!(chat_as(&s.gw, "AgKnown", MODEL).await.0, 200);
    s.globus.set_outage(true);
    assert_eq!(
        chat_as(&s.gw, "AgKnown", MODEL).await.0,
        200,
        "cached principal keeps working"
    );
    let body = serde_json::json!({"model": MODEL, "messages": []});
    let resp = post_json_with(
        &s.gw.api("/v1/chat/completions"),
        &body,
        &[("authorization", "Bearer AgNew")],
    )
    .await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "7");
    let err: Value = resp.json().await.expect("json");
    assert_eq!(code(&err), "auth_unavailable");
    s.globus.set_outage(false);
    assert_eq!(
        chat_as(&s.gw, "AgNew", MODEL).await.0,
        200,
        "the outage was not cached as a rejection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_client_credentials_are_an_outage_not_the_users_fault() {
    let s = setup("", "not-the-secret").await;
    s.globus
        .add_token("AgGood", TokenSpec::user("ada@anl.gov", CLIENT_ID));
    let (status, body) = chat_as(&s.gw, "AgGood", MODEL).await;
    assert_eq!((status, code(&body)), (503, "auth_unavailable"));
    assert!(count(&s.globus.state.stats.bad_client_credentials) >= 1);
    eventually(
        Duration::from_secs(2),
        "an operator-facing log line",
        || s.gw.stderr().contains("client credentials"),
    )
    .await;
    assert!(!s.gw.stderr().contains("not-the-secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_hits_and_misses_are_counted() {
    let port = free_port();
    let s = setup_with_server(
        "",
        SECRET,
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
    )
    .await;
    s.globus
        .add_token("AgCounted", TokenSpec::user("ada@anl.gov", CLIENT_ID));
    for _ in 0..4 {
        assert_eq!(chat_as(&s.gw, "AgCounted", MODEL).await.0, 200);
    }
    let metrics = scrape(port).await;
    assert!(
        metrics.contains("igw_globus_auth_checks_total{result=\"miss\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("igw_globus_auth_checks_total{result=\"hit\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("igw_globus_introspection_seconds_count 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("AgCounted"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_unknown_tokens_is_throttled_and_cached_users_carry_on() {
    let s = setup(
        "introspections_per_client_per_minute = 6\nintrospections_per_second = 1000",
        SECRET,
    )
    .await;
    s.globus
        .add_token("AgKnown", TokenSpec::user("ada@anl.gov", CLIENT_ID));
    assert_eq!(chat_as(&s.gw, "AgKnown", MODEL).await.0, 200);
    let mut throttled = 0;
    for i in 0..30 {
        let (status, body) = chat_as(&s.gw, &format!("AgRandom{i}"), MODEL).await;
        match status {
            401 => {}
            429 => {
                assert_eq!(body["error"]["code"], "too_many_new_tokens", "{body}");
                throttled += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
        // The cached user is never throttled.
        assert_eq!(chat_as(&s.gw, "AgKnown", MODEL).await.0, 200);
    }
    assert!(throttled >= 25, "{throttled} of 30 throttled");
    // One for the known token, and the per-client burst (a third of the per-minute rate).
    assert!(
        s.globus.introspections() <= 4,
        "{}",
        s.globus.introspections()
    );
    // A token longer than any Globus token is refused without asking Globus.
    let before = s.globus.introspections();
    let (status, body) = chat_as(&s.gw, &"A".repeat(5000), MODEL).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    assert_eq!(s.globus.introspections(), before);
}
