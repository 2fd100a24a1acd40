//! Reloading the configuration (SIGHUP) while traffic flows: streams in flight finish on the
//! configuration they started with, new requests see the new model map, a bad file changes
//! nothing, and rate-limit counters survive a reload that leaves their plugin alone.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn chat_for(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40, "stream": stream})
}

fn models(names: &[&str]) -> MockConfig {
    MockConfig {
        models: names.iter().map(|m| m.to_string()).collect(),
        tokens: 40,
        token_gap: Duration::from_millis(40),
        ..MockConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_with_20_streams_in_flight_drops_none_and_switches_the_model_map() {
    let a = MockBackend::start(models(&[MODEL, "old/model"]))
        .await
        .expect("mock a");
    let b = MockBackend::start(models(&[MODEL, "new/model"]))
        .await
        .expect("mock b");
    let before = format!(
        "{}{}",
        pool("main", "local", &[MODEL], &[a.addr.to_string()], ""),
        pool("old", "local", &["old/model"], &[a.addr.to_string()], "")
    );
    let after = format!(
        "{}{}",
        pool("main", "local", &[MODEL], &[b.addr.to_string()], ""),
        pool("new", "local", &["new/model"], &[b.addr.to_string()], "")
    );
    let gw = Gateway::start("", &before).await;
    let url = gw.api("/v1/chat/completions");
    let streams: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let resp = post_json(&url, &chat_for(MODEL, true)).await;
                assert_eq!(resp.status(), 200);
                resp.text().await.expect("a whole stream")
            })
        })
        .collect();
    eventually(Duration::from_secs(5), "20 streams started", || {
        count(&a.stats().streams_started) == 20
    })
    .await;

    gw.reload(&before, &after).await;
    assert!(
        gw.stderr().contains("configuration reloaded"),
        "{}",
        gw.stderr()
    );

    // New requests: the backend moved, a model was added, another removed.
    let resp = post_json(&url, &chat_for(MODEL, false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        count(&b.stats().requests),
        1,
        "the moved pool's new backend answered"
    );
    assert_eq!(
        post_json(&url, &chat_for("new/model", false))
            .await
            .status(),
        200
    );
    let gone = post_json(&url, &chat_for("old/model", false)).await;
    assert_eq!(gone.status(), 404);
    let listed = get_json(&gw.api("/v1/models")).await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, [MODEL, "new/model"]);

    // Every stream that started before finished whole, on the old backend.
    for task in streams {
        let text = task.await.expect("task");
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        assert_eq!(text.matches("tok").count(), 40, "every token of the stream");
    }
    assert_eq!(count(&a.stats().streams_completed), 20);
    assert_eq!(count(&a.stats().streams_cancelled), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_does_not_validate_is_refused_and_the_running_config_stays() {
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let rest = pool("main", "local", &[MODEL], &[mock.addr.to_string()], "");
    let gw = Gateway::start("", &rest).await;
    let broken = rest.replace("[[pools]]", "[[pools]]\nbalance = \"fastest\"");
    gw.reload(&rest, &broken).await;
    let log = gw.stderr();
    assert!(log.contains("configuration reload refused"), "{log}");
    assert!(
        log.contains("pools[0].balance") && log.contains("fastest"),
        "{log}"
    );
    let resp = post_json(&gw.api("/v1/chat/completions"), &chat_body(false)).await;
    assert_eq!(
        resp.status(),
        200,
        "still serving the running configuration"
    );

    // Settings that need a restart are named, and the rest applies.
    let fixed = rest.replace("[[pools]]", "[[pools]]\nbalance = \"round_robin\"");
    gw.reload(&broken, &fixed).await;
    assert!(gw.stderr().contains("configuration reloaded"));
    let path = gw.dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, text.replacen("threads = 2", "threads = 3", 1)).expect("write");
    gw.reload("", "").await;
    // The warning follows the "reloaded" line the reload helper waits for.
    let named = "server.threads changed in the file but take effect only after a restart";
    eventually(
        Duration::from_secs(5),
        "the restart-only key is named",
        || gw.stderr().contains(named),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_counters_survive_a_reload_that_leaves_their_plugin_alone() {
    let mock = MockBackend::start(MockConfig::default())
        .await
        .expect("mock");
    let limits = "[[plugins]]\nkind = \"rate_limits\"\n[plugins.per_user]\nrequests_per_minute = 2\ntokens_per_minute = 100000\n";
    let one_pool = format!(
        "{limits}\n{}",
        pool("p", "local", &[MODEL], &[mock.addr.to_string()], "")
    );
    let gw = Gateway::start("", &one_pool).await;
    let url = gw.api("/v1/chat/completions");
    for _ in 0..2 {
        assert_eq!(post_json(&url, &chat_body(false)).await.status(), 200);
    }
    assert_eq!(post_json(&url, &chat_body(false)).await.status(), 429);

    // A pool added: the limiter is the same instance, its counts go on.
    let two_pools = format!(
        "{one_pool}{}",
        pool("q", "other", &["other/model"], &[mock.addr.to_string()], "")
    );
    gw.reload(&one_pool, &two_pools).await;
    assert!(gw.stderr().contains("plugins_kept"), "{}", gw.stderr());
    assert_eq!(
        post_json(&url, &chat_body(false)).await.status(),
        429,
        "still limited"
    );

    // The limit itself changed: a new limiter, with the new limit.
    let raised = two_pools.replace("requests_per_minute = 2", "requests_per_minute = 5");
    gw.reload(&two_pools, &raised).await;
    assert_eq!(post_json(&url, &chat_body(false)).await.status(), 200);
}
