//! What operators read: the access log (one JSON object per line with
//! LOG_FORMAT=json) and the data plane's `/health` report, on real
//! processes.

use gateway_tests::cluster::{
    start_test, wait_until, write_temp_file, ControlPlaneProc, DataPlaneProc, Tokens, Upstream,
};
use gateway_tests::http::{self, HttpResponse};
use gateway_tests::RedisServer;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::Duration;

const JWT_SECRET: &str = "operability-test-secret-of-32-bytes";

fn token(tenant: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "sub": "user-7", "tenant_id": tenant, "type": "access", "role": "customer",
        "iat": now, "exp": now + 900,
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// A service `echo` on `upstream` (if any) routed from `/secure` (token
/// required) and `/open`, and a service `ghost` with no instance.
fn config(upstream: Option<&Upstream>, ghost: bool) -> String {
    let instances = upstream.map_or(String::new(), |u| format!("[\"{}\"]", u.url()));
    let mut yaml = String::from("version: 1\nservices:\n");
    if !instances.is_empty() {
        yaml.push_str(&format!("  - name: echo\n    instances: {instances}\n"));
    }
    if ghost {
        yaml.push_str("  - name: ghost\n");
    }
    yaml.push_str("routes:\n");
    if !instances.is_empty() {
        yaml.push_str(
            "  - name: secure\n    match: { path_prefix: /secure }\n    service: echo\n    auth: { required: true }\n\
             \x20 - name: open\n    match: { path_prefix: /open }\n    service: echo\n",
        );
    }
    if ghost {
        yaml.push_str("  - name: ghost\n    match: { path_prefix: /ghost }\n    service: ghost\n");
    }
    yaml
}

fn request(dp: &DataPlaneProc, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    dp.send("GET", path, headers, b"")
}

/// The access-log lines of a process log written with LOG_FORMAT=json;
/// fails on any line that is not one JSON object.
fn access_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"))
        })
        .filter(|v| v["target"] == "access")
        .collect()
}

fn line_of<'a>(lines: &'a [Value], request_id: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no access line for {request_id} in {lines:#?}"))
}

#[test]
fn the_access_log_has_one_json_line_per_request() {
    let _guard = start_test();
    let upstream = Upstream::start("logged");
    let path = write_temp_file("access.yaml", &config(Some(&upstream), false));
    let mut dp = DataPlaneProc::standalone_with_env(
        "access",
        &path,
        &[("LOG_FORMAT", "json"), ("JWT_SECRET", JWT_SECRET)],
    );
    let bearer = format!("Bearer {}", token("tenant-a"));
    let ok = request(
        &dp,
        "/secure/x?secret=1",
        &[("authorization", &bearer), ("x-request-id", "req-ok")],
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    // A tenant header from the client is never logged as the tenant.
    let open = request(
        &dp,
        "/open/y",
        &[("x-tenant-id", "spoofed"), ("x-request-id", "req-open")],
    );
    assert_eq!(open.status, 200);
    let refused = request(&dp, "/secure/x", &[("x-request-id", "req-401")]);
    assert_eq!(refused.status, 401);
    let missing = request(&dp, "/nowhere", &[("x-request-id", "req-404")]);
    assert_eq!(missing.status, 404);

    let lines = wait_until("four access lines", Duration::from_secs(10), || {
        let lines = access_lines(&dp.process().log());
        if lines.len() >= 4 {
            Ok(lines)
        } else {
            Err(format!("{} lines", lines.len()))
        }
    });
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let line = line_of(&lines, "req-ok");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/secure/x", "the query is never logged");
    assert_eq!(line["route"], "secure");
    assert_eq!(line["service"], "echo");
    assert_eq!(line["instance"], upstream.address());
    assert_eq!(line["status"], 200);
    assert_eq!(line["tenant"], "tenant-a");
    assert!(line["latency_ms"].as_f64().unwrap() >= 0.0, "{line}");
    assert!(line["bytes"].as_u64().unwrap() > 0, "{line}");
    let line = line_of(&lines, "req-open");
    assert_eq!(line["tenant"], "");
    assert_eq!(line["route"], "open");
    let line = line_of(&lines, "req-401");
    assert_eq!(
        (line["status"].as_u64(), &line["route"]),
        (Some(401), &json!("secure"))
    );
    assert_eq!(line["instance"], "");
    let line = line_of(&lines, "req-404");
    assert_eq!(
        (line["status"].as_u64(), &line["route"]),
        (Some(404), &json!(""))
    );

    // Switched off: no access line, the rest of the log unchanged.
    let mut quiet = DataPlaneProc::standalone_with_env(
        "quiet",
        &path,
        &[("LOG_FORMAT", "json"), ("GW_ACCESS_LOG", "false")],
    );
    assert_eq!(request(&quiet, "/open/z", &[]).status, 200);
    let log = quiet.process().log();
    assert!(access_lines(&log).is_empty(), "{log}");
    assert!(log.contains("data plane listening"), "{log}");
}

fn health(dp: &DataPlaneProc) -> (u16, Value) {
    let answer = http::get(dp.admin, "/health").unwrap_or_else(|e| panic!("GET /health: {e}"));
    (answer.status, answer.json())
}

#[test]
fn health_reports_each_dependency_of_a_standalone_data_plane() {
    let _guard = start_test();
    let upstream = Upstream::start("healthy");
    let path = write_temp_file("health.yaml", &config(Some(&upstream), false));
    let dp = DataPlaneProc::standalone("health", &path);
    let (status, body) = health(&dp);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "not_configured");
    assert_eq!(body["checks"]["controlPlane"]["status"], "standalone");
    assert_eq!(body["checks"]["controlPlane"]["configVersion"], 1);
    assert_eq!(
        body["checks"]["services"]["echo"],
        json!({"status": "ok", "healthy": 1, "total": 1})
    );
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
    assert!(
        body["uptime"].is_u64() && body["version"].is_string(),
        "{body}"
    );

    // A service without an instance degrades; no routable service at all is an error.
    let path = write_temp_file("health-ghost.yaml", &config(Some(&upstream), true));
    let dp = DataPlaneProc::standalone("health-ghost", &path);
    let (status, body) = health(&dp);
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("degraded")),
        "{body}"
    );
    assert_eq!(
        body["checks"]["services"]["ghost"],
        json!({"status": "error", "healthy": 0, "total": 0})
    );
    let path = write_temp_file("health-none.yaml", &config(None, true));
    let dp = DataPlaneProc::standalone("health-none", &path);
    let (status, body) = health(&dp);
    assert_eq!((status, &body["status"]), (503, &json!("error")), "{body}");
    // Liveness and readiness do not follow the backends.
    assert_eq!(http::get(dp.admin, "/health/live").unwrap().status, 200);
    assert_eq!(http::get(dp.admin, "/health/ready").unwrap().status, 200);
}

#[test]
fn health_degrades_without_redis_or_control_plane_and_serves_on() {
    let _guard = start_test();
    let mut redis = RedisServer::start();
    let upstream = Upstream::start("served");
    let tokens = Tokens::random();
    let mut cp = ControlPlaneProc::start("cp-health", None, &tokens);
    cp.gwctl().apply(&config(Some(&upstream), false)).success();
    let mut dp = DataPlaneProc::start("dp-health", &cp.url(), Some(&redis.url()));
    dp.wait_ready();
    let body = wait_until("an ok report", Duration::from_secs(10), || {
        let (status, body) = health(&dp);
        (status == 200 && body["status"] == "ok")
            .then_some(body.clone())
            .ok_or(format!("{status} {body}"))
    });
    assert_eq!(body["checks"]["redis"]["status"], "ok");
    assert_eq!(body["checks"]["controlPlane"]["status"], "ok");

    redis.kill();
    let (status, body) = health(&dp);
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("degraded")),
        "{body}"
    );
    assert_eq!(body["checks"]["redis"]["status"], "error");
    assert_eq!(body["checks"]["controlPlane"]["status"], "ok");

    cp.kill();
    let body = wait_until(
        "the control plane seen gone",
        Duration::from_secs(10),
        || {
            let (status, body) = health(&dp);
            (status == 200 && body["checks"]["controlPlane"]["status"] == "error")
                .then_some(body.clone())
                .ok_or(format!("{status} {body}"))
        },
    );
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["controlPlane"]["configApplied"], true);
    // Still serving its last config.
    assert_eq!(request(&dp, "/open/still", &[]).status, 200);
    dp.process().assert_running();
}

/// What a data plane serves (`GET /config` on its admin port) is what the
/// control plane holds (`gwctl get config`); `gwctl diff` shows what an
/// apply would change and answers 0 (none), 1 (some) or 2 (an error).
#[test]
fn config_dump_get_config_and_diff_agree_with_the_control_plane() {
    let _guard = start_test();
    let redis = RedisServer::start();
    let tokens = Tokens::random();
    let mut cp = ControlPlaneProc::start("dump-cp", Some(&redis.url()), &tokens);
    cp.wait_ready();
    let upstream = Upstream::start("dump-up");
    let yaml = format!(
        "version: 1\nservices:\n  - name: echo\n    instances: [\"{}\"]\n    circuit_breaker: {{ error_threshold_percent: 50 }}\nroutes:\n  - name: open\n    match: {{ path_prefix: /open }}\n    service: echo\n",
        upstream.url()
    );
    let gwctl = cp.gwctl();
    gwctl.apply(&yaml).success();
    let mut dp = DataPlaneProc::start("dump-dp", &cp.url(), None);
    dp.wait_ready();

    let from_cp = gwctl.run(&["get", "config", "-o", "json"]).json();
    let version = from_cp["version"].as_u64().unwrap();
    let dump = wait_until(
        "the data plane at the control plane's version",
        Duration::from_secs(10),
        || {
            let dump = http::get(dp.admin, "/config")
                .map_err(|e| e.to_string())?
                .json();
            if dump["version"] == version {
                Ok(dump)
            } else {
                Err(dump.to_string())
            }
        },
    );
    assert_eq!(dump["source"], "control_plane", "{dump}");
    assert_eq!(
        dump["config"], from_cp["config"],
        "the data plane serves the control plane's config"
    );
    assert_eq!(dump["breakers"]["echo"], "closed", "{dump}");
    let instances = dump["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{dump}");
    assert_eq!(instances[0]["spec"]["port"], upstream.port(), "{dump}");

    // The YAML of `get config` is a document apply takes: no difference.
    let document = gwctl.run(&["get", "config"]).success().to_string();
    assert!(
        document.starts_with(&format!("# version {version}\n")),
        "{document}"
    );
    let same = write_temp_file("same.yaml", &document);
    let out = gwctl.run(&["diff", "-f", &same.to_string_lossy()]);
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{}", out.stderr);
    // The original file, with its defaults left out, is no difference either.
    let original = write_temp_file("original.yaml", &yaml);
    assert_eq!(
        gwctl.run(&["diff", "-f", &original.to_string_lossy()]).code,
        0
    );

    let changed = write_temp_file("changed.yaml", &yaml.replace("/open", "/opened"));
    let out = gwctl.run(&["diff", "-f", &changed.to_string_lossy()]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("--- control plane (version {version})")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("-    path_prefix: /open\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("+    path_prefix: /opened\n"),
        "{}",
        out.stdout
    );
    // Nothing was written.
    assert_eq!(
        gwctl.run(&["get", "config", "-o", "json"]).json()["version"],
        version
    );

    let broken = write_temp_file(
        "broken.yaml",
        "version: 1\nroutes:\n  - name: x\n    service: nowhere\n",
    );
    let out = gwctl.run(&["diff", "-f", &broken.to_string_lossy()]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
}
