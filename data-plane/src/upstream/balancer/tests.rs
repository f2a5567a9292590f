//! Tests of the balancing strategies, and instances for other modules' tests.

use super::fixtures::endpoint;
use super::*;
use gateway_common::config::OutlierConfig;
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::time::Duration;

fn lb(strategy: Strategy) -> LoadBalancerConfig {
    LoadBalancerConfig {
        strategy,
        hash_on: (strategy == Strategy::ConsistentHash).then(|| "header:x-user".into()),
        ..LoadBalancerConfig::default()
    }
}

fn counts(b: &Balancer, n: usize, hash: impl Fn(usize) -> Option<u64>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..n {
        *counts
            .entry(b.pick(hash(i)).unwrap().id.to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[test]
fn schedule_is_smooth() {
    let order: Vec<u32> = smooth_schedule(&[5, 1, 1]).into_vec();
    assert_eq!(order, vec![0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn round_robin_follows_weights_exactly() {
    let b = Balancer::round_robin(vec![endpoint("a", 3), endpoint("b", 1)]);
    let c = counts(&b, 400, |_| None);
    assert_eq!((c["a"], c["b"]), (300, 100));
}

#[test]
fn a_retry_does_not_take_the_next_first_attempts_turn() {
    let b = Balancer::round_robin(vec![endpoint("good", 1), endpoint("bad", 1)]);
    let mut first_on_bad = 0;
    for _ in 0..20 {
        let first = b.pick(None).unwrap().clone();
        if &*first.id == "bad" {
            first_on_bad += 1;
            let retry = b.pick_excluding(None, &[first]).unwrap();
            assert_eq!(&*retry.id, "good");
        }
    }
    assert_eq!(first_on_bad, 10, "first attempts must alternate");
}

#[test]
fn random_follows_weights() {
    let b = Balancer::build(
        &lb(Strategy::Random),
        vec![endpoint("a", 3), endpoint("b", 1)],
        vec![],
        None,
        None,
    );
    let c = counts(&b, 20_000, |_| None);
    let share = c["a"] as f64 / 20_000.0;
    assert!((share - 0.75).abs() < 0.03, "a got {share}");
}

#[test]
fn least_request_prefers_idle_instances() {
    let eps = vec![endpoint("busy", 1), endpoint("idle", 1), endpoint("mid", 1)];
    let _busy: Vec<_> = (0..10).map(|_| eps[0].load.begin()).collect();
    let _mid: Vec<_> = (0..3).map(|_| eps[2].load.begin()).collect();
    let b = Balancer::build(&lb(Strategy::LeastRequest), eps, vec![], None, None);
    let c = counts(&b, 3000, |_| None);
    // Two random choices: the busiest instance loses every comparison.
    assert_eq!(c.get("busy"), None, "{c:?}");
    // idle wins both comparisons it is in (2/3 of pairs), mid one (1/3).
    let idle = c["idle"] as f64 / 3000.0;
    assert!((idle - 2.0 / 3.0).abs() < 0.05, "{c:?}");
    // Weight counts: 4 in flight on weight 4 beats 2 on weight 1.
    let eps = vec![endpoint("big", 4), endpoint("small", 1)];
    let _g: Vec<_> = (0..4).map(|_| eps[0].load.begin()).collect();
    let _h: Vec<_> = (0..2).map(|_| eps[1].load.begin()).collect();
    let b = Balancer::build(&lb(Strategy::LeastRequest), eps, vec![], None, None);
    assert_eq!(counts(&b, 100, |_| None)["big"], 100);
}

#[test]
fn consistent_hash_keeps_a_key_on_one_instance() {
    let eps: Vec<_> = (0..5).map(|i| endpoint(&format!("i{i}"), 1)).collect();
    let b = Balancer::build(
        &lb(Strategy::ConsistentHash),
        eps.clone(),
        vec![],
        None,
        None,
    );
    for key in 0..200u64 {
        let first = b.pick(Some(key)).unwrap().id.clone();
        for _ in 0..3 {
            assert_eq!(b.pick(Some(key)).unwrap().id, first);
        }
    }
    // Keys spread over every instance.
    let c = counts(&b, 5000, |i| Some(hash64(&i.to_le_bytes(), 0)));
    assert_eq!(c.len(), 5);
    // The same instances reuse the table; a rebuild gives the same answers.
    let again = Balancer::build(&lb(Strategy::ConsistentHash), eps, vec![], None, Some(&b));
    match (
        &b.healthy.as_ref().unwrap().picker,
        &again.healthy.as_ref().unwrap().picker,
    ) {
        (Picker::Hash(x), Picker::Hash(y)) => assert!(Arc::ptr_eq(x, y)),
        _ => panic!("not hash pickers"),
    }
    // No key: random.
    assert_eq!(counts(&again, 500, |_| None).len(), 5);
}

#[test]
fn hash_keys_come_from_headers_cookies_tokens_and_peers() {
    let peer = HeaderValue::from_static("10.0.0.7");
    let mut h = HeaderMap::new();
    h.insert("x-user", HeaderValue::from_static("u1"));
    h.insert(COOKIE, HeaderValue::from_static("a=1; session=s-42; b=2"));
    // {"sub":"user-9","role":"customer"}
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(br#"{"sub":"user-9","role":"customer"}"#);
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer eyJhbGciOiJIUzI1NiJ9.{payload}.sig")).unwrap(),
    );
    let key = |s: &str, h: &HeaderMap| HashOn::parse(s).unwrap().key_hash(h, &peer);
    assert_eq!(key("header:x-user", &h), Some(hash64(b"u1", 0)));
    assert_eq!(key("cookie:session", &h), Some(hash64(b"s-42", 0)));
    assert_eq!(key("jwt-sub", &h), Some(hash64(b"user-9", 0)));
    assert_eq!(key("client-ip", &h), Some(hash64(b"10.0.0.7", 0)));
    // Behind a trusted proxy: the resolved client address.
    let mut behind = h.clone();
    behind.insert("x-original-ip", HeaderValue::from_static("203.0.113.9"));
    assert_eq!(key("client-ip", &behind), Some(hash64(b"203.0.113.9", 0)));
    assert_eq!(key("header:x-missing", &h), None);
    assert_eq!(key("cookie:none", &h), None);
    h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer not-a-jwt"));
    assert_eq!(key("jwt-sub", &h), None);
}

#[test]
fn retries_avoid_instances_already_tried() {
    for strategy in [
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::LeastRequest,
        Strategy::ConsistentHash,
    ] {
        let eps = vec![endpoint("a", 1), endpoint("b", 1), endpoint("c", 1)];
        let b = Balancer::build(&lb(strategy), eps, vec![], None, None);
        for key in 0..50u64 {
            let first = b.pick(Some(key)).unwrap().clone();
            let second = b
                .pick_excluding(Some(key), std::slice::from_ref(&first))
                .unwrap()
                .clone();
            assert!(!Arc::ptr_eq(&first, &second), "{strategy:?}");
            let third = b
                .pick_excluding(Some(key), &[first.clone(), second.clone()])
                .unwrap();
            assert!(!Arc::ptr_eq(&first, third) && !Arc::ptr_eq(&second, third));
            // Everything tried: one of them again rather than nothing.
            assert!(b
                .pick_excluding(Some(key), &[first.clone(), second.clone(), third.clone()])
                .is_some());
        }
    }
}

fn detector() -> Arc<OutlierDetector> {
    Arc::new(OutlierDetector::new(
        Arc::new("svc".into()),
        OutlierConfig {
            consecutive_failures: 1,
            base_ejection_time: Duration::from_secs(60),
            max_ejection_time: Duration::from_secs(60),
            max_ejection_percent: 100,
        },
        Counter::default(),
    ))
}

#[test]
fn ejected_instances_are_skipped() {
    let eps = vec![
        endpoint("a", 1),
        endpoint("b", 1),
        endpoint("c", 1),
        endpoint("d", 1),
    ];
    let d = detector();
    let b = Balancer::build(
        &lb(Strategy::RoundRobin),
        eps.clone(),
        vec![],
        Some(d.clone()),
        None,
    );
    d.record(&eps[0], true, now_ms(), &eps);
    assert_eq!(d.ejected_count(), 1);
    let c = counts(&b, 300, |_| None);
    assert_eq!(c.get("a"), None, "{c:?}");
    assert_eq!(c.len(), 3);
}

#[test]
fn panic_mode_spreads_over_every_instance() {
    // 1 healthy of 3 (33% < 50%): all three take traffic.
    let b = Balancer::build(
        &lb(Strategy::RoundRobin),
        vec![endpoint("ok", 1)],
        vec![endpoint("sick-1", 1), endpoint("sick-2", 1)],
        None,
        None,
    );
    assert_eq!(counts(&b, 300, |_| None).len(), 3);
    // 2 healthy of 3: only the healthy ones.
    let b = Balancer::build(
        &lb(Strategy::RoundRobin),
        vec![endpoint("ok-1", 1), endpoint("ok-2", 1)],
        vec![endpoint("sick", 1)],
        None,
        None,
    );
    let c = counts(&b, 300, |_| None);
    assert_eq!(c.get("sick"), None);
    // Threshold 0 turns panic mode off.
    let mut config = lb(Strategy::RoundRobin);
    config.panic_threshold_percent = 0;
    let b = Balancer::build(
        &config,
        vec![endpoint("ok", 1)],
        vec![endpoint("sick-1", 1), endpoint("sick-2", 1)],
        None,
        None,
    );
    assert_eq!(counts(&b, 300, |_| None).len(), 1);
    // No healthy instance at all: nothing (503), as before.
    let b = Balancer::build(
        &lb(Strategy::RoundRobin),
        vec![],
        vec![endpoint("sick", 1)],
        None,
        None,
    );
    assert!(b.pick(None).is_none());
    // Ejections count too: 3 of 4 ejected leaves 25% < 50%.
    let eps = vec![
        endpoint("a", 1),
        endpoint("b", 1),
        endpoint("c", 1),
        endpoint("d", 1),
    ];
    let d = detector();
    let b = Balancer::build(
        &lb(Strategy::RoundRobin),
        eps.clone(),
        vec![],
        Some(d.clone()),
        None,
    );
    for e in &eps[..3] {
        d.record(e, true, now_ms(), &eps);
    }
    assert_eq!(d.ejected_count(), 3);
    assert_eq!(counts(&b, 400, |_| None).len(), 4);
}

#[test]
fn huge_weight_sums_are_scaled() {
    let endpoints: Vec<_> = (0..100)
        .map(|i| endpoint(&i.to_string(), if i == 0 { 1000 } else { 999 }))
        .collect();
    let weights = scaled_weights(&endpoints);
    assert!(weights.iter().sum::<u64>() <= MAX_SCHEDULE);
    assert!(weights.iter().all(|&w| w >= 1));
}

#[test]
fn guard_releases_the_count() {
    let load = Arc::new(InstanceLoad::default());
    let g1 = load.begin();
    let g2 = load.begin();
    assert_eq!(load.in_flight(), 2);
    drop(g1);
    drop(g2);
    assert_eq!(load.in_flight(), 0);
}
