//! Kept-alive connections to backends, through the real binary: reused while open, never
//! used once their backend closed them, closed by the gateway when idle too long or when
//! the backend's answer says `Connection: close`.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::raw::RawBackend;
use common::*;
/// A gateway in front of `backend` alone (its health checks open connections of their own,
/// which carry no POST and are not counted).
async fn gateway_for(backend: &RawBackend, server_extra: &str) -> Gateway {
    Gateway::start(server_extra, &local_pool(backend.addr)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_after_another_requests_share_one_backend_connection() {
    let backend = RawBackend::start().await;
    let gw = gateway_for(&backend, "").await;
    let url = gw.api("/v1/chat/completions");
    for _ in 0..20 {
        assert_eq!(post_json(&url, &chat_body(false)).await.status(), 200);
    }
    let connections: BTreeSet<u64> = backend.post_connections().into_iter().collect();
    assert_eq!(connections.len(), 1, "{connections:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_its_backend_closed_while_idle_is_never_used() {
    let backend = RawBackend::start().await;
    backend.close_idle_after(Duration::from_millis(100));
    let gw = gateway_for(&backend, "").await;
    let url = gw.api("/v1/chat/completions");
    for i in 0..5 {
        let id = format!("after-idle-{i}");
        let resp = post_json_with(&url, &chat_body(false), &[("x-request-id", id.as_str())]).await;
        assert_eq!(resp.status(), 200, "request {i}");
        let line = gw.access_line(|l| l["request_id"] == id.as_str()).await;
        assert_eq!(
            line["upstream_attempts"], 1,
            "no failed attempt on a dead connection: {line}"
        );
        // Longer than the backend keeps an idle connection.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(count(&backend.posts), 5, "each prompt sent once");
    let connections: BTreeSet<u64> = backend.post_connections().into_iter().collect();
    assert_eq!(
        connections.len(),
        5,
        "each on a fresh connection: {connections:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_whose_answer_says_close_is_closed_by_the_gateway_not_reused() {
    let backend = RawBackend::start().await;
    backend.say_close();
    let gw = gateway_for(&backend, "").await;
    let url = gw.api("/v1/chat/completions");
    for i in 0..3 {
        assert_eq!(
            post_json(&url, &chat_body(false)).await.status(),
            200,
            "request {i}"
        );
    }
    eventually(
        Duration::from_secs(5),
        "the gateway closes each connection it may not reuse",
        || count(&backend.closed_by_gateway) == 3,
    )
    .await;
    let connections: BTreeSet<u64> = backend.post_connections().into_iter().collect();
    assert_eq!(connections.len(), 3, "{connections:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_is_closed_after_upstream_keepalive_timeout() {
    let backend = RawBackend::start().await;
    let gw = gateway_for(&backend, "upstream_keepalive_timeout = \"1s\"").await;
    let url = gw.api("/v1/chat/completions");
    assert_eq!(post_json(&url, &chat_body(false)).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&backend.closed_by_gateway),
        0,
        "kept while within the timeout"
    );
    eventually(
        Duration::from_secs(5),
        "the gateway closes the idle connection",
        || count(&backend.closed_by_gateway) == 1,
    )
    .await;
    // The next request opens a new connection and succeeds.
    assert_eq!(post_json(&url, &chat_body(false)).await.status(), 200);
    let connections: BTreeSet<u64> = backend.post_connections().into_iter().collect();
    assert_eq!(connections.len(), 2, "{connections:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn any_upstream_keepalive_timeout_the_file_accepts_works() {
    for (timeout, connections) in [("500000000000years", 1), ("0s", 3)] {
        let backend = RawBackend::start().await;
        let server = format!("upstream_keepalive_timeout = \"{timeout}\"");
        let gw = gateway_for(&backend, &server).await;
        let url = gw.api("/v1/chat/completions");
        for _ in 0..3 {
            assert_eq!(
                post_json(&url, &chat_body(false)).await.status(),
                200,
                "{timeout}"
            );
        }
        let used: BTreeSet<u64> = backend.post_connections().into_iter().collect();
        assert_eq!(used.len(), connections, "{timeout}: {used:?}");
    }
}
