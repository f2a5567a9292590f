//! The pieces of an end-to-end test: control planes, data planes, upstreams
//! and gwctl as real child processes, plus waiting helpers and a guard that
//! runs tests one at a time and shows the processes' logs when one fails.

use crate::grpc::Grpc;
use crate::http::{self, HttpResponse};
use crate::procs::{tail, Proc, Spec};
use crate::{free_port, wait_for_port};

pub use crate::fleet::config_for;
pub use crate::wait::wait_until;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Lines of each log shown when a test fails.
const LOG_TAIL_LINES: usize = 80;
/// Time a process gets to become ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

static SERIAL: Mutex<()> = Mutex::new(());
static LOGS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Remembers a log file of the running test (shown if it fails).
pub fn note_log(path: &Path) {
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.to_path_buf());
}

/// Held for the whole of one end-to-end test: tests that start many
/// processes run one at a time (the machine may have two cores), and a
/// failing test prints the logs of every process it started.
pub struct TestGuard {
    _serial: MutexGuard<'static, ()>,
}

/// Starts an end-to-end test; keep the guard alive until the test ends
/// (declare it first, so that it is dropped last).
pub fn start_test() -> TestGuard {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    LOGS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    TestGuard { _serial: serial }
}

impl Drop for TestGuard {
    fn drop(&mut self) {
        let logs = std::mem::take(&mut *LOGS.lock().unwrap_or_else(|e| e.into_inner()));
        if !std::thread::panicking() {
            // Passed: its logs are of no further use.
            for path in logs {
                let _ = std::fs::remove_file(path);
            }
            return;
        }
        for path in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            eprintln!(
                "\n===== {} (last {LOG_TAIL_LINES} lines) =====\n{}",
                path.display(),
                tail(&text, LOG_TAIL_LINES)
            );
        }
    }
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until `GET path` on `addr` answers 200.
pub fn wait_http_ok(name: &str, addr: SocketAddr, path: &str, timeout: Duration) {
    wait_until(
        &format!("{name}: GET {path} -> 200"),
        timeout,
        || match http::request(addr, "GET", path, &[], b"", Duration::from_secs(2)) {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("status {} {}", r.status, r.text())),
            Err(e) => Err(e.to_string()),
        },
    )
}

/// Bearer tokens of a test's control planes.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// `GW_ADMIN_TOKEN`.
    pub admin: String,
    /// `GW_REGISTRATION_TOKEN`.
    pub registration: String,
}

impl Tokens {
    /// Fresh random tokens.
    pub fn random() -> Self {
        Self {
            admin: format!("admin-{}", uuid::Uuid::new_v4().simple()),
            registration: format!("reg-{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

/// A `control-plane` child process.
pub struct ControlPlaneProc {
    proc: Proc,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// HTTP address (`/health/*`, `/metrics`).
    pub http: SocketAddr,
    /// Replica id.
    pub replica: String,
    /// Its tokens.
    pub tokens: Tokens,
}

impl ControlPlaneProc {
    /// Starts a replica against `redis_url` (in-memory store when `None`)
    /// with short test intervals, and waits until it is ready.
    pub fn start(replica: &str, redis_url: Option<&str>, tokens: &Tokens) -> Self {
        Self::start_with_env(replica, redis_url, tokens, &[])
    }

    /// Like [`ControlPlaneProc::start`], with variables that add to or
    /// override the test defaults (e.g. production intervals).
    pub fn start_with_env(
        replica: &str,
        redis_url: Option<&str>,
        tokens: &Tokens,
        env: &[(&str, &str)],
    ) -> Self {
        let grpc = localhost(free_port());
        let http = localhost(free_port());
        let mut spec = Spec::new(format!("control-plane-{replica}"), "control-plane")
            .args(["--grpc-addr".to_string(), grpc.to_string()])
            .args(["--http-addr".to_string(), http.to_string()])
            .env("GW_ADMIN_TOKEN", &tokens.admin)
            .env("GW_REGISTRATION_TOKEN", &tokens.registration)
            .env("CP_REPLICA_ID", replica)
            .env("CP_LEADER_TTL", "2s")
            .env("CP_LEASE_SWEEP_INTERVAL", "100ms")
            .env("LOG_LEVEL", "info")
            .env("LOG_FORMAT", "pretty");
        if let Some(url) = redis_url {
            spec = spec.args(["--redis-url", url]);
        }
        for (key, value) in env {
            spec = spec.env(*key, *value);
        }
        let mut cp = Self {
            proc: spec.spawn(),
            grpc,
            http,
            replica: replica.to_string(),
            tokens: tokens.clone(),
        };
        cp.wait_ready();
        cp
    }

    /// `http://127.0.0.1:PORT` of its gRPC endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Waits for `/health/ready`.
    pub fn wait_ready(&mut self) {
        let http = self.http;
        let proc = &mut self.proc;
        wait_until(
            &format!("control plane {} to be ready", self.replica),
            STARTUP_TIMEOUT,
            || {
                // An exited process will never become ready: fail with its log.
                proc.assert_running();
                match http::request(
                    http,
                    "GET",
                    "/health/ready",
                    &[],
                    b"",
                    Duration::from_secs(2),
                ) {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("status {}", r.status)),
                    Err(e) => Err(e.to_string()),
                }
            },
        );
    }

    /// A blocking gRPC client of this replica.
    pub fn grpc(&self) -> Grpc {
        Grpc::new(&self.url(), &self.tokens.admin, &self.tokens.registration)
    }

    /// gwctl pointed at this replica with its tokens.
    pub fn gwctl(&self) -> Gwctl {
        Gwctl::new(&self.url(), &self.tokens)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same ports and waits until it is ready.
    pub fn restart(&mut self) {
        self.proc.restart();
        self.wait_ready();
    }

    /// The process itself (signals, log).
    pub fn process(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// A `data-plane` child process.
pub struct DataPlaneProc {
    proc: Proc,
    /// Public address.
    pub listen: SocketAddr,
    /// Admin address (`/health/*`, `/metrics`).
    pub admin: SocketAddr,
    /// Node id.
    pub node_id: String,
    /// Its own config cache directory (removed when dropped), unless the
    /// test set `GW_CONFIG_CACHE` itself.
    cache_dir: Option<PathBuf>,
}

impl DataPlaneProc {
    /// Starts a data plane streaming from `control_plane_url`; waits until
    /// it is live (it is ready only once it holds a config: see
    /// [`DataPlaneProc::wait_ready`]). It keeps its config cache in a
    /// directory of its own, kept across [`Proc::restart`].
    pub fn start(node_id: &str, control_plane_url: &str, redis_url: Option<&str>) -> Self {
        Self::start_with_env(node_id, control_plane_url, redis_url, &[])
    }

    /// [`DataPlaneProc::start`] with extra environment variables (such as
    /// `JWT_SECRET` or `IP_SALT`).
    pub fn start_with_env(
        node_id: &str,
        control_plane_url: &str,
        redis_url: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        let listen = localhost(free_port());
        let admin = localhost(free_port());
        let mut spec = Spec::new(format!("data-plane-{node_id}"), "data-plane")
            .args(["--listen".to_string(), listen.to_string()])
            .args(["--admin-listen".to_string(), admin.to_string()])
            .args(["--control-plane", control_plane_url])
            .args(["--node-id", node_id])
            .env("GW_SHUTDOWN_GRACE", "5s")
            .env("LOG_LEVEL", "info")
            .env("LOG_FORMAT", "pretty");
        // Never the default directory: data planes of other tests (and of
        // the machine) must not share a cache.
        let cache_dir = (!env.iter().any(|(k, _)| *k == "GW_CONFIG_CACHE")).then(|| {
            std::env::temp_dir().join(format!(
                "gw-e2e-cache-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ))
        });
        if let Some(dir) = &cache_dir {
            spec = spec.env("GW_CONFIG_CACHE", dir.to_string_lossy());
        }
        if let Some(url) = redis_url {
            spec = spec.env("REDIS_URL", url);
        }
        for (key, value) in env {
            spec = spec.env(*key, *value);
        }
        let mut dp = Self {
            proc: spec.spawn(),
            listen,
            admin,
            node_id: node_id.to_string(),
            cache_dir,
        };
        if let Err(e) = wait_for_port(admin, STARTUP_TIMEOUT) {
            dp.proc.assert_running();
            panic!("data plane {node_id}: {e}; log:\n{}", dp.proc.log());
        }
        dp
    }

    /// Starts a standalone data plane (no control plane) serving the config
    /// file `config`; waits until it is ready.
    pub fn standalone(node_id: &str, config: &Path) -> Self {
        Self::standalone_with_env(node_id, config, &[])
    }

    /// [`DataPlaneProc::standalone`] with extra environment variables.
    pub fn standalone_with_env(node_id: &str, config: &Path, env: &[(&str, &str)]) -> Self {
        let listen = localhost(free_port());
        let admin = localhost(free_port());
        let mut spec = Spec::new(format!("data-plane-{node_id}"), "data-plane")
            .args(["--listen".to_string(), listen.to_string()])
            .args(["--admin-listen".to_string(), admin.to_string()])
            .args([
                "--config".to_string(),
                config.to_string_lossy().into_owned(),
            ])
            .args(["--node-id", node_id])
            .env("GW_SHUTDOWN_GRACE", "2s")
            .env("LOG_LEVEL", "info")
            .env("LOG_FORMAT", "pretty");
        for (key, value) in env {
            spec = spec.env(*key, *value);
        }
        let mut dp = Self {
            proc: spec.spawn(),
            listen,
            admin,
            node_id: node_id.to_string(),
            cache_dir: None,
        };
        dp.wait_ready();
        dp
    }

    /// The directory of its config cache, when the kit chose it.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// The text of its `/metrics`.
    pub fn metrics(&self) -> String {
        http::get(self.admin, "/metrics")
            .map(|r| r.text())
            .unwrap_or_else(|e| panic!("data plane {}: GET /metrics: {e}", self.node_id))
    }

    /// Sends SIGHUP (a standalone data plane reloads its file).
    pub fn reload(&mut self) {
        self.proc.hangup();
    }

    /// Waits until `/health/ready` answers 200 (a config is applied).
    pub fn wait_ready(&mut self) {
        self.proc.assert_running();
        wait_http_ok(
            &format!("data plane {}", self.node_id),
            self.admin,
            "/health/ready",
            STARTUP_TIMEOUT,
        );
    }

    /// `GET path` through the data plane.
    pub fn get(&self, path: &str) -> std::io::Result<HttpResponse> {
        http::get(self.listen, path)
    }

    /// `METHOD path` with `headers` and `body` through the data plane
    /// (10 s timeout); panics, naming the data plane, when no answer comes.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        http::request(
            self.listen,
            method,
            path,
            headers,
            body,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{method} {path} through {}: {e}", self.node_id))
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// The process itself (signals, log).
    pub fn process(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

impl Drop for DataPlaneProc {
    fn drop(&mut self) {
        self.proc.kill();
        if let Some(dir) = &self.cache_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A `test-upstream` child process.
pub struct Upstream {
    proc: Proc,
    /// Its address.
    pub addr: SocketAddr,
    /// Its name (`x-upstream`).
    pub name: String,
}

impl Upstream {
    /// Starts `test-upstream --name NAME` on a free port.
    pub fn start(name: &str) -> Self {
        Self::start_with_args(name, &[])
    }

    /// Starts `test-upstream --name NAME ARGS...` on a free port.
    pub fn start_with_args(name: &str, args: &[&str]) -> Self {
        let addr = localhost(free_port());
        let proc = Spec::new(format!("upstream-{name}"), "test-upstream")
            .args(["--listen".to_string(), addr.to_string()])
            .args(["--name", name])
            .args(args.iter().copied())
            .spawn();
        let mut upstream = Self {
            proc,
            addr,
            name: name.to_string(),
        };
        if let Err(e) = wait_for_port(addr, STARTUP_TIMEOUT) {
            upstream.proc.assert_running();
            panic!("upstream {name}: {e}");
        }
        upstream
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:PORT`, as given to `gwctl register --address`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Makes `/health` answer 200 (`true`) or 503 (`false`).
    pub fn set_healthy(&self, healthy: bool) {
        let path = if healthy {
            "/_control/healthy"
        } else {
            "/_control/unhealthy"
        };
        let r = http::post(self.addr, path, b"")
            .unwrap_or_else(|e| panic!("upstream {}: POST {path}: {e}", self.name));
        assert_eq!(r.status, 200, "upstream {}: POST {path}", self.name);
    }

    /// Makes every later request answer with `status` (0: normally again).
    pub fn set_fail(&self, status: u16) {
        let path = format!("/_control/fail?status={status}");
        let r = http::post(self.addr, &path, b"")
            .unwrap_or_else(|e| panic!("upstream {}: POST {path}: {e}", self.name));
        assert_eq!(r.status, 200, "upstream {}: POST {path}", self.name);
    }

    /// Makes every later request wait `ms` before answering (0: no wait).
    pub fn set_delay(&self, ms: u64) {
        let path = format!("/_control/delay?ms={ms}");
        let r = http::post(self.addr, &path, b"")
            .unwrap_or_else(|e| panic!("upstream {}: POST {path}: {e}", self.name));
        assert_eq!(r.status, 200, "upstream {}: POST {path}", self.name);
    }

    /// Makes later requests for `path` answer `json` (instead of the echo).
    pub fn respond(&self, path: &str, json: &serde_json::Value) {
        let control = format!("/_control/respond?path={path}");
        let r = http::post(self.addr, &control, json.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("upstream {}: POST {control}: {e}", self.name));
        assert_eq!(r.status, 200, "upstream {}: POST {control}", self.name);
    }

    /// `http://127.0.0.1:PORT`, as written in a config's `instances`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests it received (outside `/health` and `/_control`).
    pub fn served(&self) -> u64 {
        http::get(self.addr, "/_control/requests")
            .ok()
            .and_then(|r| r.json()["count"].as_u64())
            .unwrap_or_else(|| panic!("upstream {}: cannot read its request count", self.name))
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

/// The result of one gwctl run.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CmdOutput {
    fn from_output(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics unless the exit code is 0; returns stdout.
    pub fn success(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "gwctl failed: stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Stdout as JSON (for `-o json`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("gwctl printed no JSON ({e}): {}", self.stdout))
    }
}

/// gwctl with a control-plane URL and tokens in its environment.
#[derive(Debug, Clone)]
pub struct Gwctl {
    url: String,
    tokens: Tokens,
    env: Vec<(String, String)>,
}

impl Gwctl {
    /// gwctl for the control plane at `url`.
    pub fn new(url: &str, tokens: &Tokens) -> Self {
        Self {
            url: url.to_string(),
            tokens: tokens.clone(),
            env: Vec::new(),
        }
    }

    /// The same gwctl with one more environment variable (e.g. `GW_CA_FILE`).
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The process spec for `gwctl ARGS`.
    pub fn spec(&self, args: &[&str]) -> Spec {
        let mut spec = Spec::new("gwctl", "gwctl")
            .args(args.iter().copied())
            .env("GW_CONTROL_PLANE", &self.url)
            .env("GW_ADMIN_TOKEN", &self.tokens.admin)
            .env("GW_REGISTRATION_TOKEN", &self.tokens.registration);
        for (key, value) in &self.env {
            spec = spec.env(key.as_str(), value.as_str());
        }
        spec
    }

    /// Runs `gwctl ARGS` to completion (at most 60 s).
    pub fn run(&self, args: &[&str]) -> CmdOutput {
        CmdOutput::from_output(self.spec(args).run(Duration::from_secs(60)))
    }

    /// Starts `gwctl ARGS` in the background (e.g. `register --keepalive`).
    pub fn spawn(&self, args: &[&str]) -> Proc {
        self.spec(args).spawn()
    }

    /// `gwctl apply -f` of a config given as text.
    pub fn apply(&self, yaml: &str) -> CmdOutput {
        let path = write_temp_file("config.yaml", yaml);
        let out = self.run(&["apply", "-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(path);
        out
    }
}

/// Writes `content` to a new temporary file and returns its path.
pub fn write_temp_file(name: &str, content: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "gw-e2e-{}-{}-{name}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, content)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}
