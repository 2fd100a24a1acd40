//! Request bodies of every size reach the backend byte for byte, whether the client sends a
//! Content-Length or chunks, and `Expect: 100-continue` does not stall.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: usize = 2 << 20;

/// A valid chat request of exactly `size` bytes, `model` last (as the OpenAI SDK orders it).
fn body_of_size(size: usize) -> Vec<u8> {
    let head = r#"{"messages":[{"role":"user","content":""#;
    let tail = format!(r#""}}],"max_tokens":4,"model":"{MODEL}"}}"#);
    let filler = size - head.len() - tail.len();
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(head.as_bytes());
    body.extend((0..filler).map(|i| b'a' + (i % 26) as u8));
    body.extend_from_slice(tail.as_bytes());
    assert_eq!(body.len(), size);
    body
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_arrive_byte_for_byte() {
    let (gw, mock) = with_mock(
        MockConfig::default(),
        &format!("max_request_body = \"{LIMIT}\""),
    )
    .await;
    let url = gw.api("/v1/chat/completions");
    for size in [1024, 64 * 1024 + 1, 1 << 20, LIMIT] {
        let body = body_of_size(size);
        let want = hex_sha256(&body);
        let json = [("content-type", "application/json")];
        let resp = post_body(&url, body.clone(), &json).await;
        assert_eq!(resp.status(), 200, "content-length body of {size}");
        assert_eq!(
            resp.headers()["x-mock-body-sha256"],
            want.as_str(),
            "size {size}"
        );

        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
        let stream = futures_util::stream::iter(chunks);
        let resp = post_body(&url, reqwest::Body::wrap_stream(stream), &[]).await;
        assert_eq!(resp.status(), 200, "chunked body of {size}");
        assert_eq!(
            resp.headers()["x-mock-body-sha256"],
            want.as_str(),
            "chunked size {size}"
        );
    }
    assert_eq!(
        mock.stats()
            .last_body
            .lock()
            .expect("lock")
            .as_ref()
            .map(|b| b.1),
        Some(LIMIT)
    );
    let resp = post_body(&url, body_of_size(LIMIT + 1), &[]).await;
    assert_eq!(resp.status(), 413);
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_100_continue_is_answered_at_once() {
    let (gw, _mock) = with_mock(MockConfig::default(), "").await;
    let body = body_of_size(200 * 1024);
    let mut socket = gw.connect().await;
    let head = format!(
        "POST /resource_server/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.expect("write head");
    let started = Instant::now();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
        .await
        .expect("100 in time")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    socket.write_all(&body).await.expect("write body");
    let mut response = Vec::new();
    let mut chunk = vec![0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut chunk))
            .await
            .expect("response")
            .expect("read");
        assert!(n > 0, "connection closed early");
        response.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("expect"),
        "no expect header leaks back"
    );
}
