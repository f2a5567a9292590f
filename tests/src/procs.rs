//! Child processes of the gateway's binaries: where the binaries are, how
//! they are started, their logs, and how they are stopped.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The binaries the end-to-end tests run, built by `cargo build --bins`.
pub const GATEWAY_BINARIES: [&str; 3] = ["control-plane", "data-plane", "gwctl"];

/// The directory holding the binaries of the running test's profile
/// (`target/debug` for `target/debug/deps/e2e-...`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let dir = exe.parent().expect("the test executable is in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of the binary `name`; builds the gateway's binaries once if it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        build_binaries_once();
    }
    assert!(
        path.exists(),
        "{name} is missing from {} even after building; build it with \
         `cargo build --bins -p control-plane -p data-plane -p gwctl -p gateway-tests`",
        bin_dir().display()
    );
    path
}

/// Runs `cargo build --bins` for the gateway's binaries in the test's profile, once per process.
fn build_binaries_once() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let dir = bin_dir();
        let target_dir = dir.parent().unwrap_or(&dir).to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("."));
        eprintln!(
            "gateway-tests: running `cargo build --bins -p control-plane -p data-plane -p gwctl \
             -p gateway-tests` once for {}",
            dir.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let mut build = Command::new(cargo);
        build
            .args(["build", "--bins"])
            .args(["-p", "control-plane", "-p", "data-plane", "-p", "gwctl"])
            .args(["-p", "gateway-tests"])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(workspace);
        if release {
            build.arg("--release");
        }
        match build.status() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("cargo build failed ({status})")),
            Err(e) => Err(format!("cannot run cargo: {e}")),
        }
    });
    if let Err(e) = result {
        panic!("cannot build the gateway binaries: {e}");
    }
}

/// Directory for this test process's logs.
fn log_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gw-e2e-logs-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
    .clone()
}

/// A fresh log file path for a process called `name`.
fn new_log_path(name: &str) -> PathBuf {
    static COUNTER: Mutex<u64> = Mutex::new(0);
    let n = {
        let mut counter = COUNTER.lock().unwrap_or_else(|e| e.into_inner());
        *counter += 1;
        *counter
    };
    log_dir().join(format!("{n:04}-{name}.log"))
}

/// How to start a process: binary, arguments, environment.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Name used in logs and messages.
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment added to the test's own (minus gateway variables).
    pub env: BTreeMap<String, String>,
}

/// Environment variables of the gateway that must not leak from the
/// developer's shell into the processes under test.
const SCRUBBED_ENV: [&str; 36] = [
    "GW_ADMIN_TOKEN",
    "GW_REGISTRATION_TOKEN",
    "GW_DATAPLANE_TOKEN",
    "GW_CONTROL_PLANE",
    "GW_CONFIG",
    "GW_CONFIG_CACHE",
    "GW_CONFIG_CACHE_GRACE",
    "GW_LISTEN",
    "GW_ADMIN_LISTEN",
    "GW_NODE_ID",
    "PORT",
    "REDIS_URL",
    "CONTROL_PLANE_URL",
    "CP_GRPC_ADDR",
    "CP_HTTP_ADDR",
    "CP_ALLOW_UNAUTHENTICATED",
    "CP_REPLICA_ID",
    "CP_KEY_PREFIX",
    "JWT_SECRET",
    "RUST_LOG",
    "ENABLE_RATE_LIMITING",
    "RATE_LIMIT_WINDOW_MS",
    "RATE_LIMIT_MAX_REQUESTS",
    "IP_SALT",
    "CP_TLS_CERT",
    "CP_TLS_KEY",
    "CP_TLS_CLIENT_CA",
    "GW_CP_CA_FILE",
    "GW_CP_CLIENT_CERT",
    "GW_CP_CLIENT_KEY",
    "GW_CA_FILE",
    "GW_CLIENT_CERT",
    "GW_CLIENT_KEY",
    "REDIS_CA_FILE",
    "REDIS_CLIENT_CERT",
    "REDIS_CLIENT_KEY",
];

impl Spec {
    /// A spec for the binary `binary` of the workspace.
    pub fn new(name: impl Into<String>, binary_name: &str) -> Self {
        Self {
            name: name.into(),
            program: binary(binary_name),
            args: Vec::new(),
            env: BTreeMap::new(),
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        for key in SCRUBBED_ENV {
            command.env_remove(key);
        }
        // Plain logs: they are read as files.
        command.env("NO_COLOR", "1");
        command.envs(&self.env);
        command
    }

    /// Runs to completion, capturing stdout and stderr; killed after `timeout`.
    pub fn run(&self, timeout: Duration) -> Output {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let output = child.wait_with_output().ok();
                    panic!(
                        "{} {:?} did not finish within {timeout:?}; output so far: {:?}",
                        self.name, self.args, output
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("cannot wait for {}: {e}", self.name),
            }
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("cannot read the output of {}: {e}", self.name))
    }

    /// Starts the process in the background, its output going to a new log file.
    pub fn spawn(&self) -> Proc {
        let log_path = new_log_path(&self.name);
        crate::cluster::note_log(&log_path);
        self.spawn_logging_to(log_path)
    }

    /// Starts the process in the background, appending its output to `log_path`.
    fn spawn_logging_to(&self, log_path: PathBuf) -> Proc {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone the log file handle: {e}"));
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        Proc {
            spec: self.clone(),
            child: Some(child),
            log_path,
            status: None,
        }
    }
}

/// A background child process; SIGKILLed when dropped.
#[derive(Debug)]
pub struct Proc {
    spec: Spec,
    child: Option<Child>,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// The process's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its OS process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Path of its combined stdout/stderr log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(status))) => {
                self.status = Some(status);
                self.child = None;
                false
            }
            _ => false,
        }
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if !self.is_running() {
            panic!(
                "{} exited unexpectedly ({:?}); log:\n{}",
                self.name(),
                self.status,
                self.log()
            );
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.status = child.wait().ok();
        }
    }

    /// Sends SIGTERM (graceful shutdown); see [`Proc::wait_exit`].
    pub fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends SIGHUP.
    pub fn hangup(&mut self) {
        self.signal(libc::SIGHUP);
    }

    /// Sends SIGINT (Ctrl-C).
    pub fn interrupt(&mut self) {
        self.signal(libc::SIGINT);
    }

    fn signal(&mut self, signal: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) with the pid of our own, not yet reaped child.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// Waits up to `timeout` for the process to exit; SIGKILLs it and
    /// panics (with the log) if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                return self.status.expect("an exited process has a status");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        panic!(
            "{} did not exit within {timeout:?}; log:\n{}",
            self.name(),
            self.log()
        );
    }

    /// Starts the same process again (same arguments and environment) after it stopped.
    pub fn restart(&mut self) {
        self.kill();
        if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(
                log,
                "\n----- gateway-tests: {} restarted -----\n",
                self.name()
            );
        }
        let fresh = self.spec.spawn_logging_to(self.log_path.clone());
        let old = std::mem::replace(self, fresh);
        drop(old);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Builds the gateway's binaries in the running executable's profile now,
/// once per process, so that a benchmark never runs stale binaries (a test
/// run builds them itself; a `cargo bench` of this crate does not).
pub fn build_binaries_now() {
    build_binaries_once();
}

/// Resident and peak resident memory of process `pid` in bytes
/// (`VmRSS`, `VmHWM` from `/proc/PID/status`), if readable.
pub fn memory_of(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The tail of a log, at most `lines` lines.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
