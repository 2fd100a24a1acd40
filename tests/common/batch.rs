//! Batch scenarios: a gateway with `[batch]` on, users `alice` and `bob` (API keys
//! `key-alice`, `key-bob`) with home trees under a temp root, and helpers to write input
//! files, submit, and wait for a batch to end.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::requests::{bearer, client};
use super::{api_keys_plugin, poll, pool, Gateway, MockBackend, MockConfig, MODEL};

pub struct BatchSite {
    /// Holds `state/` (the job store) and `home/<user>/` trees.
    pub root: tempfile::TempDir,
    pub mock: MockBackend,
    pub gw: Gateway,
    /// Lines added to `[batch]`.
    batch_extra: String,
    /// Lines added to the pool.
    pool_extra: String,
}

impl BatchSite {
    pub async fn start(mock: MockConfig, pool_extra: &str, batch_extra: &str) -> BatchSite {
        let root = tempfile::tempdir().expect("tempdir");
        for user in ["alice", "bob"] {
            std::fs::create_dir_all(root.path().join("home").join(user).join("out")).expect("home");
        }
        let mock = MockBackend::start(mock).await.expect("mock");
        let text = config(&root, &mock, pool_extra, batch_extra);
        BatchSite {
            gw: Gateway::start("", &text).await,
            root,
            mock,
            batch_extra: batch_extra.to_string(),
            pool_extra: pool_extra.to_string(),
        }
    }

    /// Starts a new gateway process on the same state (the old one, if running, is killed).
    pub async fn restart(&mut self) {
        self.gw.kill();
        let text = config(&self.root, &self.mock, &self.pool_extra, &self.batch_extra);
        self.gw = Gateway::start("", &text).await;
    }

    pub fn home(&self, user: &str) -> PathBuf {
        self.root.path().join("home").join(user)
    }

    /// Writes `lines` (one JSON value each) to `home/<user>/<name>` and returns its path.
    pub fn input(&self, user: &str, name: &str, lines: &[Value]) -> String {
        let text: Vec<String> = lines.iter().map(Value::to_string).collect();
        let path = self.home(user).join(name);
        std::fs::write(&path, text.join("\n") + "\n").expect("input");
        path.display().to_string()
    }

    pub fn url(&self, path: &str) -> String {
        self.gw.api(path)
    }

    pub async fn post(&self, user: &str, path: &str, body: &Value) -> (u16, Value) {
        post_as(&self.gw, user, path, body).await
    }

    pub async fn get(&self, user: &str, path: &str) -> (u16, Value) {
        get_as(&self.gw, user, path).await
    }

    /// Submits a path-based batch of `input` to `output` for `MODEL`. A 503 (the store did
    /// not answer in time: a loaded test host) is retried, as its `Retry-After` tells clients
    /// to, at most three times and a second apart.
    pub async fn submit(&self, user: &str, input: &str, output: &str) -> (u16, Value) {
        let body = json!({"input_file_path": input, "output_folder_path": output, "model": MODEL});
        let mut tries = 0;
        loop {
            let (status, answer) = self.post(user, "/v1/batches", &body).await;
            tries += 1;
            if status != 503 || tries > 3 {
                return (status, answer);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Polls the batch until its status is one of `statuses`; the batch object.
    pub async fn wait_for(
        &self,
        user: &str,
        id: &str,
        statuses: &[&str],
        limit: Duration,
    ) -> Value {
        wait_for(&self.gw, user, id, statuses, limit).await
    }
}

/// POST `body` as JSON to `{base}{path}` of `gw` as `user` (API key `key-<user>`).
pub async fn post_as(gw: &Gateway, user: &str, path: &str, body: &Value) -> (u16, Value) {
    let res = client()
        .post(gw.api(path))
        .header("authorization", bearer(&format!("key-{user}")))
        .json(body)
        .send()
        .await
        .expect("send");
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

/// GET `{base}{path}` of `gw` as `user`.
pub async fn get_as(gw: &Gateway, user: &str, path: &str) -> (u16, Value) {
    let res = client()
        .get(gw.api(path))
        .header("authorization", bearer(&format!("key-{user}")))
        .send()
        .await
        .expect("send");
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

/// Polls batch `id` on `gw` until its status is one of `statuses`; the batch object.
pub async fn wait_for(
    gw: &Gateway,
    user: &str,
    id: &str,
    statuses: &[&str],
    limit: Duration,
) -> Value {
    let path = format!("/v1/batches/{id}");
    let found = poll(limit, Duration::from_millis(50), || async {
        let (_, b) = get_as(gw, user, &path).await;
        statuses
            .contains(&b["status"].as_str().unwrap_or_default())
            .then_some(b)
    })
    .await;
    match found {
        Some(b) => b,
        None => panic!(
            "batch {id} never reached {statuses:?}: {}",
            get_as(gw, user, &path).await.1
        ),
    }
}

/// The config of a site (the same state directory every time).
pub fn config(
    root: &tempfile::TempDir,
    mock: &MockBackend,
    pool_extra: &str,
    batch_extra: &str,
) -> String {
    let root = root.path().display();
    format!(
        "{}{}\n[batch]\nstate_dir = \"{root}/state\"\nallowed_input_roots = [\"{root}/home/{{user}}\"]\nallowed_output_roots = [\"{root}/home/{{user}}\"]\nretry_backoff = \"100ms\"\n{batch_extra}\n",
        api_keys_plugin(&[("alice", &[]), ("bob", &[])]),
        pool("local-vllm", "local", &[MODEL], &[mock.addr.to_string()], pool_extra),
    )
}

/// `n` guide-format chat lines.
pub fn guide_lines(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"messages": [{"role": "user", "content": format!("question {i}")}], "max_tokens": 10}))
        .collect()
}

/// The JSON lines of a result file (none if it does not exist).
pub fn read_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// How many times each `custom_id` appears across `results` and `errors`.
pub fn custom_id_counts(results: &[Value], errors: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in results.iter().chain(errors) {
        let id = line["custom_id"].as_str().expect("custom_id").to_string();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// Asserts lines `line-1..=line-n` each appear exactly once in the batch's folder.
pub fn assert_exactly_once(folder: &str, n: usize) -> (Vec<Value>, Vec<Value>) {
    let folder = std::path::Path::new(folder);
    let results = read_lines(&folder.join("results.jsonl"));
    let errors = read_lines(&folder.join("errors.jsonl"));
    let counts = custom_id_counts(&results, &errors);
    assert_eq!(
        counts.len(),
        n,
        "every line once: {} results, {} errors",
        results.len(),
        errors.len()
    );
    for i in 1..=n {
        assert_eq!(counts.get(&format!("line-{i}")), Some(&1), "line-{i}");
    }
    (results, errors)
}
