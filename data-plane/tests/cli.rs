//! The `data-plane` binary: flags, refusals, and a standalone run with
//! SIGHUP reload and SIGTERM shutdown.

mod common;

use common::*;
use gateway_tests::free_port;
use gateway_tests::wait::{poll_async, EVERY_FAST};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_data-plane");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().args(args).envs(env.iter().copied());
    cmd.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn help_lists_every_flag_and_variable() {
    let out = run(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--listen",
        "GW_LISTEN",
        "--port",
        "PORT",
        "--admin-listen",
        "GW_ADMIN_LISTEN",
        "--control-plane",
        "CONTROL_PLANE_URL",
        "--config",
        "GW_CONFIG",
        "--node-id",
        "GW_NODE_ID",
        "GW_DATAPLANE_TOKEN",
        "--shutdown-grace",
        "GW_SHUTDOWN_GRACE",
        "--config-cache",
        "GW_CONFIG_CACHE",
        "--config-cache-grace",
        "GW_CONFIG_CACHE_GRACE",
        "JWT_SECRET",
        "LOG_LEVEL",
        "LOG_FORMAT",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

fn one_line_failure(out: &Output, needle: &str) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{err}");
    assert!(lines[0].contains(needle), "{err}");
}

#[test]
fn bad_values_exit_non_zero_with_one_line() {
    one_line_failure(&run(&["--listen", "nowhere"], &[]), "--listen");
    one_line_failure(&run(&[], &[("GW_SHUTDOWN_GRACE", "soon")]), "soon");
    one_line_failure(
        &run(&["--control-plane", "ftp://x"], &[]),
        "--control-plane",
    );
    one_line_failure(
        &run(&[], &[("JWT_SECRET", "too-short"), ("LOG_LEVEL", "off")]),
        "JWT_SECRET",
    );
}

#[test]
fn a_bad_config_file_exits_with_the_reason() {
    let file = TempConfig::new("version: 3\n");
    let out = run(
        &[],
        &[
            ("GW_CONFIG", file.path.to_str().unwrap()),
            ("GW_LISTEN", "127.0.0.1:0"),
            ("GW_ADMIN_LISTEN", "127.0.0.1:0"),
            ("LOG_LEVEL", "off"),
        ],
    );
    one_line_failure(&out, "version: must be 1");
}

fn config(upstream: &Upstream, extra_route: bool) -> String {
    let mut doc = format!(
        "version: 1\nservices:\n  - {{ name: auth, instances: [\"http://127.0.0.1:1\"] }}\n  - {{ name: echo, instances: [\"{}\"] }}\nroutes:\n  - {{ name: auth, match: {{ path_prefix: /auth }}, service: auth, strip_prefix: true }}\n",
        upstream.url()
    );
    if extra_route {
        doc.push_str("  - { name: echo, match: { path_prefix: /echo }, service: echo }\n");
    }
    doc
}

#[tokio::test]
async fn standalone_binary_serves_reloads_and_stops_on_sigterm() {
    let up = Upstream::start("up").await;
    let file = TempConfig::new(&config(&up, false));
    let (mut child, port, admin_port, stderr) = spawn_standalone(&file, &up).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c = client();
    let req = |path: &str| {
        http::Request::get(format!("http://{addr}{path}"))
            .body(empty())
            .unwrap()
    };
    let ready = send(
        &c,
        http::Request::get(format!("http://127.0.0.1:{admin_port}/health/ready"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        ready.status,
        200,
        "{}\n{}",
        ready.text(),
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    // AUTH_SERVICE_URL replaced the file's dead instance.
    let answer = send(&c, req("/auth/me")).await;
    assert_eq!(answer.json()["uri"], "/me");
    send(&c, req("/echo/x"))
        .await
        .assert_error(404, "ROUTE_NOT_FOUND");

    // SIGHUP reloads the file; a broken file keeps the old config.
    std::fs::write(&file.path, "version: 9\n").unwrap();
    signal(&child, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(send(&c, req("/auth/me")).await.status, 200);
    std::fs::write(&file.path, config(&up, true)).unwrap();
    signal(&child, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = send(&c, req("/echo/x")).await;
        if answer.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "reload not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGTERM: an in-flight request finishes, then the process exits 0.
    let slow = tokio::spawn(async move {
        send(
            &client(),
            http::Request::get(format!("http://{addr}/echo/slow/400"))
                .body(empty())
                .unwrap(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(&child, libc::SIGTERM);
    assert_eq!(slow.await.unwrap().status, 200);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("did not exit")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Starts the binary in standalone mode on two free ports and returns once
/// both listeners accept. A port taken by another process between picking and
/// binding makes the child exit; it is started again on other ports.
async fn spawn_standalone(
    file: &TempConfig,
    up: &Upstream,
) -> (tokio::process::Child, u16, u16, std::path::PathBuf) {
    for _ in 0..5 {
        let port = free_port();
        let admin_port = free_port();
        let stderr = file.dir.join("stderr.log");
        let mut child = tokio::process::Command::new(BIN)
            .env_clear()
            .env("GW_CONFIG", &file.path)
            .env("PORT", port.to_string())
            .env("GW_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("AUTH_SERVICE_URL", up.url())
            .env("LOG_FORMAT", "pretty")
            .env("GW_SHUTDOWN_GRACE", "5s")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Some(true): both listeners accept; Some(false): the child exited.
        let listening = poll_async(Duration::from_secs(10), EVERY_FAST, || {
            let exited = child.try_wait().unwrap().is_some();
            let both = [port, admin_port]
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
            std::future::ready((exited || both).then_some(!exited))
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "data plane not listening: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            )
        });
        if listening {
            return (child, port, admin_port, stderr);
        }
        eprintln!(
            "data plane exited at start, trying other ports: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
    }
    panic!("the data plane did not start in five tries");
}

fn signal(child: &tokio::process::Child, sig: i32) {
    let pid = child.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}
