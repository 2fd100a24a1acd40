//! The serving benchmark (`serving-bench`) as docs/user-guide.md runs it, against the real
//! gateway in front of the mock backend.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::certs::{ca, server_cert, tls_server};
use common::*;
use serde_json::Value;

/// `serving-bench` is its own workspace crate; `scripts/test.sh` builds every binary of the
/// workspace before the tests, so it stands next to the gateway's binary.
fn bench_binary() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_inference-gateway"))
        .with_file_name(format!("serving-bench{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

fn bench(args: &[&str]) -> (bool, String) {
    let out = Command::new(bench_binary())
        .args(args)
        .output()
        .expect("run serving-bench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_usage_guide_command_reports_latencies_and_throughput() {
    let config = MockConfig {
        token_gap: Duration::from_millis(2),
        tokens: 32,
        ..MockConfig::default()
    };
    let (gw, _mock) = with_mock(config, "").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("sharegpt.json");
    let results = dir.path().join("benchmark_results.jsonl");
    let (ok, text) = bench(&[
        "make-dataset",
        "--num",
        "30",
        "--output",
        data.to_str().expect("utf8"),
    ]);
    assert!(ok, "{text}");
    let url = gw.api("/v1/chat/completions");
    let common = [
        "--backend",
        "vllm",
        "--model",
        MODEL,
        "--base-url",
        &url,
        "--dataset-name",
        "sharegpt",
        "--dataset-path",
        data.to_str().expect("utf8"),
        "--output-file",
        results.to_str().expect("utf8"),
        "--num-prompts",
        "24",
        "--quiet",
    ];
    let (ok, text) = tokio::task::spawn_blocking({
        let args: Vec<String> = common
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--request-rate".into(),
                "100".into(),
                "--max-concurrency".into(),
                "8".into(),
            ])
            .collect();
        move || bench(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("join");
    assert!(ok, "{text}");
    assert!(
        text.contains("Serving Benchmark Result") && text.contains("P99 TTFT (ms):"),
        "{text}"
    );
    let (ok, text) = tokio::task::spawn_blocking({
        let args: Vec<String> = common
            .iter()
            .map(|s| s.to_string())
            .chain(["--disable-stream".into()])
            .collect();
        move || bench(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("join");
    assert!(ok, "{text}");

    let records: Vec<Value> = std::fs::read_to_string(&results)
        .expect("results")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSONL"))
        .collect();
    assert_eq!(records.len(), 2, "one record appended per run");
    for r in &records {
        assert_eq!(r["completed"], 24, "{r}");
        assert_eq!(r["failed"], 0);
        assert!(r["request_throughput"].as_f64().unwrap_or_default() > 0.0);
        assert!(r["output_throughput"].as_f64().unwrap_or_default() > 0.0);
        assert!(
            r["p99_e2el_ms"].as_f64().unwrap_or_default()
                >= r["median_e2el_ms"].as_f64().unwrap_or_default()
        );
    }
    let streamed = &records[0];
    assert_eq!(streamed["stream"], true);
    assert!(
        streamed["mean_itl_ms"].as_f64().unwrap_or_default() >= 1.0,
        "tokens 2 ms apart: {streamed}"
    );
    assert!(
        streamed["mean_ttft_ms"].as_f64().unwrap_or_default()
            < streamed["mean_e2el_ms"].as_f64().unwrap_or_default()
    );
}

/// The usage guide's `--disable-ssl-verification`, for a gateway whose certificate comes from a
/// site's own (here: a test) CA: every request completes over https; without the flag the
/// benchmark refuses the certificate and says no request succeeded.
#[tokio::test(flavor = "multi_thread")]
async fn https_with_a_self_signed_ca_needs_disable_ssl_verification() {
    let dir = tempfile::tempdir().expect("tempdir");
    server_cert(&ca("test CA"), dir.path(), false);
    let port = free_port();
    let (gw, _mock) = with_mock(MockConfig::default(), &tls_server(dir.path(), port)).await;
    let data = dir.path().join("sharegpt.json");
    let results = dir.path().join("results.jsonl");
    let (ok, text) = bench(&[
        "make-dataset",
        "--num",
        "10",
        "--output",
        data.to_str().expect("utf8"),
    ]);
    assert!(ok, "{text}");
    let url = format!("https://127.0.0.1:{port}/resource_server/v1/chat/completions");
    let args: Vec<String> = [
        "--model",
        MODEL,
        "--base-url",
        &url,
        "--dataset-path",
        data.to_str().expect("utf8"),
        "--output-file",
        results.to_str().expect("utf8"),
        "--num-prompts",
        "6",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = |extra: &'static [&'static str]| {
        let args = args.clone();
        tokio::task::spawn_blocking(move || {
            let all: Vec<&str> = args
                .iter()
                .map(String::as_str)
                .chain(extra.iter().copied())
                .collect();
            bench(&all)
        })
    };

    let (ok, text) = run(&["--disable-ssl-verification"]).await.expect("join");
    assert!(ok, "{text}");
    assert!(text.contains("Serving Benchmark Result"), "{text}");
    let (ok, text) = run(&[]).await.expect("join");
    assert!(!ok, "the test CA is not trusted: {text}");
    assert!(
        text.contains("Failed requests:") && text.contains("no request succeeded"),
        "{text}"
    );
    // serving-bench prints only reqwest's top-level message ("error sending request for
    // url ..."), not its cause; the gateway's log says why: the client refused the CA.
    assert!(text.contains("error sending request"), "{text}");
    eventually(
        Duration::from_secs(5),
        "the refused handshake is logged",
        || gw.stderr().contains("UnknownCA"),
    )
    .await;

    let records: Vec<Value> = std::fs::read_to_string(&results)
        .expect("results")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSONL"))
        .collect();
    assert_eq!(records.len(), 2, "one record appended per run");
    assert_eq!(records[0]["completed"], 6, "{}", records[0]);
    assert_eq!(records[0]["failed"], 0, "{}", records[0]);
    assert_eq!(records[1]["completed"], 0, "{}", records[1]);
    assert_eq!(records[1]["failed"], 6, "{}", records[1]);
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let (ok, text) = bench(&[
        "--base-url",
        "http://127.0.0.1:9/v1/completions",
        "--model",
        "m",
        "--request-rate",
        "fast",
        "--dataset-name",
        "random",
    ]);
    assert!(!ok);
    assert!(text.contains("--request-rate `fast`"), "{text}");
    let (ok, text) = bench(&[
        "--base-url",
        "http://127.0.0.1:9/v1/completions",
        "--model",
        "m",
    ]);
    assert!(!ok);
    assert!(text.contains("--dataset-path is required"), "{text}");
}
