//! Shared harness: spawn the real `inference-gateway` binary on a free port with a temp
//! config, and talk HTTP to it.

#![allow(
    dead_code,
    reason = "each test file uses a different part of the harness"
)]

use std::future::Future;
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
        Gateway::spawn(server_extra, rest, env, None).await
    }

    /// As `start`, under a file descriptor limit of `nofile` (soft and hard).
    pub async fn start_with_nofile(server_extra: &str, rest: &str, nofile: u64) -> Gateway {
        Gateway::spawn(server_extra, rest, &[], Some(nofile)).await
    }

    async fn spawn(
        server_extra: &str,
        rest: &str,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Gateway {
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
        let binary = env!("CARGO_BIN_EXE_inference-gateway");
        let mut command = match nofile {
            // `exec`: the limited shell becomes the gateway, same pid.
            Some(limit) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
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

    /// A bare TCP connection to the gateway, for what an HTTP client cannot send.
    pub async fn connect(&self) -> tokio::net::TcpStream {
        tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect")
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

    /// The access log's complete lines: the writer may be mid-write while a test reads, so a
    /// last line without its newline is not read yet.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| serde_json::from_str(l).expect("access log line is JSON"))
            .collect()
    }

    /// The first access-log line matching `pick`, waiting for it: lines are written after the
    /// response has gone out, so a client can see the answer before the line exists.
    pub async fn access_line(
        &self,
        pick: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let found = poll(Duration::from_secs(5), Duration::from_millis(10), || {
            std::future::ready(self.access_log().into_iter().find(|l| pick(l)))
        });
        found.await.expect("no matching access-log line")
    }

    /// The whole access log once exactly `n` of its lines match `pick`, waiting up to 5 s:
    /// each line is written after its response has gone out.
    pub async fn wait_access_lines(
        &self,
        n: usize,
        pick: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let found = poll(Duration::from_secs(5), Duration::from_millis(20), || {
            let log = self.access_log();
            std::future::ready((log.iter().filter(|l| pick(l)).count() == n).then_some(log))
        });
        match found.await {
            Some(log) => log,
            None => panic!("timed out waiting for {n} matching access-log lines"),
        }
    }

    /// Rewrites the config file with `new_rest` in place of `old_rest` (the text after
    /// `[server]` given to `start`), and sends SIGHUP; returns once the gateway has logged
    /// the outcome (reloaded or refused) one more time than before.
    pub async fn reload(&self, old_rest: &str, new_rest: &str) {
        let path = self.dir.path().join("gateway.toml");
        let text = std::fs::read_to_string(&path).expect("config");
        std::fs::write(&path, text.replacen(old_rest, new_rest, 1)).expect("write config");
        let outcomes = |s: &str| s.matches("configuration reload").count();
        let before = outcomes(&self.stderr());
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        eventually(Duration::from_secs(10), "the reload is logged", || {
            outcomes(&self.stderr()) > before
        })
        .await;
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

pub fn chat_body(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Explain the concept of Globus Compute in simple terms."}],
        "max_tokens": 150,
        "stream": stream,
    })
}

pub fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    MockStats::get(counter)
}

/// The headers of the last request `mock` received; panics if none came.
pub fn last_headers(mock: &MockBackend) -> http::HeaderMap {
    let last = mock.stats().last_headers.lock().expect("lock").clone();
    last.expect("the backend got a request")
}

/// The one pool most tests need: `local-vllm` (cluster `local`) serving `MODEL` from
/// `backend`.
pub fn local_pool(backend: std::net::SocketAddr) -> String {
    pool("local-vllm", "local", &[MODEL], &[backend.to_string()], "")
}

/// A gateway with one pool `local` (cluster `local`) in front of one fresh mock.
pub async fn with_mock(config: MockConfig, server_extra: &str) -> (Gateway, MockBackend) {
    let mock = MockBackend::start(config).await.expect("mock");
    let gateway = Gateway::start(server_extra, &local_pool(mock.addr)).await;
    (gateway, mock)
}

pub mod batch;
pub mod certs;
pub mod postgres;
pub mod raw;
pub mod redis;
pub mod requests;

#[allow(unused_imports, reason = "not every test file makes HTTP calls")]
pub use requests::*;

/// Calls `check` every `every` until it gives `Some`, for at most `limit`; `None` if it
/// never did.
pub async fn poll<T, Fut>(
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Fut,
) -> Option<T>
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(found) = check().await {
            return Some(found);
        }
        tokio::time::sleep(every).await;
    }
    None
}

/// Waits until `check` holds, or panics with `what` after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let held = poll(limit, Duration::from_millis(20), || {
        std::future::ready(check().then_some(()))
    });
    if held.await.is_none() {
        panic!("timed out waiting for: {what}");
    }
}

/// Waits until the async `check` holds, or panics with `what` after `limit`.
pub async fn eventually_async<Fut>(limit: Duration, what: &str, mut check: impl FnMut() -> Fut)
where
    Fut: Future<Output = bool>,
{
    let held = poll(limit, Duration::from_millis(20), || {
        let holds = check();
        async move { holds.await.then_some(()) }
    });
    if held.await.is_none() {
        panic!("timed out waiting for: {what}");
    }
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

/// A model only some users may use (pool `secret`, `allowed_groups = [group]`).
pub const SECRET_MODEL: &str = "meta-llama/Meta-Llama-3-8B-Instruct";

/// A gateway with `plugins`, a pool `open` serving `MODEL` and a pool `secret` serving
/// `SECRET_MODEL` to `group` only, both on `cluster` and one mock.
pub async fn open_and_secret_pools(
    server_extra: &str,
    plugins: &str,
    cluster: &str,
    group: &str,
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
            &format!("allowed_groups = [{group:?}]")
        ),
    );
    (Gateway::start(server_extra, &config).await, mock)
}
