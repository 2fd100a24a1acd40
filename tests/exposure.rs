//! What the gateway reveals and passes on, through the real binary: catalogues show only the
//! pools a caller may use, and the upstream request carries no client credentials, a `Host`
//! of the backend, forwarding headers the client cannot forge, and one `Content-Length`.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const SECRET: &str = SECRET_MODEL;

async fn gateway(server_extra: &str) -> (Gateway, MockBackend) {
    let plugins = api_keys_plugin(&[("ada", &["g-secret"]), ("bob", &[])]);
    open_and_secret_pools(server_extra, &plugins, "polaris", "g-secret").await
}

/// GET `path` as the holder of `key`, which must succeed: its body as JSON.
async fn get_json_as(gw: &Gateway, path: &str, key: &str) -> Value {
    let resp = get_with(&gw.api(path), &[("authorization", &bearer(key))]).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn catalogues_show_only_the_pools_a_caller_may_use() {
    let (gw, _mock) = gateway("").await;
    for (key, sees_secret) in [("key-ada", true), ("key-bob", false)] {
        let endpoints = get_json_as(&gw, "/list-endpoints", key).await.to_string();
        assert_eq!(
            endpoints.contains(SECRET),
            sees_secret,
            "{key}: {endpoints}"
        );
        assert_eq!(
            endpoints.contains("\"pool\":\"secret\""),
            sees_secret,
            "{key}: {endpoints}"
        );
        assert!(endpoints.contains(MODEL));
        let jobs = get_json_as(&gw, "/polaris/jobs", key).await.to_string();
        assert_eq!(jobs.contains(SECRET), sees_secret, "{key}: {jobs}");
        assert!(jobs.contains(MODEL));
    }
}

/// Sends a request with forged forwarding headers, credentials and a doubled length by
/// hand; returns the headers the backend saw.
async fn forged_request(gw: &Gateway, mock: &MockBackend) -> http::HeaderMap {
    let body = format!("{{\"model\":\"{MODEL}\",\"messages\":[],\"max_tokens\":3}}");
    let request = format!(
        "POST /resource_server/v1/chat/completions HTTP/1.1\r\nhost: gateway.example\r\n\
         authorization: Bearer key-bob\r\nproxy-authorization: Basic c2VjcmV0\r\n\
         cookie: session=secret\r\nx-forwarded-for: 6.6.6.6\r\nx-forwarded-proto: https\r\n\
         x-real-ip: 6.6.6.6\r\nforwarded: for=6.6.6.6\r\ncontent-type: application/json\r\n\
         content-length: {0}\r\ncontent-length: {0}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_exchange(gw.port, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    last_headers(mock)
}

fn all(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backend_gets_no_credentials_and_unforgeable_forwarding() {
    let (gw, mock) = gateway("").await;
    let seen = forged_request(&gw, &mock).await;
    for secret in [
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-real-ip",
        "forwarded",
    ] {
        assert!(
            seen.get(secret).is_none(),
            "{secret} reached the backend: {seen:?}"
        );
    }
    assert_eq!(all(&seen, "host"), [mock.addr.to_string()]);
    assert_eq!(all(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(all(&seen, "content-length").len(), 1, "{seen:?}");
    let line = gw.access_line(|l| l["status"] == 200).await;
    assert_eq!(line["client"], "127.0.0.1", "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxy_may_say_who_the_client_is() {
    let (gw, mock) = gateway("trusted_proxies = [\"127.0.0.1/32\"]").await;
    let seen = forged_request(&gw, &mock).await;
    assert_eq!(all(&seen, "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
    assert_eq!(all(&seen, "x-forwarded-proto"), ["https"]);
    assert!(seen.get("authorization").is_none());
    let line = gw.access_line(|l| l["status"] == 200).await;
    assert_eq!(line["client"], "6.6.6.6", "{line}");
}
