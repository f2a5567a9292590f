//! Route lookup cost with 1,000 routes of the shapes a real platform uses
//! (prefixes, exact paths with parameters, method splits).
//!
//! Run: `cargo bench -p gateway-common --bench routing`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gateway_common::routing::{Lookup, RouteSpec, RouteTable};

fn build(n: usize) -> RouteTable<usize> {
    let names: Vec<String> = (0..n).map(|i| format!("route-{i}")).collect();
    let paths: Vec<(String, bool)> = (0..n)
        .map(|i| match i % 4 {
            0 => (format!("/api/v1/svc{}", i / 4), true),
            1 => (format!("/api/v1/svc{}/items/{{id}}", i / 4), false),
            2 => (format!("/api/v1/svc{}/items/{{id}}/history", i / 4), false),
            _ => (format!("/api/v2/svc{}/search", i / 4), false),
        })
        .collect();
    let get = vec!["GET".to_string()];
    RouteTable::build(
        names
            .iter()
            .zip(&paths)
            .enumerate()
            .map(|(i, (name, (path, prefix)))| {
                let methods: &[String] = if i % 4 == 1 { &get } else { &[] };
                (
                    RouteSpec {
                        name,
                        path,
                        prefix: *prefix,
                        methods,
                        host: None,
                    },
                    i,
                )
            }),
    )
    .expect("benchmark routes are valid")
}

fn lookups(c: &mut Criterion) {
    let table = build(1000);
    let mut group = c.benchmark_group("route_lookup_1000_routes");
    for (label, method, path) in [
        ("prefix", "POST", "/api/v1/svc120/orders/55"),
        ("exact_param", "GET", "/api/v1/svc200/items/8842"),
        ("deep_exact", "GET", "/api/v1/svc249/items/1/history"),
        ("method_fallback", "DELETE", "/api/v1/svc17/items/3"),
        ("not_found", "GET", "/nothing/here"),
    ] {
        group.bench_function(label, |b| {
            b.iter(
                || match table.lookup(black_box(method), None, black_box(path)) {
                    Lookup::Found(m) => *m.value,
                    _ => usize::MAX,
                },
            )
        });
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
