//! The monitoring assets of `deploy/monitoring` against real processes: a
//! Redis, a control plane, a data plane and an upstream run a config with a
//! circuit breaker and a rate limit, take a few requests, and every metric
//! an alert rule or a dashboard panel reads must be in their `/metrics`.
//! The same scrape checks what build runs (`*_build_info`), the process
//! metrics, the control plane's RPC latency and its propagation histogram.

use gateway_tests::cluster::{start_test, write_temp_file, DataPlaneProc};
use gateway_tests::http;
use gateway_tests::monitoring::{
    alert_expressions, dashboard_expressions, repo_file, scrape, MonitoredCluster,
};
use gateway_tests::promql::metric_names;
use std::collections::BTreeMap;

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
    // With an HTTPS listener, so that its certificate-expiry gauge (read by an
    // alert) has a sample.
    let tls = rcgen::generate_simple_self_signed(vec!["monitoring.test".to_string()]).unwrap();
    let cert = write_temp_file("monitoring.crt", &tls.cert.pem());
    let key = write_temp_file("monitoring.key", &tls.key_pair.serialize_pem());
    let tls_listen = format!("127.0.0.1:{}", gateway_tests::free_port());
    let cluster = MonitoredCluster::start(
        "monitoring",
        &[
            ("GW_TLS_LISTEN", tls_listen.as_str()),
            ("GW_TLS_CERT", &cert.to_string_lossy()),
            ("GW_TLS_KEY", &key.to_string_lossy()),
        ],
    );
    let (dp, cp) = (&cluster.dp, &cluster.cp);

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
