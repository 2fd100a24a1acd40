//! The OpenAI routes through the real binary: federated and targeted, local routes, and the
//! gateway's own errors.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn chat_completions_and_embeddings_reach_the_backend() {
    let (gw, mock) = with_mock(MockConfig::default(), "").await;
    for path in ["/v1/chat/completions", "/local/vllm/v1/chat/completions"] {
        let resp = post_json(&gw.api(path), &chat_body(false)).await;
        assert_eq!(resp.status(), 200, "{path}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], MODEL);
    }
    let completion = json!({"model": MODEL, "prompt": "The future of AI is", "max_tokens": 100});
    let resp = post_json(&gw.api("/v1/completions"), &completion).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.expect("json")["object"],
        "text_completion"
    );
    let embed = json!({"model": MODEL, "input": ["a", "b"]});
    let resp = post_json(&gw.api("/local/vllm/v1/embeddings"), &embed).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.expect("json")["data"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(count(&mock.stats().requests), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn local_routes_answer_without_a_backend() {
    let (gw, mock) = with_mock(MockConfig::default(), "").await;
    let models = get_json(&gw.api("/v1/models")).await;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["object"], "model");
    let targeted = get_json(&gw.api("/local/vllm/v1/models")).await;
    assert_eq!(targeted["data"].as_array().map(Vec::len), Some(1));
    let other = get_json(&gw.api("/elsewhere/vllm/v1/models")).await;
    assert_eq!(other["data"].as_array().map(Vec::len), Some(0));
    let endpoints = get_json(&gw.api("/list-endpoints")).await;
    assert_eq!(
        endpoints["clusters"]["local"]["vllm"][0]["endpoints"]["chat_completions"],
        "/resource_server/local/vllm/v1/chat/completions"
    );
    assert_eq!(get(&gw.api("/health")).await.status(), 200);
    assert_eq!(count(&mock.stats().requests), 0);
}

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    assert!(resp.headers().contains_key("x-request-id"));
    let body: Value = resp.json().await.expect("error body is JSON");
    for key in ["message", "type", "code"] {
        assert!(body["error"][key].is_string(), "error.{key} in {body}");
    }
    assert!(
        body["error"].get("param").is_some(),
        "error.param in {body}"
    );
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_errors_are_openai_shaped() {
    let (gw, mock) = with_mock(MockConfig::default(), "max_request_body = \"4KiB\"").await;
    let post = |path: &str, body: &'static str| {
        let url = gw.api(path);
        async move { post_body(&url, body, &[]).await }
    };

    let (status, body) = error_of(post("/v1/chat/completions", "{not json").await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    let (status, body) = error_of(post("/v1/chat/completions", r#"{"messages":[]}"#).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("missing_model"))
    );
    let (status, body) =
        error_of(post("/v1/chat/completions", r#"{"model":"gpt-17"}"#).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("gpt-17"));
    let (status, body) = error_of(
        post(
            "/other/vllm/v1/chat/completions",
            r#"{"model":"facebook/opt-125m"}"#,
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (status, _) = error_of(post("/v2/nothing", "{}").await).await;
    assert_eq!(status, 404);
    let resp = get(&gw.api("/v1/chat/completions")).await;
    assert_eq!(
        resp.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let (status, _) = error_of(resp).await;
    assert_eq!(status, 405);
    let big = format!(r#"{{"model":"{MODEL}","prompt":"{}"}}"#, "x".repeat(8192));
    let (status, body) =
        error_of(post_body(&gw.api("/v1/completions"), big.clone(), &[]).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("request_too_large"))
    );
    // The same body without a Content-Length (chunked) is refused as it arrives.
    let chunks = futures_util::stream::iter(
        big.into_bytes()
            .chunks(1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = post_body(
        &gw.api("/v1/completions"),
        reqwest::Body::wrap_stream(chunks),
        &[],
    )
    .await;
    assert_eq!(error_of(resp).await.0, 413);
    assert_eq!(
        count(&mock.stats().requests),
        0,
        "no bad request reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_errors_pass_through_unchanged() {
    let (gw, _mock) = with_mock(MockConfig::default(), "").await;
    let resp = post_json_with(
        &gw.api("/v1/chat/completions"),
        &chat_body(false),
        &[("x-mock-fault", "status=400")],
    )
    .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["object"], "error", "vLLM's own error body, untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_token_never_reaches_the_backend_and_request_ids_flow() {
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let pools = pool(
        "keyed",
        "local",
        &[MODEL],
        &[mock.addr.to_string()],
        "api_key_env = \"ROUTES_TEST_POOL_KEY\"",
    );
    let gw = Gateway::start_with_env("", &pools, &[("ROUTES_TEST_POOL_KEY", "pool-secret")]).await;
    let headers = [
        ("authorization", "Bearer users-globus-token"),
        ("x-request-id", "abc-123"),
        // A header the client marks as hop-by-hop stops at the gateway.
        ("connection", "keep-alive, x-trace-hop"),
        ("x-trace-hop", "1"),
        // Repeated headers travel as they came, every value in order.
        ("x-multi", "a"),
        ("x-multi", "b"),
    ];
    let resp = post_json_with(&gw.api("/v1/chat/completions"), &chat_body(false), &headers).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let seen = last_headers(&mock);
    assert_eq!(seen["authorization"], "Bearer pool-secret");
    assert_eq!(seen["x-request-id"], "abc-123");
    assert!(!seen.contains_key("x-trace-hop"), "{seen:?}");
    let multi: Vec<&str> = seen
        .get_all("x-multi")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(multi, ["a", "b"]);
    assert!(seen.contains_key("host"), "{seen:?}");

    // An insane request id is replaced, not forwarded.
    let resp = post_json_with(
        &gw.api("/v1/chat/completions"),
        &chat_body(false),
        &[("x-request-id", "bad id with spaces")],
    )
    .await;
    let id = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(id.len(), 32);
    let line = gw.access_line(|l| l["request_id"] == id.as_str()).await;
    assert_eq!(line["pool"], "keyed");
    assert_eq!(line["status"], 200);
    assert_eq!(line["model"], MODEL);
    assert_eq!(line["backend"], mock.addr.to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_base_path_serves_at_the_root() {
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let pools = pool("root", "local", &[MODEL], &[mock.addr.to_string()], "");
    let gw = Gateway::start("base_path = \"\"", &pools).await;
    let resp = post_json(&gw.url("/v1/chat/completions"), &chat_body(false)).await;
    assert_eq!(resp.status(), 200);
}
