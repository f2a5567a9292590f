//! Runs the built `gwctl` binary against a real control plane (in-memory
//! store, started in this test process on free ports).

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

const GWCTL: &str = env!("CARGO_BIN_EXE_gwctl");
const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
const REGISTRATION_TOKEN: &str = "test-registration-token-0123456789";

const CONFIG: &str = r#"
version: 1
services:
  - name: echo
    instances: [ "http://127.0.0.1:9" ]
routes:
  - name: echo
    match: { path_prefix: /echo }
    service: echo
    strip_prefix: true
  - name: user
    match: { path: "/users/{id}", methods: [GET] }
    service: echo
"#;

/// A control plane running on its own runtime for the whole test.
struct Cp {
    _runtime: tokio::runtime::Runtime,
    url: String,
}

fn start_control_plane() -> Cp {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let cp = runtime
        .block_on(control_plane::ControlPlane::start(
            control_plane::Settings {
                grpc_addr: local,
                http_addr: local,
                redis_url: None,
                admin_token: Some(ADMIN_TOKEN.into()),
                registration_token: Some(REGISTRATION_TOKEN.into()),
                dataplane_token: None,
                allow_unauthenticated: false,
                replica_id: "cp-test".into(),
                key_prefix: "gw:".into(),
                leader_ttl: Duration::from_secs(2),
                lease_sweep_interval: Duration::from_millis(100),
                delta_ring: 1_000,
                ..control_plane::Settings::default()
            },
        ))
        .expect("control plane starts");
    let url = format!("http://{}", cp.grpc_addr());
    // Keep it serving until the runtime is dropped with the test.
    runtime.spawn(async move {
        let _ = cp.wait().await;
    });
    Cp {
        _runtime: runtime,
        url,
    }
}

fn gwctl(cp: &Cp, args: &[&str], tokens: (&str, &str)) -> Output {
    Command::new(GWCTL)
        .args(args)
        .env("GW_CONTROL_PLANE", &cp.url)
        .env("GW_ADMIN_TOKEN", tokens.0)
        .env("GW_REGISTRATION_TOKEN", tokens.1)
        .output()
        .expect("gwctl runs")
}

fn ok(cp: &Cp, args: &[&str]) -> String {
    let output = gwctl(cp, args, (ADMIN_TOKEN, REGISTRATION_TOKEN));
    assert!(
        output.status.success(),
        "gwctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(cp: &Cp, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    let text = ok(cp, &args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {text}"))
}

fn one_line_error(output: &Output) -> String {
    assert!(!output.status.success(), "expected a failure: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr)
        .trim_end()
        .to_string();
    assert!(
        stderr.starts_with("error: ") && !stderr.contains('\n'),
        "expected one error line, got {stderr:?}"
    );
    stderr
}

fn config_file(test: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("gwctl-cp-test-{}-{test}.yaml", std::process::id()));
    std::fs::write(&path, CONFIG).unwrap();
    path
}

fn instance_ids(cp: &Cp) -> Vec<String> {
    json(cp, &["get", "instances"])
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| i["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn apply_get_register_deregister_round_trip() {
    let cp = start_control_plane();
    let file = config_file("round-trip");
    let file = file.to_string_lossy().to_string();

    let dry = json(&cp, &["apply", "-f", &file, "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert!(
        json(&cp, &["get", "routes"]).as_array().unwrap().is_empty(),
        "dry run wrote"
    );

    let applied = ok(&cp, &["apply", "-f", &file]);
    assert!(applied.contains("service echo added"), "{applied}");
    assert!(applied.contains("route user added"), "{applied}");
    assert!(applied.contains("applied: version"), "{applied}");
    assert!(ok(&cp, &["apply", "-f", &file]).starts_with("unchanged"));

    let services = json(&cp, &["get", "services"]);
    assert_eq!(services[0]["name"], "echo");
    // No data plane has connected: asking for one's config names it.
    let unknown = gwctl(
        &cp,
        &["get", "config", "--data-plane", "dp-9"],
        (ADMIN_TOKEN, REGISTRATION_TOKEN),
    );
    let error = one_line_error(&unknown);
    assert!(error.contains("no data plane \"dp-9\""), "{error}");
    let misplaced = gwctl(
        &cp,
        &["get", "routes", "--data-plane", "dp-9"],
        (ADMIN_TOKEN, REGISTRATION_TOKEN),
    );
    assert!(one_line_error(&misplaced).contains("--data-plane only applies to `get config`"));
    let routes = ok(&cp, &["get", "routes"]);
    assert!(
        routes.contains("path /users/{id}") && routes.contains("strip prefix"),
        "{routes}"
    );
    assert_eq!(instance_ids(&cp), ["static:echo:127.0.0.1:9"]);

    let registered = json(
        &cp,
        &[
            "register",
            "--service",
            "echo",
            "--address",
            "127.0.0.1:7001",
            "--id",
            "echo-1",
            "--ttl",
            "30s",
            "--zone",
            "a",
            "--metadata",
            "version=1.2",
            "--weight",
            "3",
        ],
    );
    assert_eq!(registered["instance_id"], "echo-1");
    assert_eq!(registered["lease_ttl_seconds"], 30);
    let instances = json(&cp, &["get", "instances", "--service", "echo"]);
    let echo1 = instances
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "echo-1")
        .expect("echo-1 listed");
    assert_eq!(echo1["port"], 7001);
    assert_eq!(echo1["weight"], 3);
    assert_eq!(echo1["zone"], "a");
    assert_eq!(echo1["metadata"]["version"], "1.2");
    assert!(echo1["lease_remaining_ms"].as_u64().unwrap() > 20_000);

    // No data plane is connected: --wait has nothing to wait for.
    assert!(ok(&cp, &["drain", "echo-1", "--wait", "--timeout", "5s"]).contains("drained echo-1"));
    let instances = json(&cp, &["get", "instances"]);
    let state = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == "echo-1")
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state(&instances), "draining");
    ok(&cp, &["undrain", "echo-1"]);
    assert_ne!(state(&json(&cp, &["get", "instances"])), "draining");

    let topology = json(&cp, &["topology"]);
    assert_eq!(topology["replica"], "cp-test");
    assert_eq!(topology["services"][0]["name"], "echo");

    assert!(ok(&cp, &["deregister", "echo-1"]).contains("deregistered echo-1"));
    assert_eq!(instance_ids(&cp), ["static:echo:127.0.0.1:9"]);
    assert!(ok(&cp, &["deregister", "echo-1"]).contains("was not registered"));
    let _ = std::fs::remove_file(&file);
}

#[test]
fn breaker_set_keeps_unspecified_fields() {
    let cp = start_control_plane();
    let file = config_file("breaker");
    ok(&cp, &["apply", "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);

    let set = json(
        &cp,
        &[
            "breaker",
            "set",
            "echo",
            "--error-threshold-percent",
            "20",
            "--reset-timeout",
            "5s",
        ],
    );
    assert_eq!(set["error_threshold_percent"], 20);
    assert_eq!(set["reset_timeout"], "5s");
    assert_eq!(set["volume_threshold"], 10, "default kept");
    let set = json(
        &cp,
        &[
            "breaker",
            "set",
            "echo",
            "--volume-threshold",
            "4",
            "--enabled",
            "false",
        ],
    );
    assert_eq!(set["error_threshold_percent"], 20, "earlier change kept");
    assert_eq!(set["volume_threshold"], 4);
    assert_eq!(set["enabled"], false);
    let got = json(&cp, &["breaker", "get", "echo"]);
    assert_eq!(got, set);
    let table = ok(&cp, &["breaker", "get", "echo"]);
    assert!(
        table.starts_with("SERVICE") && table.contains("echo"),
        "{table}"
    );

    let error = one_line_error(&gwctl(
        &cp,
        &["breaker", "set", "nope", "--volume-threshold", "3"],
        (ADMIN_TOKEN, REGISTRATION_TOKEN),
    ));
    assert!(error.contains("unknown service"), "{error}");
    let error = one_line_error(&gwctl(
        &cp,
        &["breaker", "set", "echo", "--error-threshold-percent", "0"],
        (ADMIN_TOKEN, REGISTRATION_TOKEN),
    ));
    assert!(error.contains("error_threshold_percent"), "{error}");
}

#[test]
fn wrong_tokens_name_the_variable_to_set() {
    let cp = start_control_plane();
    let error = one_line_error(&gwctl(
        &cp,
        &["get", "instances"],
        ("wrong", REGISTRATION_TOKEN),
    ));
    assert!(error.contains("GW_ADMIN_TOKEN"), "{error}");
    let error = one_line_error(&gwctl(
        &cp,
        &[
            "register",
            "--service",
            "echo",
            "--address",
            "127.0.0.1:7001",
        ],
        (ADMIN_TOKEN, ""),
    ));
    assert!(
        error.contains("GW_REGISTRATION_TOKEN is not set"),
        "{error}"
    );
    let error = one_line_error(&gwctl(
        &cp,
        &["drain", "nope"],
        (ADMIN_TOKEN, REGISTRATION_TOKEN),
    ));
    assert!(error.contains("nope"), "{error}");
}

#[test]
fn topology_watch_streams_changes_until_sigterm() {
    use std::io::BufRead;
    let cp = start_control_plane();
    let mut child = Command::new(GWCTL)
        .args(["topology", "--watch", "-o", "json"])
        .env("GW_CONTROL_PLANE", &cp.url)
        .env("GW_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gwctl runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a first topology");
    let first: serde_json::Value =
        serde_json::from_str(&first).expect("one JSON document per line");
    assert_eq!(first["replica"], "cp-test");

    let file = config_file("watch");
    ok(&cp, &["apply", "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    ok(
        &cp,
        &[
            "register",
            "--service",
            "echo",
            "--address",
            "127.0.0.1:7002",
            "--id",
            "watched-1",
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the watch shows the new instance");
        if line.contains("watched-1") {
            break;
        }
    }

    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = child.wait().expect("gwctl exits");
    assert!(status.success(), "{status}");
}
