//! The monitoring assets of `deploy/monitoring` against real processes: a
//! Redis, a control plane, a data plane and an upstream run a config with a
//! circuit breaker and a rate limit, take a few requests, and every metric
//! an alert rule or a dashboard panel reads must be in their `/metrics`.
//! The same scrape checks what build runs (`*_build_info`), the process
//! metrics, the control plane's RPC latency and its propagation histogram.

use gateway_tests::cluster::{
    start_test, wait_until, write_temp_file, ControlPlaneProc, DataPlaneProc, Tokens, Upstream,
};
use gateway_tests::http;
use gateway_tests::promql::metric_names;
use gateway_tests::RedisServer;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// `(alert name, expression)` of every rule of the PrometheusRule.
fn alert_expressions() -> Vec<(String, String)> {
    let text = read("deploy/monitoring/prometheusrule.yaml");
    let rule: Value = serde_norway::from_str::<serde_norway::Value>(&text)
        .map(|v| serde_json::to_value(v).expect("JSON form"))
        .expect("prometheusrule.yaml is YAML");
    let mut expressions = Vec::new();
    for group in rule["spec"]["groups"].as_array().expect("spec.groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_string();
            let expr = rule["expr"].as_str().expect("expr").to_string();
            expressions.push((name, expr));
        }
    }
    expressions
}

/// `(panel title, expression)` of every query of the dashboard: its panels'
/// targets (rows' nested panels included) and its template variables'
/// `label_values(METRIC, label)` queries.
fn dashboard_expressions() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(&read("deploy/monitoring/grafana-dashboard.json"))
        .expect("grafana-dashboard.json is JSON");
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

/// The sample names of an exposition (`gateway_requests_total`,
/// `..._bucket`, `..._info`), with the value of each unlabelled sample.
fn samples(text: &str) -> BTreeMap<String, Option<f64>> {
    let mut names = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let (name, rest) = line.split_at(end);
        let value = rest.strip_prefix(' ').and_then(|v| v.parse().ok());
        names.entry(name.to_string()).or_insert(value);
    }
    names
}

/// Every `(where, metric)` of `expressions` that no scrape exports.
fn missing(
    expressions: &[(String, String)],
    exported: &BTreeMap<String, Option<f64>>,
) -> Vec<String> {
    let mut missing = Vec::new();
    for (place, expr) in expressions {
        for name in metric_names(expr) {
            if !exported.contains_key(&name) {
                missing.push(format!("{name} (in {place})"));
            }
        }
    }
    missing
}

fn value(exported: &BTreeMap<String, Option<f64>>, name: &str) -> f64 {
    exported
        .get(name)
        .copied()
        .flatten()
        .unwrap_or_else(|| panic!("no unlabelled sample {name}"))
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

fn scrape(addr: std::net::SocketAddr) -> String {
    let response = http::get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(response.status, 200);
    response.text()
}

/// The label value `label="..."` of the first sample line of `name`.
fn label_of<'a>(text: &'a str, name: &str, label: &str) -> &'a str {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    let start = line
        .find(&format!("{label}=\""))
        .unwrap_or_else(|| panic!("{line}: no {label}"))
        + label.len()
        + 2;
    let end = line[start..].find('"').expect("closing quote") + start;
    &line[start..end]
}

/// Build and process metrics of one process's scrape.
fn assert_process_and_build(text: &str, prefix: &str) {
    let version = label_of(text, &format!("{prefix}_build_info"), "version");
    assert_eq!(version, env!("CARGO_PKG_VERSION"), "{prefix}_build_info");
    let commit = label_of(text, &format!("{prefix}_build_info"), "commit");
    let in_git = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo_file(""))
        .output()
        .is_ok_and(|o| o.status.success());
    if in_git {
        assert!(
            commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{prefix}_build_info: commit {commit:?} is not a short hash though the build ran in git"
        );
    }
    let exported = samples(text);
    assert!(
        value(&exported, "process_resident_memory_bytes") > 1e6,
        "{prefix}: RSS"
    );
    let open = value(&exported, "process_open_fds");
    assert!(open >= 3.0, "{prefix}: open fds {open}");
    assert!(
        value(&exported, "process_max_fds") >= open,
        "{prefix}: max fds"
    );
    assert!(
        value(&exported, "process_cpu_seconds_total") > 0.0,
        "{prefix}: CPU"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let started = value(&exported, "process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 600.0,
        "{prefix}: started at {started}, now {now}"
    );
}

#[test]
fn every_metric_of_the_alerts_and_the_dashboard_is_exported() {
    let _test = start_test();
    let redis = RedisServer::start();
    let tokens = Tokens::random();
    let cp = ControlPlaneProc::start("cp-monitoring", Some(&redis.url()), &tokens);
    let upstream = Upstream::start("monitoring");
    // With an HTTPS listener, so that its certificate-expiry gauge (read by an
    // alert) has a sample.
    let tls = rcgen::generate_simple_self_signed(vec!["monitoring.test".to_string()]).unwrap();
    let cert = write_temp_file("monitoring.crt", &tls.cert.pem());
    let key = write_temp_file("monitoring.key", &tls.key_pair.serialize_pem());
    let tls_listen = format!("127.0.0.1:{}", gateway_tests::free_port());
    let mut dp = DataPlaneProc::start_with_env(
        "dp-monitoring",
        &cp.url(),
        Some(&redis.url()),
        &[
            ("GW_TLS_LISTEN", tls_listen.as_str()),
            ("GW_TLS_CERT", &cert.to_string_lossy()),
            ("GW_TLS_KEY", &key.to_string_lossy()),
        ],
    );
    // The config goes out after the data plane's session opened, so that its
    // ACK is a propagation the control plane times.
    wait_until(
        "the data plane's Discovery session",
        Duration::from_secs(20),
        || {
            let text = scrape(cp.http);
            match samples(&text).get("control_plane_connected_data_planes") {
                Some(Some(n)) if *n >= 1.0 => Ok(()),
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

    let dp_text = scrape(dp.admin);
    let cp_text = scrape(cp.http);
    let mut exported = samples(&dp_text);
    exported.extend(samples(&cp_text));

    let alerts = alert_expressions();
    let panels = dashboard_expressions();
    assert!(alerts.len() >= 10, "{alerts:?}");
    assert!(panels.len() >= 20, "{panels:?}");
    let mut absent = missing(&alerts, &exported);
    absent.extend(missing(&panels, &exported));
    assert!(
        absent.is_empty(),
        "metrics read by deploy/monitoring that the processes do not export:\n{}\n\
         data plane:\n{dp_text}\ncontrol plane:\n{cp_text}",
        absent.join("\n")
    );
    // The check itself tells a missing metric.
    let bogus = [(
        "probe".to_string(),
        "rate(gateway_no_such_metric_total[5m])".to_string(),
    )];
    assert_eq!(
        missing(&bogus, &exported),
        ["gateway_no_such_metric_total (in probe)"]
    );

    assert_process_and_build(&dp_text, "gateway");
    assert_process_and_build(&cp_text, "control_plane");
    assert_eq!(value(&exported, "gateway_ready"), 1.0, "{dp_text}");
    assert_eq!(
        value(&exported, "gateway_ratelimit_shared"),
        1.0,
        "{dp_text}"
    );
    assert!(
        value(&exported, "control_plane_config_propagation_seconds_count") >= 1.0,
        "the config's ACK was not timed:\n{cp_text}"
    );
    assert!(
        cp_text.lines().any(|l| l.starts_with(
            r#"control_plane_grpc_request_duration_seconds_count{method="Admin/ApplyConfig",code="Ok"}"#
        )),
        "gwctl apply was not timed:\n{cp_text}"
    );
    assert!(
        !cp_text.contains("Discovery/Stream\",code"),
        "a Discovery stream was timed as an RPC:\n{cp_text}"
    );
}

#[test]
fn a_data_plane_without_config_reports_not_ready() {
    let _test = start_test();
    // No control plane answers there.
    let nowhere = format!("http://127.0.0.1:{}", gateway_tests::free_port());
    let dp = DataPlaneProc::start("dp-not-ready", &nowhere, None);
    let ready = http::get(dp.admin, "/health/ready").expect("GET /health/ready");
    assert_eq!(ready.status, 503, "{}", ready.text());
    let exported = samples(&dp.metrics());
    assert_eq!(value(&exported, "gateway_ready"), 0.0);
    assert_eq!(value(&exported, "gateway_config_version"), 0.0);
    assert_eq!(value(&exported, "gateway_control_plane_connected"), 0.0);
}
