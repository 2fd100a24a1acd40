//! Slow and idle clients through the real binary: a kept-alive connection that idles, a
//! header that trickles in, and connections past `max_connections` are all let go.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GET_HEALTH: &[u8] = b"GET /resource_server/health HTTP/1.1\r\nhost: gw\r\n\r\n";

/// Reads until the gateway closes the connection; returns how long that took.
async fn until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed() {
    let (gw, _mock) = with_mock(MockConfig::default(), "client_keepalive_timeout = \"1s\"").await;
    let mut stream = gw.connect().await;
    stream.write_all(GET_HEALTH).await.expect("write");
    let closed = until_closed(&mut stream, Duration::from_secs(10)).await;
    let closed = closed.expect("the idle connection was closed");
    assert!(closed < Duration::from_secs(5), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_asks_to_close_is_answered_and_closed_at_once() {
    let (gw, _mock) = with_mock(MockConfig::default(), "").await;
    for request in [
        &b"GET /resource_server/health HTTP/1.0\r\n\r\n"[..],
        b"GET /resource_server/health HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    ] {
        let started = Instant::now();
        let answer = raw_exchange(gw.port, request, Duration::from_secs(5)).await;
        assert!(answer.contains(" 200 OK"), "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_header_is_cut_off() {
    let (gw, _mock) = with_mock(MockConfig::default(), "client_header_timeout = \"2s\"").await;
    let mut stream = gw.connect().await;
    let started = Instant::now();
    stream
        .write_all(b"GET /resource_server/health HTTP/1.1\r\n")
        .await
        .expect("write");
    // One header line every 500 ms: each read is quick, the header never ends.
    let mut cut = false;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if stream
            .write_all(format!("x-trickle-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            cut = true;
            break;
        }
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "the trickling client was let go");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_get_a_quick_503() {
    let metrics_port = free_port();
    let (gw, _mock) = with_mock(
        MockConfig::default(),
        &format!("max_connections = 3\nmetrics_listen = \"127.0.0.1:{metrics_port}\""),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(gw.connect().await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = raw_exchange(gw.port, GET_HEALTH, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    let metrics = scrape(metrics_port).await;
    assert!(
        metrics.contains("igw_connections_refused_total 1"),
        "{metrics}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = raw_exchange(gw.port, GET_HEALTH, Duration::from_secs(1)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
