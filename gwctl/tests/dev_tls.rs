//! Runs the built `gwctl dev --tls` and reaches its HTTPS listener with
//! `curl`: the printed `curl --cacert` line answers 200 through the echo
//! upstream, curl without the CA refuses the certificate, the throwaway
//! files go away on exit, and a taken HTTPS port is a one-line error.
//!
//! `gwctl dev` listens on fixed ports (control plane, echo, admin, 3443):
//! the tests of this file take turns, and each first waits for those ports
//! to be free (another `gwctl dev` may be stopping).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const GWCTL: &str = env!("CARGO_BIN_EXE_gwctl");
/// The fixed ports of `gwctl dev --tls` (the public one is given per test).
const DEV_PORTS: [u16; 5] = [50051, 9091, 9090, 8081, 3443];
/// Variables of the gateway and of curl that must not leak in.
const SCRUBBED: [&str; 6] = [
    "GW_CONTROL_PLANE",
    "GW_ADMIN_TOKEN",
    "JWT_SECRET",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// One `gwctl dev` at a time.
static DEV: Mutex<()> = Mutex::new(());

fn serialized() -> std::sync::MutexGuard<'static, ()> {
    DEV.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits (up to 30s) until every fixed dev port can be bound.
fn wait_for_dev_ports() {
    let deadline = Instant::now() + Duration::from_secs(30);
    for port in DEV_PORTS {
        while TcpListener::bind(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "port {port} stays taken: is another `gwctl dev` running?"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory of its own for TMPDIR, so that leftovers can be seen
/// (removed when dropped, also when a test fails).
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("gwctl-dev-tls-test-{name}."))
        .tempdir()
        .unwrap()
}

fn dev_command(listen: &str, tmpdir: &Path) -> Command {
    let mut command = Command::new(GWCTL);
    command.args(["dev", "--listen", listen, "--tls"]);
    for key in SCRUBBED {
        command.env_remove(key);
    }
    command.env("TMPDIR", tmpdir);
    command
}

/// Stops the child with SIGTERM when dropped (also when a test panics).
struct Running(Child);

impl Running {
    fn stop(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        self.0.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

fn sh(line: &str) -> Output {
    let mut command = Command::new("sh");
    command.args(["-c", line]);
    for key in SCRUBBED {
        command.env_remove(key);
    }
    command.output().expect("sh runs")
}

#[test]
fn dev_tls_serves_https_that_curl_verifies_with_the_printed_ca() {
    let _turn = serialized();
    wait_for_dev_ports();
    let scratch = scratch("serve");
    let tmpdir = scratch.path();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut dev = Running(
        dev_command(&listen, tmpdir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("gwctl dev starts"),
    );
    let mut lines = BufReader::new(dev.0.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Ctrl-C stops everything") {
            break;
        }
    }
    let ca = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("CA cert"))
        .map(|path| PathBuf::from(path.trim()))
        .unwrap_or_else(|| panic!("no CA path in the banner:\n{banner}"));
    let curl = banner
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("curl ") && l.contains("--cacert"))
        .unwrap_or_else(|| panic!("no curl --cacert line in the banner:\n{banner}"))
        .to_string();
    assert!(ca.is_file(), "{} is not a file", ca.display());
    assert!(ca.starts_with(tmpdir), "{} not in TMPDIR", ca.display());
    assert!(banner.contains("https://localhost:3443"), "{banner}");
    assert_eq!(
        curl,
        format!(
            "curl -s --cacert {} 'https://localhost:3443/echo/hello?x=1'",
            ca.display()
        )
    );

    // The printed line, exactly as printed: the echo upstream's answer.
    let printed = sh(&curl);
    let body = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.status.success(), "{curl}: {printed:?}");
    assert!(
        body.contains(r#""path":"/hello""#) && body.contains(r#""query":"x=1""#),
        "{body}"
    );
    // Its status, by the same CA.
    let status = sh(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --cacert {} 'https://localhost:3443/users/42'",
        ca.display()
    ));
    assert_eq!(String::from_utf8_lossy(&status.stdout), "200", "{status:?}");
    // Without the CA the certificate is not trusted (curl: exit 60).
    let untrusted = sh("curl -s -o /dev/null 'https://localhost:3443/echo/hello'");
    assert_eq!(untrusted.status.code(), Some(60), "{untrusted:?}");
    // The plain listener is still there.
    let plain = sh(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' 'http://{listen}/echo/hello'"
    ));
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "200", "{plain:?}");

    let status = dev.stop();
    assert!(status.success(), "gwctl dev exited with {status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(!ca.exists(), "{} is left behind", ca.display());
    assert!(
        std::fs::read_dir(tmpdir).unwrap().next().is_none(),
        "TMPDIR holds leftovers"
    );
    assert!(rest.iter().any(|l| l.starts_with("removed ")), "{rest:?}");
}

#[test]
fn a_taken_https_port_is_a_one_line_error() {
    let _turn = serialized();
    wait_for_dev_ports();
    let scratch = scratch("taken");
    let tmpdir = scratch.path();
    let taken = TcpListener::bind("127.0.0.1:3443").expect("port 3443 is free");
    let listen = format!("127.0.0.1:{}", free_port());
    let output = dev_command(&listen, tmpdir)
        .stdin(Stdio::null())
        .output()
        .expect("gwctl dev runs");
    drop(taken);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(!output.status.success(), "{output:?}");
    assert!(
        last.starts_with("error: ") && last.contains("127.0.0.1:3443"),
        "{stderr}"
    );
    assert!(last.contains("--tls-listen"), "{stderr}");
    assert!(
        std::fs::read_dir(tmpdir).unwrap().next().is_none(),
        "TMPDIR holds leftovers"
    );
}
