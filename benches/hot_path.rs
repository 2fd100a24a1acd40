//! Micro benchmarks of per-request work on the gateway's hot path:
//! the `model`/`stream` extraction from request bodies, and the auth plugins' cached paths.
//!
//!   cargo bench --bench hot_path

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "benchmark set-up: a failed expectation ends the run"
)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gateway_plugin_api::{BuildContext, Plugin, PluginFactory, RequestCtx, RequestHead};
use gateway_testkit::globus::{MockGlobus, TokenSpec};
use inference_gateway::proxy::parse_routing_fields;

/// A chat request of about `size` bytes, `model` last as the OpenAI SDK writes it.
fn chat_body(size: usize) -> Vec<u8> {
    let filler = "lorem ipsum dolor sit amet ".repeat(size / 27 + 1);
    let body = serde_json::json!({
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": &filler[..size.saturating_sub(200)]},
        ],
        "max_tokens": 200, "temperature": 0.7, "stream": true, "model": "meta-llama/Meta-Llama-3-8B-Instruct",
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn model_extraction(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_routing_fields");
    for size in [1 << 10, 64 << 10, 1 << 20] {
        let body = chat_body(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| parse_routing_fields(black_box(body), 1 << 20).map(|f| f.stream))
        });
    }
    group.finish();
}

fn build(factory: &dyn PluginFactory, toml_text: &str) -> Arc<dyn Plugin> {
    let table: toml::Table = toml_text.parse().unwrap_or_default();
    match factory.build(&table, "plugins[0]", &BuildContext::default()) {
        Ok(plugin) => plugin,
        Err(e) => panic!("bench plugin config: {e}"),
    }
}

fn auth_cached(c: &mut Criterion) {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let globus = match runtime.block_on(MockGlobus::start("bench-client", "bench-secret")) {
        Ok(g) => g,
        Err(e) => panic!("mock globus: {e}"),
    };
    globus.add_token(
        "AgBenchToken",
        TokenSpec::user("ada@anl.gov", "bench-client"),
    );
    std::env::set_var("BENCH_GLOBUS_SECRET", "bench-secret");
    let globus_plugin = build(
        &plugin_globus_auth::GlobusAuthFactory,
        &format!(
            "kind = \"globus_auth\"\nclient_id = \"bench-client\"\nclient_secret_env = \"BENCH_GLOBUS_SECRET\"\n{}",
            globus.plugin_urls()
        ),
    );
    let api_keys_plugin = build(
        &plugin_api_keys::ApiKeysFactory,
        "kind = \"api_keys\"\n[[keys]]\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nusername = \"svc@anl.gov\"\n",
    );
    let cases = [
        ("globus_auth", globus_plugin, "Bearer AgBenchToken"),
        ("api_keys", api_keys_plugin, "Bearer test"),
    ];
    let mut group = c.benchmark_group("authenticate_cached");
    for (name, plugin, authorization) in cases {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "authorization",
            http::HeaderValue::from_static(authorization),
        );
        let (method, uri) = (
            http::Method::POST,
            http::Uri::from_static("/resource_server/v1/chat/completions"),
        );
        let head = RequestHead {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        let ctx = RequestCtx::new("bench".into(), None);
        // Warm the cache: the first call introspects.
        let first = runtime.block_on(plugin.authenticate(&head, &ctx));
        assert!(
            matches!(first, gateway_plugin_api::Authn::Accepted(_)),
            "{name} must accept the bench token"
        );
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let plugin = plugin.clone();
                let ctx = RequestCtx::new(String::new(), None);
                async move {
                    matches!(
                        plugin.authenticate(&head, &ctx).await,
                        gateway_plugin_api::Authn::Accepted(_)
                    )
                }
            })
        });
    }
    group.finish();
    assert_eq!(
        globus.introspections(),
        1,
        "the benchmark measured cache hits only"
    );
}

/// The limiter's `admit` in memory mode: five checks over three scopes, all admitted.
fn limiter_memory(c: &mut Criterion) {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let plugin = build(
        &plugin_rate_limits::RateLimitsFactory,
        "kind = \"rate_limits\"\n[per_user]\nrequests_per_minute = 1000000000\ntokens_per_minute = 1000000000000\n\
         [per_user_model]\nrequests_per_minute = 1000000000\ntokens_per_minute = 1000000000000\n\
         [per_model]\nrequests_per_minute = 1000000000\n",
    );
    let headers = http::HeaderMap::new();
    let (method, uri) = (
        http::Method::POST,
        http::Uri::from_static("/resource_server/v1/chat/completions"),
    );
    let head = RequestHead {
        method: &method,
        uri: &uri,
        headers: &headers,
    };
    let principal = std::sync::Arc::new(gateway_plugin_api::Principal {
        id: "5f6a7b8c-0000-4000-8000-000000000042".into(),
        username: "ada@anl.gov".into(),
        ..Default::default()
    });
    c.bench_function("rate_limits_admit_memory", |b| {
        b.to_async(&runtime).iter(|| {
            let plugin = plugin.clone();
            let mut ctx = RequestCtx::new(String::new(), None);
            ctx.model = Some("meta-llama/Meta-Llama-3-8B-Instruct".into());
            ctx.principal = Some(principal.clone());
            ctx.max_tokens = Some(200);
            ctx.body_bytes = 1200;
            async move {
                matches!(
                    plugin.admit(&head, &mut ctx).await,
                    gateway_plugin_api::Flow::Continue
                )
            }
        })
    });
}

/// The usage observer on a realistic SSE stream: vLLM-style chunks of one event each.
fn sse_observer(c: &mut Criterion) {
    use inference_gateway::proxy::usage::UsageObserver;
    let event = bytes::Bytes::from_static(
        b"data: {\"id\":\"cmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1795747973,\"model\":\"meta-llama/Meta-Llama-3-8B-Instruct\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" token\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    );
    let mut observer = UsageObserver::new(Some(b"text/event-stream"));
    let mut group = c.benchmark_group("sse_observer");
    group.throughput(Throughput::Bytes(event.len() as u64));
    group.bench_function("per_chunk", |b| {
        b.iter(|| observer.observe(black_box(&event)))
    });
    group.finish();

    // A non-streaming answer with vLLM's prompt_logprobs after `usage`: the whole body is
    // scanned for the top-level usage, in 16 KiB chunks as Pingora hands them over.
    let logprobs: Vec<String> = (0..2000)
        .map(|i| format!("{{\"{i}\":{{\"logprob\":-1.25,\"rank\":1,\"decoded_token\":\"tok\"}}}}"))
        .collect();
    let body = format!(
        "{{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1795747973,\"model\":\"m\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{}\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":2000,\"total_tokens\":2200,\"completion_tokens\":200}},\"prompt_logprobs\":[null,{}]}}",
        "word ".repeat(200),
        logprobs.join(",")
    );
    let mut group = c.benchmark_group("json_observer");
    // The test kit mock's answer of 16 tokens (360 bytes): dense in structure, like most
    // small answers.
    let small = br#"{"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11 tok12 tok13 tok14 tok15 ","role":"assistant"}}],"created":1795867652,"id":"cmpl-6b0ac404","model":"facebook/opt-125m","object":"chat.completion","usage":{"completion_tokens":16,"prompt_tokens":9,"total_tokens":25}}"#;
    group.throughput(Throughput::Bytes(small.len() as u64));
    group.bench_function("small_body", |b| {
        b.iter(|| {
            let mut observer = UsageObserver::new(Some(b"application/json"));
            observer.observe(black_box(small));
            observer.finish(0)
        })
    });
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("whole_body", |b| {
        b.iter(|| {
            let mut observer = UsageObserver::new(Some(b"application/json"));
            for chunk in body.as_bytes().chunks(16 << 10) {
                observer.observe(black_box(chunk));
            }
            observer.finish(0)
        })
    });
    group.finish();
}

/// Choosing a backend among 8 with least_requests, and a pool for a model among 4 pools.
fn pool_selection(c: &mut Criterion) {
    use inference_gateway::config::Config;
    use inference_gateway::routing::ModelTable;
    let mut text = String::new();
    for p in 0..4 {
        let backends: Vec<String> = (0..8)
            .map(|b| format!("\"127.0.0.1:{}\"", 10000 + p * 10 + b))
            .collect();
        text.push_str(&format!(
            "[[pools]]\nname = \"p{p}\"\ncluster = \"c{p}\"\nframework = \"vllm\"\nmodels = [\"m\", \"only{p}\"]\nbackends = [{}]\npriority = {p}\n",
            backends.join(", ")
        ));
    }
    let table = match Config::parse(&text) {
        Ok(config) => ModelTable::new(&config.pools, &inference_gateway::routing::bare_peer),
        Err(e) => panic!("bench config: {e}"),
    };
    c.bench_function("resolve_pool_and_select_backend", |b| {
        b.iter(|| {
            let pool = table.resolve(black_box("m"), None, None).ok();
            pool.and_then(|p| p.select(&[], 42).ok())
        })
    });
}

criterion_group!(
    benches,
    model_extraction,
    auth_cached,
    limiter_memory,
    sse_observer,
    pool_selection
);
criterion_main!(benches);
