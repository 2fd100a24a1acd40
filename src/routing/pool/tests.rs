use super::*;
use crate::config::Config;

fn pool(balance: &str, backends: &str) -> Pool {
    let text = format!(
        "[[pools]]\nname = \"p\"\ncluster = \"c\"\nframework = \"f\"\nmodels = [\"m\"]\nbackends = {backends}\nbalance = \"{balance}\"\n"
    );
    let config = Config::parse(&text).expect("config");
    Pool::new(&config.pools[0], &config.server)
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
    assert_eq!(b.record_check(false, 2, 2), None);
    assert_eq!(b.record_check(false, 2, 2), Some(false));
    assert_eq!(b.record_check(false, 2, 2), None);
    assert_eq!(b.record_check(true, 2, 2), None);
    assert_eq!(b.record_check(true, 2, 2), Some(true));
}
