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

use common::raw::RawBackend;
use common::*;

#[tokio::test]
async fn small_bodies_leave_with_their_header_and_every_body_arrives_whole() {
    let backend = RawBackend::start().await;
    let gateway = Gateway::start("", &local_pool(backend.addr)).await;
    // 1 KiB and 12 KiB prompts fit the 16 KiB bound; 40 KiB does not.
    for prompt_len in [1024, 12 * 1024, 40 * 1024] {
        let body = serde_json::json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "y".repeat(prompt_len)}],
        })
        .to_string();
        let response = post_body(
            &gateway.api("/v1/chat/completions"),
            body.clone(),
            &[("content-type", "application/json")],
        )
        .await;
        assert_eq!(response.status(), 200, "prompt of {prompt_len} bytes");
        let arrivals = std::mem::take(&mut *backend.arrivals.lock().expect("lock"));
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
    }
}
