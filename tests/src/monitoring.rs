//! The monitoring assets of `deploy/monitoring` as tests read them (the alert
//! rules of the PrometheusRule, the queries of the Grafana dashboard), and a
//! cluster that exports every metric they read: a Redis, a control plane, a
//! data plane and an upstream running a config with a circuit breaker and a
//! rate limit, after a few requests.

use crate::cluster::{wait_until, ControlPlaneProc, DataPlaneProc, Tokens, Upstream};
use crate::{http, RedisServer};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Path of `rel` in the workspace.
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .join(rel)
}

/// The text of the workspace file `rel`.
pub fn read_repo_file(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// `spec` of `deploy/monitoring/prometheusrule.yaml` (its `groups`: a plain
/// Prometheus rule file), in JSON form.
pub fn prometheus_rule_spec() -> Value {
    let text = read_repo_file("deploy/monitoring/prometheusrule.yaml");
    let rule: Value = serde_norway::from_str::<serde_norway::Value>(&text)
        .map(|v| serde_json::to_value(v).expect("JSON form"))
        .expect("prometheusrule.yaml is YAML");
    rule["spec"].clone()
}

/// `(alert name, expression)` of every rule of the PrometheusRule.
pub fn alert_expressions() -> Vec<(String, String)> {
    let mut expressions = Vec::new();
    let spec = prometheus_rule_spec();
    for group in spec["groups"].as_array().expect("spec.groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_string();
            let expr = rule["expr"].as_str().expect("expr").to_string();
            expressions.push((name, expr));
        }
    }
    expressions
}

/// The dashboard `deploy/monitoring/grafana-dashboard.json`.
pub fn dashboard() -> Value {
    serde_json::from_str(&read_repo_file("deploy/monitoring/grafana-dashboard.json"))
        .expect("grafana-dashboard.json is JSON")
}

/// `(panel title, expression)` of every query of the dashboard: its panels'
/// targets (rows' nested panels included) and, for its template variables'
/// `label_values(METRIC, label)` queries, `METRIC`.
pub fn dashboard_expressions() -> Vec<(String, String)> {
    let dashboard = dashboard();
    let mut expressions = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"));
            expressions.push((title.to_string(), expr.to_string()));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str());
        if variable["type"] == "query" {
            let query = query.expect("a query variable has a query");
            let metric = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split(',').next())
                .unwrap_or_else(|| {
                    panic!("variable query {query:?} is not label_values(METRIC, label)")
                });
            expressions.push((
                format!("variable {}", variable["name"]),
                metric.trim().to_string(),
            ));
        }
    }
    expressions
}

/// The `/metrics` text of `addr`.
pub fn scrape(addr: SocketAddr) -> String {
    let response = http::get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(response.status, 200);
    response.text()
}

fn config(upstream: &Upstream) -> String {
    format!(
        r#"
version: 1
services:
  - name: echo
    instances: ["{}"]
    circuit_breaker: {{ error_threshold_percent: 50, volume_threshold: 20, reset_timeout: 30s, rolling_window: 60s, rolling_buckets: 6 }}
    outlier_detection: {{ consecutive_failures: 5, base_ejection_time: 30s }}
    retry: {{ max_attempts: 2, base_delay: 1ms, max_delay: 5ms, retry_on: [503] }}
routes:
  - name: limited
    match: {{ path_prefix: /limited }}
    service: echo
    rate_limit: {{ requests: 2, window: 1h }}
  - name: open
    match: {{ path_prefix: /open }}
    service: echo
"#,
        upstream.url()
    )
}

/// A control plane (on a private Redis), an upstream and a data plane
/// holding a config with a circuit breaker, outlier detection, retries and a
/// rate-limited route, after requests that were proxied, rate limited and
/// routed nowhere. The processes stop when it is dropped.
pub struct MonitoredCluster {
    /// The data plane (its `/metrics` on `admin`).
    pub dp: DataPlaneProc,
    /// The control plane (its `/metrics` on `http`).
    pub cp: ControlPlaneProc,
    /// The service `echo` of the config.
    pub upstream: Upstream,
    /// The Redis of both planes.
    pub redis: RedisServer,
}

impl MonitoredCluster {
    /// Starts the processes (the data plane with `dp_env` added to its
    /// environment), applies the config once the data plane's Discovery
    /// session is open (so that its ACK is a propagation the control plane
    /// times) and sends the requests. Call it under
    /// [`crate::cluster::start_test`].
    pub fn start(name: &str, dp_env: &[(&str, &str)]) -> Self {
        let redis = RedisServer::start();
        let tokens = Tokens::random();
        let cp = ControlPlaneProc::start(&format!("cp-{name}"), Some(&redis.url()), &tokens);
        let upstream = Upstream::start(name);
        let mut dp = DataPlaneProc::start_with_env(
            &format!("dp-{name}"),
            &cp.url(),
            Some(&redis.url()),
            dp_env,
        );
        wait_until(
            "the data plane's Discovery session",
            Duration::from_secs(20),
            || {
                let text = scrape(cp.http);
                let connected = text
                    .lines()
                    .find_map(|l| l.strip_prefix("control_plane_connected_data_planes "))
                    .and_then(|v| v.trim().parse::<f64>().ok());
                match connected {
                    Some(n) if n >= 1.0 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        );
        cp.gwctl().apply(&config(&upstream)).success();
        dp.wait_ready();

        for _ in 0..3 {
            assert_eq!(dp.send("GET", "/open/x", &[], b"").status, 200);
        }
        let limited: Vec<u16> = (0..4)
            .map(|_| dp.send("GET", "/limited/x", &[], b"").status)
            .collect();
        assert_eq!(limited, [200, 200, 429, 429]);
        assert_eq!(dp.send("GET", "/nowhere", &[], b"").status, 404);
        Self {
            dp,
            cp,
            upstream,
            redis,
        }
    }
}
