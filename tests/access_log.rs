//! The access log: lines leave the request path in memory and a writer thread writes them,
//! so a log destination that stalls (a full pipe, a hung NFS mount) stalls no request; lines
//! gathered in memory are written before the process exits.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use common::*;

/// A gateway in front of a fresh mock with a second access log (beside the test kit's own)
/// writing to `path`.
async fn start_logging_to(path: &std::path::Path, flush_interval: &str) -> (Gateway, MockBackend) {
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let rest = format!(
        "[[plugins]]\nkind = \"access_log\"\npath = \"{}\"\nflush_interval = \"{flush_interval}\"\n\n{}",
        path.display(),
        local_pool(mock.addr)
    );
    (Gateway::start("", &rest).await, mock)
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("access log line is JSON"))
        .collect()
}

/// Before, each line was written on the event loop: once the pipe's 64 KiB were full, every
/// request of the thread hung in `write`.
#[tokio::test(flavor = "multi_thread")]
async fn a_log_destination_that_stops_reading_stalls_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("access.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    // Our end is open (so the gateway's open succeeds) but nobody reads until the end.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&fifo)
        .expect("open the pipe for reading");
    let (gw, _mock) = start_logging_to(&fifo, "0s").await;
    let http = client();
    // ~600 bytes a line: 400 lines are well past what the pipe holds.
    for i in 0..400 {
        let sent = http
            .post(gw.api("/v1/chat/completions"))
            .json(&chat_body(false))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let status = sent
            .unwrap_or_else(|e| panic!("request {i} stalled: {e}"))
            .status();
        assert_eq!(status, 200, "request {i}");
    }
    // Now read: every line arrives (8 MiB may wait in memory), each one whole.
    let mut text = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while text.iter().filter(|&&b| b == b'\n').count() < 400 {
        assert!(std::time::Instant::now() < deadline, "lines never arrived");
        match reader.read(&mut buf) {
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    let text = String::from_utf8(text).expect("utf-8");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a whole JSON line");
        assert_eq!(v["status"], 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lines_gathered_in_memory_are_written_before_the_process_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gathered.log");
    let (mut gw, _mock) = start_logging_to(&path, "10s").await;
    for _ in 0..3 {
        let resp = post_json(&gw.api("/v1/chat/completions"), &chat_body(false)).await;
        assert_eq!(resp.status(), 200);
    }
    // Gathered for up to 10 s: not written yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(lines(&path).is_empty(), "{:?}", lines(&path));
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(5)).await, "exits");
    let written = lines(&path);
    assert_eq!(written.len(), 3, "{written:?}");
    assert!(written.iter().all(|l| l["status"] == 200));
}
