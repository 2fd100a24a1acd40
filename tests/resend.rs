//! A prompt is sent twice only when the backend provably did not receive it, and a client
//! that leaves before the answer stops the backend's work, through the real binary.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::Duration;

use common::raw::RawBackend;
use common::*;
use serde_json::json;

fn chat() -> serde_json::Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "a prompt that crashes the server"}], "max_tokens": 5})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_that_dies_on_a_prompt_gets_it_once() {
    let backend = RawBackend::start().await;
    let pools = pool(
        "p",
        "local",
        &[MODEL],
        &[backend.addr.to_string()],
        "[pools.health]\ninterval = \"60s\"\n",
    );
    let gw = Gateway::start("max_connect_attempts = 3", &pools).await;
    // Fill the gateway's keep-alive pool with several connections to the backend.
    let (url, body) = (gw.api("/v1/chat/completions"), chat());
    let warm = (0..8).map(|_| post_json(&url, &body));
    for resp in futures_util::future::join_all(warm).await {
        assert_eq!(resp.status(), 200);
    }
    let before = count(&backend.posts);
    backend.crash();
    let resp = post_json_with(&url, &body, &[("x-request-id", "crasher")]).await;
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "upstream_error");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        count(&backend.posts) - before,
        1,
        "the prompt was sent once"
    );
    let line = gw.access_line(|l| l["request_id"] == "crasher").await;
    assert_eq!(line["upstream_attempts"], 1, "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_before_the_answer_cancels_the_backend() {
    let (gw, mock) = with_mock(MockConfig::default(), "").await;
    let headers = [
        ("x-request-id", "impatient"),
        // A non-streaming answer that takes 30 s to generate.
        ("x-mock-first-token-ms", "30000"),
    ];
    let (url, body) = (gw.api("/v1/chat/completions"), chat());
    let request = post_json_with(&url, &body, &headers);
    let gave_up = tokio::time::timeout(Duration::from_millis(500), request).await;
    assert!(gave_up.is_err(), "the client gave up first");
    eventually(
        Duration::from_secs(5),
        "the backend saw the request abandoned",
        || count(&mock.stats().requests_abandoned) == 1,
    )
    .await;
    let line = gw.access_line(|l| l["request_id"] == "impatient").await;
    assert_eq!(line["client_aborted"], true, "{line}");
    assert_eq!(line["status"], 499, "{line}");
    assert!(line["duration_ms"].as_f64() < Some(5000.0), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_after_the_body_are_not_a_client_leaving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, mock) = with_mock(MockConfig::default(), "").await;
    let body = format!("{{\"model\":\"{MODEL}\",\"messages\":[],\"max_tokens\":3}}");
    let request = format!(
        "POST /resource_server/v1/chat/completions HTTP/1.1\r\nhost: gw\r\n\
         content-type: application/json\r\nx-mock-first-token-ms: 500\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = gw.connect().await;
    stream.write_all(request.as_bytes()).await.expect("write");
    // Some clients send a CRLF after a POST body (RFC 9112 section 2.2 tolerates it); here
    // it arrives while the gateway waits for the backend's answer.
    tokio::time::sleep(Duration::from_millis(150)).await;
    stream.write_all(b"\r\n").await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("chat.completion"), "{answer}");
    assert_eq!(count(&mock.stats().requests_abandoned), 0);
}
