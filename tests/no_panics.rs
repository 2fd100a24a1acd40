//! Property tests: no configuration file makes `check` panic, and no request input makes the
//! request parsers panic (model extraction, route matching, the usage observer, the
//! forwarded-client parser). Each property runs a bounded number of generated cases.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

use inference_gateway::config::Config;
use inference_gateway::proxy::usage::UsageObserver;
use inference_gateway::proxy::{parse_routing_fields, real_client};
use inference_gateway::routing::match_route;
use proptest::prelude::*;

/// A TOML value of any kind, with numbers at the edges (0, negative, 2^63 − 1, huge floats).
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        prop_oneof![Just(0i64), Just(-1), Just(1), Just(i64::MAX), Just(1 << 40)]
            .prop_map(|n| n.to_string()),
        prop_oneof![
            Just("1e300"),
            Just("-0.0"),
            Just("nan"),
            Just("inf"),
            Just("0.5")
        ]
        .prop_map(str::to_string),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-zA-Z0-9 ./:{}_@-]{0,12}".prop_map(|s| format!("{s:?}")),
        prop_oneof![
            Just("\"\""),
            Just("\"0s\""),
            Just("\"5s\""),
            Just("\"99999999999999h\""),
            Just("\"10MiB\""),
            Just("\"127.0.0.1:1\""),
            Just("\"10.0.0.0/8\""),
            Just("\"redis://127.0.0.1:1/\""),
            Just("\"/nonexistent/file\""),
        ]
        .prop_map(str::to_string),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(|kv| {
                let fields: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", fields.join(", "))
            }),
        ]
    })
}

const SERVER_KEYS: &[&str] = &[
    "listen",
    "base_path",
    "threads",
    "max_request_body",
    "client_body_timeout",
    "client_header_timeout",
    "client_keepalive_timeout",
    "max_connections",
    "max_tokens_limit",
    "trusted_proxies",
    "upstream_connect_timeout",
    "upstream_idle_timeout",
    "upstream_keepalive_timeout",
    "max_connect_attempts",
    "shutdown_grace_period",
    "log_level",
    "metrics_listen",
];
const POOL_KEYS: &[&str] = &[
    "name",
    "cluster",
    "framework",
    "models",
    "backends",
    "balance",
    "priority",
    "api_key_env",
    "allowed_groups",
    "allowed_domains",
];
/// Plugin keys, file paths left out: a generated path must not create files.
const PLUGIN_KEYS: &[(&str, &[&str])] = &[
    ("access_log", &["format"]),
    ("api_keys", &["keys"]),
    (
        "globus_auth",
        &[
            "client_id",
            "client_secret_env",
            "introspect_url",
            "required_scope",
            "check_audience",
            "authorized_idp_domains",
            "policies",
            "cache_ttl",
            "negative_cache_ttl",
            "cache_capacity",
            "timeout",
            "retry_after",
            "max_concurrent_introspections",
            "introspections_per_second",
            "introspections_per_client_per_minute",
        ],
    ),
    (
        "jwt_auth",
        &[
            "issuer",
            "audience",
            "algorithms",
            "jwks_url",
            "jwks_min_refresh_interval",
            "username_claim",
            "groups_claim",
            "id_claim",
            "leeway",
            "timeout",
        ],
    ),
    (
        "rate_limits",
        &[
            "backend",
            "redis_url",
            "redis_cluster",
            "redis_timeout",
            "concurrency_lease",
            "on_redis_error",
            "default_max_tokens",
            "key_prefix",
            "per_user",
            "per_user_model",
            "per_model",
            "overrides",
        ],
    ),
];

fn section(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(keys), value()), 0..6).prop_map(|kv| {
        kv.iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect::<String>()
    })
}

fn plugin() -> impl Strategy<Value = String> {
    prop::sample::select(PLUGIN_KEYS).prop_flat_map(|(kind, keys)| {
        section(keys).prop_map(move |body| format!("[[plugins]]\nkind = \"{kind}\"\n{body}"))
    })
}

/// A pool that is valid unless its generated keys (which come later and win) break it.
fn pool() -> impl Strategy<Value = String> {
    section(POOL_KEYS).prop_map(|extra| {
        let mut lines = vec![
            "name = \"p\"",
            "cluster = \"c\"",
            "framework = \"f\"",
            "models = [\"m\"]",
            "backends = [\"127.0.0.1:1\"]",
        ];
        lines.retain(|l| {
            !extra
                .lines()
                .any(|e| e.split(' ').next() == l.split(' ').next())
        });
        format!("[[pools]]\n{}\n{extra}", lines.join("\n"))
    })
}

fn config_text() -> impl Strategy<Value = String> {
    (
        section(SERVER_KEYS),
        prop::collection::vec(plugin(), 0..3),
        prop::collection::vec(pool(), 0..3),
    )
        .prop_map(|(server, plugins, pools)| {
            format!(
                "[server]\n{server}\n{}\n{}",
                plugins.join("\n"),
                pools.join("\n")
            )
        })
}

/// JSON bodies with the fields the gateway reads, holding anything.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let json_value = prop_oneof![
        Just("null".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        Just("184467440737095516160000".to_string()),
        "[a-z/\\\\\"]{0,300}".prop_map(|s| format!("{:?}", s)),
        Just("[1,{\"a\":[]}]".to_string()),
    ];
    let field = (
        prop::sample::select(
            &[
                "model",
                "max_tokens",
                "max_completion_tokens",
                "n",
                "stream",
                "messages",
            ][..],
        ),
        json_value,
    );
    prop_oneof![
        prop::collection::vec(field, 0..6).prop_map(|fields| {
            let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", inner.join(",")).into_bytes()
        }),
        prop::collection::vec(any::<u8>(), 0..200),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_configuration_panics_check(text in config_text()) {
        if let Ok(config) = Config::parse(&text) {
            let _ = inference_gateway::server::check(&config);
        }
    }

    #[test]
    fn no_text_panics_the_config_parser(text in "\\PC{0,300}") {
        let _ = Config::parse(&text);
    }

    #[test]
    fn no_body_panics_the_routing_fields(body in body(), limit in 1u64..(1 << 40)) {
        if let Ok(fields) = parse_routing_fields(&body, limit) {
            prop_assert!(fields.max_tokens.is_none_or(|m| (1..=limit).contains(&m)));
            prop_assert!((1..=128).contains(&fields.choices));
        }
    }

    #[test]
    fn no_path_panics_the_router(path in "(/[a-zA-Z0-9%._ -]{0,6}){0,8}/?", base in prop_oneof![Just(""), Just("/resource_server")]) {
        let _ = match_route(base, &path);
    }

    #[test]
    fn no_response_panics_the_usage_observer(
        chunks in prop::collection::vec(prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            "(data: )?[{}\\[\\]\":, a-z0-9\\\\\n]{0,80}".prop_map(String::into_bytes),
            Just(b"{\"usage\":{\"prompt_tokens\":18446744073709551615,\"completion_tokens\":1}}".to_vec()),
        ], 0..12),
        kind in prop::sample::select(&["text/event-stream", "application/json", "text/plain"][..]),
        body_bytes in any::<u64>(),
    ) {
        let mut observer = UsageObserver::new(Some(kind.as_bytes()));
        for chunk in &chunks {
            observer.observe(chunk);
        }
        let _ = observer.finish(body_bytes);
    }

    #[test]
    fn no_forwarded_for_panics_the_client_parser(values in prop::collection::vec("[0-9a-f.:,\\[\\] ]{0,40}", 0..4)) {
        let mut headers = http::HeaderMap::new();
        for v in &values {
            if let Ok(value) = http::HeaderValue::from_str(v) {
                headers.append("x-forwarded-for", value);
            }
        }
        let peer = std::net::IpAddr::from([127, 0, 0, 1]);
        let _ = real_client(peer, &headers, |_| true);
    }
}
