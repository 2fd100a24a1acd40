//! Metrics, access-log fields, readiness and model status, through the real binary.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_known_traffic() {
    let metrics_port = free_port();
    let (gw, mock) = with_mock(
        MockConfig::default(),
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
    )
    .await;
    let url = gw.api("/v1/chat/completions");
    for _ in 0..2 {
        assert_eq!(post_json(&url, &chat_body(false)).await.status(), 200);
    }
    // A stream whose first token comes after 400 ms, then 5 more 100 ms apart.
    let mut body = chat_body(true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let slow = [
        ("x-mock-first-token-ms", "400"),
        ("x-mock-token-gap-ms", "100"),
        ("x-mock-tokens", "6"),
    ];
    let text = post_json_with(&url, &body, &slow)
        .await
        .text()
        .await
        .expect("text");
    assert!(text.ends_with("data: [DONE]\n\n"));
    let bogus = serde_json::json!({"model": "made-up-model-12345", "messages": []});
    assert_eq!(post_json(&url, &bogus).await.status(), 404);

    // The request metrics are recorded as each request ends; give the last one a moment.
    let last = poll(
        Duration::from_secs(1),
        Duration::from_millis(20),
        || async {
            let m = scrape(metrics_port).await;
            sample(&m, "igw_requests_total{model=\"other\"").map(|_| m)
        },
    );
    let m = match last.await {
        Some(m) => m,
        None => scrape(metrics_port).await,
    };
    let ok = "igw_requests_total{model=\"facebook/opt-125m\",pool=\"local-vllm\",route=\"chat_completions\",status=\"2xx\"}";
    assert_eq!(sample(&m, ok), Some(3.0), "{m}");
    let unknown =
        "igw_requests_total{model=\"other\",pool=\"\",route=\"chat_completions\",status=\"4xx\"}";
    assert_eq!(
        sample(&m, unknown),
        Some(1.0),
        "a made-up model is not a label value"
    );
    assert!(!m.contains("made-up-model"));
    let ttft = |le: &str| {
        sample(&m, &format!("igw_time_to_first_token_seconds_bucket{{model=\"facebook/opt-125m\",pool=\"local-vllm\",le=\"{le}\"}}"))
    };
    assert_eq!(
        ttft("0.3"),
        Some(0.0),
        "first token at ~400 ms is not under 300 ms"
    );
    assert_eq!(ttft("0.5"), Some(1.0), "... and is under 500 ms");
    let gaps_under_200ms = sample(&m, "igw_inter_chunk_gap_seconds_bucket{model=\"facebook/opt-125m\",pool=\"local-vllm\",le=\"0.2\"}");
    assert!(gaps_under_200ms.unwrap_or_default() >= 5.0, "{m}");
    assert_eq!(
        sample(
            &m,
            "igw_tokens_total{kind=\"completion\",model=\"facebook/opt-125m\"}"
        ),
        Some(8.0 + 8.0 + 6.0)
    );
    let backend = format!(
        "igw_backend_healthy{{backend=\"{}\",pool=\"local-vllm\"}}",
        mock.addr
    );
    assert_eq!(sample(&m, &backend), Some(1.0));
    assert_eq!(
        sample(&m, "igw_pool_inflight_requests{pool=\"local-vllm\"}"),
        Some(0.0)
    );
    assert!(
        sample(
            &m,
            "igw_gateway_overhead_seconds_count{route=\"chat_completions\"}"
        )
        .unwrap_or_default()
            >= 3.0
    );

    // Access-log lines parse as JSON and hold the fields operators filter on.
    let line = gw.access_line(|l| l["stream"] == true).await;
    for key in [
        "request_id",
        "route",
        "model",
        "pool",
        "backend",
        "status",
        "duration_ms",
        "first_byte_ms",
        "prompt_tokens",
        "completion_tokens",
        "limiter",
        "error_code",
        "user",
        "identity_provider",
        "panic_routed",
    ] {
        assert!(line.get(key).is_some(), "access log lacks {key}: {line}");
    }
    assert_eq!(line["completion_tokens"], 6);
    assert!(line["first_byte_ms"].as_f64().unwrap_or_default() >= 400.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_and_model_status_follow_health() {
    let mut mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let pools = pool(
        "local-vllm",
        "polaris",
        &[MODEL],
        &[mock.addr.to_string()],
        FAST_HEALTH,
    );
    let gw = Gateway::start("", &pools).await;
    let jobs = || async { get_json(&gw.api("/polaris/jobs")).await };
    let ready = || async { get(&gw.api("/ready")).await.status() };
    assert_eq!(ready().await, 200);
    let status = jobs().await;
    assert_eq!(status["models"][0]["model"], MODEL);
    assert_eq!(status["models"][0]["status"], "ready");
    // Checks fail but the backend accepts connections: panic routing still serves it.
    mock.set_fault(Fault::Unhealthy);
    let status_becomes = |want: &'static str| {
        let jobs = &jobs;
        async move {
            let became = poll(
                Duration::from_secs(3),
                Duration::from_millis(30),
                || async {
                    let status = jobs().await;
                    (status["models"][0]["status"] == want).then_some(status)
                },
            );
            match became.await {
                Some(status) => status,
                None => panic!("status never became {want}: {}", jobs().await),
            }
        }
    };
    let degraded = status_becomes("degraded").await;
    assert_eq!(degraded["models"][0]["backends_healthy"], 0);
    assert_eq!(ready().await, 200, "a pool in panic routing can serve");
    // Nothing listens any more: down, and not ready.
    mock.stop();
    let down = status_becomes("down").await;
    assert!(down["models"][0]["since"].as_u64().is_some());
    assert_eq!(ready().await, 503);
    assert_eq!(
        get(&gw.api("/health")).await.status(),
        200,
        "liveness stays up"
    );
}

/// Every metric the Grafana dashboard queries is one the code registers.
#[test]
fn dashboard_uses_only_registered_metric_names() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut sources = String::new();
    for dir in ["src", "plugins"] {
        let mut stack = vec![std::path::PathBuf::from(root).join(dir)];
        while let Some(path) = stack.pop() {
            for entry in std::fs::read_dir(&path).expect("dir").flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "rs") {
                    sources.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
                }
            }
        }
    }
    let dashboard = std::fs::read_to_string(format!("{root}/packaging/grafana-dashboard.json"))
        .expect("dashboard");
    let mut checked = 0;
    for (i, _) in dashboard.match_indices("igw_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .fold(name.clone(), |n, s| n.trim_end_matches(s).to_string());
        assert!(
            sources.contains(&format!("\"{base}\"")),
            "the dashboard queries {name}, which nothing registers"
        );
        checked += 1;
    }
    assert!(checked >= 14);
}
