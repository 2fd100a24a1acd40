//! A bare HTTP/1.1 backend for faults the axum mock cannot stage: after `crash()` it reads
//! each request in full and closes the connection without a byte of answer, as a server
//! that crashes on a prompt does. Until then it answers every request (keep-alive).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct RawBackend {
    pub addr: SocketAddr,
    /// Inference requests (POSTs) received in full.
    pub posts: Arc<AtomicU64>,
    crashing: Arc<AtomicBool>,
}

const ANSWER: &str = "{\"id\":\"x\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}";

impl RawBackend {
    pub async fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let posts = Arc::new(AtomicU64::new(0));
        let crashing = Arc::new(AtomicBool::new(false));
        let (p, c) = (posts.clone(), crashing.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, p.clone(), c.clone()));
            }
        });
        RawBackend {
            addr,
            posts,
            crashing,
        }
    }

    /// From now on, every request is read and its connection closed unanswered.
    pub fn crash(&self) {
        self.crashing.store(true, Ordering::SeqCst);
    }
}

/// Reads one request (header and Content-Length body); `None` when the peer closed.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(bool, usize)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let total = end + 4 + length;
            while buf.len() < total {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let is_post = head.starts_with("post");
            buf.drain(..total);
            return Some((is_post, total));
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve(mut stream: TcpStream, posts: Arc<AtomicU64>, crashing: Arc<AtomicBool>) {
    let mut buf = Vec::new();
    while let Some((is_post, _)) = read_request(&mut stream, &mut buf).await {
        if is_post {
            posts.fetch_add(1, Ordering::SeqCst);
            if crashing.load(Ordering::SeqCst) {
                return; // dropped: closed without a byte of answer
            }
        }
        let body = if is_post { ANSWER } else { "{}" };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
