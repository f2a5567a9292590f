//! `gwctl diff -f FILE`: what `apply` would change, as `kubectl diff` shows
//! it: a unified diff of the control plane's config against the file, both
//! as the canonical YAML of the config model (defaults filled in, so only
//! real differences show).

use super::apply::read_document;
use super::context::{emit, Context};
use super::get::{config_document, versioned_config};
use crate::cli::DiffArgs;
use anyhow::Context as _;
use gateway_common::GatewayConfig;

/// A difference was found: exit code 1, after the diff is printed.
#[derive(Debug, thiserror::Error)]
#[error("the file differs from the control plane's config")]
pub struct Differs;

/// Prints the diff; `Err(Differs)` when there is one.
pub async fn run(ctx: &Context, args: DiffArgs) -> anyhow::Result<()> {
    let document = read_document(&args.file)?;
    let wanted =
        GatewayConfig::load(&document).with_context(|| format!("{}", args.file.display()))?;
    let cp = ctx.connect().await?;
    let (current, version) = versioned_config(&cp).await?;
    let diff = unified(
        &config_document(&current)?,
        &config_document(&wanted)?,
        &format!("control plane (version {version})"),
        &args.file.display().to_string(),
    );
    match diff {
        None => Ok(()),
        Some(diff) => {
            emit(&diff)?;
            Err(Differs.into())
        }
    }
}

/// The unified diff turning `old` into `new`, or `None` when they are equal.
fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> Option<String> {
    if old == new {
        return None;
    }
    Some(
        similar::TextDiff::from_lines(old, new)
            .unified_diff()
            .context_radius(3)
            .header(old_name, new_name)
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_documents_have_no_diff_and_changes_show_as_lines() {
        assert_eq!(unified("a: 1\n", "a: 1\n", "cp", "file"), None);
        let diff = unified("a: 1\nb: 2\n", "a: 1\nb: 3\n", "cp", "file").unwrap();
        assert!(diff.starts_with("--- cp\n+++ file\n"), "{diff}");
        assert!(diff.contains("-b: 2\n+b: 3\n"), "{diff}");
    }
}
