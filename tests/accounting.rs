//! Usage accounting fails safe, through the real binary: the top-level `usage` is found
//! wherever it is in a JSON body (vLLM puts `prompt_logprobs` after it), and a 2xx whose
//! usage cannot be read is charged its whole reservation, never nothing.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use common::*;
use serde_json::{json, Value};

async fn gateway() -> (Gateway, MockBackend) {
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let config = format!(
        "[[plugins]]\nkind = \"rate_limits\"\n[plugins.per_user]\ntokens_per_minute = 6000\n\n{}",
        pool("p", "local", &[MODEL], &[mock.addr.to_string()], "")
    );
    (Gateway::start("", &config).await, mock)
}

/// Sends `body` with extra headers; returns the response's remaining-tokens header.
async fn send(gw: &Gateway, body: &Value, headers: &[(&str, &str)]) -> u64 {
    let resp = post_json_with(&gw.api("/v1/chat/completions"), body, headers).await;
    assert_eq!(resp.status(), 200);
    let remaining = resp.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .expect("header")
        .parse()
        .expect("number");
    let _ = resp.bytes().await.expect("body");
    remaining
}

fn chat(max_tokens: u64, extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

/// Remaining tokens after a small probe request (max_tokens 50): what earlier requests were
/// charged shows as what is missing from 6000 (the budget refills 100 a second).
async fn remaining_after(gw: &Gateway) -> u64 {
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    send(gw, &chat(50, json!({})), &[]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_after_prompt_logprobs_is_read_and_charged() {
    let (gw, _mock) = gateway().await;
    send(
        &gw,
        &chat(50, json!({"prompt_logprobs": 1})),
        &[("x-mock-usage", "3000,50")],
    )
    .await;
    let line = gw.access_line(|l| l["status"] == 200).await;
    assert_eq!(line["prompt_tokens"], 3000, "{line}");
    assert_eq!(line["completion_tokens"], 50, "{line}");
    assert_eq!(line["tokens_estimated"], false, "{line}");
    let remaining = remaining_after(&gw).await;
    // 6000 − 3050 used − the probe's own reservation (~70), plus 100 a second refilled.
    assert!((2800..3400).contains(&remaining), "{remaining}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2xx_without_usage_is_charged_its_whole_reservation() {
    let (gw, _mock) = gateway().await;
    send(&gw, &chat(2000, json!({})), &[("x-mock-usage", "none")]).await;
    let remaining = remaining_after(&gw).await;
    // 6000 − ~2010 reserved and kept − the probe's ~70, plus 100 a second refilled.
    assert!((3800..4600).contains(&remaining), "{remaining}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_without_a_usage_chunk_is_charged_its_whole_reservation() {
    let (gw, _mock) = gateway().await;
    // The mock streams 8 tokens; counting events would charge ~10 tokens.
    send(&gw, &chat(2000, json!({"stream": true})), &[]).await;
    let line = gw.access_line(|l| l["stream"] == true).await;
    assert_eq!(line["tokens_estimated"], true, "{line}");
    let remaining = remaining_after(&gw).await;
    assert!((3800..4600).contains(&remaining), "{remaining}");
    // With `include_usage` the stream is charged what it used: back to nearly everything.
    let (gw, _mock) = gateway().await;
    send(
        &gw,
        &chat(
            2000,
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ),
        &[],
    )
    .await;
    let remaining = remaining_after(&gw).await;
    assert!(remaining > 5800, "{remaining}");
}
