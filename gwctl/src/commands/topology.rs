//! `gwctl topology [--watch]`.

use super::context::{emit, Context};
use crate::cli::TopologyArgs;
use crate::client::Api;
use crate::output::Format;
use crate::signal::shutdown_signal;
use crate::views::TopologyView;
use gateway_proto::v1 as pb;
use std::io::IsTerminal;

/// Clears a terminal and moves the cursor home.
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

/// Shows the topology once, or keeps redrawing it with `--watch`.
pub async fn run(ctx: &Context, args: TopologyArgs) -> anyhow::Result<()> {
    let cp = ctx.connect().await?;
    if !args.watch {
        let topology = cp
            .admin()
            .get_topology(pb::TopologyRequest {})
            .await
            .map_err(|s| cp.explain(Api::Admin, s))?
            .into_inner();
        return emit(&render(ctx.format, &TopologyView::from_proto(&topology))?);
    }
    let mut stream = cp
        .admin()
        .watch_topology(pb::TopologyRequest {})
        .await
        .map_err(|s| cp.explain(Api::Admin, s))?
        .into_inner();
    let redraw = ctx.format == Format::Table && std::io::stdout().is_terminal();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut first = true;
    loop {
        let next = tokio::select! {
            next = stream.message() => next,
            () = &mut shutdown => return Ok(()),
        };
        let topology = match next {
            Ok(Some(topology)) => topology,
            Ok(None) => anyhow::bail!("the control plane at {} ended the watch", cp.url()),
            Err(status) => return Err(cp.explain(Api::Admin, status).into()),
        };
        let text = render(ctx.format, &TopologyView::from_proto(&topology))?;
        let separator = match (redraw, ctx.format, first) {
            (true, _, _) => CLEAR_SCREEN,
            (false, _, true) => "",
            (false, Format::Yaml, false) => "---\n",
            (false, Format::Json, false) => "",
            (false, Format::Table, false) => "\n",
        };
        first = false;
        emit(&format!("{separator}{text}"))?;
    }
}

fn render(format: Format, view: &TopologyView) -> anyhow::Result<String> {
    match format {
        Format::Table => Ok(view.render()),
        // One document per line, so a watch is a stream of JSON lines.
        Format::Json => Ok(serde_json::to_string(view)? + "\n"),
        Format::Yaml => Ok(serde_norway::to_string(view)?),
    }
}
