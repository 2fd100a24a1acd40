//! Limit arithmetic under hostile numbers, through the real binary: token counts a client
//! or a backend makes up can neither lock a budget for longer than its window nor get
//! anything for free, and concurrency slots on Redis are leases that outlive no request
//! and no replica.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;
use serde_json::{json, Value};

fn chat(max_tokens: Value) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens})
}

async fn gateway(backend: &str, limits: &str) -> (Gateway, MockBackend) {
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let config = format!(
        "[[plugins]]\nkind = \"rate_limits\"\n{backend}\n{limits}\n\n{}\n{}",
        api_keys_plugin(&[("ada", &[]), ("bob", &[])]),
        pool("p", "local", &[MODEL], &[mock.addr.to_string()], "")
    );
    (Gateway::start("", &config).await, mock)
}

async fn post(
    gw: &Gateway,
    key: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let auth = bearer(key);
    let headers: Vec<(&str, &str)> = [("authorization", auth.as_str())]
        .into_iter()
        .chain(headers.iter().copied())
        .collect();
    post_json_with(&gw.api("/v1/chat/completions"), body, &headers).await
}

fn header_u64(resp: &reqwest::Response, name: &str) -> u64 {
    resp.headers()[name]
        .to_str()
        .expect("header")
        .parse()
        .expect("number")
}

#[tokio::test(flavor = "multi_thread")]
async fn absurd_max_tokens_are_400s_that_touch_no_budget() {
    let (gw, mock) = gateway("", "[plugins.per_model]\ntokens_per_minute = 10000\n").await;
    for bad in [
        json!(9223372036854775808u64),
        json!(18446744073709551615u64),
        json!(1e20),
        json!(-1),
        json!(0),
        json!(1048577),
    ] {
        let resp = post(&gw, "key-ada", &chat(bad.clone()), &[]).await;
        assert_eq!(resp.status(), 400, "{bad}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{bad}");
        assert_eq!(body["error"]["param"], "max_tokens", "{bad}");
        // Anonymous requests with the same numbers never get that far.
        assert_eq!(post(&gw, "nobody", &chat(bad), &[]).await.status(), 401);
    }
    assert_eq!(count(&mock.stats().requests), 0);
    let resp = post(&gw, "key-bob", &chat(json!(100)), &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(header_u64(&resp, "x-ratelimit-remaining-tokens") > 9800);
}

/// A backend that reports more tokens than any budget holds empties the budget for one
/// window, not more: the next refusal says to wait at most 60 s.
async fn absurd_usage_costs_one_window_at_most(backend: &str) {
    let limits =
        "[plugins.per_user]\ntokens_per_minute = 1000\n[plugins.per_model]\nmax_concurrent = 1\n";
    let (gw, _mock) = gateway(backend, limits).await;
    let huge = "9223372036854775807,9223372036854775807";
    let resp = post(&gw, "key-ada", &chat(json!(10)), &[("x-mock-usage", huge)]).await;
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await;
    // Until the settlement has run (after the answer, on Redis in a task), the model's one
    // concurrency slot may still be held: wait for the refusal that names the token budget.
    let refused = poll(
        Duration::from_secs(2),
        Duration::from_millis(20),
        || async {
            let resp = post(&gw, "key-ada", &chat(json!(10)), &[]).await;
            if resp.status() != 429 {
                return None;
            }
            let wait = header_u64(&resp, "retry-after");
            assert!((1..=60).contains(&wait), "retry-after {wait}");
            let body: Value = resp.json().await.expect("json");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            message.contains("1000 tokens per minute").then_some(())
        },
    );
    assert!(refused.await.is_some(), "ada's token budget is spent");
    // The concurrency slot was released: bob (own token budget) gets through.
    let resp = post(&gw, "key-bob", &chat(json!(10)), &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(header_u64(&resp, "x-ratelimit-remaining-tokens") <= 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn absurd_usage_costs_one_window_at_most_in_memory() {
    absurd_usage_costs_one_window_at_most("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn absurd_usage_costs_one_window_at_most_on_redis() {
    let redis = Redis::start_on(free_port());
    let backend = format!("backend = \"redis\"\nredis_url = \"{}\"", redis.url());
    absurd_usage_costs_one_window_at_most(&backend).await;
}

/// Two replicas sharing one concurrency slot per model on Redis, with a 3 s lease.
async fn leased_replicas(redis: &Redis) -> (Gateway, Gateway, MockBackend) {
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let config = format!(
        "[[plugins]]\nkind = \"rate_limits\"\nbackend = \"redis\"\nredis_url = \"{}\"\nconcurrency_lease = \"3s\"\n[plugins.per_model]\nmax_concurrent = 1\n\n{}",
        redis.url(),
        pool("p", "local", &[MODEL], &[mock.addr.to_string()], "")
    );
    let a = Gateway::start("", &config).await;
    let b = Gateway::start("", &config).await;
    (a, b, mock)
}

/// Starts a stream of 80 tokens 100 ms apart on `gw` (8 s) and waits for its first bytes.
async fn long_stream(gw: &Gateway) -> reqwest::Response {
    let resp = post_json_with(
        &gw.api("/v1/chat/completions"),
        &json!({"model": MODEL, "messages": [], "max_tokens": 100, "stream": true}),
        &[("x-mock-tokens", "80"), ("x-mock-token-gap-ms", "100")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    resp
}

async fn status_on(gw: &Gateway) -> u16 {
    post_json(&gw.api("/v1/chat/completions"), &chat(json!(5)))
        .await
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_longer_than_its_lease_keeps_its_slot() {
    let redis = Redis::start_on(free_port());
    let (a, b, _mock) = leased_replicas(&redis).await;
    let stream = long_stream(&a).await;
    // Past the 3 s lease: refreshed while the stream lives, so the slot is still held.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(status_on(&b).await, 429);
    let body = stream.bytes().await.expect("the whole stream");
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    eventually_async(
        Duration::from_secs(1),
        "the slot is released when the stream ends",
        || async { status_on(&b).await == 200 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_dies_loses_its_slots_within_one_lease() {
    let redis = Redis::start_on(free_port());
    let (mut a, b, _mock) = leased_replicas(&redis).await;
    let stream = long_stream(&a).await;
    a.kill();
    drop(stream);
    let killed = Instant::now();
    assert_eq!(
        status_on(&b).await,
        429,
        "the slot outlives its holder for a while"
    );
    let within = Duration::from_secs(10).saturating_sub(killed.elapsed());
    let freed = poll(within, Duration::from_millis(100), || async {
        (status_on(&b).await == 200).then(|| killed.elapsed())
    });
    let freed = freed.await.expect("the dead replica's slot expired");
    assert!(freed <= Duration::from_secs(5), "{freed:?}");
}
