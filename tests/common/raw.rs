//! A bare HTTP/1.1 backend for faults the axum mock cannot stage: after `crash()` it reads
//! each request in full and closes the connection without a byte of answer, as a server
//! that crashes on a prompt does. Until then it answers every request (keep-alive). After
//! `hold()` each POST gets an SSE stream's header and first event, then nothing more until
//! the gateway closes the connection: streams held open for as long as a test needs. After
//! `close_idle_after(d)` it closes a connection that brings no new request within `d` of
//! its last answer, as servers with a short keep-alive timeout do. After `say_close()` each
//! answer carries `Connection: close` but the backend leaves the closing to the gateway.
//! Every POST's arrival is recorded: its connection, how much of it the first read brought,
//! and its body; and connections the gateway closed are counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct RawBackend {
    pub addr: SocketAddr,
    /// Inference requests (POSTs) received in full.
    pub posts: Arc<AtomicU64>,
    /// How each POST arrived, in order.
    pub arrivals: Arc<Mutex<Vec<Arrival>>>,
    /// Connections that carried a POST and that the gateway closed (the backend read the
    /// end of the stream).
    pub closed_by_gateway: Arc<AtomicU64>,
    crashing: Arc<AtomicBool>,
    holding: Arc<AtomicBool>,
    /// Milliseconds an idle connection is kept; 0: for ever.
    idle_close_ms: Arc<AtomicU64>,
    saying_close: Arc<AtomicBool>,
}

/// What every connection's task shares with the backend.
#[derive(Clone)]
struct Shared {
    posts: Arc<AtomicU64>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    closed_by_gateway: Arc<AtomicU64>,
    crashing: Arc<AtomicBool>,
    holding: Arc<AtomicBool>,
    idle_close_ms: Arc<AtomicU64>,
    saying_close: Arc<AtomicBool>,
}

const HELD_STREAM: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
const FIRST_EVENT: &str = "data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\n";

const ANSWER: &str = "{\"id\":\"x\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}";

impl RawBackend {
    pub async fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Shared {
            posts: Arc::new(AtomicU64::new(0)),
            arrivals: Arc::new(Mutex::new(Vec::new())),
            closed_by_gateway: Arc::new(AtomicU64::new(0)),
            crashing: Arc::new(AtomicBool::new(false)),
            holding: Arc::new(AtomicBool::new(false)),
            idle_close_ms: Arc::new(AtomicU64::new(0)),
            saying_close: Arc::new(AtomicBool::new(false)),
        };
        let for_connections = shared.clone();
        tokio::spawn(async move {
            let mut connection = 0;
            while let Ok((stream, _)) = listener.accept().await {
                connection += 1;
                tokio::spawn(serve(stream, connection, for_connections.clone()));
            }
        });
        RawBackend {
            addr,
            posts: shared.posts,
            arrivals: shared.arrivals,
            closed_by_gateway: shared.closed_by_gateway,
            crashing: shared.crashing,
            holding: shared.holding,
            idle_close_ms: shared.idle_close_ms,
            saying_close: shared.saying_close,
        }
    }

    /// From now on, every answer says `Connection: close` (and the connection stays open
    /// until the gateway closes it).
    pub fn say_close(&self) {
        self.saying_close.store(true, Ordering::SeqCst);
    }

    /// From now on, a connection idle for `after` is closed by the backend.
    pub fn close_idle_after(&self, after: Duration) {
        self.idle_close_ms
            .store(after.as_millis().max(1) as u64, Ordering::SeqCst);
    }

    /// The connection each POST arrived on, in order (numbered from 1 as accepted).
    pub fn post_connections(&self) -> Vec<u64> {
        let all = self.arrivals.lock().expect("arrivals");
        all.iter().map(|a| a.connection).collect()
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
    /// The connection it came on (numbered from 1 as accepted).
    pub connection: u64,
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
                connection: 0,
                first_read: first_read.min(whole),
                whole,
                body,
            });
        }
        read_more(stream, buf).await?;
    }
}

async fn serve(mut stream: TcpStream, connection: u64, shared: Shared) {
    let mut buf = Vec::new();
    let mut carried_post = false;
    loop {
        let idle_close_ms = shared.idle_close_ms.load(Ordering::SeqCst);
        let next = if idle_close_ms > 0 && buf.is_empty() {
            let limit = Duration::from_millis(idle_close_ms);
            match tokio::time::timeout(limit, read_request(&mut stream, &mut buf)).await {
                Ok(next) => next,
                // Idle too long: the backend closes it, without a word.
                Err(_) => return,
            }
        } else {
            read_request(&mut stream, &mut buf).await
        };
        let Some(mut arrival) = next else {
            if carried_post {
                shared.closed_by_gateway.fetch_add(1, Ordering::SeqCst);
            }
            return;
        };
        arrival.connection = connection;
        let is_post = arrival.is_post;
        carried_post |= is_post;
        if is_post {
            shared.posts.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut all) = shared.arrivals.lock() {
                all.push(arrival);
            }
            if shared.crashing.load(Ordering::SeqCst) {
                return; // dropped: closed without a byte of answer
            }
            if shared.holding.load(Ordering::SeqCst) {
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
        let close = if shared.saying_close.load(Ordering::SeqCst) {
            "connection: close\r\n"
        } else {
            ""
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{close}content-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
