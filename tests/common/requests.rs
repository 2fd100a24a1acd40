//! One call per HTTP exchange a scenario makes: each builds a fresh client, sends, and fails
//! the test if nothing came back, whatever the status.

use std::time::Duration;

use serde_json::Value;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// `Bearer <token>`, the value of an `authorization` header.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Sends `req` with `headers` added in order (a name given twice is sent twice).
async fn send(mut req: reqwest::RequestBuilder, headers: &[(&str, &str)]) -> reqwest::Response {
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("send")
}

/// POST `body` as JSON to `url`.
pub async fn post_json(url: &str, body: &Value) -> reqwest::Response {
    post_json_with(url, body, &[]).await
}

/// POST `body` as JSON to `url` with `headers`.
pub async fn post_json_with(
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    send(client().post(url).json(body), headers).await
}

/// POST `body` as it is (no content type unless `headers` give one) to `url`.
pub async fn post_body(
    url: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    send(client().post(url).body(body), headers).await
}

/// GET `url`.
pub async fn get(url: &str) -> reqwest::Response {
    send(client().get(url), &[]).await
}

/// GET `url` with `headers`.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    send(client().get(url), headers).await
}

/// GET `url` and its body as text, whatever the status.
pub async fn get_text(url: &str) -> String {
    get(url).await.text().await.expect("body")
}

/// GET `url` and its body as JSON, whatever the status.
pub async fn get_json(url: &str) -> Value {
    get_json_with(url, &[]).await
}

/// GET `url` with `headers` and its body as JSON, whatever the status.
pub async fn get_json_with(url: &str, headers: &[(&str, &str)]) -> Value {
    get_with(url, headers)
        .await
        .json()
        .await
        .expect("json body")
}

/// The Prometheus text a metrics listener on `port` serves.
pub async fn scrape(port: u16) -> String {
    get_text(&format!("http://127.0.0.1:{port}/metrics")).await
}

/// The value of the first sample line starting with `prefix` (name and labels).
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

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
