use super::*;

const POOL: &str = "[[pools]]\nname = \"p\"\ncluster = \"c\"\nframework = \"vllm\"\nmodels = [\"m\"]\nbackends = [\"127.0.0.1:8001\"]\n";

fn error_of(text: &str) -> String {
    Config::parse(text)
        .err()
        .map(|e| e.to_string())
        .expect("config should be refused")
}

#[test]
fn defaults_fill_a_minimal_file() {
    let config = Config::parse(POOL).expect("valid");
    assert_eq!(config.server.base_path, "/resource_server");
    assert_eq!(config.server.max_request_body, 10 << 20);
    assert_eq!(config.pools[0].balance, Balance::LeastRequests);
    assert_eq!(config.pools[0].health.path, "/health");
    assert!(config.pools[0].health.panic_routing);
    assert_eq!(config.pools[0].health.expect_status, vec![(200, 299)]);
    assert_eq!(config.server.listen[0].to_string(), "0.0.0.0:8000");
}

#[test]
fn errors_name_the_toml_path_and_the_bad_value() {
    let cases = [
        (
            POOL.replace(
                "[\"127.0.0.1:8001\"]",
                "[\"127.0.0.1:8001\", \"127.0.0.1:80x\"]",
            ),
            "pools[0].backends[1]: `127.0.0.1:80x` is not a host:port",
        ),
        (
            format!("[server]\nlisten = [\"nowhere\"]\n{POOL}"),
            "server.listen[0]: `nowhere`",
        ),
        (
            format!("[server]\nmax_request_body = \"ten\"\n{POOL}"),
            "server.max_request_body: `ten`",
        ),
        (
            format!("[server]\nupstream_idle_timeout = \"soon\"\n{POOL}"),
            "server.upstream_idle_timeout: `soon`",
        ),
        (
            format!("[server]\nbase_path = \"api/\"\n{POOL}"),
            "server.base_path: `api/`",
        ),
        (
            POOL.replace("name = \"p\"", "name = \"a b\""),
            "pools[0].name: `a b`",
        ),
        (
            format!("{POOL}balance = \"random\"\n"),
            "pools[0].balance: `random`",
        ),
        (
            format!("{POOL}[pools.health]\nunhealthy_threshold = 0\n"),
            "pools[0].health.unhealthy_threshold",
        ),
        (
            format!("{POOL}[pools.health]\nexpect_status = [200, \"2xy\"]\n"),
            "pools[0].health.expect_status[1]: `\"2xy\"`",
        ),
        (
            format!("{POOL}[pools.health]\nexpect_status = 700\n"),
            "pools[0].health.expect_status: `700`",
        ),
        (
            format!("{POOL}[pools.health]\nexpect_status = []\n"),
            "pools[0].health.expect_status: an empty list",
        ),
        (
            format!("{POOL}[pools.health]\npanic_threshold = 101\n"),
            "pools[0].health.panic_threshold: `101`",
        ),
        (
            format!("{POOL}[pools.health]\ntimeout = \"0s\"\n"),
            "pools[0].health.timeout: `0ns` must be from 10ms",
        ),
        (
            format!("{POOL}{POOL}"),
            "pools[1].name: `p` is used by an earlier pool",
        ),
        (
            POOL.replace(
                "[\"127.0.0.1:8001\"]",
                "[{ address = \"127.0.0.1:1\", weight = 0 }]",
            ),
            "pools[0].backends[0].weight: `0`",
        ),
        (
            format!("{POOL}api_key_env = \"CONFIG_TEST_SURELY_UNSET\"\n"),
            "pools[0].api_key_env: environment variable `CONFIG_TEST_SURELY_UNSET`",
        ),
        (String::new(), "pools: at least one"),
    ];
    for (text, want) in cases {
        let got = error_of(&text);
        assert!(got.starts_with(want), "want `{want}`, got `{got}`");
    }
}

#[test]
fn a_pool_key_that_cannot_be_a_header_is_refused_without_echoing_it() {
    // An environment of its own: setting the process's would race the parallel tests.
    let env = |name: &str| {
        (name == "CONFIG_TEST_KEY_WITH_NEWLINE").then(|| "sk-secret\ninjected: 1".to_string())
    };
    let got = Config::parse_with_env(
        &format!("{POOL}api_key_env = \"CONFIG_TEST_KEY_WITH_NEWLINE\"\n"),
        &env,
    )
    .err()
    .map(|e| e.to_string())
    .expect("config should be refused");
    assert!(
        got.starts_with("pools[0].api_key_env: environment variable `CONFIG_TEST_KEY_WITH_NEWLINE` holds characters an Authorization header cannot carry"),
        "{got}"
    );
    assert!(!got.contains("sk-secret"), "{got}");
}

#[test]
fn unknown_keys_are_refused_with_their_path() {
    let got = error_of(&format!("[server]\nlisten_on = [\"127.0.0.1:1\"]\n{POOL}"));
    assert!(
        got.starts_with("server.listen_on: ") && got.contains("unknown field `listen_on`"),
        "{got}"
    );
    let got = error_of(&format!("{POOL}[pools.health]\nevery = \"5s\"\n"));
    assert!(
        got.starts_with("pools[0].health.every: ") && got.contains("unknown field `every`"),
        "{got}"
    );
    let got = error_of(&POOL.replace("[\"127.0.0.1:8001\"]", "[{ addr = \"127.0.0.1:1\" }]"));
    assert!(
        got.starts_with("pools[0].backends[0].addr: unknown key"),
        "{got}"
    );
}

#[test]
fn type_errors_name_the_path() {
    let got = error_of(&format!("[server]\nthreads = \"two\"\n{POOL}"));
    assert!(got.starts_with("server.threads:"), "{got}");
}

#[test]
fn trusted_proxies_match_ipv4_peers_of_a_dual_stack_listener() {
    let config = Config::parse(&format!(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::1\"]\n{POOL}"
    ))
    .expect("valid");
    let ip = |text: &str| text.parse::<std::net::IpAddr>().expect("ip");
    assert!(config.server.trusts(ip("10.1.2.3")));
    assert!(config.server.trusts(ip("::ffff:10.1.2.3")));
    assert!(config.server.trusts(ip("2001:db8::1")));
    assert!(!config.server.trusts(ip("11.1.2.3")));
}

#[test]
fn expect_status_takes_codes_and_classes() {
    let config = Config::parse(&format!(
        "{POOL}[pools.health]\nexpect_status = [204, \"3xx\"]\n"
    ))
    .expect("valid");
    let health = &config.pools[0].health;
    assert!(health.passes(204) && health.passes(301) && health.passes(399));
    assert!(!health.passes(200) && !health.passes(400));
}
