//! Batch jobs under faults: cancel and expiry mid-run, the gateway killed (SIGKILL) at random
//! moments or stopped (SIGTERM), a backend failing and going away, and interactive traffic
//! that keeps a backend busy. Each ends with every `custom_id` exactly once.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::{Duration, Instant};

use common::batch::{assert_exactly_once, guide_lines, BatchSite};
use common::*;
use serde_json::json;

fn slow(ms: u64) -> MockConfig {
    MockConfig {
        first_token_delay: Duration::from_millis(ms),
        ..MockConfig::default()
    }
}

async fn submit(
    site: &BatchSite,
    user: &str,
    lines: usize,
    extra: serde_json::Value,
) -> (String, String) {
    let input = site.input(user, "in.jsonl", &guide_lines(lines));
    let out = site.home(user).join("out").display().to_string();
    let mut body = json!({"input_file_path": input, "output_folder_path": out, "model": MODEL});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, batch) = site.post(user, "/v1/batches", &body).await;
    assert_eq!(status, 200, "{batch}");
    let id = batch["id"].as_str().expect("id").to_string();
    let folder = batch["result_folder_path"]
        .as_str()
        .expect("folder")
        .to_string();
    (id, folder)
}

async fn completed_lines(site: &BatchSite, id: &str) -> i64 {
    let (_, b) = site.get("alice", &format!("/v1/batches/{id}")).await;
    b["request_counts"]["completed"]
        .as_i64()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_batch_keeps_its_results_and_closes_the_rest() {
    let site = BatchSite::start(slow(150), "batch_max_in_flight = 1\n", "").await;
    let (id, folder) = submit(&site, "alice", 20, json!({})).await;
    poll(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { (completed_lines(&site, &id).await >= 3).then_some(()) },
    )
    .await
    .expect("lines complete");
    let (status, b) = site
        .post("alice", &format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{b}");
    assert!(
        b["status"] == "cancelling" || b["status"] == "cancelled",
        "{b}"
    );
    let b = site
        .wait_for("alice", &id, &["cancelled"], Duration::from_secs(10))
        .await;
    assert!(b["cancelled_at"].as_i64().is_some());
    let (results, errors) = assert_exactly_once(&folder, 20);
    assert!(
        (3..20).contains(&results.len()),
        "{} done before the cancel",
        results.len()
    );
    assert!(errors
        .iter()
        .all(|e| e["error"]["code"] == "batch_cancelled"));
    let (status, _) = site
        .post("alice", &format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "cancelling a cancelled batch changes nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_past_its_window_expires_with_the_rest_in_the_error_file() {
    let site = BatchSite::start(slow(200), "batch_max_in_flight = 1\n", "").await;
    let (id, folder) = submit(&site, "alice", 30, json!({"completion_window": "1s"})).await;
    let b = site
        .wait_for("alice", &id, &["expired"], Duration::from_secs(10))
        .await;
    assert!(b["expired_at"].as_i64().is_some());
    let (results, errors) = assert_exactly_once(&folder, 30);
    assert!(results.len() < 30);
    assert!(errors.iter().any(|e| e["error"]["code"] == "batch_expired"));
}

/// Kills the gateway at three random moments of a batch; each restart picks up where the
/// last left off, and the output holds every line once.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_nothing_and_writes_nothing_twice() {
    let mut site = BatchSite::start(slow(15), "batch_max_in_flight = 4\n", "").await;
    let lines = 300;
    let (id, folder) = submit(&site, "alice", lines, json!({})).await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7);
    for round in 0..3u32 {
        let wait = 100 + u64::from(seed.rotate_left(round * 7) % 400);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        eprintln!(
            "round {round}: SIGKILL after {wait} ms, {} lines done",
            completed_lines(&site, &id).await
        );
        site.restart().await;
    }
    site.wait_for("alice", &id, &["completed"], Duration::from_secs(60))
        .await;
    let (results, errors) = assert_exactly_once(&folder, lines);
    assert_eq!(results.len(), lines, "{errors:?}");
    assert!(count(&site.mock.stats().requests) >= lines as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_lines_in_flight_finish_and_the_restart_does_the_rest() {
    let mut site = BatchSite::start(slow(600), "batch_max_in_flight = 2\n", "").await;
    let (id, folder) = submit(&site, "alice", 6, json!({})).await;
    poll(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || async { (count(&site.mock.stats().requests) >= 2).then_some(()) },
    )
    .await
    .expect("two lines in flight");
    site.gw.terminate();
    let stopped = Instant::now();
    assert!(
        site.gw.wait_exit(Duration::from_secs(10)).await,
        "the gateway exits"
    );
    assert!(
        stopped.elapsed() >= Duration::from_millis(200),
        "it waited for the lines in flight"
    );
    site.restart().await;
    assert!(
        completed_lines(&site, &id).await >= 2,
        "the lines in flight were kept"
    );
    site.wait_for("alice", &id, &["completed"], Duration::from_secs(20))
        .await;
    let (results, _) = assert_exactly_once(&folder, 6);
    assert_eq!(results.len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_then_vanished_backend_delays_lines_and_they_still_complete() {
    let extra = format!("batch_max_in_flight = 2\n{FAST_HEALTH}");
    let mut site = BatchSite::start(slow(20), &extra, "max_attempts = 50\n").await;
    site.mock.set_fault(Fault::Status(503));
    let (id, folder) = submit(&site, "alice", 20, json!({})).await;
    poll(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || async { (count(&site.mock.stats().requests) >= 4).then_some(()) },
    )
    .await
    .expect("attempts that fail");
    // Gone altogether: connections refused, then back on the same port.
    let addr = site.mock.addr;
    site.mock.stop();
    site.mock.set_fault(Fault::None);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(completed_lines(&site, &id).await, 0);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("same port");
    site.mock = MockBackend::serve(listener, slow(20));
    site.wait_for("alice", &id, &["completed"], Duration::from_secs(30))
        .await;
    let (results, _) = assert_exactly_once(&folder, 20);
    assert_eq!(results.len(), 20, "every line completed after the retries");
}

#[tokio::test(flavor = "multi_thread")]
async fn lines_that_keep_failing_land_in_the_error_file_with_the_reason() {
    let site = BatchSite::start(MockConfig::default(), "", "max_attempts = 2\n").await;
    site.mock.set_fault(Fault::Status(500));
    let (id, folder) = submit(&site, "alice", 3, json!({})).await;
    let b = site
        .wait_for("alice", &id, &["completed"], Duration::from_secs(10))
        .await;
    assert_eq!(b["request_counts"]["failed"], 3);
    let (_, errors) = assert_exactly_once(&folder, 3);
    assert_eq!(errors[0]["response"]["status_code"], 500);
    assert_eq!(errors[0]["error"]["code"], "backend_error");
    assert_eq!(count(&site.mock.stats().requests), 6, "two attempts a line");
}

#[tokio::test(flavor = "multi_thread")]
async fn interactive_load_above_batch_when_below_pauses_the_batch() {
    let site = BatchSite::start(
        slow(1500),
        "batch_max_in_flight = 2\nbatch_when_below = 2\n",
        "",
    )
    .await;
    let url = site.url("/v1/chat/completions");
    let interactive: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let auth = bearer("key-bob");
                post_json_with(&url, &chat_body(false), &[("authorization", auth.as_str())])
                    .await
                    .status()
            })
        })
        .collect();
    poll(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || async { (count(&site.mock.stats().requests) >= 2).then_some(()) },
    )
    .await
    .expect("interactive requests in flight");
    let (id, folder) = submit(&site, "alice", 4, json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&site.mock.stats().requests),
        2,
        "no batch line started beside two interactive ones"
    );
    for task in interactive {
        assert_eq!(task.await.expect("task"), 200);
    }
    site.wait_for("alice", &id, &["completed"], Duration::from_secs(20))
        .await;
    assert_exactly_once(&folder, 4);
}
