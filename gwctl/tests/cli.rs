//! Runs the built `gwctl` binary: help texts, one-line errors on bad input,
//! and dev tokens.

use std::process::{Command, Output};

const GWCTL: &str = env!("CARGO_BIN_EXE_gwctl");

/// Variables of the gateway that must not leak in from the caller's shell.
const SCRUBBED: [&str; 7] = [
    "GW_CONTROL_PLANE",
    "GW_ADMIN_TOKEN",
    "GW_REGISTRATION_TOKEN",
    "JWT_SECRET",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "LOG_FORMAT",
];

fn gwctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(GWCTL);
    command.args(args);
    for key in SCRUBBED {
        command.env_remove(key);
    }
    command.envs(env.iter().copied());
    command.output().expect("gwctl runs")
}

/// Asserts a failure with exactly one `error: ...` line containing `needle`.
fn assert_one_line_error(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected failure, got {output:?}");
    let stderr = stderr.trim_end();
    assert!(
        stderr.starts_with("error: ") && !stderr.contains('\n'),
        "expected one error line, got {stderr:?}"
    );
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(output.stdout.is_empty(), "stdout: {:?}", output.stdout);
}

#[test]
fn every_verb_has_help() {
    let verbs: &[&[&str]] = &[
        &[],
        &["apply"],
        &["get"],
        &["register"],
        &["deregister"],
        &["drain"],
        &["undrain"],
        &["topology"],
        &["breaker"],
        &["breaker", "get"],
        &["breaker", "set"],
        &["token"],
        &["token", "issue"],
        &["dev"],
        &["completion"],
    ];
    for verb in verbs {
        let mut args = verb.to_vec();
        args.push("--help");
        let output = gwctl(&args, &[]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}: {output:?}");
        assert!(stdout.contains("Usage: gwctl"), "{args:?}: {stdout}");
    }
    let register = gwctl(&["register", "--help"], &[]);
    let text = String::from_utf8_lossy(&register.stdout);
    for flag in [
        "--service",
        "--address",
        "--id",
        "--ttl",
        "--health-path",
        "--weight",
        "--zone",
        "--metadata",
        "--keepalive",
        "--control-plane",
        "--output",
    ] {
        assert!(text.contains(flag), "{flag} missing from register --help");
    }
    let breaker = gwctl(&["breaker", "set", "--help"], &[]);
    let text = String::from_utf8_lossy(&breaker.stdout);
    for flag in [
        "--error-threshold-percent",
        "--volume-threshold",
        "--reset-timeout",
        "--call-timeout",
        "--rolling-window",
        "--rolling-buckets",
        "--half-open-max-requests",
        "--enabled",
    ] {
        assert!(
            text.contains(flag),
            "{flag} missing from breaker set --help"
        );
    }
}

#[test]
fn unreadable_file_is_one_line() {
    let output = gwctl(&["apply", "-f", "/definitely/not/here.yaml"], &[]);
    assert_one_line_error(&output, "cannot read /definitely/not/here.yaml");
}

fn temp_file(name: &str, content: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("gwctl-test-{}-{name}", std::process::id()));
    std::fs::write(&path, content).expect("temp file");
    path
}

#[test]
fn invalid_config_names_the_reason_before_any_call() {
    // Nothing listens on port 1: the local check must fail first.
    let path = temp_file(
        "bad.yaml",
        "version: 1\nservices:\n  - name: echo\nroutes:\n  - name: r\n    match: { path_prefix: /x }\n    service: missing\n",
    );
    let output = gwctl(
        &[
            "--control-plane",
            "http://127.0.0.1:1",
            "apply",
            "-f",
            &path.to_string_lossy(),
        ],
        &[],
    );
    let _ = std::fs::remove_file(&path);
    assert_one_line_error(&output, "routes[0].service: unknown service \"missing\"");

    let path = temp_file("unparsable.yaml", "version: [1\n");
    let output = gwctl(&["apply", "-f", &path.to_string_lossy()], &[]);
    let _ = std::fs::remove_file(&path);
    assert_one_line_error(&output, "cannot parse config");
}

#[test]
fn malformed_register_flags_are_one_line() {
    let output = gwctl(
        &["register", "--service", "echo", "--address", "localhost"],
        &[],
    );
    assert_one_line_error(&output, "HOST:PORT");
    let output = gwctl(
        &["register", "--service", "echo", "--address", "h:99999"],
        &[],
    );
    assert_one_line_error(&output, "port");
    let output = gwctl(
        &[
            "register",
            "--service",
            "echo",
            "--address",
            "h:80",
            "--metadata",
            "novalue",
        ],
        &[],
    );
    assert_one_line_error(&output, "KEY=VALUE");
    let output = gwctl(
        &[
            "register",
            "--service",
            "echo",
            "--address",
            "h:80",
            "--ttl",
            "500ms",
        ],
        &[],
    );
    assert_one_line_error(&output, "--ttl");
    let output = gwctl(&["register", "--address", "h:80"], &[]);
    assert_one_line_error(&output, "--service");
}

#[test]
fn unreachable_control_plane_is_one_line() {
    let output = gwctl(
        &["--control-plane", "http://127.0.0.1:1", "get", "services"],
        &[],
    );
    assert_one_line_error(
        &output,
        "cannot reach the control plane at http://127.0.0.1:1",
    );
}

#[test]
fn short_jwt_secret_is_refused() {
    let output = gwctl(
        &[
            "token", "issue", "--sub", "u", "--tenant", "t", "--role", "admin",
        ],
        &[("JWT_SECRET", "too-short")],
    );
    assert_one_line_error(&output, "at least 32 bytes");
    let output = gwctl(
        &[
            "token", "issue", "--sub", "u", "--tenant", "t", "--role", "admin",
        ],
        &[],
    );
    assert_one_line_error(&output, "JWT_SECRET is not set");
}

#[test]
fn issued_token_carries_the_claims() {
    let secret = "a-development-secret-of-32-bytes-at-least";
    let output = gwctl(
        &[
            "token",
            "issue",
            "--sub",
            "user-7",
            "--tenant",
            "tenant-3",
            "--role",
            "venue-manager",
            "--ttl",
            "10m",
        ],
        &[("JWT_SECRET", secret)],
    );
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&["tickettoken"]);
    validation.set_audience(&["tickettoken-platform"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .expect("the token verifies with the secret")
    .claims;
    assert_eq!(claims["sub"], "user-7");
    assert_eq!(claims["tenant_id"], "tenant-3");
    assert_eq!(claims["role"], "venue-manager");
    assert_eq!(claims["type"], "access");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 600);

    // Issuer and audience follow JWT_ISSUER / JWT_AUDIENCE.
    let output = gwctl(
        &[
            "token", "issue", "--sub", "u", "--tenant", "t", "--role", "customer", "-o", "json",
        ],
        &[
            ("JWT_SECRET", secret),
            ("JWT_ISSUER", "me"),
            ("JWT_AUDIENCE", "them"),
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&["me"]);
    validation.set_audience(&["them"]);
    jsonwebtoken::decode::<serde_json::Value>(
        printed["token"].as_str().expect("token field"),
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .expect("issuer and audience from the environment");
}

#[test]
fn unknown_role_is_refused() {
    let output = gwctl(
        &[
            "token", "issue", "--sub", "u", "--tenant", "t", "--role", "root",
        ],
        &[("JWT_SECRET", "a-development-secret-of-32-bytes-at-least")],
    );
    assert_one_line_error(&output, "possible values");
}

#[test]
fn config_from_standard_input_is_validated() {
    use std::io::Write;
    let mut child = Command::new(GWCTL)
        .args(["apply", "-f", "-"])
        .env_remove("GW_CONTROL_PLANE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gwctl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"version: 2\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_one_line_error(&output, "version: must be 1");
}

#[test]
fn service_filter_only_applies_to_instances() {
    let output = gwctl(&["get", "routes", "--service", "echo"], &[]);
    assert_one_line_error(&output, "--service only applies");
}

/// The bash script completes verbs and flags in a real bash.
#[test]
fn bash_completion_completes_verbs_and_flags() {
    let output = gwctl(&["completion", "bash"], &[]);
    assert!(output.status.success(), "{output:?}");
    let script = std::env::temp_dir().join(format!("gwctl-completion-{}.bash", std::process::id()));
    std::fs::write(&script, &output.stdout).unwrap();
    let complete = |words: &str| -> String {
        let program = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             _gwctl gwctl \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             echo \"${{COMPREPLY[*]}}\"",
            script.display()
        );
        let out = Command::new("bash")
            .args(["-c", &program])
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(complete("gwctl dr"), "drain");
    assert!(
        complete("gwctl drain --").contains("--wait"),
        "{}",
        complete("gwctl drain --")
    );
    assert_eq!(complete("gwctl completion f"), "fish");
    for shell in ["zsh", "fish"] {
        let output = gwctl(&["completion", shell], &[]);
        assert!(output.status.success(), "{shell}: {output:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("apply"),
            "{shell}"
        );
    }
    let output = gwctl(&["completion", "tcsh"], &[]);
    assert_one_line_error(&output, "tcsh");
    let _ = std::fs::remove_file(script);
}

/// `gwctl dev` prints the JWT secret its data plane verifies with, and a
/// token issued with it by `gwctl token issue` passes an `auth` route.
#[test]
fn dev_prints_a_jwt_secret_that_token_issue_signs_with() {
    use std::io::{BufRead, BufReader, Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut command = Command::new(GWCTL);
    command.args(["dev", "--listen", &listen]);
    for key in SCRUBBED {
        command.env_remove(key);
    }
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("gwctl dev starts");
    let mut secret = None;
    let mut banner = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if let Some(value) = line.trim().strip_prefix("export JWT_SECRET=") {
            secret = Some(value.to_string());
        }
        if line.contains("Ctrl-C stops everything") {
            break;
        }
    }
    let get_me = |token: Option<&str>| -> String {
        let mut stream = std::net::TcpStream::connect(&listen).unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            stream,
            "GET /me HTTP/1.1\r\nHost: dev\r\nConnection: close\r\n{auth}\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    let without = get_me(None);
    let token_output = secret.as_deref().map(|secret| {
        gwctl(
            &[
                "token", "issue", "--sub", "user-1", "--tenant", "tenant-1", "--role", "customer",
            ],
            &[("JWT_SECRET", secret)],
        )
    });
    let with = token_output.as_ref().map(|output| {
        let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
        get_me(Some(&token))
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let secret = secret.unwrap_or_else(|| panic!("no JWT_SECRET in the banner:\n{banner}"));
    assert_eq!(secret.len(), 64);
    assert!(without.starts_with("HTTP/1.1 401"), "{without}");
    let output = token_output.unwrap();
    assert!(output.status.success(), "{output:?}");
    let with = with.unwrap();
    assert!(with.starts_with("HTTP/1.1 200"), "{with}");
    assert!(
        with.contains("user-1"),
        "the upstream saw the identity: {with}"
    );
}
