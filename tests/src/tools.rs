//! Clients the project did not write, run as processes: each is required,
//! so a missing one fails the test rather than skipping it.

use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `program args` (with `stdin` written to it), failing the test when
/// the tool is missing.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); this test needs it installed"));
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// curl's answer.
#[derive(Debug)]
pub struct Curl {
    /// Whether curl exited with 0.
    pub ok: bool,
    /// The status code (0: none).
    pub status: u16,
    /// The HTTP version used (`1.1`, `2`).
    pub version: String,
    /// The response body.
    pub body: String,
    /// What curl wrote to stderr.
    pub stderr: String,
}

impl Curl {
    /// The body as JSON; panics with the body and stderr when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} / {}", self.body, self.stderr))
    }
}

/// Runs `curl -sS --max-time 10 ARGS URL`, reading the status and the HTTP
/// version after the body.
pub fn curl(args: &[&str], url: &str) -> Curl {
    let mut all = vec![
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code} %{http_version}",
    ];
    all.extend_from_slice(args);
    all.push(url);
    let out = run("curl", &all, None);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let (status, version) = last.trim().split_once(' ').unwrap_or((last, ""));
    Curl {
        ok: out.status.success(),
        status: status.parse().unwrap_or(0),
        version: version.to_string(),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
