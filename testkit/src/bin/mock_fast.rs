//! `mock-fast`: a backend for overhead benchmarks that must never be the bottleneck. Every
//! answer is rendered once at start; a request costs a header scan and one write, a stream
//! too (a burst: every event at once), or, with `--gap-ms`, one write per SSE event with a
//! pause between them, as a GPU server sends tokens. Multi-threaded, HTTP/1.1 keep-alive.
//!
//!   mock-fast --listen 127.0.0.1:18101 --threads 2 --chunks 256 [--gap-ms 1]
//!
//! `POST` with `"stream": true` in the body gets a chunked SSE stream of `--chunks` content
//! events, a usage event and `[DONE]`; any other `POST` a small chat completion; `GET /health`
//! and `GET /v1/models` what the gateway's health check expects.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "the test kit's benchmark backend, never on the gateway's path"
)]

use std::sync::Arc;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
#[command(
    name = "mock-fast",
    about = "Pre-rendered OpenAI-style backend for overhead benchmarks"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18101")]
    listen: String,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Content events per stream.
    #[arg(long, default_value_t = 256)]
    chunks: usize,
    /// The model named in answers.
    #[arg(long, default_value = "facebook/opt-125m")]
    model: String,
    /// Pause between a stream's events, in milliseconds. 0: the whole stream in one write.
    /// With a pause each event is written, and reaches the proxy, on its own.
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,
}

/// Everything the server sends, rendered once.
struct Answers {
    completion: Vec<u8>,
    health: Vec<u8>,
    models: Vec<u8>,
    not_found: Vec<u8>,
    /// The stream's header, then one HTTP chunk per SSE event, then the last chunk.
    stream: Vec<Vec<u8>>,
    /// The same, in one piece.
    stream_whole: Vec<u8>,
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn chunk(event: &str) -> Vec<u8> {
    format!("{:x}\r\n{event}\r\n", event.len()).into_bytes()
}

impl Answers {
    fn render(model: &str, chunks: usize) -> Answers {
        let completion = format!(
            r#"{{"id":"chatcmpl-fast","object":"chat.completion","created":1700000000,"model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"tok tok tok tok tok tok tok tok tok tok tok tok tok tok tok tok"}},"finish_reason":"length"}}],"usage":{{"prompt_tokens":12,"completion_tokens":16,"total_tokens":28}}}}"#
        );
        let models = format!(
            r#"{{"object":"list","data":[{{"id":"{model}","object":"model","owned_by":"mock"}}]}}"#
        );
        let mut stream = vec![b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n".to_vec()];
        for i in 0..chunks {
            let role = if i == 0 { r#""role":"assistant","# } else { "" };
            stream.push(chunk(&format!(
                "data: {{\"id\":\"chatcmpl-fast\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{{role}\"content\":\"tok \"}},\"finish_reason\":null}}]}}\n\n"
            )));
        }
        stream.push(chunk(&format!(
            "data: {{\"id\":\"chatcmpl-fast\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{chunks},\"total_tokens\":{}}}}}\n\n",
            chunks + 12
        )));
        stream.push(chunk("data: [DONE]\n\n"));
        stream.push(b"0\r\n\r\n".to_vec());
        Answers {
            completion: response("200 OK", "application/json", &completion),
            health: response("200 OK", "application/json", "{}"),
            models: response("200 OK", "application/json", &models),
            not_found: response(
                "404 Not Found",
                "application/json",
                r#"{"error":"not found"}"#,
            ),
            stream_whole: stream.concat(),
            stream,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The Content-Length of a request head (0 without one).
fn content_length(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
            name.eq_ignore_ascii_case(b"content-length")
                .then(|| std::str::from_utf8(&value[1..]).ok()?.trim().parse().ok())?
        })
        .unwrap_or(0)
}

async fn serve(mut conn: TcpStream, answers: Arc<Answers>, gap: std::time::Duration) {
    let _ = conn.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        // One whole request (head and body) in `buf`.
        let (head_end, total) = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let total = end + 4 + content_length(&buf[..end]);
                if buf.len() >= total {
                    break (end, total);
                }
            }
            let mut more = [0u8; 16 * 1024];
            match conn.read(&mut more).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&more[..n]),
            }
        };
        let head = &buf[..head_end];
        let body = &buf[head_end + 4..total];
        let written = if head.starts_with(b"POST ") {
            let streamed = find(body, b"\"stream\":true").is_some()
                || find(body, b"\"stream\": true").is_some();
            if streamed && gap.is_zero() {
                conn.write_all(&answers.stream_whole).await
            } else if streamed {
                let mut result = Ok(());
                for (i, piece) in answers.stream.iter().enumerate() {
                    // The header goes with the first event; the pause is between events.
                    // The pause is between events (the header goes just before the first).
                    if i > 1 {
                        tokio::time::sleep(gap).await;
                    }
                    result = conn.write_all(piece).await;
                    if result.is_err() {
                        break;
                    }
                }
                result
            } else {
                conn.write_all(&answers.completion).await
            }
        } else if head.starts_with(b"GET /health") {
            conn.write_all(&answers.health).await
        } else if head.starts_with(b"GET /v1/models") {
            conn.write_all(&answers.models).await
        } else {
            conn.write_all(&answers.not_found).await
        };
        if written.is_err() {
            return;
        }
        buf.drain(..total);
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let answers = Arc::new(Answers::render(&args.model, args.chunks));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let addr: std::net::SocketAddr = args
            .listen
            .parse()
            .map_err(|e| std::io::Error::other(format!("--listen `{}`: {e}", args.listen)))?;
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener: TcpListener = socket.listen(4096)?;
        println!("mock-fast listening on {addr}");
        loop {
            let (conn, _) = listener.accept().await?;
            tokio::spawn(serve(
                conn,
                answers.clone(),
                std::time::Duration::from_millis(args.gap_ms),
            ));
        }
    })
}
