//! The monitoring assets of `deploy/monitoring` in a real Prometheus (Debian's
//! `prometheus` package: `prometheus` and `promtool`). The rule groups of the
//! PrometheusRule's `spec`, as a plain rule file, pass `promtool check rules`
//! and unit tests of `promtool test rules` (synthetic series that make the
//! main alerts fire with their documented labels, and others that must not);
//! a `prometheus` on a free port then scrapes a real data plane and control
//! plane with those rules loaded: both targets are up, every rule evaluates
//! without error, a healthy cluster raises no alert, and every query of the
//! Grafana dashboard (its variables filled in) is answered without error.

use gateway_tests::cluster::{start_test, wait_until};
use gateway_tests::http;
use gateway_tests::monitoring::{
    dashboard, dashboard_expressions, prometheus_rule_spec, MonitoredCluster,
};
use gateway_tests::procs::{Proc, Spec};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const INSTALL: &str = "apt-get install -y prometheus";

/// Time Prometheus gets to scrape both targets and evaluate every rule.
const SETTLE: Duration = Duration::from_secs(60);

/// A spec running `tool` (from PATH); panics with the install command when
/// it is missing.
fn tool(tool: &str, args: &[&str]) -> Spec {
    if let Err(e) = std::process::Command::new(tool).arg("--version").output() {
        panic!("cannot run {tool} ({e}): install it, e.g. `{INSTALL}`");
    }
    Spec {
        name: tool.to_string(),
        program: PathBuf::from(tool),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: BTreeMap::new(),
    }
}

/// Runs `promtool ARGS` and returns whether it succeeded, with its output.
fn promtool(args: &[&str]) -> (bool, String) {
    let output = tool("promtool", args).run(Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "gw-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Self(dir)
    }

    /// Writes `content` to the file `name` in it and returns its path as text.
    fn write(&self, name: &str, content: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, content)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The rule groups of the PrometheusRule as a Prometheus rule file.
fn rule_file() -> String {
    serde_norway::to_string(&prometheus_rule_spec()).expect("the rule groups as YAML")
}

/// Unit tests of the alerts (`promtool test rules`) for the rule file
/// `rules.yaml` next to it. Series carry the labels a PodMonitor scrape
/// gives (`namespace`, `instance`, `job`); every alert gets its rule's
/// `severity`, aggregated ones keep only the labels they aggregate by, and
/// the annotations are the rule's templates rendered with those labels.
const ALERT_TESTS: &str = r#"
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  # A data plane not ready for 5 minutes; the ready one stays quiet.
  - interval: 1m
    input_series:
      - series: 'gateway_ready{namespace="gateway", instance="10.0.0.1:9090", job="gateway/data-plane"}'
        values: '0x10'
      - series: 'gateway_ready{namespace="gateway", instance="10.0.0.2:9090", job="gateway/data-plane"}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 3m
        alertname: GatewayDataPlaneNotReady
        exp_alerts: []
      - eval_time: 6m
        alertname: GatewayDataPlaneNotReady
        exp_alerts:
          - exp_labels:
              severity: warning
              namespace: gateway
              instance: 10.0.0.1:9090
              job: gateway/data-plane
            exp_annotations:
              summary: 'Data plane 10.0.0.1:9090 is not ready for traffic'
              description: '/health/ready of 10.0.0.1:9090 has not answered 200 for 5 minutes: no config, revocations not loaded, or shutting down.'
              runbook: 'docs/operations.md#gatewaydataplanenotready'
  # A NACKed config update fires at once, for 15 minutes; applied ones never.
  - interval: 1m
    input_series:
      - series: 'gateway_config_updates_total{result="rejected", namespace="gateway", instance="10.0.0.1:9090", job="gateway/data-plane"}'
        values: '0 0 0 1x30'
      - series: 'gateway_config_updates_total{result="applied", namespace="gateway", instance="10.0.0.1:9090", job="gateway/data-plane"}'
        values: '0+1x33'
    alert_rule_test:
      - eval_time: 2m
        alertname: GatewayConfigRejected
        exp_alerts: []
      - eval_time: 5m
        alertname: GatewayConfigRejected
        exp_alerts:
          - exp_labels:
              severity: warning
              result: rejected
              namespace: gateway
              instance: 10.0.0.1:9090
              job: gateway/data-plane
            exp_annotations:
              summary: 'Data plane 10.0.0.1:9090 refused a config update'
              description: '10.0.0.1:9090 NACKed 1 config update(s) in the last 15 minutes and serves its previous config.'
              runbook: 'docs/operations.md#gatewayconfigrejected'
      - eval_time: 25m
        alertname: GatewayConfigRejected
        exp_alerts: []
  # A breaker open for 2 minutes, by service and data plane; a closed one stays quiet.
  - interval: 1m
    input_series:
      - series: 'gateway_circuit_breaker_state{service="payments", namespace="gateway", instance="10.0.0.1:9090", job="gateway/data-plane"}'
        values: '0 0 1x10'
      - series: 'gateway_circuit_breaker_state{service="echo", namespace="gateway", instance="10.0.0.1:9090", job="gateway/data-plane"}'
        values: '0x12'
    alert_rule_test:
      - eval_time: 3m
        alertname: GatewayCircuitBreakerOpen
        exp_alerts: []
      - eval_time: 5m
        alertname: GatewayCircuitBreakerOpen
        exp_alerts:
          - exp_labels:
              severity: warning
              service: payments
              namespace: gateway
              instance: 10.0.0.1:9090
            exp_annotations:
              summary: 'Circuit breaker of service payments is open'
              description: 'The breaker of payments on 10.0.0.1:9090 has been open or half-open for 2 minutes: its requests are answered 503 without reaching an instance.'
              runbook: 'docs/operations.md#gatewaycircuitbreakeropen'
  # 9% of 1.1 requests/s answered 5xx: fires by service; 50% of a trickle
  # (0.03 requests/s) does not.
  - interval: 1m
    input_series:
      - series: 'gateway_requests_total{service="echo", route="open", status="200", namespace="gateway", instance="10.0.0.1:9090", job="gateway/data-plane"}'
        values: '0+60x20'
      - series: 'gateway_requests_total{service="echo", route="open", status="503", namespace="gateway", instance="10.0.0.1:9090", job="gateway/data-plane"}'
        values: '0+6x20'
      - series: 'gateway_requests_total{service="quiet", route="quiet", status="200", namespace="gateway", instance="10.0.0.1:9090", job="gateway/data-plane"}'
        values: '0+1x20'
      - series: 'gateway_requests_total{service="quiet", route="quiet", status="500", namespace="gateway", instance="10.0.0.1:9090", job="gateway/data-plane"}'
        values: '0+1x20'
      - series: 'gateway_requests_total{service="", route="", status="404", namespace="gateway", instance="10.0.0.1:9090", job="gateway/data-plane"}'
        values: '0+60x20'
    alert_rule_test:
      - eval_time: 3m
        alertname: GatewayUpstream5xxRatioHigh
        exp_alerts: []
      - eval_time: 10m
        alertname: GatewayUpstream5xxRatioHigh
        exp_alerts:
          - exp_labels:
              severity: warning
              service: echo
              namespace: gateway
            exp_annotations:
              summary: '9.091% of the requests to echo end in 5xx'
              description: 'More than 5% of the requests routed to echo were answered 5xx over 5 minutes (the upstream''s own 5xx, and 502/503/504 the gateway answered for it).'
              runbook: 'docs/operations.md#gatewayupstream5xxratiohigh'
  # No replica holds the leader lock for 2 minutes: critical, by namespace.
  - interval: 1m
    input_series:
      - series: 'control_plane_leader{namespace="gateway", instance="10.0.1.1:9091", job="gateway/control-plane"}'
        values: '1 1 0x10'
      - series: 'control_plane_leader{namespace="gateway", instance="10.0.1.2:9091", job="gateway/control-plane"}'
        values: '0x12'
    alert_rule_test:
      - eval_time: 3m
        alertname: GatewayControlPlaneNoLeader
        exp_alerts: []
      - eval_time: 5m
        alertname: GatewayControlPlaneNoLeader
        exp_alerts:
          - exp_labels:
              severity: critical
              namespace: gateway
            exp_annotations:
              summary: 'No control-plane replica holds the leader lock'
              description: 'For 2 minutes no replica has run health checks or lease expiry (or no control plane is scraped at all): dead instances stay routable and lapsed leases are not removed.'
              runbook: 'docs/operations.md#gatewaycontrolplanenoleader'
"#;

#[test]
fn the_rules_pass_promtool_and_their_unit_tests() {
    let dir = TempDir::new("promtool");
    let rules = dir.write("rules.yaml", &rule_file());
    let (ok, output) = promtool(&["check", "rules", &rules]);
    assert!(ok, "promtool check rules {rules}:\n{output}");
    let tests = dir.write("alerts.test.yaml", ALERT_TESTS);
    let (ok, output) = promtool(&["test", "rules", &tests]);
    assert!(ok, "promtool test rules:\n{output}");

    // Both checks tell a broken rule.
    let broken = rule_file().replace("gateway_ready == 0", "gateway_ready == ");
    assert_ne!(broken, rule_file());
    let broken = dir.write("rules.yaml", &broken);
    let (ok, output) = promtool(&["check", "rules", &broken]);
    assert!(!ok, "promtool check rules passed a syntax error:\n{output}");
    let relabelled = rule_file().replace("severity: critical", "severity: page");
    assert_ne!(relabelled, rule_file());
    dir.write("rules.yaml", &relabelled);
    let (ok, output) = promtool(&["test", "rules", &tests]);
    assert!(!ok, "promtool test rules passed a wrong label:\n{output}");
}

/// A `prometheus` child process with its config and storage in a temporary
/// directory; killed, and the directory removed, when dropped.
struct Prometheus {
    proc: Proc,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts `prometheus` on a free port scraping `targets` (job name,
    /// address) every second in namespace `gateway`, with `rules` loaded and
    /// evaluated every second.
    fn start(targets: &[(&str, SocketAddr)], rules: &str) -> Self {
        let dir = TempDir::new("prometheus");
        let rules = dir.write("rules.yaml", rules);
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [{rules:?}]\nscrape_configs:\n"
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n        \
                 labels: {{ namespace: gateway }}\n"
            ));
        }
        let config = dir.write("prometheus.yml", &config);
        let addr = SocketAddr::from(([127, 0, 0, 1], gateway_tests::free_port()));
        let storage = dir.0.join("data");
        let proc = tool(
            "prometheus",
            &[
                &format!("--config.file={config}"),
                &format!("--storage.tsdb.path={}", storage.display()),
                &format!("--web.listen-address={addr}"),
            ],
        )
        .spawn();
        let mut prometheus = Self {
            proc,
            addr,
            _dir: dir,
        };
        wait_until("prometheus to be ready", SETTLE, || {
            prometheus.proc.assert_running();
            match http::get(addr, "/-/ready") {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{} {}", r.status, r.text())),
                Err(e) => Err(e.to_string()),
            }
        });
        prometheus
    }

    /// `data` of the API answer to `GET path`; `Err` with the answer when
    /// its status is not `success`.
    fn api(&self, path: &str) -> Result<Value, String> {
        let response = http::get(self.addr, path).map_err(|e| format!("GET {path}: {e}"))?;
        let body = response.json();
        if body["status"] != "success" {
            return Err(format!("{} {}", response.status, response.text()));
        }
        Ok(body["data"].clone())
    }

    /// The result of the instant query `expr`.
    fn query(&self, expr: &str) -> Result<Value, String> {
        self.api(&format!("/api/v1/query?query={}", url_encoded(expr)))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Stop it before its directory goes.
        self.proc.kill();
    }
}

fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `expr` with its Grafana variables (`$name`, `${name}`, `${name:format}`)
/// replaced by their value in `values`; panics on a variable it lacks.
fn substitute(expr: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(inner) => {
                let end = inner.find('}').expect("closing } of a variable");
                (inner[..end].split(':').next().unwrap_or_default(), end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        let value = values
            .get(name)
            .unwrap_or_else(|| panic!("{expr}: no value for the variable ${name}"));
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Values of the dashboard's variables, once with every query variable at
/// its "All" value and once at the namespace the test scrapes.
fn variable_values() -> Vec<BTreeMap<String, String>> {
    let builtin = [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__interval_ms", "15000"),
        ("__range", "5m"),
        ("__range_s", "300"),
    ];
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    [None, Some("gateway")]
        .into_iter()
        .map(|value| {
            let mut values: BTreeMap<String, String> = builtin
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            for variable in variables {
                let name = variable["name"].as_str().expect("variable name");
                let all = variable["allValue"].as_str().unwrap_or(".*");
                values.insert(name.to_string(), value.unwrap_or(all).to_string());
            }
            values
        })
        .collect()
}

#[test]
fn prometheus_scrapes_both_planes_evaluates_every_rule_and_answers_every_panel() {
    let _test = start_test();
    let spec = prometheus_rule_spec();
    let cluster = MonitoredCluster::start("prometheus", &[]);
    let prometheus = Prometheus::start(
        &[
            ("data-plane", cluster.dp.admin),
            ("control-plane", cluster.cp.http),
        ],
        &rule_file(),
    );
    assert_ne!(prometheus.addr.port(), 9090, "never the packaged port");

    wait_until("both targets up", SETTLE, || {
        let targets = prometheus.api("/api/v1/targets")?;
        let mut up: Vec<&str> = targets["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["health"] == "up")
            .filter_map(|t| t["labels"]["job"].as_str())
            .collect();
        up.sort_unstable();
        if up == ["control-plane", "data-plane"] {
            Ok(())
        } else {
            Err(targets.to_string())
        }
    });
    // Samples of both planes are stored, with the namespace of the scrape.
    wait_until("samples of both planes", SETTLE, || {
        let result = prometheus.query(
            r#"count(gateway_ready{namespace="gateway"} == 1) + count(control_plane_build_info{namespace="gateway"})"#,
        )?;
        match result["result"][0]["value"][1].as_str() {
            Some("2") => Ok(()),
            _ => Err(result.to_string()),
        }
    });

    let mut groups: Vec<&str> = spec["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["name"].as_str().expect("group name"))
        .collect();
    groups.sort_unstable();
    let rule_count: usize = spec["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["rules"].as_array().expect("rules").len())
        .sum();
    // Evaluations after the first samples: every rule ran without error.
    std::thread::sleep(Duration::from_secs(3));
    wait_until("every rule evaluated without error", SETTLE, || {
        let data = prometheus.api("/api/v1/rules")?;
        let loaded = data["groups"].as_array().cloned().unwrap_or_default();
        let mut names: Vec<&str> = loaded.iter().filter_map(|g| g["name"].as_str()).collect();
        names.sort_unstable();
        if names != groups {
            return Err(format!("groups {names:?}, expected {groups:?}"));
        }
        let mut evaluated = 0;
        for group in &loaded {
            if group["lastEvaluation"]
                .as_str()
                .is_none_or(|t| t.starts_with("0001-"))
            {
                return Err(format!("{} not evaluated yet", group["name"]));
            }
            for rule in group["rules"].as_array().into_iter().flatten() {
                let error = rule["lastError"].as_str().unwrap_or_default();
                if rule["health"] != "ok" || !error.is_empty() {
                    return Err(format!(
                        "{}: health {} {error}",
                        rule["name"], rule["health"]
                    ));
                }
                evaluated += 1;
            }
        }
        if evaluated == rule_count {
            Ok(())
        } else {
            Err(format!("{evaluated} of {rule_count} rules loaded"))
        }
    });
    // A healthy cluster raises nothing, pending alerts included (the leader
    // lock may take a moment).
    wait_until("no alert on a healthy cluster", SETTLE, || {
        let alerts = prometheus.query("ALERTS")?;
        match alerts["result"].as_array() {
            Some(active) if active.is_empty() => Ok(()),
            _ => Err(alerts.to_string()),
        }
    });

    let panels = dashboard_expressions();
    let mut failed = Vec::new();
    let mut answered = BTreeMap::new();
    for values in variable_values() {
        for (title, expr) in &panels {
            let query = substitute(expr, &values);
            match prometheus.query(&query) {
                Ok(data) => {
                    let series = data["result"].as_array().map_or(0, Vec::len);
                    *answered.entry(values["namespace"].clone()).or_insert(0) +=
                        usize::from(series > 0);
                    if title == "Builds running" {
                        assert_eq!(series, 1, "{title}: {query} -> {data}");
                    }
                }
                Err(e) => failed.push(format!("{title}: {query}\n  {e}")),
            }
        }
    }
    assert!(
        failed.is_empty(),
        "dashboard queries Prometheus refused:\n{}",
        failed.join("\n")
    );
    eprintln!(
        "{} dashboard queries answered; with data, by namespace value: {answered:?}",
        panels.len()
    );
    // The query check tells a broken expression.
    assert!(prometheus.query("sum by (le (rate(x[1m]))").is_err());
    drop(prometheus);
}

#[test]
fn grafana_variables_are_substituted() {
    let values: BTreeMap<String, String> = [("namespace", "gw"), ("__rate_interval", "1m")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        substitute(
            r#"rate(x{namespace=~"$namespace", a="${namespace:regex}"}[$__rate_interval])"#,
            &values
        ),
        r#"rate(x{namespace=~"gw", a="gw"}[1m])"#
    );
    assert_eq!(url_encoded("a b{\"/\"}"), "a%20b%7B%22%2F%22%7D");
}
