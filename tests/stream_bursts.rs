//! Events that arrive together go out together (one write for a burst, not one per event):
//! they still reach the client whole and in order, usage is still read, and a backend that
//! breaks off in the middle of a burst is still a truncated stream, never a clean end.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::net::SocketAddr;

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A backend that answers each POST with `events` SSE events in a single write (then usage and
/// `[DONE]`, or, when `break_off`, a closed connection mid-body); health checks get 200.
async fn burst_backend(events: usize, break_off: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 8192];
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + length {
                        continue;
                    }
                    buf.drain(..end + 4 + length);
                    if head.starts_with("get") {
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                            .await;
                        continue;
                    }
                    let _ = conn.write_all(&burst(events, break_off)).await;
                    if break_off {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The whole answer as one buffer: header, `events` chunked SSE events, and the end.
fn burst(events: usize, break_off: bool) -> Vec<u8> {
    let mut out =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    let mut push = |event: String| {
        out.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
    };
    for i in 0..events {
        push(format!(
            "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}}}}]}}\n\n"
        ));
    }
    if !break_off {
        push(format!(
            "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":{events},\"total_tokens\":{}}}}}\n\n",
            events + 7
        ));
        push("data: [DONE]\n\n".into());
        out.extend_from_slice(b"0\r\n\r\n");
    }
    out
}

async fn gateway_before(backend: SocketAddr) -> Gateway {
    Gateway::start(
        "",
        &pool("p", "local", &[MODEL], &[backend.to_string()], ""),
    )
    .await
}

/// The stream's text, and whether it ended cleanly.
async fn read_stream(gw: &Gateway) -> (String, bool) {
    let resp = post_json(&gw.api("/v1/chat/completions"), &chat_body(true)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Err(_) => return (text, false),
        }
    }
    (text, true)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_events_passes_through_whole_in_order_with_its_usage() {
    let gw = gateway_before(burst_backend(300, false).await).await;
    let (text, clean) = read_stream(&gw).await;
    assert!(clean, "{text}");
    let mut at = 0;
    for i in 0..300 {
        let token = format!("\"tok{i} \"");
        let found = text[at..]
            .find(&token)
            .unwrap_or_else(|| panic!("{token} missing or out of order"));
        at += found + token.len();
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let line = gw.access_line(|l| l["status"] == 200).await;
    assert_eq!(line["completion_tokens"], 300, "{line}");
    assert_eq!(line["tokens_estimated"], false, "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_that_breaks_off_mid_burst_is_a_truncated_stream() {
    let gw = gateway_before(burst_backend(50, true).await).await;
    let (text, clean) = read_stream(&gw).await;
    assert!(
        !clean,
        "the client must see the truncation, not a clean end: {text}"
    );
    assert!(
        text.contains("\"tok49 \""),
        "what came is passed on: {text}"
    );
    assert!(!text.contains("[DONE]"));
    let line = gw.access_line(|l| l["status"] == 200).await;
    assert_eq!(line["error_code"], "upstream_error", "{line}");
}
