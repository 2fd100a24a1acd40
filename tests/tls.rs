//! TLS on the client listener: HTTPS with a site's own CA, HTTP/2 by ALPN, clear failures for
//! an untrusted or expired certificate, and a certificate replaced on SIGHUP without a restart.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::process::Command;

use common::certs::{ca, server_cert, tls_server, Ca};
use common::*;

fn trusting(ca: &Ca) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).expect("root");
    reqwest::Client::builder()
        .add_root_certificate(root)
        .tls_built_in_root_certs(false)
        .build()
        .expect("client")
}

async fn https_chat(
    client: &reqwest::Client,
    port: u16,
) -> Result<reqwest::Response, reqwest::Error> {
    client
        .post(format!(
            "https://localhost:{port}/resource_server/v1/chat/completions"
        ))
        .json(&chat_body(true))
        .send()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_the_sites_ca_http2_and_a_certificate_replaced_on_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = ca("first test CA");
    server_cert(&first, dir.path(), false);
    let port = free_port();
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let rest = pool("p", "local", &[MODEL], &[mock.addr.to_string()], "");
    let gw = Gateway::start(&tls_server(dir.path(), port), &rest).await;

    let resp = https_chat(&trusting(&first), port).await.expect("https");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("stream");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // Plain HTTP still answers on the plain listener.
    assert_eq!(
        post_json(&gw.api("/v1/chat/completions"), &chat_body(false))
            .await
            .status(),
        200
    );

    // HTTP/2 by ALPN (curl asks for it), streaming included.
    std::fs::write(dir.path().join("ca.pem"), first.cert.pem()).expect("ca file");
    let curl = Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(dir.path().join("ca.pem"))
        .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
        .arg(format!("https://localhost:{port}/resource_server/health"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "2 200",
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );

    // A client that does not trust the CA fails the handshake, saying why.
    let stranger = trusting(&ca("some other CA"));
    let err = https_chat(&stranger, port).await.expect_err("untrusted");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

    // A new certificate from another CA, then SIGHUP: new handshakes get it.
    let second = ca("second test CA");
    server_cert(&second, dir.path(), false);
    gw.reload("", "").await;
    eventually(
        std::time::Duration::from_secs(5),
        "the certificate is reloaded",
        || gw.stderr().contains("TLS certificate reloaded"),
    )
    .await;
    assert_eq!(
        https_chat(&trusting(&second), port)
            .await
            .expect("new cert")
            .status(),
        200
    );
    assert!(
        https_chat(&trusting(&first), port).await.is_err(),
        "the old certificate is gone"
    );

    // A certificate file that does not parse is refused; the one in use stays.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").expect("garbage");
    gw.reload("", "").await;
    eventually(
        std::time::Duration::from_secs(5),
        "the bad certificate is refused",
        || gw.stderr().contains("TLS certificate reload refused"),
    )
    .await;
    assert_eq!(
        https_chat(&trusting(&second), port)
            .await
            .expect("still served")
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let authority = ca("test CA");
    server_cert(&authority, dir.path(), true);
    let port = free_port();
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let rest = pool("p", "local", &[MODEL], &[mock.addr.to_string()], "");
    let _gw = Gateway::start(&tls_server(dir.path(), port), &rest).await;
    let err = https_chat(&trusting(&authority), port)
        .await
        .expect_err("expired");
    assert!(format!("{err:?}").contains("Expired"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_does_not_match_its_certificate_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let authority = ca("test CA");
    server_cert(&authority, dir.path(), false);
    let other = tempfile::tempdir().expect("tempdir");
    server_cert(&authority, other.path(), false);
    std::fs::copy(other.path().join("key.pem"), dir.path().join("key.pem")).expect("swap key");
    let config = dir.path().join("gateway.toml");
    let mock_addr = "127.0.0.1:9";
    std::fs::write(
        &config,
        format!(
            "{}\n{}",
            tls_server(dir.path(), free_port()).replace("[server.tls]", "[server]\n[server.tls]"),
            pool("p", "local", &[MODEL], &[mock_addr.to_string()], "")
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_inference-gateway"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("server.tls.cert") && text.contains("does not match"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_reaches_its_backends_over_tls_verified_against_its_own_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let authority = ca("backend CA");
    server_cert(&authority, dir.path(), false);
    std::fs::write(dir.path().join("ca.pem"), authority.cert.pem()).expect("ca file");
    // The HTTPS "backend" is a gateway with a TLS listener and no base path, before a mock.
    let port = free_port();
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let inner = pool("p", "local", &[MODEL], &[mock.addr.to_string()], "");
    let _backend = Gateway::start(
        &format!("base_path = \"\"{}", tls_server(dir.path(), port)),
        &inner,
    )
    .await;
    let outer = |tls: &str| {
        format!(
            "{}[pools.tls]\n{tls}\n",
            pool("tls", "local", &[MODEL], &[format!("127.0.0.1:{port}")], "")
        )
    };
    let ca_file = format!(
        "sni = \"localhost\"\nca_file = \"{}\"",
        dir.path().join("ca.pem").display()
    );
    let verified = Gateway::start("", &outer(&ca_file)).await;
    let resp = post_json(&verified.api("/v1/chat/completions"), &chat_body(true)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp
        .text()
        .await
        .expect("stream")
        .trim_end()
        .ends_with("data: [DONE]"));

    // Without the CA, the system roots do not know the backend's certificate: refused.
    let untrusting = Gateway::start("", &outer("sni = \"localhost\"")).await;
    let resp = post_json(&untrusting.api("/v1/chat/completions"), &chat_body(false)).await;
    assert!(resp.status().is_server_error(), "{}", resp.status());

    // Verification off (a lab with self-signed backends): served.
    let unverified = Gateway::start("", &outer("verify = false")).await;
    let resp = post_json(&unverified.api("/v1/chat/completions"), &chat_body(false)).await;
    assert_eq!(resp.status(), 200);
}
