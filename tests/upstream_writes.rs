//! How a request reaches the backend: a body of up to 16 KiB leaves in the same write as the
//! header (one syscall, so the backend's first read holds the whole request); a larger one
//! follows the header. Either way the backend gets the body byte for byte, once.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the backend saw of one POST: the size of its first read, and the body.
#[derive(Clone, Debug)]
struct Arrival {
    first_read: usize,
    whole: usize,
    body: Vec<u8>,
}

/// A backend that records each POST's first read and body, answers 200 (health checks too).
async fn recording_backend() -> (SocketAddr, Arc<Mutex<Vec<Arrival>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                loop {
                    let mut buf = vec![0u8; 256 * 1024];
                    let first_read = match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut got = buf[..first_read].to_vec();
                    let end = loop {
                        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end;
                        }
                        let n = conn.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    };
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while got.len() < end + 4 + length {
                        let n = conn.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    if head.starts_with("post") {
                        record.lock().expect("lock").push(Arrival {
                            first_read,
                            whole: end + 4 + length,
                            body: got[end + 4..end + 4 + length].to_vec(),
                        });
                    }
                    let answer = "{\"id\":\"x\",\"object\":\"chat.completion\",\"choices\":[]}";
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if conn.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn small_bodies_leave_with_their_header_and_every_body_arrives_whole() {
    let (addr, seen) = recording_backend().await;
    let pools = pool("local-vllm", "local", &[MODEL], &[addr.to_string()], "");
    let gateway = Gateway::start("", &pools).await;
    let client = reqwest::Client::new();
    // 1 KiB and 12 KiB prompts fit the 16 KiB bound; 40 KiB does not.
    for prompt_len in [1024, 12 * 1024, 40 * 1024] {
        let body = serde_json::json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "y".repeat(prompt_len)}],
        })
        .to_string();
        let response = client
            .post(gateway.api("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "prompt of {prompt_len} bytes");
        let arrivals = seen.lock().expect("lock").clone();
        assert_eq!(arrivals.len(), 1, "sent once: {prompt_len}");
        let arrival = &arrivals[0];
        assert_eq!(
            arrival.body,
            body.as_bytes(),
            "the body arrived byte for byte ({prompt_len})"
        );
        if prompt_len <= 12 * 1024 {
            // One write of a few KiB on loopback is one read. (A larger body follows its
            // header in a second write, which a read may or may not find already there.)
            assert_eq!(
                arrival.first_read, arrival.whole,
                "a {prompt_len}-byte prompt left in the header's write"
            );
        }
        seen.lock().expect("lock").clear();
    }
}
