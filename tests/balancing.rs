//! Backend choice under failure: health checks, passive ejection, connect retries, and
//! least-requests balancing with a slow backend.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

async fn healthy_backends(gw: &Gateway) -> u64 {
    let v = get_json(&gw.api("/list-endpoints")).await;
    v["clusters"]["local"]["vllm"][0]["backends_healthy"]
        .as_u64()
        .unwrap_or(99)
}

async fn wait_healthy(gw: &Gateway, want: u64) {
    let reached = poll(
        Duration::from_secs(5),
        Duration::from_millis(25),
        || async { (healthy_backends(gw).await == want).then_some(()) },
    );
    if reached.await.is_none() {
        panic!("pool never reached {want} healthy backends");
    }
}

/// POSTs the standard chat request to the federated route.
async fn chat(gw: &Gateway) -> reqwest::Response {
    post_json(&gw.api("/v1/chat/completions"), &chat_body(false)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn down_slow_and_healthy_backends_under_least_requests() {
    let slow = MockBackend::start(MockConfig {
        first_token_delay: Duration::from_millis(200),
        ..MockConfig::default()
    })
    .await
    .expect("slow mock");
    let fast = MockBackend::start(MockConfig::default())
        .await
        .expect("fast mock");
    let down = format!("127.0.0.1:{}", closed_port());
    let backends = [down.clone(), slow.addr.to_string(), fast.addr.to_string()];
    let pools = pool(
        "trio",
        "local",
        &[MODEL],
        &backends,
        &format!("balance = \"least_requests\"\n{FAST_HEALTH}"),
    );
    let gw = Gateway::start("", &pools).await;
    wait_healthy(&gw, 2).await;

    // 8 workers, 10 requests each: at most 8 in flight at once.
    let workers = (0..8).map(|_| {
        let url = gw.api("/v1/chat/completions");
        tokio::spawn(async move {
            for _ in 0..10 {
                assert_eq!(post_json(&url, &chat_body(false)).await.status(), 200);
            }
        })
    });
    for w in futures_util::future::join_all(workers).await {
        w.expect("worker");
    }
    let to_slow = count(&slow.stats().requests);
    let to_fast = count(&fast.stats().requests);
    assert_eq!(to_slow + to_fast, 80);
    // Its share would be half; least-requests sends it far less because it is busy longer.
    assert!(
        to_slow <= 40 && to_slow < to_fast,
        "slow got {to_slow}, fast got {to_fast}"
    );
    let log = gw
        .wait_access_lines(80, |l| l["route"] == "chat_completions")
        .await;
    assert!(
        log.iter().all(|l| l["backend"] != down.as_str()),
        "nothing went to the down backend"
    );
    assert!(log
        .iter()
        .all(|l| l["upstream_attempts"].as_u64() <= Some(1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_connections_are_retried_on_another_backend_and_ejected() {
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let down = format!("127.0.0.1:{}", closed_port());
    // Health checks too rare to matter after the first (at start-up, which may already find
    // the refused one): passive ejection does the rest.
    let slow_checks = "[pools.health]\ninterval = \"60s\"\nunhealthy_threshold = 5\n";
    let pools = pool(
        "pair",
        "local",
        &[MODEL],
        &[down.clone(), mock.addr.to_string()],
        &format!("balance = \"round_robin\"\n{slow_checks}"),
    );
    let gw = Gateway::start("", &pools).await;
    for _ in 0..6 {
        assert_eq!(chat(&gw).await.status(), 200);
    }
    let log = gw
        .wait_access_lines(6, |l| l["route"] == "chat_completions")
        .await;
    let attempts: u64 = log
        .iter()
        .filter_map(|l| l["upstream_attempts"].as_u64())
        .sum();
    assert!(
        attempts == 6 || attempts == 7,
        "at most one refused connect, then the backend is out: {log:?}"
    );
    assert_eq!(count(&mock.stats().requests), 6);
    assert_eq!(healthy_backends(&gw).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn all_backends_refusing_is_502_then_503_with_retry_after() {
    let backends = [
        format!("127.0.0.1:{}", closed_port()),
        format!("127.0.0.1:{}", closed_port()),
    ];
    let slow_checks = "[pools.health]\ninterval = \"60s\"\nunhealthy_threshold = 5\n";
    let gw = Gateway::start("", &pool("dead", "local", &[MODEL], &backends, slow_checks)).await;
    let resp = chat(&gw).await;
    // 502 if the request found them first, 503 if the start-up check did.
    let status = resp.status();
    let body: Value = resp.json().await.expect("json");
    match status.as_u16() {
        502 => assert_eq!(body["error"]["code"], "upstream_connect_failed"),
        503 => assert_eq!(body["error"]["code"], "no_healthy_backend"),
        other => panic!("{other}: {body}"),
    }
    // Both were ejected by the refusals: now the pool has no backend to route to, panic
    // routing or not (nothing listens there).
    let resp = chat(&gw).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "60");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "no_healthy_backend");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_take_backends_out_and_put_them_back() {
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let gw = Gateway::start(
        "",
        &pool(
            "one",
            "local",
            &[MODEL],
            &[mock.addr.to_string()],
            // Without panic routing, a pool whose checks all fail refuses requests.
            &format!("{FAST_HEALTH}panic_routing = false\n"),
        ),
    )
    .await;
    wait_healthy(&gw, 1).await;
    mock.set_fault(Fault::Unhealthy);
    wait_healthy(&gw, 0).await;
    let resp = chat(&gw).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    mock.set_fault(Fault::None);
    wait_healthy(&gw, 1).await;
    let resp = chat(&gw).await;
    assert_eq!(resp.status(), 200);
    assert!(count(&mock.stats().health_checks) >= 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn federated_route_fails_over_to_a_healthy_pool() {
    let primary = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let secondary = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let pools = format!(
        "{}{}",
        pool(
            "primary",
            "local",
            &[MODEL],
            &[primary.addr.to_string()],
            &format!("priority = 0\n{FAST_HEALTH}")
        ),
        pool(
            "secondary",
            "remote",
            &[MODEL],
            &[secondary.addr.to_string()],
            &format!("priority = 1\n{FAST_HEALTH}")
        )
    );
    let gw = Gateway::start("", &pools).await;
    assert_eq!(chat(&gw).await.status(), 200);
    assert_eq!(count(&primary.stats().requests), 1);
    primary.set_fault(Fault::Unhealthy);
    wait_healthy(&gw, 0).await;
    assert_eq!(chat(&gw).await.status(), 200);
    assert_eq!(
        count(&secondary.stats().requests),
        1,
        "the federated route moved to the healthy pool"
    );
    // The targeted route stays on its cluster, whose only backend fails its checks but
    // accepts connections: panic routing sends the request there rather than refuse it.
    let resp = post_json(
        &gw.api("/local/vllm/v1/chat/completions"),
        &chat_body(false),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(count(&primary.stats().requests), 2);
    let line = gw
        .access_line(|l| l["route"] == "chat_completions" && l["pool"] == "primary")
        .await;
    assert_eq!(line["panic_routed"], false, "the first, before the fault");
    let panicked = gw.access_line(|l| l["panic_routed"] == true).await;
    assert_eq!(panicked["pool"], "primary");
    assert_eq!(panicked["status"], 200);
}

/// `consistent_hash` keeps each user on one backend (their shared prompt prefixes stay in one
/// KV cache) and spreads users over the pool: the gateway hashes the authenticated user.
#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_keeps_each_user_on_one_backend() {
    let mut mocks = Vec::new();
    for _ in 0..3 {
        mocks.push(
            MockBackend::start(MockConfig::default())
                .await
                .expect("mock"),
        );
    }
    let backends: Vec<String> = mocks.iter().map(|m| m.addr.to_string()).collect();
    let pools = pool(
        "trio",
        "local",
        &[MODEL],
        &backends,
        &format!("balance = \"consistent_hash\"\n{FAST_HEALTH}"),
    );
    let names: Vec<String> = (0..12).map(|i| format!("user{i}")).collect();
    let users: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &[][..])).collect();
    let gw = Gateway::start(&api_keys_plugin(&users), &pools).await;

    let counts = || {
        mocks
            .iter()
            .map(|m| count(&m.stats().requests))
            .collect::<Vec<_>>()
    };
    let mut used = std::collections::BTreeSet::new();
    for name in &names {
        let before = counts();
        let auth = bearer(&format!("key-{name}"));
        for _ in 0..5 {
            let resp = post_json_with(
                &gw.api("/v1/chat/completions"),
                &chat_body(false),
                &[("authorization", &auth)],
            )
            .await;
            assert_eq!(resp.status(), 200, "{name}");
        }
        let after = counts();
        let got: Vec<usize> = (0..3).filter(|&i| after[i] > before[i]).collect();
        assert_eq!(got.len(), 1, "{name}'s requests went to backends {got:?}");
        assert_eq!(after[got[0]] - before[got[0]], 5, "{name}");
        used.insert(got[0]);
    }
    // Twelve users on one backend of three: about one chance in 177,000 for a fair hash.
    assert!(used.len() > 1, "every user hashed to backend {used:?}");
}
