//! Zero-downtime binary upgrade: a new process started with `run --upgrade` takes the
//! listening sockets over from the running one (Pingora's hand-over through
//! `server.upgrade_socket`, on SIGQUIT to the old process); the old one drains its streams and
//! exits. No connection attempt meanwhile is refused, and a stream running across the upgrade
//! completes.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// The new process; killed when the test ends.
struct Successor(Child);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connection attempts every 5 ms (a fresh connection each) until `finish`.
struct Prober {
    probing: Arc<AtomicBool>,
    tried: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Prober {
    fn start(url: String) -> Prober {
        let probing = Arc::new(AtomicBool::new(true));
        let (tried, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let task = {
            let (probing, tried, failed) = (probing.clone(), tried.clone(), failed.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(5))
                    .build()
                    .expect("client");
                while probing.load(Ordering::SeqCst) {
                    tried.fetch_add(1, Ordering::SeqCst);
                    if !client
                        .get(&url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
                    {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        Prober {
            probing,
            tried,
            failed,
            task,
        }
    }

    /// Stops a little after the hand-over and checks that no attempt failed.
    async fn finish(self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.probing.store(false, Ordering::SeqCst);
        self.task.await.expect("prober");
        assert!(self.tried.load(Ordering::SeqCst) > 50, "probes were made");
        assert_eq!(
            self.failed.load(Ordering::SeqCst),
            0,
            "no connection attempt failed"
        );
    }
}

/// A mock whose streams take about 3 s: long enough to run across an upgrade.
async fn slow_streams() -> MockBackend {
    MockBackend::start(MockConfig {
        tokens: 60,
        token_gap: Duration::from_millis(50),
        ..MockConfig::default()
    })
    .await
    .expect("mock")
}

/// Starts the standard stream; its whole text.
fn stream(url: String) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let resp = post_json(&url, &chat_body(true)).await;
        assert_eq!(resp.status(), 200);
        resp.text().await.expect("the whole stream")
    })
}

fn assert_whole(text: &str) {
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(
        text.matches("tok").count(),
        60,
        "every token, across the upgrade"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_process_takes_the_sockets_while_the_old_one_drains_its_stream() {
    let mock = slow_streams().await;
    let sockets = tempfile::tempdir().expect("tempdir");
    let socket = sockets.path().join("upgrade.sock");
    let server = format!("upgrade_socket = \"{}\"", socket.display());
    let rest = pool("p", "local", &[MODEL], &[mock.addr.to_string()], "");
    let mut old = Gateway::start(&server, &rest).await;

    // A stream that runs about 3 s, across the whole upgrade.
    let stream = stream(old.api("/v1/chat/completions"));
    eventually(Duration::from_secs(5), "the stream started", || {
        count(&mock.stats().streams_started) == 1
    })
    .await;

    // Connection attempts every 5 ms from now until the old process is gone.
    let prober = Prober::start(old.api("/health"));
    let log = std::fs::File::create(old.dir.path().join("successor.log")).expect("log");
    let successor = Successor(
        Command::new(env!("CARGO_BIN_EXE_inference-gateway"))
            .args(["run", "--upgrade", "--config"])
            .arg(old.dir.path().join("gateway.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the new process"),
    );
    eventually(
        Duration::from_secs(10),
        "the new process waits for the sockets",
        || socket.exists(),
    )
    .await;
    let quit = Command::new("kill")
        .args(["-QUIT", &old.pid().to_string()])
        .status()
        .expect("kill");
    assert!(quit.success());

    assert_whole(&stream.await.expect("stream task"));
    assert!(
        old.wait_exit(Duration::from_secs(20)).await,
        "the old process exits"
    );
    prober.finish().await;

    // The new process serves on the same address.
    let resp = post_json(&old.api("/v1/chat/completions"), &chat_body(false)).await;
    assert_eq!(resp.status(), 200);
    drop(successor);
}

/// The in-service path systemd uses: SIGUSR2 makes the gateway start its successor itself and
/// hand over; each process tells the service manager (NOTIFY_SOCKET) that it is ready and is the
/// main process, so the unit follows the new one.
#[tokio::test(flavor = "multi_thread")]
async fn sigusr2_upgrades_in_place_and_tells_systemd_the_new_main_pid() {
    let mock = slow_streams().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("upgrade.sock");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let server = format!("upgrade_socket = \"{}\"", socket.display());
    let rest = pool("p", "local", &[MODEL], &[mock.addr.to_string()], "");
    let notify_env = notify_path.display().to_string();
    let mut old = Gateway::start_with_env(&server, &rest, &[("NOTIFY_SOCKET", &notify_env)]).await;
    let main_pid = |notify: &std::os::unix::net::UnixDatagram| -> u32 {
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("a notification");
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(text.contains("READY=1"), "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix("MAINPID="))
            .and_then(|p| p.parse().ok())
            .expect("MAINPID")
    };
    assert_eq!(main_pid(&notify), old.pid());

    let stream = stream(old.api("/v1/chat/completions"));
    eventually(Duration::from_secs(5), "the stream started", || {
        count(&mock.stats().streams_started) == 1
    })
    .await;
    let prober = Prober::start(old.api("/health"));
    let usr2 = Command::new("kill")
        .args(["-USR2", &old.pid().to_string()])
        .status()
        .expect("kill");
    assert!(usr2.success());
    let new_pid = main_pid(&notify);
    let _successor = Pid(new_pid);
    assert_ne!(new_pid, old.pid(), "the new process is the main one now");

    assert_whole(&stream.await.expect("stream task"));
    assert!(
        old.wait_exit(Duration::from_secs(20)).await,
        "the old process exits"
    );
    prober.finish().await;
    let resp = post_json(&old.api("/v1/chat/completions"), &chat_body(false)).await;
    assert_eq!(resp.status(), 200, "the new process serves");
}

/// A process this test started indirectly; killed when the test ends.
struct Pid(u32);

impl Drop for Pid {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}
