//! The order of a request's phases through the real binary: authenticate (headers only) →
//! read the body → authorize → admit → forward. Requests refused early never read a body
//! they do not need and never consume a budget, whatever the order of `[[plugins]]`.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SECRET: &str = SECRET_MODEL;

/// The limiter is listed before the authenticator on purpose: the core orders the phases.
async fn gateway(server_extra: &str) -> (Gateway, MockBackend) {
    let plugins = format!(
        "[[plugins]]\nkind = \"rate_limits\"\n[plugins.per_model]\nrequests_per_minute = 3\n\n{}",
        api_keys_plugin(&[("ada", &[]), ("bob", &[]), ("carol", &["g-secret"])])
    );
    open_and_secret_pools(server_extra, &plugins, "local", "g-secret").await
}

async fn post(gw: &Gateway, key: Option<&str>, body: &Value) -> u16 {
    let auth = key.map(bearer);
    let header = auth.as_deref().map(|auth| ("authorization", auth));
    post_json_with(&gw.api("/v1/chat/completions"), body, header.as_slice())
        .await
        .status()
        .as_u16()
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_never_consume_a_budget() {
    let (gw, mock) = gateway("").await;
    for _ in 0..10 {
        assert_eq!(post(&gw, None, &chat(MODEL)).await, 401);
        assert_eq!(post(&gw, Some("not-a-key"), &chat(SECRET)).await, 401);
    }
    for _ in 0..5 {
        assert_eq!(post(&gw, Some("key-bob"), &chat(SECRET)).await, 403);
        assert_eq!(
            post(&gw, Some("key-ada"), &chat("no/such-model")).await,
            404
        );
        let huge = json!({"model": MODEL, "messages": [], "max_tokens": 18446744073709551615u64});
        assert_eq!(post(&gw, Some("key-ada"), &huge).await, 400);
    }
    assert_eq!(
        count(&mock.stats().requests),
        0,
        "nothing reached a backend"
    );
    // Every model still has its whole budget of 3 a minute.
    for _ in 0..3 {
        assert_eq!(post(&gw, Some("key-ada"), &chat(MODEL)).await, 200);
        assert_eq!(post(&gw, Some("key-carol"), &chat(SECRET)).await, 200);
    }
    assert_eq!(post(&gw, Some("key-bob"), &chat(MODEL)).await, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_body_is_never_read_nor_continued() {
    // A gateway that waited for the body would answer 408 only after this timeout.
    let (gw, _mock) = gateway("client_body_timeout = \"20s\"").await;
    let head = |expect: &str| {
        format!(
            "POST /resource_server/v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 10485760\r\n{expect}\r\n"
        )
    };
    // With `Expect: 100-continue` the client waits: no `100 Continue` may invite the body.
    let answer = raw_exchange(
        gw.port,
        head("expect: 100-continue\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    // Without it the body would follow the header; the answer comes before it.
    let started = std::time::Instant::now();
    let answer = raw_exchange(gw.port, head("").as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let line = gw.access_line(|l| l["status"] == 401).await;
    assert_eq!(line["bytes_in"], 0, "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_strings_reach_logs_bounded() {
    let (gw, _mock) = gateway("").await;
    let long_model = "m".repeat(100_000);
    let long_id = "r".repeat(4096);
    let resp = post_json_with(
        &gw.api("/v1/chat/completions"),
        &chat(&long_model),
        &[
            ("authorization", "Bearer key-ada"),
            ("x-request-id", &long_id),
        ],
    )
    .await;
    assert_eq!(resp.status(), 400);
    let request_id = resp.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    assert!(request_id.len() <= 128, "{request_id}");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["param"], "model");
    assert!(body.to_string().len() < 1000, "{body}");
    let line = gw.access_line(|l| l["status"] == 400).await;
    assert!(line.to_string().len() < 2000, "{line}");
    // A path is echoed only in part.
    let resp = get(&gw.url(&format!("/{}", "p".repeat(8000)))).await;
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.expect("text").len() < 1000);
}
