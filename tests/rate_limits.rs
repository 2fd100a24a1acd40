//! Rate limits through the real binary: 429s and headers in memory mode, and limits shared
//! by two gateway replicas through a real redis-server, including Redis dying mid-test.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::Duration;

use common::redis::{Redis, RedisCluster};
use common::*;
use serde_json::Value;

fn limits_plugin(backend: &str, limits: &str) -> String {
    format!("[[plugins]]\nkind = \"rate_limits\"\n{backend}\n{limits}\n")
}

fn chat(max_tokens: u64) -> Value {
    serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens})
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limits_answer_429_with_openai_headers() {
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let plugin = limits_plugin(
        "",
        "[plugins.per_user]\nrequests_per_minute = 3\ntokens_per_minute = 100000\n",
    );
    let gw = Gateway::start(
        "",
        &format!(
            "{plugin}\n{}",
            pool("p", "local", &[MODEL], &[mock.addr.to_string()], "")
        ),
    )
    .await;
    let url = gw.api("/v1/chat/completions");
    for expect_remaining in ["2", "1", "0"] {
        let resp = post_json(&url, &chat(50)).await;
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["x-ratelimit-limit-requests"], "3");
        assert_eq!(h["x-ratelimit-remaining-requests"], expect_remaining);
        assert!(h.contains_key("x-ratelimit-reset-requests"));
        assert_eq!(h["x-ratelimit-limit-tokens"], "100000");
        assert!(h.contains_key("x-ratelimit-remaining-tokens"));
        assert!(h.contains_key("x-ratelimit-reset-tokens"));
    }
    let resp = post_json(&url, &chat(50)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "20");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("3 requests per minute"));
    assert_eq!(count(&mock.stats().requests), 3);
}

async fn two_replicas(
    redis: &Redis,
    on_error: &str,
    limits: &str,
) -> (Gateway, Gateway, MockBackend) {
    let backend = format!("backend = \"redis\"\nredis_url = \"{}\"\nredis_timeout = \"200ms\"\non_redis_error = \"{on_error}\"", redis.url());
    replicas_with(&backend, limits).await
}

/// Two gateways with the same `rate_limits` backend settings and limits, in front of one mock.
async fn replicas_with(backend: &str, limits: &str) -> (Gateway, Gateway, MockBackend) {
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let config = format!(
        "{}\n{}",
        limits_plugin(backend, limits),
        pool("p", "local", &[MODEL], &[mock.addr.to_string()], "")
    );
    let a = Gateway::start("", &config).await;
    let b = Gateway::start("", &config).await;
    (a, b, mock)
}

/// Sends `n` requests spread over both gateways at once; returns how many got 200 and 429.
async fn burst(a: &Gateway, b: &Gateway, n: usize) -> (usize, usize) {
    let urls = [a.api("/v1/chat/completions"), b.api("/v1/chat/completions")];
    let body = chat(10);
    let sends = (0..n).map(|i| post_json(&urls[i % 2], &body));
    let statuses: Vec<u16> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.status().as_u16())
        .collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + limited, n, "{statuses:?}");
    (ok, limited)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_one_limit_through_redis() {
    let redis = Redis::start_on(free_port());
    let (a, b, mock) = two_replicas(
        &redis,
        "fail_open",
        "[plugins.per_model]\nrequests_per_minute = 20\n",
    )
    .await;
    let (ok, limited) = burst(&a, &b, 80).await;
    // 20 per minute, refilling one per 3 s: a burst lasting well under 3 s admits 20 (+1).
    assert!((20..=21).contains(&ok), "admitted {ok}, limited {limited}");
    assert_eq!(count(&mock.stats().requests), ok as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_fails_open_to_local_limits_and_recovers() {
    let mut redis = Redis::start_on(free_port());
    let port = redis.port;
    let (a, b, _mock) = two_replicas(
        &redis,
        "fail_open",
        "[plugins.per_model]\nrequests_per_minute = 6\n",
    )
    .await;
    let (ok, _) = burst(&a, &b, 20).await;
    assert!((6..=7).contains(&ok), "shared: {ok}");

    redis.kill();
    // Each replica now limits on its own (fresh local state): up to 6 each, nothing panics.
    let (ok, _) = burst(&a, &b, 30).await;
    assert!((10..=14).contains(&ok), "local fallback admitted {ok}");
    assert!(
        a.stderr().contains("unreachable"),
        "the outage is logged: {}",
        a.stderr()
    );
    assert_eq!(
        a.stderr().matches("is unreachable").count(),
        1,
        "logged once per outage: {}",
        a.stderr()
    );

    let redis = Redis::start_on(port);
    // The connection comes back on its own; the (empty) shared state is used again.
    // Each try sends a request, and does not mind whether it is answered.
    let resumed = poll(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            let sent = client().post(a.api("/v1/chat/completions")).json(&chat(1));
            let _ = sent.send().await;
            a.stderr().contains("reachable again").then_some(())
        },
    );
    assert!(
        resumed.await.is_some(),
        "limits resumed on Redis: {}",
        a.stderr()
    );
    drop(redis);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_fails_closed_when_configured() {
    let mut redis = Redis::start_on(free_port());
    let (a, b, _mock) = two_replicas(
        &redis,
        "fail_closed",
        "[plugins.per_user]\nrequests_per_minute = 100\n",
    )
    .await;
    assert_eq!(
        post_json(&a.api("/v1/chat/completions"), &chat(1))
            .await
            .status(),
        200
    );
    redis.kill();
    let resp = post_json(&b.api("/v1/chat/completions"), &chat(1)).await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limiter_unavailable");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_are_shared_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    // fail_closed: a script Redis Cluster refused (keys in several slots) would show as 503s.
    let backend = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nredis_cluster = true\nredis_timeout = \"1s\"\non_redis_error = \"fail_closed\"",
        cluster.seed_url()
    );
    let limits = "[plugins.per_user]\nrequests_per_minute = 100\n[plugins.per_user_model]\ntokens_per_minute = 100000\n[plugins.per_model]\nrequests_per_minute = 5\nmax_concurrent = 50\n";
    let (a, b, mock) = replicas_with(&backend, limits).await;
    let (ok, limited) = burst(&a, &b, 16).await;
    assert!((5..=6).contains(&ok), "admitted {ok}, limited {limited}");
    assert_eq!(count(&mock.stats().requests), ok as u64);
    assert_eq!(cluster.ports.len(), 3);
}
