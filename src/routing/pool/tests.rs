use super::*;
use crate::config::Config;

fn pool(balance: &str, backends: &str) -> Pool {
    let text = format!(
        "[[pools]]\nname = \"p\"\ncluster = \"c\"\nframework = \"f\"\nmodels = [\"m\"]\nbackends = {backends}\nbalance = \"{balance}\"\n"
    );
    let config = Config::parse(&text).expect("config");
    Pool::new(&config.pools[0], &crate::routing::bare_peer)
}

#[test]
fn least_requests_prefers_the_least_loaded() {
    let p = pool(
        "least_requests",
        r#"["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]"#,
    );
    let _a = p.backends[0].start_request();
    let _b = p.backends[0].start_request();
    let _c = p.backends[2].start_request();
    for _ in 0..10 {
        assert_eq!(p.select(&[], 0), Ok(1));
    }
    assert_eq!(p.select(&[1], 0), Ok(2));
}

#[test]
fn least_requests_honours_weight() {
    let p = pool(
        "least_requests",
        r#"["127.0.0.1:1", { address = "127.0.0.1:2", weight = 3 }]"#,
    );
    // 1 in flight on weight 1 weighs more than 2 in flight on weight 3.
    let _a = p.backends[0].start_request();
    let _b = p.backends[1].start_request();
    let _c = p.backends[1].start_request();
    assert_eq!(p.select(&[], 0), Ok(1));
}

#[test]
fn unhealthy_and_tried_backends_are_skipped() {
    let p = pool(
        "round_robin",
        r#"["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]"#,
    );
    p.backends[1].eject();
    for _ in 0..20 {
        assert_ne!(p.select(&[], 0), Ok(1));
    }
    assert_eq!(p.select(&[0, 2], 0), Err(NoBackend::AllTried));
    p.backends[0].eject();
    p.backends[2].eject();
    assert_eq!(p.select(&[], 0), Err(NoBackend::NoneHealthy));
}

#[test]
fn weighted_round_robin_follows_weights() {
    let p = pool(
        "round_robin",
        r#"["127.0.0.1:1", { address = "127.0.0.1:2", weight = 3 }]"#,
    );
    let mut counts = [0usize; 2];
    for _ in 0..400 {
        counts[p.select(&[], 0).expect("backend")] += 1;
    }
    assert_eq!(counts, [100, 300]);
}

#[test]
fn consistent_hash_is_sticky_and_moves_only_lost_keys() {
    let p = pool(
        "consistent_hash",
        r#"["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]"#,
    );
    let before: Vec<usize> = (0..300u64)
        .map(|k| p.select(&[], k).expect("backend"))
        .collect();
    assert_eq!(
        before,
        (0..300u64)
            .map(|k| p.select(&[], k).expect("b"))
            .collect::<Vec<_>>()
    );
    for b in 0..3 {
        assert!(
            before.iter().filter(|x| **x == b).count() > 50,
            "keys spread"
        );
    }
    p.backends[0].eject();
    for (k, was) in before.iter().enumerate() {
        let now = p.select(&[], k as u64).expect("backend");
        if *was != 0 {
            assert_eq!(now, *was, "key {k} moved although its backend stayed up");
        }
    }
}

#[test]
fn health_thresholds() {
    let p = pool("round_robin", r#"["127.0.0.1:1"]"#);
    let b = &p.backends[0];
    assert_eq!(b.record_check(CheckResult::Failed, 2, 2), None);
    assert_eq!(
        b.record_check(CheckResult::Failed, 2, 2),
        Some(Health::Failing)
    );
    assert_eq!(b.record_check(CheckResult::Failed, 2, 2), None);
    assert_eq!(b.record_check(CheckResult::Passed, 2, 2), None);
    assert_eq!(b.record_check(CheckResult::Busy, 2, 2), Some(Health::Up));
    // Busy is alive: it never takes a backend out.
    for _ in 0..5 {
        assert_eq!(b.record_check(CheckResult::Busy, 2, 2), None);
    }
    // Nothing listening: out at once, whatever the threshold.
    assert_eq!(
        b.record_check(CheckResult::Unreachable, 2, 2),
        Some(Health::Unreachable)
    );
    // A check that connects proves something listens again.
    assert_eq!(
        b.record_check(CheckResult::Failed, 2, 2),
        Some(Health::Failing)
    );
}

#[test]
fn progress_is_evidence_between_two_checks() {
    let p = pool("round_robin", r#"["127.0.0.1:1"]"#);
    let b = &p.backends[0];
    assert!(!b.progressed_since_last_check());
    b.saw_progress();
    assert!(b.progressed_since_last_check());
    assert!(!b.progressed_since_last_check());
}

fn panic_pool(extra: &str) -> Pool {
    let text = format!(
        "[[pools]]\nname = \"p\"\ncluster = \"c\"\nframework = \"f\"\nmodels = [\"m\"]\nbackends = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\", \"127.0.0.1:4\"]\n[pools.health]\n{extra}\n"
    );
    let config = Config::parse(&text).expect("config");
    Pool::new(&config.pools[0], &crate::routing::bare_peer)
}

fn fail(p: &Pool, i: usize) {
    p.backends[i].record_check(CheckResult::Failed, 1, 1);
}

#[test]
fn panic_routing_uses_failing_but_never_unreachable_backends() {
    let p = panic_pool("");
    for i in 0..3 {
        fail(&p, i);
    }
    // One healthy backend left: it takes everything.
    assert_eq!(p.routing(), Routing::Healthy);
    assert_eq!(p.status().0, PoolStatus::Degraded);
    p.backends[3].eject();
    // None healthy, three failing: all three are eligible, the unreachable one never.
    assert_eq!(p.routing(), Routing::Panic);
    assert_eq!(p.status().0, PoolStatus::Degraded);
    let mut seen = [0usize; 4];
    for _ in 0..30 {
        let picked = p.pick(&[], 0).expect("picked");
        assert!(picked.panic);
        seen[picked.index] += 1;
    }
    assert_eq!(seen[3], 0);
    assert!(seen[..3].iter().all(|n| *n > 0), "spread: {seen:?}");
    // All unreachable: nothing to route to, fail fast.
    for i in 0..3 {
        p.backends[i].eject();
    }
    assert_eq!(p.routing(), Routing::Nothing);
    assert_eq!(p.status().0, PoolStatus::Down);
    assert_eq!(p.select(&[], 0), Err(NoBackend::NoneHealthy));
}

#[test]
fn panic_threshold_and_switch() {
    let p = panic_pool("panic_threshold = 50");
    fail(&p, 0);
    fail(&p, 1);
    // 2 of 4 healthy is not below 50 %.
    assert_eq!(p.routing(), Routing::Healthy);
    fail(&p, 2);
    // 1 of 4 is: the failing ones join.
    assert_eq!(p.routing(), Routing::Panic);
    let off = panic_pool("panic_routing = false");
    for i in 0..4 {
        fail(&off, i);
    }
    assert_eq!(off.routing(), Routing::Nothing);
    assert_eq!(off.status().0, PoolStatus::Down);
}
