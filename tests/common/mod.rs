//! Shared harness: spawn the real `inference-gateway` binary on a free port with a temp
//! config, and talk HTTP to it.

#![allow(
    dead_code,
    reason = "each test file uses a different part of the harness"
)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports, reason = "not every test file injects faults")]
pub use gateway_testkit::{closed_port, Fault, MockBackend, MockConfig, MockStats};

pub const MODEL: &str = "facebook/opt-125m";

pub fn free_port() -> u16 {
    closed_port()
}

pub struct Gateway {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the gateway on `[server]` + `rest` (pools, plugins) and waits until it answers.
    /// `server_extra` lines are added to `[server]`.
    pub async fn start(server_extra: &str, rest: &str) -> Gateway {
        Gateway::start_with_env(server_extra, rest, &[]).await
    }

    /// As `start`, with `env` set in the gateway process only: setting the test process's
    /// own environment would race with the tests running beside it.
    pub async fn start_with_env(server_extra: &str, rest: &str, env: &[(&str, &str)]) -> Gateway {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        // Metrics stay off unless a test asks: every gateway would want the same default port.
        let metrics = if server_extra.contains("metrics_listen") {
            ""
        } else {
            "metrics_listen = \"\"\n"
        };
        let config = format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nthreads = 2\n{metrics}{server_extra}\n\n[[plugins]]\nkind = \"access_log\"\npath = \"{}\"\n\n{rest}",
            dir.path().join("access.log").display()
        );
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, &config).expect("write config");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
        let child = Command::new(env!("CARGO_BIN_EXE_inference-gateway"))
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn gateway");
        let mut gateway = Gateway { child, port, dir };
        gateway.wait_ready().await;
        gateway
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gateway exited with {status}; stderr:\n{}", self.stderr());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("gateway did not start; stderr:\n{}", self.stderr());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `/resource_server` + path.
    pub fn api(&self, path: &str) -> String {
        self.url(&format!("/resource_server{path}"))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("access log line is JSON"))
            .collect()
    }

    /// The first access-log line matching `pick`, waiting for it: lines are written after the
    /// response has gone out, so a client can see the answer before the line exists.
    pub async fn access_line(
        &self,
        pick: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self.access_log().into_iter().find(|l| pick(l)) {
                return line;
            }
            assert!(Instant::now() < deadline, "no matching access-log line");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends SIGTERM (graceful shutdown) to the gateway process.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Kills the gateway process at once (SIGKILL), as a host that dies would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id, for signals and /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit; true if it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `[[pools]]` block with the given backends and extra lines.
pub fn pool(
    name: &str,
    cluster: &str,
    models: &[&str],
    backends: &[String],
    extra: &str,
) -> String {
    let models: Vec<String> = models.iter().map(|m| format!("{m:?}")).collect();
    let backends: Vec<String> = backends.iter().map(|b| format!("{b:?}")).collect();
    format!(
        "[[pools]]\nname = \"{name}\"\ncluster = \"{cluster}\"\nframework = \"vllm\"\nmodels = [{}]\nbackends = [{}]\n{extra}\n",
        models.join(", "),
        backends.join(", ")
    )
}

/// A fast health check so tests see state changes quickly.
pub const FAST_HEALTH: &str = "[pools.health]\ninterval = \"100ms\"\ntimeout = \"200ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n";

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub fn chat_body(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Explain the concept of Globus Compute in simple terms."}],
        "max_tokens": 150,
        "stream": stream,
    })
}

/// Waits until `check` holds, or panics with `what` after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The value of the first sample line starting with `prefix` (name and labels).
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub async fn scrape(port: u16) -> String {
    get_text(&format!("http://127.0.0.1:{port}/metrics")).await
}

/// GET `url` and its body as text, whatever the status.
pub async fn get_text(url: &str) -> String {
    let resp = client().get(url).send().await.expect("send");
    resp.text().await.expect("body")
}

/// GET `url` and its body as JSON, whatever the status.
pub async fn get_json(url: &str) -> serde_json::Value {
    let resp = client().get(url).send().await.expect("send");
    resp.json().await.expect("json body")
}

pub fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    MockStats::get(counter)
}

/// A gateway with one pool `local` (cluster `local`) in front of one fresh mock.
pub async fn with_mock(config: MockConfig, server_extra: &str) -> (Gateway, MockBackend) {
    let mock = MockBackend::start(config).await.expect("mock");
    let pools = pool(
        "local-vllm",
        "local",
        &[MODEL],
        &[mock.addr.to_string()],
        "",
    );
    let gateway = Gateway::start(server_extra, &pools).await;
    (gateway, mock)
}

pub mod raw;
pub mod redis;

/// Opens a connection to the gateway, writes `request` as is, and returns what comes back
/// until the gateway closes the connection or `wait` passes.
pub async fn raw_exchange(port: u16, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// An `api_keys` plugin with one key (`key-<name>` for each name, username `<name>@anl.gov`,
/// groups as given).
pub fn api_keys_plugin(users: &[(&str, &[&str])]) -> String {
    use sha2::{Digest, Sha256};
    let mut text = String::from("[[plugins]]\nkind = \"api_keys\"\n");
    for (name, groups) in users {
        let hash: String = Sha256::digest(format!("key-{name}").as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let groups: Vec<String> = groups.iter().map(|g| format!("{g:?}")).collect();
        text.push_str(&format!(
            "[[plugins.keys]]\nsha256 = \"{hash}\"\nusername = \"{name}@anl.gov\"\ngroups = [{}]\n",
            groups.join(", ")
        ));
    }
    text
}

/// A model only some users may use (pool `allowed_groups = ["g-secret"]`).
pub const SECRET_MODEL: &str = "meta-llama/Meta-Llama-3-8B-Instruct";

/// A gateway with `plugins`, an open pool serving `MODEL` and a pool serving `SECRET_MODEL`
/// to group `g-secret` only, both on `cluster` and one mock.
pub async fn open_and_secret_pools(
    server_extra: &str,
    plugins: &str,
    cluster: &str,
) -> (Gateway, MockBackend) {
    let mock = MockBackend::start(MockConfig {
        models: vec![MODEL.into(), SECRET_MODEL.into()],
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let backend = [mock.addr.to_string()];
    let config = format!(
        "{plugins}\n{}{}",
        pool("open", cluster, &[MODEL], &backend, ""),
        pool(
            "secret",
            cluster,
            &[SECRET_MODEL],
            &backend,
            "allowed_groups = [\"g-secret\"]"
        ),
    );
    (Gateway::start(server_extra, &config).await, mock)
}
