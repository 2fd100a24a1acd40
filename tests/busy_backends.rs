//! Busy is not down: a backend whose health route waits behind generation (llama-cpp-python
//! holds one lock) keeps serving through the gateway, through passive evidence and panic
//! routing, while a backend that refuses connections is still skipped at once.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A single-slot backend like llama-cpp-python's server: one generation at a time, health
/// and model routes blocked meanwhile; 10 streamed tokens 23 ms apart, out of step with the
/// checks (a generation in step with them would always end while a check waits, which then
/// passes just in time).
fn serial_backend() -> MockConfig {
    MockConfig {
        serial: true,
        tokens: 10,
        token_gap: Duration::from_millis(23),
        ..MockConfig::default()
    }
}

/// Checks of `path` far shorter than a generation, each failure taking the backend out:
/// without busy detection the backend would be marked down during almost every request.
fn impatient_checks(path: &str, extra: &str) -> String {
    format!(
        "[pools.health]\npath = \"{path}\"\ninterval = \"100ms\"\ntimeout = \"30ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n{extra}"
    )
}

async fn start(backends: &[String], health: &str, metrics_port: u16) -> Gateway {
    let pools = pool("single", "local", &[MODEL], backends, health);
    Gateway::start(
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
        &pools,
    )
    .await
}

/// Sends one streamed chat request and reads it to the end: its status and body.
async fn stream_one(gw: &Gateway) -> (u16, String) {
    let resp = post_json(&gw.api("/v1/chat/completions"), &chat_body(true)).await;
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

fn assert_complete_stream((status, body): &(u16, String)) {
    assert_eq!(*status, 200, "body: {body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "cut short: {body}");
}

async fn jobs_status(gw: &Gateway) -> Value {
    get_json(&gw.api("/local/jobs")).await["models"][0]["status"].clone()
}

/// A backend whose health route answers 503 while inference works.
async fn failing_checks_backend() -> MockBackend {
    let config = MockConfig {
        fault: Fault::Unhealthy,
        ..MockConfig::default()
    };
    MockBackend::start(config).await.expect("mock")
}

async fn wait_for_checks(mock: &MockBackend, n: u64) {
    eventually(Duration::from_secs(5), "health checks", || {
        count(&mock.stats().health_checks) >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_single_backend_serves_every_request_on_passive_evidence_alone() {
    let mock = MockBackend::start(serial_backend()).await.expect("mock");
    let metrics_port = free_port();
    // Panic routing off: the traffic itself must keep the backend in.
    let gw = start(
        &[mock.addr.to_string()],
        &impatient_checks("/v1/models", "panic_routing = false"),
        metrics_port,
    )
    .await;
    for _ in 0..12 {
        assert_complete_stream(&stream_one(&gw).await);
    }
    let concurrent = (0..8).map(|_| stream_one(&gw));
    for answer in futures_util::future::join_all(concurrent).await {
        assert_complete_stream(&answer);
    }
    assert_eq!(count(&mock.stats().streams_completed), 20);
    let metrics = scrape(metrics_port).await;
    let busy = sample(&metrics, "igw_health_checks_busy_total{").unwrap_or(0.0);
    assert!(
        busy >= 1.0,
        "checks during generation count as busy:\n{metrics}"
    );
    assert_eq!(
        sample(&metrics, "igw_panic_routed_requests_total{").unwrap_or(0.0),
        0.0
    );
    let log = gw.wait_access_lines(20, |l| l["status"] == 200).await;
    assert!(log.iter().all(|l| l["panic_routed"] == false));
}

#[tokio::test(flavor = "multi_thread")]
async fn panic_routing_serves_a_pool_whose_checks_all_fail() {
    // Its health route answers 503 while inference works: every check fails, no traffic
    // flows to prove it alive, and the pool has no healthy backend.
    let mock = failing_checks_backend().await;
    let metrics_port = free_port();
    let gw = start(
        &[mock.addr.to_string()],
        &impatient_checks("/health", ""),
        metrics_port,
    )
    .await;
    wait_for_checks(&mock, 2).await;
    let ready = get(&gw.api("/ready")).await;
    assert_eq!(ready.status(), 200, "a pool in panic routing can serve");
    assert_eq!(jobs_status(&gw).await, "degraded");
    for _ in 0..3 {
        assert_complete_stream(&stream_one(&gw).await);
    }
    let line = gw
        .access_line(|l| l["route"] == "chat_completions" && l["status"] == 200)
        .await;
    assert_eq!(line["panic_routed"], true);
    let metrics = scrape(metrics_port).await;
    assert_eq!(
        sample(&metrics, "igw_panic_routed_requests_total{pool=\"single\"}"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "igw_pool_panic_routing{pool=\"single\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "igw_backend_healthy{"),
        Some(0.0),
        "the checks still say what they see"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_panic_routing_a_pool_whose_checks_fail_is_503() {
    let mock = failing_checks_backend().await;
    let gw = start(
        &[mock.addr.to_string()],
        &impatient_checks("/health", "panic_routing = false"),
        free_port(),
    )
    .await;
    wait_for_checks(&mock, 2).await;
    let (status, body) = stream_one(&gw).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no_healthy_backend"), "{body}");
    assert_eq!(jobs_status(&gw).await, "down");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_backend_gets_no_traffic_even_while_its_busy_peer_is_in_panic() {
    let mock = MockBackend::start(serial_backend()).await.expect("mock");
    let refused = format!("127.0.0.1:{}", closed_port());
    let metrics_port = free_port();
    let gw = start(
        &[refused, mock.addr.to_string()],
        &impatient_checks("/v1/models", ""),
        metrics_port,
    )
    .await;
    let answers = (0..8).map(|_| stream_one(&gw));
    for answer in futures_util::future::join_all(answers).await {
        assert_complete_stream(&answer);
    }
    for _ in 0..4 {
        assert_complete_stream(&stream_one(&gw).await);
    }
    // At most the first requests, sent before anything was known, tried the refused one.
    let log = gw.wait_access_lines(12, |_| true).await;
    let retried = log
        .iter()
        .filter(|l| l["upstream_attempts"].as_u64() != Some(1))
        .count();
    assert!(retried <= 8, "{log:?}");
    assert!(log
        .iter()
        .rev()
        .take(4)
        .all(|l| l["upstream_attempts"] == 1));
    assert_eq!(count(&mock.stats().streams_completed), 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_single_backend_fails_fast_with_panic_routing_on() {
    let dead = format!("127.0.0.1:{}", closed_port());
    let gw = start(&[dead], &impatient_checks("/health", ""), free_port()).await;
    let started = Instant::now();
    let (first, body) = stream_one(&gw).await;
    assert!(first == 502 || first == 503, "{first}: {body}");
    let (second, body) = stream_one(&gw).await;
    assert_eq!(second, 503, "{body}");
    assert!(body.contains("no_healthy_backend"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused is not busy: {:?}",
        started.elapsed()
    );
    assert_eq!(jobs_status(&gw).await, "down");
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_status_decides_what_passes() {
    // A server whose health route answers 503 by design: the operator says so.
    let mock = failing_checks_backend().await;
    let metrics_port = free_port();
    let gw = start(
        &[mock.addr.to_string()],
        &impatient_checks("/health", "expect_status = [200, 503]"),
        metrics_port,
    )
    .await;
    wait_for_checks(&mock, 3).await;
    assert_eq!(jobs_status(&gw).await, "ready");
    assert_complete_stream(&stream_one(&gw).await);
    let metrics = scrape(metrics_port).await;
    assert_eq!(sample(&metrics, "igw_backend_healthy{"), Some(1.0));
    assert_eq!(
        sample(&metrics, "igw_health_check_failures_total{").unwrap_or(0.0),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_that_answers_again_rejoins_panic_routing_before_its_threshold() {
    // Two backends: one whose checks fail (it serves, in panic routing), one not listening yet.
    let failing = failing_checks_backend().await;
    let port = closed_port();
    let checks = "[pools.health]\ninterval = \"100ms\"\ntimeout = \"200ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 50\n";
    let gw = start(
        &[format!("127.0.0.1:{port}"), failing.addr.to_string()],
        checks,
        free_port(),
    )
    .await;
    wait_for_checks(&failing, 2).await;
    // The second starts: its checks pass, far short of healthy_threshold. It answers, so it
    // is no longer "nothing listens": panic routing uses it beside the failing one.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the refused port");
    let back = MockBackend::serve(listener, MockConfig::default());
    wait_for_checks(&back, 2).await;
    for _ in 0..10 {
        assert_complete_stream(&stream_one(&gw).await);
    }
    assert!(
        count(&back.stats().requests) > 0,
        "the backend that answers again got no traffic"
    );
}
