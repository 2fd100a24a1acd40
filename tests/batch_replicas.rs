//! Several gateway replicas share batches through a real PostgreSQL server: any replica takes
//! submissions and answers for any batch, their workers share the lines, a replica killed
//! mid-batch leaves its lines to the others, and a database restart pauses batches without
//! losing a line or touching interactive traffic.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::Duration;

use common::batch::{
    assert_exactly_once, config, get_as, guide_lines, post_as, wait_for, BatchSite,
};
use common::postgres::{Postgres, PASSWORD};
use common::*;
use serde_json::json;

/// `[batch]` lines for a store on `pg`, with a short lease so a dead replica's lines move on
/// quickly.
fn shared(pg: &Postgres, site_root: &std::path::Path) -> String {
    let password = site_root.join("pg-password");
    std::fs::write(&password, PASSWORD).expect("password file");
    format!(
        "store = \"{}\"\nstore_password_file = \"{}\"\nlease = \"2s\"\nmax_active_per_user = 10\n",
        pg.url(),
        password.display()
    )
}

fn slow(ms: u64) -> MockConfig {
    MockConfig {
        first_token_delay: Duration::from_millis(ms),
        ..MockConfig::default()
    }
}

/// A second replica of `site`: the same config, its own process and port.
async fn replica(site: &BatchSite, pool_extra: &str, batch_extra: &str) -> Gateway {
    Gateway::start("", &config(&site.root, &site.mock, pool_extra, batch_extra)).await
}

fn multipart(data: &str) -> (String, Vec<u8>) {
    let boundary = "gateway-test-boundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{data}\r\n--{boundary}--\r\n"
    );
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_a_batch_and_finish_the_lines_of_one_that_was_killed() {
    let pg = Postgres::start();
    let root = tempfile::tempdir().expect("tempdir");
    let batch_extra = shared(&pg, root.path());
    let pool_extra = "batch_max_in_flight = 4\n";
    let mut site = BatchSite::start(slow(20), pool_extra, &batch_extra).await;
    let b = replica(&site, pool_extra, &batch_extra).await;

    let lines = 2000;
    let input = site.input("alice", "in.jsonl", &guide_lines(lines));
    let out = site.home("alice").join("out").display().to_string();
    let (status, batch) = site.submit("alice", &input, &out).await;
    assert_eq!(status, 200, "{batch}");
    let id = batch["id"].as_str().expect("id").to_string();
    let folder = batch["result_folder_path"]
        .as_str()
        .expect("folder")
        .to_string();

    // Both replicas work on it; then the first dies mid-batch.
    poll(
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            let a_lines = site
                .gw
                .access_log()
                .iter()
                .filter(|l| l["route"] == "batch")
                .count();
            let b_lines = b
                .access_log()
                .iter()
                .filter(|l| l["route"] == "batch")
                .count();
            (a_lines >= 50 && b_lines >= 50).then_some(())
        },
    )
    .await
    .expect("both replicas send lines");
    site.gw.kill();

    // The survivor answers for the batch and finishes it, the dead one's lines included.
    let done = wait_for(&b, "alice", &id, &["completed"], Duration::from_secs(90)).await;
    assert_eq!(done["request_counts"]["completed"], lines);
    let (results, errors) = assert_exactly_once(&folder, lines);
    assert_eq!((results.len(), errors.len()), (lines, 0));

    // A restarted replica answers for it too.
    site.restart().await;
    let (status, again) = site.get("alice", &format!("/v1/batches/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(again["status"], "completed");
    let (_, listed) = get_as(&b, "alice", "/v1/batches").await;
    assert_eq!(listed["data"][0]["id"], id.as_str());

    // Files + Batches across replicas: upload to one, create on the other, download anywhere.
    let text: Vec<String> = (0..5)
        .map(|i| {
            json!({"custom_id": format!("c{i}"), "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}})
            .to_string()
        })
        .collect();
    let (content_type, body) = multipart(&text.join("\n"));
    let res = client()
        .post(site.url("/v1/files"))
        .header("authorization", bearer("key-alice"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(res.status(), 200);
    let file: serde_json::Value = res.json().await.expect("file");
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let (status, made) = post_as(&b, "alice", "/v1/batches", &create).await;
    assert_eq!(status, 200, "{made}");
    let made_id = made["id"].as_str().expect("id");
    let finished = site
        .wait_for("alice", made_id, &["completed"], Duration::from_secs(30))
        .await;
    let output = finished["output_file_id"].as_str().expect("output file");
    let downloaded = client()
        .get(b.api(&format!("/v1/files/{output}/content")))
        .header("authorization", bearer("key-alice"))
        .send()
        .await
        .expect("download")
        .text()
        .await
        .expect("text");
    assert_eq!(downloaded.lines().count(), 5);
    let (status, _) = get_as(&b, "bob", &format!("/v1/files/{output}")).await;
    assert_eq!(status, 404, "another user's file, on any replica");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_on_one_replica_stops_the_others() {
    let pg = Postgres::start();
    let root = tempfile::tempdir().expect("tempdir");
    let batch_extra = shared(&pg, root.path());
    let pool_extra = "batch_max_in_flight = 1\n";
    let site = BatchSite::start(slow(100), pool_extra, &batch_extra).await;
    let b = replica(&site, pool_extra, &batch_extra).await;
    let input = site.input("alice", "in.jsonl", &guide_lines(100));
    let out = site.home("alice").join("out").display().to_string();
    let (status, batch) = site.submit("alice", &input, &out).await;
    let id = batch["id"]
        .as_str()
        .unwrap_or_else(|| panic!("submitted: {status} {batch}"))
        .to_string();
    poll(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { (count(&site.mock.stats().requests) >= 4).then_some(()) },
    )
    .await
    .expect("lines run");
    let (status, _) = post_as(&b, "alice", &format!("/v1/batches/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    let done = site
        .wait_for("alice", &id, &["cancelled"], Duration::from_secs(10))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "seen by every replica within seconds"
    );
    let sent = count(&site.mock.stats().requests);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&site.mock.stats().requests),
        sent,
        "no line starts after the cancel"
    );
    let folder = done["result_folder_path"].as_str().expect("folder");
    let (_, errors) = assert_exactly_once(folder, 100);
    assert!(errors
        .iter()
        .all(|e| e["error"]["code"] == "batch_cancelled"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_restart_pauses_batches_and_loses_nothing() {
    let pg = Postgres::start();
    let root = tempfile::tempdir().expect("tempdir");
    let batch_extra = shared(&pg, root.path());
    let site = BatchSite::start(slow(10), "batch_max_in_flight = 2\n", &batch_extra).await;
    let input = site.input("alice", "in.jsonl", &guide_lines(300));
    let out = site.home("alice").join("out").display().to_string();
    let (status, batch) = site.submit("alice", &input, &out).await;
    let id = batch["id"]
        .as_str()
        .unwrap_or_else(|| panic!("submitted: {status} {batch}"))
        .to_string();
    let folder = batch["result_folder_path"]
        .as_str()
        .expect("folder")
        .to_string();
    poll(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { (count(&site.mock.stats().requests) >= 20).then_some(()) },
    )
    .await
    .expect("lines run");

    pg.stop();
    // Batch routes answer 503 with Retry-After; interactive traffic is untouched.
    let second = site.input("alice", "second.jsonl", &guide_lines(1));
    let res = client()
        .post(site.url("/v1/batches"))
        .header("authorization", bearer("key-alice"))
        .json(&json!({"input_file_path": second, "output_folder_path": out, "model": MODEL}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let chat = post_json_with(
        &site.url("/v1/chat/completions"),
        &chat_body(false),
        &[("authorization", "Bearer key-bob")],
    )
    .await;
    assert_eq!(chat.status(), 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.resume();

    let done = site
        .wait_for("alice", &id, &["completed"], Duration::from_secs(60))
        .await;
    assert_eq!(done["request_counts"]["completed"], 300);
    assert_exactly_once(&folder, 300);
    assert!(site.gw.stderr().contains("batch store available again"));
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_starting_together_on_a_fresh_database_migrate_it_once() {
    let pg = Postgres::start();
    let root = tempfile::tempdir().expect("tempdir");
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let text = config(&root, &mock, "", &shared(&pg, root.path()));
    let (a, b, c) = tokio::join!(
        Gateway::start("", &text),
        Gateway::start("", &text),
        Gateway::start("", &text)
    );
    for gw in [&a, &b, &c] {
        let (status, list) = get_as(gw, "alice", "/v1/batches").await;
        assert_eq!(status, 200, "{list}: {}", gw.stderr());
    }
}
