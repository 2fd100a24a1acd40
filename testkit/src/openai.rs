//! The mock's HTTP surface, shaped like vLLM's OpenAI server.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub use crate::generation::{Generation, UsageReport};
use crate::{Fault, MockConfig, MockState};

type Shared = Arc<MockState>;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Chat,
    Completion,
    Embedding,
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route(
            "/v1/chat/completions",
            post(|s: State<Shared>, h: HeaderMap, b: Bytes| inference(s, h, b, Kind::Chat)),
        )
        .route(
            "/v1/completions",
            post(|s: State<Shared>, h: HeaderMap, b: Bytes| inference(s, h, b, Kind::Completion)),
        )
        .route(
            "/v1/embeddings",
            post(|s: State<Shared>, h: HeaderMap, b: Bytes| inference(s, h, b, Kind::Embedding)),
        )
        // Large request bodies are the point of some tests.
        .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
        .with_state(state)
}

/// In serial mode, waits for the generation in progress (the model's lock), as
/// llama-cpp-python's routes that touch the model do.
async fn wait_for_model(state: &MockState) {
    if state.config().serial {
        drop(state.model.lock().await);
    }
}

async fn health(State(state): State<Shared>) -> StatusCode {
    state.stats.health_checks.fetch_add(1, Ordering::SeqCst);
    wait_for_model(&state).await;
    if state.config().fault == Fault::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn models(State(state): State<Shared>) -> Response {
    wait_for_model(&state).await;
    let data: Vec<Value> = state
        .config()
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": now(), "owned_by": "vllm", "max_model_len": 2048}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// vLLM's error shape.
fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"object": "error", "message": message, "type": "BadRequestError", "param": null, "code": status.as_u16()});
    (status, axum::Json(body)).into_response()
}

fn usage_report(headers: &HeaderMap) -> UsageReport {
    let Some(value) = headers.get("x-mock-usage").and_then(|v| v.to_str().ok()) else {
        return UsageReport::Real;
    };
    if value == "none" {
        return UsageReport::Omitted;
    }
    let mut parts = value.split(',').map(|p| p.trim().parse::<u64>());
    match (parts.next(), parts.next()) {
        (Some(Ok(p)), Some(Ok(c))) => UsageReport::Fixed(p, c),
        _ => UsageReport::Real,
    }
}

/// Counts a request as abandoned when its handler is dropped before it finished.
struct AbandonGuard<'a> {
    state: &'a MockState,
    finished: bool,
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.state
                .stats
                .requests_abandoned
                .fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The request's overrides of the mock's configuration.
fn effective_config(state: &MockState, headers: &HeaderMap) -> MockConfig {
    let mut config = state.config();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let millis = |name: &str| {
        header(name)
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
    };
    if let Some(fault) = header("x-mock-fault").and_then(|v| v.parse().ok()) {
        config.fault = fault;
    }
    if let Some(d) = millis("x-mock-first-token-ms") {
        config.first_token_delay = d;
    }
    if let Some(d) = millis("x-mock-token-gap-ms") {
        config.token_gap = d;
    }
    if let Some(n) = header("x-mock-tokens").and_then(|v| v.parse().ok()) {
        config.tokens = n;
    }
    config
}

async fn inference(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
    kind: Kind,
) -> Response {
    state.stats.requests.fetch_add(1, Ordering::SeqCst);
    let digest = hex::encode(Sha256::digest(&body));
    if let Ok(mut last) = state.stats.last_body.lock() {
        *last = Some((digest.clone(), body.len()));
    }
    if let Ok(mut last) = state.stats.last_headers.lock() {
        *last = Some(headers.clone());
    }
    let config = effective_config(&state, &headers);
    let mut guard = AbandonGuard {
        state: &state,
        finished: false,
    };
    // Serial: the whole generation (a stream included) holds the model.
    let held = if config.serial {
        Some(state.model.clone().lock_owned().await)
    } else {
        None
    };
    let mut response = answer(&state, &config, &body, kind, usage_report(&headers), held).await;
    guard.finished = true;
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&digest) {
        h.insert("x-mock-body-sha256", v);
    }
    h.insert("x-mock-body-len", HeaderValue::from(body.len()));
    response
}

async fn answer(
    state: &Shared,
    config: &MockConfig,
    body: &[u8],
    kind: Kind,
    report: UsageReport,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
) -> Response {
    match config.fault {
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error(status, "injected fault");
        }
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return error(StatusCode::GATEWAY_TIMEOUT, "hung");
        }
        _ => {}
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "request body must be a JSON object",
            )
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("JSON decode error: {e}")),
    };
    let model = request["model"].as_str().unwrap_or_default().to_string();
    if !config.models.contains(&model) {
        let message = format!("The model `{model}` does not exist.");
        return error(StatusCode::NOT_FOUND, &message);
    }
    if kind == Kind::Embedding {
        return embeddings(config, &request, &model);
    }
    let max_tokens = request["max_tokens"].as_u64().unwrap_or(u64::MAX);
    let tokens = u64::from(config.tokens).min(max_tokens) as u32;
    let prompt_tokens = count_prompt_tokens(&request);
    let generation = Generation {
        id: format!("cmpl-{:x}", now()),
        model,
        kind,
        tokens,
        prompt_tokens,
        finish_reason: if u64::from(config.tokens) > max_tokens {
            "length"
        } else {
            "stop"
        },
        report,
    };
    if request["stream"].as_bool().unwrap_or(false) {
        let include_usage = request["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false);
        return crate::openai_stream::stream(
            state.clone(),
            config.clone(),
            generation,
            include_usage,
            held,
        );
    }
    tokio::time::sleep(config.first_token_delay + config.token_gap * tokens).await;
    let prompt_logprobs = request["prompt_logprobs"].as_u64().is_some();
    json_response(generation.full_text(prompt_logprobs))
}

fn json_response(text: String) -> Response {
    let mut response = Response::new(Body::from(text));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

fn embeddings(config: &MockConfig, request: &Value, model: &str) -> Response {
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().map(|i| i.to_string()).collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "`input` must be a string or an array",
            )
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let seed = Sha256::digest(text.as_bytes());
            let vector: Vec<f64> = (0..config.embedding_dim)
                .map(|d| f64::from(seed[d % seed.len()]) / 255.0 - 0.5)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": vector})
        })
        .collect();
    let tokens: usize = inputs
        .iter()
        .map(|t| t.split_whitespace().count().max(1))
        .sum();
    axum::Json(json!({
        "id": format!("embd-{:x}", now()),
        "object": "list",
        "created": now(),
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    }))
    .into_response()
}

/// A rough whitespace count, enough for usage numbers that move with the prompt.
fn count_prompt_tokens(request: &Value) -> u32 {
    let text = match (&request["messages"], &request["prompt"]) {
        (Value::Array(messages), _) => messages
            .iter()
            .map(|m| m["content"].to_string())
            .collect::<Vec<_>>()
            .join(" "),
        (_, Value::String(p)) => p.clone(),
        (_, other) => other.to_string(),
    };
    text.split_whitespace().count().max(1) as u32
}

pub(crate) fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}
