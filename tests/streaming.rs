//! Streaming: SSE chunks flow through as they arrive, a client that leaves stops the
//! backend, long generations are not cut, and silent backends time out.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;

/// Starts the standard chat request, streamed.
async fn stream(gw: &Gateway) -> reqwest::Response {
    post_json(&gw.api("/v1/chat/completions"), &chat_body(true)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_arrive_as_the_backend_sends_them() {
    let config = MockConfig {
        token_gap: Duration::from_millis(100),
        tokens: 6,
        ..MockConfig::default()
    };
    let (gw, _mock) = with_mock(config, "").await;
    let started = Instant::now();
    let resp = stream(&gw).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("text/event-stream"));
    let mut arrivals = Vec::new();
    let mut text = String::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        arrivals.push(started.elapsed());
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(
        text.matches("data: ").count(),
        6 + 2,
        "six tokens, the finish event and [DONE]"
    );
    let (first, last) = (arrivals[0], *arrivals.last().expect("chunks"));
    // Five 100 ms gaps: the first event must arrive long before the last.
    assert!(
        last - first >= Duration::from_millis(400),
        "first {first:?}, last {last:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_chunk_passes_through() {
    let (gw, _mock) = with_mock(MockConfig::default(), "").await;
    let mut body = chat_body(true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let text = post_json(&gw.api("/v1/chat/completions"), &body)
        .await
        .text()
        .await
        .expect("text");
    assert!(text.contains(r#""usage":{"completion_tokens":8"#), "{text}");
    let line = gw.access_line(|l| l["route"] == "chat_completions").await;
    assert_eq!(line["completion_tokens"], 8);
    assert_eq!(line["tokens_estimated"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_stops_the_backend_stream() {
    let config = MockConfig {
        token_gap: Duration::from_millis(50),
        tokens: 400,
        ..MockConfig::default()
    };
    let (gw, mock) = with_mock(config, "").await;
    let resp = stream(&gw).await;
    let mut body = resp.bytes_stream();
    body.next().await.expect("first chunk").expect("ok");
    drop(body);
    // 400 tokens at 50 ms would take 20 s; the mock must see the cancellation promptly.
    eventually(
        Duration::from_secs(3),
        "the backend saw the stream cancelled",
        || count(&mock.stats().streams_cancelled) == 1,
    )
    .await;
    assert_eq!(count(&mock.stats().streams_completed), 0);
    eventually(Duration::from_secs(2), "access line", || {
        !gw.access_log().is_empty()
    })
    .await;
    let log = gw.access_log();
    assert_eq!(log[0]["client_aborted"], true);
    assert_eq!(log[0]["truncated"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn long_generations_are_bounded_by_the_idle_gap_only() {
    // 12 tokens 150 ms apart take ~1.8 s, well past the 1 s idle timeout.
    let config = MockConfig {
        token_gap: Duration::from_millis(150),
        tokens: 12,
        ..MockConfig::default()
    };
    let (gw, mock) = with_mock(config, "upstream_idle_timeout = \"1s\"").await;
    let text = stream(&gw).await.text().await.expect("text");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(count(&mock.stats().streams_completed), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_backend_gets_504() {
    let config = MockConfig {
        fault: Fault::Hang,
        ..MockConfig::default()
    };
    let (gw, _mock) = with_mock(config, "upstream_idle_timeout = \"500ms\"").await;
    let started = Instant::now();
    let resp = post_json(&gw.api("/v1/chat/completions"), &chat_body(false)).await;
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(5));
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_reset_mid_stream_reaches_the_client_as_a_cut_stream() {
    let config = MockConfig {
        fault: Fault::ResetMidStream,
        tokens: 10,
        token_gap: Duration::from_millis(10),
        ..MockConfig::default()
    };
    let (gw, _mock) = with_mock(config, "").await;
    let resp = stream(&gw).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let mut failed = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(
        failed,
        "the client must see an incomplete body, not a clean end: {text}"
    );
    assert!(!text.contains("[DONE]"));
    // The gateway itself keeps serving.
    let resp = post_json_with(
        &gw.api("/v1/chat/completions"),
        &chat_body(false),
        &[("x-mock-fault", "none")],
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_streams_finish() {
    let config = MockConfig {
        token_gap: Duration::from_millis(150),
        tokens: 10,
        ..MockConfig::default()
    };
    let (mut gw, mock) = with_mock(config, "shutdown_grace_period = \"30s\"").await;
    let resp = stream(&gw).await;
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let first = body.next().await.expect("first chunk").expect("ok");
    text.push_str(&String::from_utf8_lossy(&first));
    gw.terminate();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(
            &chunk.expect("the stream is not cut"),
        ));
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(count(&mock.stats().streams_completed), 1);
    // The stream was the last connection: the gateway exits now, not after the 30 s grace.
    assert!(
        gw.wait_exit(Duration::from_secs(5)).await,
        "the gateway exits once its last stream has ended"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_on_an_idle_gateway_exits_at_once_even_with_keep_alive_clients() {
    let (mut gw, _mock) = with_mock(MockConfig::default(), "shutdown_grace_period = \"30s\"").await;
    // The client keeps its connection open in its pool after this answer.
    let http = client();
    let resp = http
        .post(gw.api("/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    gw.terminate();
    assert!(
        gw.wait_exit(Duration::from_secs(5)).await,
        "an idle gateway exits without waiting out its grace period"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(http);
}

/// A connection accepted just before the shutdown (or an upgrade's hand-over) whose request
/// had not arrived yet is a client that did nothing wrong: it gets its answer, then the
/// connection closes. Closing it unanswered failed one connection attempt in an upgrade.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_accepted_before_sigterm_still_gets_its_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut gw, _mock) = with_mock(MockConfig::default(), "shutdown_grace_period = \"30s\"").await;
    let mut conn = gw.connect().await;
    // Accepted by the gateway, no request yet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.terminate();
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.write_all(b"GET /resource_server/health HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut answer))
        .await
        .expect("the gateway answers and closes")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        gw.wait_exit(Duration::from_secs(5)).await,
        "then the gateway exits without waiting out its grace period"
    );
}
