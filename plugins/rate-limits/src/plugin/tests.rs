use std::sync::atomic::AtomicU64;
use std::time::Duration;

use gateway_plugin_api::{Principal, Usage};

use super::*;

struct Harness {
    plugin: RateLimits,
    now: Arc<AtomicU64>,
}

impl Harness {
    fn new(limits: &str) -> Harness {
        let table: toml::Table = format!("kind = \"rate_limits\"\n{limits}")
            .parse()
            .expect("toml");
        let cfg = LimitsConfig::parse(&table, "plugins[1]").expect("config");
        let now = Arc::new(AtomicU64::new(1_000_000f64.to_bits()));
        let clock_now = now.clone();
        let clock: Clock = Arc::new(move || f64::from_bits(clock_now.load(Ordering::SeqCst)));
        Harness {
            plugin: RateLimits::new(cfg, clock),
            now,
        }
    }

    fn advance(&self, secs: f64) {
        let t = f64::from_bits(self.now.load(Ordering::SeqCst)) + secs;
        self.now.store(t.to_bits(), Ordering::SeqCst);
    }

    fn ctx(&self, user: &str, groups: &[&str], model: &str, max_tokens: Option<u64>) -> RequestCtx {
        let mut ctx = RequestCtx::new("r".into(), None);
        ctx.model = Some(model.into());
        ctx.max_tokens = max_tokens;
        ctx.body_bytes = 40; // 10 tokens of prompt estimate
        ctx.principal = Some(std::sync::Arc::new(Principal {
            id: user.into(),
            username: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Principal::default()
        }));
        ctx
    }

    /// Runs admit; `Ok(ctx)` when admitted, `Err(error)` when refused.
    async fn send(&self, mut ctx: RequestCtx) -> Result<RequestCtx, ApiError> {
        let headers = http::HeaderMap::new();
        let (method, uri) = (http::Method::POST, http::Uri::from_static("/"));
        let head = RequestHead {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        match self.plugin.admit(&head, &mut ctx).await {
            Flow::Continue => Ok(ctx),
            Flow::Respond(e) => Err(e),
        }
    }

    /// Ends a request with `status` and `usage`, and lets the settlement task run.
    async fn finish(&self, mut ctx: RequestCtx, status: u16, usage: Option<(u64, u64)>) {
        ctx.usage = usage.map(|(p, c)| Usage {
            prompt_tokens: p,
            completion_tokens: c,
            estimated: false,
        });
        let summary = RequestSummary {
            status,
            ..RequestSummary::default()
        };
        self.plugin.on_done(&summary, &ctx);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn requests_per_minute_per_user() {
    let h = Harness::new("[per_user]\nrequests_per_minute = 3\n");
    for _ in 0..3 {
        h.send(h.ctx("ada", &[], "m", Some(1)))
            .await
            .expect("admitted");
    }
    let err = h
        .send(h.ctx("ada", &[], "m", Some(1)))
        .await
        .expect_err("limited");
    assert_eq!(
        (err.status, err.kind, err.code),
        (429, "rate_limit_error", "rate_limit_exceeded")
    );
    assert!(
        err.message.contains("3 requests per minute for user `ada`"),
        "{}",
        err.message
    );
    assert_eq!(err.headers, vec![("retry-after", "20".to_string())]);
    // Another user has their own budget; and ada's refills at one request per 20 s.
    h.send(h.ctx("bob", &[], "m", Some(1)))
        .await
        .expect("bob admitted");
    h.advance(20.0);
    h.send(h.ctx("ada", &[], "m", Some(1)))
        .await
        .expect("refilled");
}

#[tokio::test]
async fn tokens_are_reserved_then_settled_to_usage() {
    let h = Harness::new("[per_user_model]\ntokens_per_minute = 1020\n");
    // Each request reserves 10 (prompt estimate) + 500 (max_tokens).
    let first = h
        .send(h.ctx("ada", &[], "m", Some(500)))
        .await
        .expect("first");
    let _second = h
        .send(h.ctx("ada", &[], "m", Some(500)))
        .await
        .expect("second");
    let err = h
        .send(h.ctx("ada", &[], "m", Some(500)))
        .await
        .expect_err("third");
    assert!(
        err.message
            .contains("1020 tokens per minute for user `ada` on model `m`"),
        "{}",
        err.message
    );
    // The first used only 60 tokens: 450 come back.
    h.finish(first, 200, Some((20, 40))).await;
    h.send(h.ctx("ada", &[], "m", Some(400)))
        .await
        .expect("fits after settlement");
    // Other models are separate budgets at this scope.
    h.send(h.ctx("ada", &[], "other", Some(500)))
        .await
        .expect("other model");
}

#[tokio::test]
async fn failed_requests_consume_no_tokens() {
    let h = Harness::new("[per_user]\ntokens_per_minute = 600\n");
    let ctx = h
        .send(h.ctx("ada", &[], "m", Some(500)))
        .await
        .expect("admitted");
    h.send(h.ctx("ada", &[], "m", Some(500)))
        .await
        .expect_err("budget reserved");
    h.finish(ctx, 503, None).await;
    h.send(h.ctx("ada", &[], "m", Some(500)))
        .await
        .expect("refunded");
}

#[tokio::test]
async fn a_request_the_gateway_ended_after_sending_it_keeps_its_reservation() {
    let h = Harness::new("[per_user]\ntokens_per_minute = 600\n");
    for code in [
        "client_closed_request",
        "upstream_timeout",
        "upstream_error",
    ] {
        let ctx = h
            .send(h.ctx("ada", &[], "m", Some(500)))
            .await
            .expect("admitted");
        let summary = RequestSummary {
            status: if code == "upstream_timeout" { 504 } else { 499 },
            error_code: Some(code),
            ..RequestSummary::default()
        };
        h.plugin.on_done(&summary, &ctx);
        h.send(h.ctx("ada", &[], "m", Some(500)))
            .await
            .expect_err("the 510 reserved stay spent");
        h.advance(60.0);
    }
}

#[tokio::test]
async fn concurrency_slots_are_released_when_requests_end() {
    let h = Harness::new("[per_model]\nmax_concurrent = 2\n");
    let a = h.send(h.ctx("ada", &[], "m", None)).await.expect("a");
    let _b = h.send(h.ctx("bob", &[], "m", None)).await.expect("b");
    let err = h.send(h.ctx("cy", &[], "m", None)).await.expect_err("c");
    assert!(
        err.message
            .contains("2 concurrent requests for model `m` (all users)"),
        "{}",
        err.message
    );
    h.finish(a, 200, Some((1, 1))).await;
    h.send(h.ctx("cy", &[], "m", None))
        .await
        .expect("slot freed");
}

#[tokio::test]
async fn a_refused_check_records_nothing() {
    let h =
        Harness::new("[per_user]\nrequests_per_minute = 100\n[per_model]\nmax_concurrent = 1\n");
    let _a = h.send(h.ctx("ada", &[], "m", None)).await.expect("a");
    for _ in 0..50 {
        h.send(h.ctx("ada", &[], "m", None))
            .await
            .expect_err("model busy");
    }
    // Those 50 refusals did not spend ada's request budget: 99 left.
    let ctx = h
        .send(h.ctx("ada", &[], "other", None))
        .await
        .expect("other model");
    let admission = ctx.extensions.get::<Admission>().expect("admission");
    assert_eq!(admission.requests.map(|r| r.remaining), Some(98));
}

#[tokio::test]
async fn overrides_by_model_group_and_user() {
    let h = Harness::new(
        "[per_user]\nrequests_per_minute = 1\n\
         [[overrides]]\ngroup = \"power\"\n[overrides.per_user]\nrequests_per_minute = 5\n\
         [[overrides]]\nuser = \"svc\"\n[overrides.per_user]\nrequests_per_minute = 10\n\
         [[overrides]]\nmodel = \"big\"\n[overrides.per_model]\nmax_concurrent = 1\n",
    );
    h.send(h.ctx("ada", &[], "m", None)).await.expect("1st");
    h.send(h.ctx("ada", &[], "m", None))
        .await
        .expect_err("default: 1 rpm");
    for _ in 0..5 {
        h.send(h.ctx("pat", &["power"], "m", None))
            .await
            .expect("power user");
    }
    for _ in 0..10 {
        h.send(h.ctx("svc", &[], "m", None))
            .await
            .expect("service account");
    }
    let _held = h
        .send(h.ctx("kim", &["power"], "big", None))
        .await
        .expect("big 1");
    let err = h
        .send(h.ctx("kim", &["power"], "big", None))
        .await
        .expect_err("big is one at a time");
    assert!(
        err.message
            .contains("1 concurrent requests for model `big`"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn headers_report_the_tightest_budget() {
    let h = Harness::new("[per_user]\nrequests_per_minute = 10\ntokens_per_minute = 10000\n[per_model]\nrequests_per_minute = 4\n");
    let mut ctx = h
        .send(h.ctx("ada", &[], "m", Some(90)))
        .await
        .expect("admitted");
    let mut headers = http::HeaderMap::new();
    h.plugin.on_response_header(200, &mut headers, &mut ctx);
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(get("x-ratelimit-limit-requests"), "4");
    assert_eq!(get("x-ratelimit-remaining-requests"), "3");
    assert_eq!(get("x-ratelimit-reset-requests"), "15s");
    assert_eq!(get("x-ratelimit-limit-tokens"), "10000");
    assert_eq!(get("x-ratelimit-remaining-tokens"), "9900");
    assert_eq!(get("x-ratelimit-reset-tokens"), "600ms");
}

#[test]
fn config_errors_name_the_path() {
    let parse = |text: &str| {
        let table: toml::Table = format!("kind = \"rate_limits\"\n{text}")
            .parse()
            .expect("toml");
        LimitsConfig::parse(&table, "plugins[1]")
            .err()
            .unwrap_or_default()
    };
    assert!(parse("backend = \"redis\"").starts_with("plugins[1].redis_url: required"));
    assert!(parse("backend = \"etcd\"").starts_with("plugins[1].backend: `etcd`"));
    assert!(parse("[per_user]\nrequests_per_minute = 0")
        .starts_with("plugins[1].per_user.requests_per_minute: `0`"));
    assert!(parse("[per_user]\nrpm = 5").contains("unknown field `rpm`"));
    assert!(
        parse("[[overrides]]\n[overrides.per_user]\nmax_concurrent = 2")
            .starts_with("plugins[1].overrides[0]: set at least one")
    );
}

#[test]
fn reset_times_use_openais_format() {
    let cases = [
        (0.0, "0ms"),
        (0.0201, "21ms"),
        (0.999, "999ms"),
        (1.0, "1s"),
        (1.45, "1.5s"),
        (12.04, "12s"),
        (59.96, "60s"),
        (60.0, "1m0s"),
        // Never more than the window, whatever the state says.
        (361.2, "1m0s"),
        (f64::INFINITY, "1m0s"),
        (f64::NAN, "0ms"),
    ];
    for (secs, want) in cases {
        assert_eq!(super::headers::format_reset(secs), want, "{secs}");
    }
}

#[test]
fn holder_ids_read_as_nonce_and_counter_in_hex() {
    for (nonce, n) in [
        (0, 0),
        (1, 15),
        (0xabc, 16),
        (u64::MAX, u64::MAX),
        (0x0123_4567_89ab_cdef, 255),
    ] {
        assert_eq!(holder_id(nonce, n), format!("{nonce:016x}-{n:x}"));
    }
}
