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

#[tokio::test(flavor = "multi_thread")]
async fn a_new_process_takes_the_sockets_while_the_old_one_drains_its_stream() {
    let mock = MockBackend::start(MockConfig {
        tokens: 60,
        token_gap: Duration::from_millis(50),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let sockets = tempfile::tempdir().expect("tempdir");
    let socket = sockets.path().join("upgrade.sock");
    let server = format!("upgrade_socket = \"{}\"", socket.display());
    let rest = pool("p", "local", &[MODEL], &[mock.addr.to_string()], "");
    let mut old = Gateway::start(&server, &rest).await;

    // A stream that runs about 3 s, across the whole upgrade.
    let url = old.api("/v1/chat/completions");
    let stream = tokio::spawn(async move {
        let resp = post_json(&url, &chat_body(true)).await;
        assert_eq!(resp.status(), 200);
        resp.text().await.expect("the whole stream")
    });
    eventually(Duration::from_secs(5), "the stream started", || {
        count(&mock.stats().streams_started) == 1
    })
    .await;

    // Connection attempts every 5 ms from now until the old process is gone.
    let probing = Arc::new(AtomicBool::new(true));
    let (tried, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let prober = {
        let (probing, tried, refused) = (probing.clone(), tried.clone(), refused.clone());
        let url = old.api("/health");
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
                    refused.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

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

    let text = stream.await.expect("stream task");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(
        text.matches("tok").count(),
        60,
        "every token, across the upgrade"
    );
    assert!(
        old.wait_exit(Duration::from_secs(20)).await,
        "the old process exits"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    probing.store(false, Ordering::SeqCst);
    prober.await.expect("prober");
    assert!(tried.load(Ordering::SeqCst) > 50, "probes were made");
    assert_eq!(
        refused.load(Ordering::SeqCst),
        0,
        "no connection attempt failed"
    );

    // The new process serves on the same address.
    let resp = post_json(&old.api("/v1/chat/completions"), &chat_body(false)).await;
    assert_eq!(resp.status(), 200);
    drop(successor);
}
