//! Batch jobs through the usage guide's door (paths on a shared filesystem): the guide's
//! exact request, results exactly once, every validation rule, path confinement, and one
//! user never seeing another's batches.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::Duration;

use common::batch::{assert_exactly_once, guide_lines, BatchSite};
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn the_guides_batch_runs_and_its_results_land_in_a_new_folder() {
    let site = BatchSite::start(MockConfig::default(), "", "").await;
    let input = site.input("alice", "input.jsonl", &guide_lines(25));
    let out = site.home("alice").join("out").display().to_string() + "/";
    // The usage guide's body, as curl sends it.
    let (status, batch) = site.submit("alice", &input, &out).await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["request_counts"]["total"], 25);
    assert_eq!(batch["endpoint"], "/v1/chat/completions");
    let id = batch["id"].as_str().expect("id").to_string();
    let folder = batch["result_folder_path"]
        .as_str()
        .expect("folder")
        .to_string();
    assert!(
        folder.ends_with(&format!("/out/input_opt-125m_{id}")),
        "{folder}"
    );

    let done = site
        .wait_for("alice", &id, &["completed"], Duration::from_secs(20))
        .await;
    assert_eq!(
        done["request_counts"],
        json!({"total": 25, "completed": 25, "failed": 0})
    );
    for stamp in [
        "created_at",
        "in_progress_at",
        "finalizing_at",
        "completed_at",
    ] {
        assert!(done[stamp].as_i64().is_some(), "{stamp}: {done}");
    }
    let (results, errors) = assert_exactly_once(&folder, 25);
    assert!(errors.is_empty());
    let first = &results[0];
    assert_eq!(first["response"]["status_code"], 200);
    assert_eq!(first["response"]["body"]["object"], "chat.completion");
    assert!(first["id"]
        .as_str()
        .is_some_and(|i| i.starts_with("batch_req_")));
    // The model went into each line's body (the guide's lines name none).
    assert_eq!(first["response"]["body"]["model"], MODEL);
    assert_eq!(count(&site.mock.stats().requests), 25);

    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{folder}/summary.json")).expect("summary.json"),
    )
    .expect("json");
    assert_eq!(summary["lines"], 25);
    assert_eq!(summary["completed"], 25);
    assert_eq!(summary["completion_tokens"], 25 * 8);
    let (status, result) = site.get("alice", &format!("/v1/batches/{id}/result")).await;
    assert_eq!(status, 200);
    assert_eq!(result["completion_tokens"], summary["completion_tokens"]);
    // Batch lines are in the access log with the batch id and their tokens.
    let line = site.gw.access_line(|l| l["route"] == "batch").await;
    assert_eq!(line["batch_id"], id.as_str());
    assert_eq!(line["user"], "alice@anl.gov");
    assert_eq!(line["completion_tokens"], 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn input_file_alias_targeted_route_listing_and_the_result_while_running() {
    let slow = MockConfig {
        first_token_delay: Duration::from_millis(200),
        ..MockConfig::default()
    };
    let site = BatchSite::start(slow, "batch_max_in_flight = 1\n", "").await;
    let out = site.home("bob").join("out").display().to_string();
    let input = site.input("bob", "a.jsonl", &guide_lines(8));
    let body = json!({"input_file": input, "output_folder_path": out, "model": MODEL});
    let (status, batch) = site.post("bob", "/local/vllm/v1/batches", &body).await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["cluster"], "local");
    assert_eq!(batch["framework"], "vllm");
    let id = batch["id"].as_str().expect("id");
    let (status, early) = site.get("bob", &format!("/v1/batches/{id}/result")).await;
    assert_eq!(status, 409, "{early}");

    // The same input again while it runs: refused.
    let (status, again) = site.post("bob", "/v1/batches", &body).await;
    assert_eq!(status, 409, "{again}");
    let (status, list) = site.get("bob", "/v1/batches?status=in_progress").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"][0]["id"], id);
    assert_eq!(list["has_more"], false);
    let (status, _) = site.get("bob", "/v1/batches?status=bogus").await;
    assert_eq!(status, 400);
    site.wait_for("bob", id, &["completed"], Duration::from_secs(20))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_line_is_named_and_nothing_is_sent() {
    let site = BatchSite::start(MockConfig::default(), "", "max_lines = 5\n").await;
    let out = site.home("alice").join("out").display().to_string();
    let dup = json!({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": MODEL, "messages": []}});
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["{not json".into()], "is not a JSON object"),
        (vec![json!({"max_tokens": 5}).to_string()], "neither `custom_id`"),
        (vec![dup.to_string(), dup.to_string()], "repeats the `custom_id`"),
        (vec![json!({"messages": [], "model": "other/model"}).to_string()], "is for model `other/model`"),
        (vec![json!({"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": {"model": MODEL, "prompt": "a"}}).to_string(),
              json!({"messages": []}).to_string()], "is for `/v1/chat/completions`, the batch for `/v1/completions`"),
        (vec![json!({"messages": [], "stream": true}).to_string()], "stream: true"),
        (vec![json!({"messages": [], "max_tokens": -1}).to_string()], "max_tokens"),
        (vec![json!({"messages": []}).to_string(); 6], "more than 5 lines"),
        (vec![], "no lines"),
    ];
    for (i, (lines, expected)) in cases.iter().enumerate() {
        let path = site.home("alice").join(format!("bad{i}.jsonl"));
        std::fs::write(&path, lines.join("\n")).expect("write");
        let (status, err) = site
            .submit("alice", &path.display().to_string(), &out)
            .await;
        assert_eq!(status, 400, "case {i}: {err}");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "case {i}: {message}");
        assert_eq!(err["error"]["code"], "invalid_input_file");
    }
    assert_eq!(count(&site.mock.stats().requests), 0, "nothing was sent");
    // No result folder was left behind by a refused batch.
    assert_eq!(std::fs::read_dir(&out).expect("out").count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_stay_inside_the_users_own_roots() {
    let site = BatchSite::start(MockConfig::default(), "", "").await;
    let input = site.input("alice", "in.jsonl", &guide_lines(1));
    let bobs = site.input("bob", "in.jsonl", &guide_lines(1));
    let alice_out = site.home("alice").join("out").display().to_string();
    let root = site.root.path().display().to_string();
    // A symlink inside alice's tree pointing into bob's.
    let link = site.home("alice").join("link.jsonl");
    std::os::unix::fs::symlink(&bobs, &link).expect("symlink");
    let outside = [
        (bobs.clone(), alice_out.clone()),
        (link.display().to_string(), alice_out.clone()),
        (
            format!("{root}/home/alice/../bob/in.jsonl"),
            alice_out.clone(),
        ),
        ("/etc/passwd".into(), alice_out.clone()),
        (
            format!("{root}/home/bob/does-not-exist.jsonl"),
            alice_out.clone(),
        ),
        (
            input.clone(),
            site.home("bob").join("out").display().to_string(),
        ),
        (input.clone(), "/tmp".into()),
        ("relative/in.jsonl".into(), alice_out.clone()),
    ];
    for (i, (input, output)) in outside.iter().enumerate() {
        let (status, err) = site.submit("alice", input, output).await;
        assert!(status == 403 || status == 400, "case {i}: {status} {err}");
        if i < 2 || i == 4 {
            // Someone else's existing file and a missing one read alike.
            assert_eq!(status, 403, "case {i}");
            assert!(err["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("does not exist, or it is not inside"));
        }
    }
    assert_eq!(count(&site.mock.stats().requests), 0);
    let (status, _) = site.submit("alice", &input, &alice_out).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_users_batch_is_not_found_and_a_user_runs_at_most_two() {
    let slow = MockConfig {
        first_token_delay: Duration::from_millis(300),
        ..MockConfig::default()
    };
    let site = BatchSite::start(slow, "batch_max_in_flight = 1\n", "").await;
    let out = site.home("alice").join("out").display().to_string();
    let mut ids = Vec::new();
    for name in ["a.jsonl", "b.jsonl"] {
        let input = site.input("alice", name, &guide_lines(3));
        let (status, b) = site.submit("alice", &input, &out).await;
        assert_eq!(status, 200, "{b}");
        ids.push(b["id"].as_str().expect("id").to_string());
    }
    let third = site.input("alice", "c.jsonl", &guide_lines(1));
    let (status, err) = site.submit("alice", &third, &out).await;
    assert_eq!(status, 429, "{err}");
    assert_eq!(err["error"]["code"], "too_many_active_batches");

    let id = &ids[0];
    for path in [
        format!("/v1/batches/{id}"),
        format!("/v1/batches/{id}/result"),
        "/v1/batches/batch_unknown".into(),
    ] {
        let (status, err) = site.get("bob", &path).await;
        assert_eq!(status, 404, "{path}: {err}");
    }
    let (status, _) = site
        .post("bob", &format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 404);
    let (_, list) = site.get("bob", "/v1/batches").await;
    assert_eq!(list["data"], json!([]));
    let (_, list) = site.get("alice", "/v1/batches?limit=1").await;
    assert_eq!(list["has_more"], true);
    let after = list["last_id"].as_str().expect("last_id");
    let (_, rest) = site
        .get("alice", &format!("/v1/batches?limit=1&after={after}"))
        .await;
    assert_eq!(rest["data"].as_array().map(Vec::len), Some(1));
    assert_ne!(rest["data"][0]["id"], list["data"][0]["id"]);
}
