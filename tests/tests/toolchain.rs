//! The workspace's `rust-version` is one the locked dependencies build
//! with: none of them asks for a newer compiler than the one it claims.

use serde_json::Value;
use std::process::Command;

/// `1.88` or `1.88.0` as comparable numbers.
fn version(text: &str) -> Vec<u64> {
    let mut parts: Vec<u64> = text.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    parts.resize(3, 0);
    parts
}

/// The compiler's host target, e.g. `x86_64-unknown-linux-gnu`.
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .expect("rustc -vV names its host")
}

#[test]
fn rust_version_covers_every_locked_dependency() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    // The dependencies built here: the host's. Other platforms' crates (e.g.
    // Windows-only ones) need not be in the local registry cache.
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host_triple()])
        .current_dir(root)
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "{output:?}");
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let members: Vec<&str> = metadata["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let packages = metadata["packages"].as_array().unwrap();
    let (ours, theirs): (Vec<&Value>, Vec<&Value>) = packages
        .iter()
        .partition(|p| members.contains(&p["id"].as_str().unwrap_or("")));
    let claimed = ours
        .iter()
        .map(|p| {
            p["rust_version"]
                .as_str()
                .unwrap_or_else(|| panic!("{} claims no rust-version", p["name"]))
        })
        .map(version)
        .min()
        .expect("workspace members");
    let too_new: Vec<String> = theirs
        .iter()
        .filter_map(|p| {
            let needed = p["rust_version"].as_str()?;
            (version(needed) > claimed)
                .then(|| format!("{} {} needs {needed}", p["name"], p["version"]))
        })
        .collect();
    assert!(
        too_new.is_empty(),
        "rust-version {claimed:?} is older than what these need: {too_new:?}"
    );
}
