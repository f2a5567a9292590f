//! Config propagation: from `Register` returning until both of two data
//! planes route to the new instance, over 100 registrations.
//!
//! Real processes (release build): one control plane on a private
//! redis-server, two data planes, one upstream. Each registration is for a
//! service whose route already exists and that has no instance yet, so
//! the data planes answer 503 until the registration reaches them; the
//! benchmark polls both until they answer 200 through the new instance.
//!
//! Run: `cargo bench -p gateway-tests --bench propagation`

use gateway_tests::cluster::{config_for, ControlPlaneProc, DataPlaneProc, Tokens, Upstream};
use gateway_tests::grpc::registration;
use gateway_tests::http;
use gateway_tests::RedisServer;
use std::time::{Duration, Instant};

const REGISTRATIONS: usize = 100;

fn main() {
    let redis = RedisServer::start();
    let tokens = Tokens::random();
    let cp = ControlPlaneProc::start("bench", Some(&redis.url()), &tokens);
    let upstream = Upstream::start("up");
    let names: Vec<String> = (0..REGISTRATIONS).map(|i| format!("svc{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    cp.gwctl().apply(&config_for(&refs)).success();
    let mut planes: Vec<DataPlaneProc> = (0..2)
        .map(|i| DataPlaneProc::start(&format!("dp-{i}"), &cp.url(), None))
        .collect();
    for dp in &mut planes {
        dp.wait_ready();
    }
    let grpc = cp.grpc();
    let mut samples = Vec::with_capacity(REGISTRATIONS);
    for name in &names {
        let path = format!("/{name}/");
        for dp in &planes {
            let before = http::get(dp.listen, &path).map(|r| r.status).unwrap_or(0);
            assert_eq!(
                before, 503,
                "{name} must have no instance before it registers"
            );
        }
        grpc.register(registration(
            name,
            &format!("{name}-1"),
            upstream.port(),
            60,
        ))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
        let registered = Instant::now();
        let mut pending: Vec<&DataPlaneProc> = planes.iter().collect();
        while !pending.is_empty() {
            pending.retain(|dp| !matches!(http::get(dp.listen, &path), Ok(r) if r.status == 200));
            assert!(
                registered.elapsed() < Duration::from_secs(10),
                "{name} never reached every data plane"
            );
        }
        samples.push(registered.elapsed());
    }
    samples.sort();
    let pct =
        |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    println!(
        "propagation over {REGISTRATIONS} registrations to 2 data planes: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(*samples.last().unwrap_or(&Duration::ZERO))
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
