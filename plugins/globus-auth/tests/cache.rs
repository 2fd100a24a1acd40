//! The verdict cache against the mock Globus Auth: bounded under a flood of random tokens,
//! and single-flight for one token.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

use std::time::Duration;

use gateway_plugin_api::{BuildContext, Env};
use gateway_testkit::globus::{MockGlobus, TokenSpec};
use plugin_globus_auth::{GlobusAuth, GlobusConfig, TokenVerdict};

async fn plugin(globus: &MockGlobus, extra: &str) -> GlobusAuth {
    // The secret comes from the build context's environment, not the process's, which tests
    // running in parallel share.
    let cx = BuildContext {
        env: Env::new(|name| (name == "CACHE_TEST_SECRET").then(|| "s3cret".to_string())),
        ..BuildContext::default()
    };
    let text = format!(
        "kind = \"globus_auth\"\nclient_id = \"rs-client\"\nclient_secret_env = \"CACHE_TEST_SECRET\"\n{}{extra}",
        globus.plugin_urls()
    );
    let cfg = GlobusConfig::parse(&text.parse().expect("toml"), "plugins[0]", &cx).expect("config");
    GlobusAuth::new(cfg).expect("plugin")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_random_tokens_stays_within_capacity() {
    let globus = MockGlobus::start("rs-client", "s3cret")
        .await
        .expect("mock");
    // The flood bounds are lifted here: this test is about the cache's capacity.
    let auth = plugin(
        &globus,
        "cache_capacity = 32\nintrospections_per_second = 100000\nintrospections_per_client_per_minute = 1000000\n",
    )
    .await;
    for i in 0..500 {
        let verdict = auth
            .check(&format!("AgRandom{i}"), None)
            .await
            .expect("answer");
        assert!(matches!(verdict.as_ref(), TokenVerdict::Rejected(..)));
    }
    assert!(
        auth.cached_entries().await <= 32,
        "cache grew past its capacity"
    );
    assert_eq!(globus.introspections(), 500);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_checks_of_one_token_share_one_introspection() {
    let globus = MockGlobus::start("rs-client", "s3cret")
        .await
        .expect("mock");
    globus.add_token("AgOne", TokenSpec::user("ada@anl.gov", "rs-client"));
    globus.set_latency(Duration::from_millis(200));
    let auth = std::sync::Arc::new(plugin(&globus, "").await);
    let checks = (0..100).map(|_| {
        let auth = auth.clone();
        tokio::spawn(async move { auth.check("AgOne", None).await.is_ok() })
    });
    for ok in futures_join(checks).await {
        assert!(ok);
    }
    assert_eq!(globus.introspections(), 1);
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}
