//! A bare HTTP/1.1 backend for faults the axum mock cannot stage: after `crash()` it reads
//! each request in full and closes the connection without a byte of answer, as a server
//! that crashes on a prompt does. Until then it answers every request (keep-alive). After
//! `hold()` each POST gets an SSE stream's header and first event, then nothing more until
//! the gateway closes the connection: streams held open for as long as a test needs. Every
//! POST's arrival is recorded: how much of it the first read brought, and its body.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct RawBackend {
    pub addr: SocketAddr,
    /// Inference requests (POSTs) received in full.
    pub posts: Arc<AtomicU64>,
    /// How each POST arrived, in order.
    pub arrivals: Arc<Mutex<Vec<Arrival>>>,
    crashing: Arc<AtomicBool>,
    holding: Arc<AtomicBool>,
}

const HELD_STREAM: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
const FIRST_EVENT: &str = "data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\n";

const ANSWER: &str = "{\"id\":\"x\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}";

impl RawBackend {
    pub async fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let posts = Arc::new(AtomicU64::new(0));
        let crashing = Arc::new(AtomicBool::new(false));
        let holding = Arc::new(AtomicBool::new(false));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (p, c, h, a) = (
            posts.clone(),
            crashing.clone(),
            holding.clone(),
            arrivals.clone(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, p.clone(), c.clone(), h.clone(), a.clone()));
            }
        });
        RawBackend {
            addr,
            posts,
            arrivals,
            crashing,
            holding,
        }
    }

    /// From now on, every POST is answered with a stream that stays open.
    pub fn hold(&self) {
        self.holding.store(true, Ordering::SeqCst);
    }

    /// From now on, every request is read and its connection closed unanswered.
    pub fn crash(&self) {
        self.crashing.store(true, Ordering::SeqCst);
    }
}

/// How one request reached the backend.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub is_post: bool,
    /// Bytes of the request in the read that brought its first byte (the same TCP write,
    /// on loopback, for a request the gateway sent in one).
    pub first_read: usize,
    /// The whole request: header and body.
    pub whole: usize,
    pub body: Vec<u8>,
}

/// Appends what the next read brings to `buf`; `None` when the peer closed.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = vec![0u8; 64 * 1024];
    let n = stream.read(&mut chunk).await.ok()?;
    buf.extend_from_slice(&chunk[..n]);
    (n > 0).then_some(n)
}

/// Reads one request (header and Content-Length body); `None` when the peer closed.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Arrival> {
    let first_read = match buf.len() {
        0 => read_more(stream, buf).await?,
        already => already,
    };
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let whole = end + 4 + length;
            while buf.len() < whole {
                read_more(stream, buf).await?;
            }
            let body = buf[end + 4..whole].to_vec();
            buf.drain(..whole);
            return Some(Arrival {
                is_post: head.starts_with("post"),
                first_read: first_read.min(whole),
                whole,
                body,
            });
        }
        read_more(stream, buf).await?;
    }
}

async fn serve(
    mut stream: TcpStream,
    posts: Arc<AtomicU64>,
    crashing: Arc<AtomicBool>,
    holding: Arc<AtomicBool>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
) {
    let mut buf = Vec::new();
    while let Some(arrival) = read_request(&mut stream, &mut buf).await {
        let is_post = arrival.is_post;
        if is_post {
            posts.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut all) = arrivals.lock() {
                all.push(arrival);
            }
            if crashing.load(Ordering::SeqCst) {
                return; // dropped: closed without a byte of answer
            }
            if holding.load(Ordering::SeqCst) {
                let event = format!("{:x}\r\n{FIRST_EVENT}\r\n", FIRST_EVENT.len());
                let _ = stream.write_all(HELD_STREAM.as_bytes()).await;
                let _ = stream.write_all(event.as_bytes()).await;
                // Silent until the gateway closes the connection.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
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
