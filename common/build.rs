//! Sets `GATEWAY_BUILD_COMMIT`, the commit `*_build_info` reports: the
//! variable of the same name when the build sets it (a container build, whose
//! context has no `.git`), else `git rev-parse --short HEAD`, else `unknown`.
//! Never fails the build.

use std::path::Path;
use std::process::Command;

const VARIABLE: &str = "GATEWAY_BUILD_COMMIT";

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Re-runs this script when HEAD moves: HEAD itself, its reflog, the branch
/// it points at and the packed refs (only files that exist, or cargo re-runs
/// it always).
fn watch_head() {
    let mut files = vec![
        "HEAD".to_string(),
        "logs/HEAD".to_string(),
        "packed-refs".to_string(),
    ];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        files.push(branch);
    }
    for file in files {
        if let Some(path) = git(&["rev-parse", "--git-path", &file]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={VARIABLE}");
    let given = std::env::var(VARIABLE)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let commit = match given {
        Some(commit) => commit,
        None => {
            watch_head();
            git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo:rustc-env={VARIABLE}={commit}");
}
