//! Authentication with the `api_keys` plugin and authorization by pool rules, through the
//! real binary.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn gateway_with_keys() -> (Gateway, MockBackend) {
    let plugins = format!(
        r#"[[plugins]]
kind = "api_keys"
[[plugins.keys]]
sha256 = "{}"
username = "ada@anl.gov"
groups = ["llama-users"]
[[plugins.keys]]
sha256 = "{}"
username = "bob@example.org"
"#,
        sha256_hex("key-ada"),
        sha256_hex("key-bob")
    );
    open_and_secret_pools("", &plugins, "local", "llama-users").await
}

fn chat(model: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_known_token_get_401() {
    let (gw, mock) = gateway_with_keys().await;
    for auth in [None, Some("Bearer not-a-key"), Some("Basic a2V5LWFkYQ==")] {
        let header = auth.map(|auth| ("authorization", auth));
        let resp = post_json_with(
            &gw.api("/v1/chat/completions"),
            &chat(MODEL),
            header.as_slice(),
        )
        .await;
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Authorization: Bearer"));
    }
    assert_eq!(get(&gw.api("/v1/models")).await.status(), 401);
    // Liveness stays open for load balancers and systemd.
    assert_eq!(get(&gw.api("/health")).await.status(), 200);
    assert_eq!(count(&mock.stats().requests), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn group_rules_decide_access_and_model_lists() {
    let (gw, mock) = gateway_with_keys().await;
    let models_of = |key: &str| {
        let (url, auth) = (gw.api("/v1/models"), bearer(key));
        async move {
            get_json_with(&url, &[("authorization", &auth)]).await["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|m| m["id"].as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(models_of("key-ada").await, [MODEL, SECRET_MODEL]);
    assert_eq!(models_of("key-bob").await, [MODEL]);

    let send = |key: &str, path: &str, model: &str| {
        let (url, auth, body) = (gw.api(path), bearer(key), chat(model));
        async move { post_json_with(&url, &body, &[("authorization", &auth)]).await }
    };
    assert_eq!(
        send("key-ada", "/v1/chat/completions", SECRET_MODEL)
            .await
            .status(),
        200
    );
    assert_eq!(
        send("key-bob", "/v1/chat/completions", MODEL)
            .await
            .status(),
        200
    );
    for path in ["/v1/chat/completions", "/local/vllm/v1/chat/completions"] {
        let resp = send("key-bob", path, SECRET_MODEL).await;
        assert_eq!(resp.status(), 403, "{path}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["code"], "permission_denied");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("bob@example.org"));
    }
    assert_eq!(count(&mock.stats().requests), 2);
    let seen = last_headers(&mock);
    assert!(
        seen.get("authorization").is_none(),
        "the user's key never goes upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn whoami_shows_the_principal() {
    let (gw, _mock) = gateway_with_keys().await;
    let me = get_json_with(&gw.api("/whoami"), &[("authorization", "Bearer key-ada")]).await;
    assert_eq!(me["username"], "ada@anl.gov");
    assert_eq!(me["groups"], serde_json::json!(["llama-users"]));
    assert_eq!(me["auth_method"], "api_key");
    assert_eq!(me["identity_provider"], "anl.gov");
    let line = gw.access_line(|l| l["route"] == "whoami").await;
    assert_eq!(line["user"], "ada@anl.gov");
    let text = std::fs::read_to_string(gw.dir.path().join("access.log")).expect("log");
    assert!(!text.contains("key-ada"), "no token in the access log");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_rules_without_an_auth_plugin_are_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("gw.toml");
    std::fs::write(
        &file,
        pool(
            "p",
            "c",
            &[MODEL],
            &["127.0.0.1:1".into()],
            "allowed_domains = [\"anl.gov\"]",
        ),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inference-gateway"))
        .args(["check", "--config", file.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("pools[0].allowed_domains: access rules need an authentication plugin"),
        "{text}"
    );
}
