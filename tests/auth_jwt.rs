//! The `jwt_auth` plugin through the real binary: JWKS with key rotation, a static key file,
//! the claim checks, and chaining with another auth plugin.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use gateway_testkit::jwks::MockJwks;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const ISSUER: &str = "https://keycloak.example.org/realms/hpc";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).expect("fixture")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": "inference-gateway", "sub": "user-42",
        "preferred_username": "ada@anl.gov", "name": "Ada", "groups": ["hpc-users"],
        "iat": now(), "exp": now() + 600,
    })
}

fn sign(key: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    let pem = fixture(&format!("{key}-private.pem"));
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).expect("key"),
    )
    .expect("sign")
}

async fn status_of(gw: &Gateway, token: &str) -> (u16, Value) {
    let resp = get_with(&gw.api("/whoami"), &[("authorization", &bearer(token))]).await;
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// A gateway with the auth plugins in `cfg` in front of a pool nobody serves (`/whoami` only).
async fn gateway(cfg: &str) -> Gateway {
    let pools = pool("p", "local", &[MODEL], &["127.0.0.1:9".into()], "");
    Gateway::start("", &format!("{cfg}\n{pools}")).await
}

fn plugin(keys: &str) -> String {
    format!("[[plugins]]\nkind = \"jwt_auth\"\nissuer = \"{ISSUER}\"\naudience = [\"inference-gateway\"]\nidentity_provider = \"keycloak\"\n{keys}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_tokens_are_verified_and_rotation_is_picked_up() {
    let key1: Value = serde_json::from_str(&fixture("jwks-key1.json")).expect("jwks");
    let key2: Value = serde_json::from_str(&fixture("jwks-key2.json")).expect("jwks");
    let jwks = MockJwks::start(key1).await.expect("jwks");
    let cfg = plugin(&format!(
        "jwks_url = \"{}\"\njwks_min_refresh_interval = \"1s\"",
        jwks.url()
    ));
    let gw = gateway(&cfg).await;

    let (status, me) = status_of(&gw, &sign("key1", Some("key1"), &claims())).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["username"], "ada@anl.gov");
    assert_eq!(me["id"], "user-42");
    assert_eq!(me["groups"], json!(["hpc-users"]));
    assert_eq!(me["auth_method"], "jwt");
    assert_eq!(me["identity_provider"], "keycloak");
    assert_eq!(jwks.fetches(), 1);

    // The issuer rotates to key2: a token with the new kid triggers one refresh (once the
    // minimum interval since the last fetch has passed).
    jwks.set(key2);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let rotated = sign("key2", Some("key2"), &claims());
    assert_eq!(status_of(&gw, &rotated).await.0, 200);
    assert_eq!(jwks.fetches(), 2);
    // Further unknown kids within the interval do not hammer the issuer.
    for _ in 0..3 {
        let (status, body) = status_of(&gw, &sign("key1", Some("nope"), &claims())).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("invalid_token"))
        );
    }
    assert_eq!(jwks.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_checks_with_a_static_key() {
    let cfg = plugin(&format!("key_file = \"{FIXTURES}/key1-public.pem\""));
    let gw = gateway(&cfg).await;
    assert_eq!(status_of(&gw, &sign("key1", None, &claims())).await.0, 200);
    // A token without the id claim names nobody: refused, not accepted as an empty id.
    let mut anonymous = claims();
    if let Some(c) = anonymous.as_object_mut() {
        c.remove("sub");
    }
    let (status, body) = status_of(&gw, &sign("key1", None, &anonymous)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`sub`"),
        "{body}"
    );

    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let mut foreign = claims();
    foreign["aud"] = json!("someone-else");
    let mut early = claims();
    early["nbf"] = json!(now() + 3600);
    let cases = [
        (sign("key1", None, &expired), "token_expired"),
        (sign("key1", None, &foreign), "wrong_audience"),
        (sign("key1", None, &early), "token_not_yet_valid"),
        (sign("key2", None, &claims()), "invalid_token"),
    ];
    for (token, want) in cases {
        let (status, body) = status_of(&gw, &token).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some(want)),
            "{body}"
        );
    }
    // A token from another issuer is not this plugin's: nobody recognises it.
    let mut other = claims();
    other["iss"] = json!("https://elsewhere.example.org");
    let (status, body) = status_of(&gw, &sign("key1", None, &other)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("missing_token"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chained_with_api_keys_the_first_that_recognises_decides() {
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(b"svc-key")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let cfg = format!(
        "[[plugins]]\nkind = \"api_keys\"\n[[plugins.keys]]\nsha256 = \"{hash}\"\nusername = \"svc@anl.gov\"\n\n{}",
        plugin(&format!("key_file = \"{FIXTURES}/key1-public.pem\""))
    );
    let gw = gateway(&cfg).await;
    let (_, me) = status_of(&gw, "svc-key").await;
    assert_eq!(me["auth_method"], "api_key");
    let (_, me) = status_of(&gw, &sign("key1", None, &claims())).await;
    assert_eq!(me["auth_method"], "jwt");
}
