//! The built `control-plane` binary: flags, start-up failures and a clean
//! stop on SIGTERM.

use gateway_tests::http;
use gateway_tests::wait::poll;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_control-plane");

/// The binary with no gateway variables inherited from the environment.
fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for var in [
        "CP_GRPC_ADDR",
        "CP_HTTP_ADDR",
        "REDIS_URL",
        "GW_ADMIN_TOKEN",
        "GW_REGISTRATION_TOKEN",
        "GW_DATAPLANE_TOKEN",
        "CP_ALLOW_UNAUTHENTICATED",
        "CP_REPLICA_ID",
        "CP_LEADER_TTL",
        "CP_LEASE_SWEEP_INTERVAL",
        "CP_KEY_PREFIX",
        "LOG_LEVEL",
        "LOG_FORMAT",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn free_addr() -> String {
    format!("127.0.0.1:{}", gateway_tests::free_port())
}

fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_with_timeout(child, Duration::from_secs(20))
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    if poll(timeout, || child.try_wait().unwrap()).is_some() {
        return child.wait_with_output().unwrap();
    }
    let _ = child.kill();
    panic!("the binary did not exit within {timeout:?}");
}

/// Checks a failed start: non-zero exit, one line on stderr containing `needle`.
fn assert_refused(output: &Output, needle: &str) {
    assert!(!output.status.success(), "exited successfully");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one line expected on stderr, got:\n{stderr}"
    );
    assert!(lines[0].starts_with("control-plane: "), "{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr}");
}

#[test]
fn help_lists_every_flag_and_variable() {
    let output = run(command().arg("--help"));
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--grpc-addr",
        "CP_GRPC_ADDR",
        "--http-addr",
        "CP_HTTP_ADDR",
        "--redis-url",
        "REDIS_URL",
        "GW_ADMIN_TOKEN",
        "GW_REGISTRATION_TOKEN",
        "GW_DATAPLANE_TOKEN",
        "--allow-unauthenticated",
        "CP_ALLOW_UNAUTHENTICATED",
        "--replica-id",
        "CP_REPLICA_ID",
        "--leader-ttl",
        "CP_LEADER_TTL",
        "--lease-sweep-interval",
        "CP_LEASE_SWEEP_INTERVAL",
        "--key-prefix",
        "CP_KEY_PREFIX",
        "LOG_LEVEL",
        "LOG_FORMAT",
    ] {
        assert!(
            help.contains(needle),
            "{needle} missing from --help:\n{help}"
        );
    }
}

#[test]
fn a_bad_flag_value_is_refused_in_one_line() {
    let output = run(command().args(["--grpc-addr", "nowhere"]));
    assert_eq!(output.status.code(), Some(2));
    assert_refused(&output, "--grpc-addr");
    let output = run(command().env("CP_LEADER_TTL", "soon"));
    assert_refused(&output, "soon");
}

#[test]
fn missing_tokens_are_refused() {
    let output = run(command().args(["--grpc-addr", &free_addr(), "--http-addr", &free_addr()]));
    assert_refused(&output, "GW_ADMIN_TOKEN and GW_REGISTRATION_TOKEN not set");
    let output = run(command().env("GW_ADMIN_TOKEN", "a").args([
        "--grpc-addr",
        &free_addr(),
        "--http-addr",
        &free_addr(),
    ]));
    assert_refused(&output, "GW_REGISTRATION_TOKEN not set");
}

#[test]
fn a_bad_redis_url_is_refused() {
    let output = run(command()
        .env("CP_ALLOW_UNAUTHENTICATED", "true")
        .env("REDIS_URL", "http://not-redis")
        .args(["--grpc-addr", &free_addr(), "--http-addr", &free_addr()]));
    assert_refused(&output, "Redis");
}

#[test]
fn a_port_in_use_is_refused() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run(command().env("CP_ALLOW_UNAUTHENTICATED", "true").args([
        "--grpc-addr",
        &addr,
        "--http-addr",
        &free_addr(),
    ]));
    assert_refused(&output, &format!("cannot listen on {addr}"));
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let response = http::request(addr, "GET", path, &[], b"", Duration::from_secs(2)).ok()?;
    Some(response.status)
}

#[test]
fn serves_until_sigterm_then_exits_cleanly() {
    let grpc = free_addr();
    let http: SocketAddr = free_addr().parse().unwrap();
    let child = command()
        .env("CP_ALLOW_UNAUTHENTICATED", "true")
        .env("LOG_FORMAT", "pretty")
        .env("CP_GRPC_ADDR", &grpc)
        .args(["--http-addr", &http.to_string(), "--replica-id", "bin-test"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = poll(Duration::from_secs(15), || {
        (http_status(http, "/health/ready") == Some(200)).then_some(())
    });
    assert!(ready.is_some(), "never became ready");
    assert!(TcpStream::connect(grpc.as_str()).is_ok(), "gRPC port open");
    // SAFETY: sending a signal to the child we spawned.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let output = wait_with_timeout(child, Duration::from_secs(15));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("in-memory store"), "{stdout}");
    assert!(stdout.contains("control plane stopped"), "{stdout}");
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
