//! `gwctl apply -f FILE [--dry-run]`.

use super::context::{emit, Context};
use crate::cli::ApplyArgs;
use crate::client::Api;
use crate::output::{structured, Format};
use anyhow::Context as _;
use gateway_common::GatewayConfig;
use gateway_proto::v1 as pb;
use serde::Serialize;
use std::io::Read;
use std::path::Path;

#[derive(Serialize)]
struct ApplyView {
    version: u64,
    unchanged: bool,
    dry_run: bool,
    changes: Vec<ChangeView>,
}

#[derive(Serialize)]
struct ChangeView {
    kind: String,
    name: String,
    action: String,
}

/// Validates the file locally, then applies it on the control plane.
pub async fn run(ctx: &Context, args: ApplyArgs) -> anyhow::Result<()> {
    let document = read_document(&args.file)?;
    GatewayConfig::load(&document).with_context(|| format!("{}", args.file.display()))?;
    let cp = ctx.connect().await?;
    let answer = cp
        .admin()
        .apply_config(pb::ApplyConfigRequest {
            document,
            dry_run: args.dry_run,
        })
        .await
        .map_err(|s| cp.explain(Api::Admin, s))?
        .into_inner();
    let view = ApplyView {
        version: answer.version,
        unchanged: answer.unchanged,
        dry_run: args.dry_run,
        changes: answer
            .changes
            .into_iter()
            .map(|c| ChangeView {
                kind: c.kind,
                name: c.name,
                action: c.action,
            })
            .collect(),
    };
    match ctx.format {
        Format::Table => emit(&render(&view)),
        format => emit(&structured(format, &view)?),
    }
}

fn render(view: &ApplyView) -> String {
    if view.unchanged {
        return format!("unchanged (version {})\n", view.version);
    }
    let mut out: String = view
        .changes
        .iter()
        .map(|c| format!("{} {} {}\n", c.kind, c.name, c.action))
        .collect();
    if view.dry_run {
        out.push_str(&format!(
            "dry run: valid, nothing written (current version {})\n",
            view.version
        ));
    } else {
        out.push_str(&format!("applied: version {}\n", view.version));
    }
    out
}

/// Reads the document at `path`, or standard input for `-`.
pub fn read_document(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut document = Vec::new();
        std::io::stdin()
            .read_to_end(&mut document)
            .context("cannot read the config from standard input")?;
        return Ok(document);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_changes_and_version() {
        let view = ApplyView {
            version: 7,
            unchanged: false,
            dry_run: false,
            changes: vec![ChangeView {
                kind: "route".into(),
                name: "echo".into(),
                action: "added".into(),
            }],
        };
        assert_eq!(render(&view), "route echo added\napplied: version 7\n");
        let unchanged = ApplyView {
            unchanged: true,
            changes: vec![],
            ..view
        };
        assert_eq!(render(&unchanged), "unchanged (version 7)\n");
    }
}
