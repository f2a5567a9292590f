//! Support code for tests that need real processes: a private
//! `redis-server` on a free port, free ports, and waiting helpers.
//!
//! The end-to-end harness: [`procs`] (the gateway's binaries as child
//! processes with logs), [`cluster`] (control planes, data planes,
//! upstreams, gwctl, one-test-at-a-time guard), [`http`] (a tiny blocking
//! HTTP client) and [`grpc`] (a blocking Registry/Admin client); [`promql`]
//! finds the metric names of alert and dashboard expressions, and
//! [`monitoring`] reads those and runs a cluster that exports them.
//!
//! The kit every test crate shares: [`wait`] (polling until a condition
//! holds), [`upstream`] (an in-process echo upstream for tests that run the
//! gateway in their own process), [`fleet`] (configs of many services) and
//! [`http`].
//!
//! Tests never touch the shared Redis on 6379: each [`RedisServer`] is a
//! child process with its own port and data directory, killed on drop.

pub mod certs;
pub mod cluster;
pub mod fleet;
pub mod grpc;
pub mod help;
pub mod http;
pub mod monitoring;
pub mod procs;
pub mod promql;
pub mod tools;
pub mod upstream;
pub mod wait;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A free TCP port on 127.0.0.1 (bound once, then released), never the
/// same twice in a process.
///
/// Ports come from below the kernel's ephemeral range, not from binding
/// port 0: a port the kernel picked is an ephemeral one, which it may hand
/// to an outgoing connection (a client of Redis, of an upstream) before
/// the process the test starts binds it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = (FIRST_TEST_PORT, ephemeral_low().max(FIRST_TEST_PORT + 1000));
    let span = u32::from(high - low);
    // Each test process starts elsewhere in the range.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = low + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("cannot find a free port between {low} and {high}")
}

/// The first port [`free_port`] hands out.
const FIRST_TEST_PORT: u16 = 15_000;

/// The lowest port of the kernel's ephemeral range (Linux's default when
/// it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    wait::poll(timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()
    })
    .map(drop)
    .ok_or_else(|| anyhow::anyhow!("nothing listens on {addr} after {timeout:?}"))
}

/// A private `redis-server` child process, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    tls: Option<RedisTlsFiles>,
}

/// The certificate, key and CA files of a TLS-only `redis-server`.
#[derive(Debug, Clone)]
pub struct RedisTlsFiles {
    /// PEM certificate of the server.
    pub cert: PathBuf,
    /// Its PEM key.
    pub key: PathBuf,
    /// PEM CA certificate (required by `redis-server`; clients are not
    /// asked for certificates).
    pub ca: PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` from PATH on a free port, with an append-only
    /// file so that a restart keeps the data.
    ///
    /// Panics with an install hint when `redis-server` is missing.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts `redis-server` speaking TLS only (`--port 0 --tls-port P`)
    /// with `files`, not asking clients for certificates; reach it with
    /// [`Self::tls_url`]. Panics when `redis-server` is missing or was
    /// built without TLS.
    pub fn start_tls(files: RedisTlsFiles) -> Self {
        Self::start_with(Some(files))
    }

    fn start_with(tls: Option<RedisTlsFiles>) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("gw-redis-{}-{port}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            tls,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(tls) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca),
        };
        let log = self.dir.join("redis-server.log");
        let child = command
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it, e.g. `apt-get install -y redis-server`")
            });
        self.child = Some(child);
        if let Err(e) = wait_for_port(self.addr(), Duration::from_secs(10)) {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("redis-server did not come up: {e}; its log:\n{log}");
        }
    }

    /// `rediss://127.0.0.1:PORT` of a server started with [`Self::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command and returns its reply: a string (bulk or simple),
    /// an integer as its decimal text, or an array of those one per line;
    /// errors and other reply types are `Err`.
    pub fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes())?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if let Some(count) = line.strip_prefix('*') {
            let count: usize = count.parse()?;
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let mut item = String::new();
                reader.read_line(&mut item)?;
                items.push(read_scalar(&mut reader, item.trim_end())?);
            }
            return Ok(items.join("\n"));
        }
        read_scalar(&mut reader, line)
    }

    /// Calls per command since the server started (`INFO commandstats`),
    /// e.g. `"hset" -> 12`. Commands run inside Lua scripts are counted too.
    pub fn command_calls(&self) -> BTreeMap<String, u64> {
        let info = self
            .command(&["INFO", "commandstats"])
            .unwrap_or_else(|e| panic!("INFO commandstats: {e}"));
        info.lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_string(), calls))
            })
            .collect()
    }

    /// Kills the server (SIGKILL); its data stays on disk for [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills the server, deletes its data and starts it again on the same
    /// port, empty: a Redis restarted without persistence.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::create_dir_all(&self.dir);
        self.spawn();
    }
}

/// The value of a non-array reply whose first line is `line`.
fn read_scalar(reader: &mut impl BufRead, line: &str) -> anyhow::Result<String> {
    match line.split_at(line.len().min(1)) {
        ("+", text) | (":", text) => Ok(text.to_string()),
        ("$", len) => {
            let len: usize = len.parse()?;
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body)?;
            body.truncate(len);
            Ok(String::from_utf8(body)?)
        }
        _ => anyhow::bail!("unexpected Redis reply {line:?}"),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
