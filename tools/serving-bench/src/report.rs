//! The summary the common serving benchmarks print, and its JSONL record.

use std::time::Duration;

use serde_json::{json, Value};

use crate::request::Outcome;

fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Mean, median and p99 of `values` (milliseconds).
fn stats(mut values: Vec<f64>) -> (f64, f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    values.sort_by(f64::total_cmp);
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let at = |q: f64| {
        let i = ((values.len() - 1) as f64 * q).round() as usize;
        values.get(i).copied().unwrap_or_default()
    };
    (mean, at(0.5), at(0.99))
}

pub fn summarize(outcomes: &[Outcome], duration: Duration) -> Value {
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok).collect();
    let secs = duration.as_secs_f64().max(1e-9);
    let input: u64 = ok.iter().map(|o| o.input_tokens).sum();
    let output: u64 = ok.iter().map(|o| o.output_tokens).sum();
    let ttft = stats(ok.iter().map(|o| ms(&o.ttft)).collect());
    let tpot = stats(
        ok.iter()
            .filter(|o| o.output_tokens > 1)
            .map(|o| (ms(&o.latency) - ms(&o.ttft)) / (o.output_tokens - 1) as f64)
            .collect(),
    );
    let itl = stats(ok.iter().flat_map(|o| o.itl.iter().map(ms)).collect());
    let e2e = stats(ok.iter().map(|o| ms(&o.latency)).collect());
    let errors: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| o.error.as_deref())
        .take(5)
        .collect();
    json!({
        "completed": ok.len(),
        "failed": outcomes.len() - ok.len(),
        "duration_s": secs,
        "total_input_tokens": input,
        "total_output_tokens": output,
        "request_throughput": ok.len() as f64 / secs,
        "input_throughput": input as f64 / secs,
        "output_throughput": output as f64 / secs,
        "mean_ttft_ms": ttft.0, "median_ttft_ms": ttft.1, "p99_ttft_ms": ttft.2,
        "mean_tpot_ms": tpot.0, "median_tpot_ms": tpot.1, "p99_tpot_ms": tpot.2,
        "mean_itl_ms": itl.0, "median_itl_ms": itl.1, "p99_itl_ms": itl.2,
        "mean_e2el_ms": e2e.0, "median_e2el_ms": e2e.1, "p99_e2el_ms": e2e.2,
        "first_errors": errors,
    })
}

pub fn print(r: &Value) {
    let n = |k: &str| r[k].as_f64().unwrap_or_default();
    println!("{:=^60}", " Serving Benchmark Result ");
    println!("{:<44}{:>16}", "Successful requests:", r["completed"]);
    println!("{:<44}{:>16}", "Failed requests:", r["failed"]);
    println!("{:<44}{:>16.2}", "Benchmark duration (s):", n("duration_s"));
    println!(
        "{:<44}{:>16}",
        "Total input tokens:", r["total_input_tokens"]
    );
    println!(
        "{:<44}{:>16}",
        "Total generated tokens:", r["total_output_tokens"]
    );
    println!(
        "{:<44}{:>16.2}",
        "Request throughput (req/s):",
        n("request_throughput")
    );
    println!(
        "{:<44}{:>16.2}",
        "Input token throughput (tok/s):",
        n("input_throughput")
    );
    println!(
        "{:<44}{:>16.2}",
        "Output token throughput (tok/s):",
        n("output_throughput")
    );
    for (title, key) in [
        ("Time to First Token", "ttft"),
        ("Time per Output Token (excl. 1st token)", "tpot"),
        ("Inter-token Latency", "itl"),
        ("End-to-end Latency", "e2el"),
    ] {
        println!("{:-^60}", format!(" {title} "));
        let upper = key.to_uppercase();
        println!(
            "{:<44}{:>16.2}",
            format!("Mean {upper} (ms):"),
            n(&format!("mean_{key}_ms"))
        );
        println!(
            "{:<44}{:>16.2}",
            format!("Median {upper} (ms):"),
            n(&format!("median_{key}_ms"))
        );
        println!(
            "{:<44}{:>16.2}",
            format!("P99 {upper} (ms):"),
            n(&format!("p99_{key}_ms"))
        );
    }
    println!("{:=<60}", "");
    if let Some(errors) = r["first_errors"].as_array().filter(|e| !e.is_empty()) {
        println!("first errors: {errors:?}");
    }
}
