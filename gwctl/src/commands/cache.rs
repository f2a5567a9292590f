//! `gwctl cache invalidate PATTERN` and `gwctl cache stats`.

use super::context::{emit, Context};
use crate::cli::{CacheAction, CacheArgs};
use crate::client::Api;
use crate::output::{structured, Format, Table};
use gateway_common::cache::CachePattern;
use gateway_proto::v1 as pb;
use serde::Serialize;

/// Runs `cache invalidate` or `cache stats`.
pub async fn run(ctx: &Context, args: CacheArgs) -> anyhow::Result<()> {
    match args.action {
        CacheAction::Invalidate { pattern } => invalidate(ctx, &pattern.join(" ")).await,
        CacheAction::Stats => stats(ctx).await,
    }
}

#[derive(Serialize)]
struct Invalidated {
    pattern: String,
    removed: u64,
}

async fn invalidate(ctx: &Context, pattern: &str) -> anyhow::Result<()> {
    // Checked here first, so that a typo fails before any connection.
    CachePattern::parse(pattern).map_err(|e| anyhow::anyhow!("invalid cache pattern: {e}"))?;
    let cp = ctx.connect().await?;
    let answer = cp
        .admin()
        .invalidate_cache(pb::InvalidateCacheRequest {
            pattern: pattern.to_string(),
        })
        .await
        .map_err(|s| cp.explain(Api::Admin, s))?
        .into_inner();
    let view = Invalidated {
        pattern: answer.pattern,
        removed: answer.removed,
    };
    match ctx.format {
        Format::Table => emit(&format!(
            "removed {} cached answer(s) matching {}; data planes drop their in-memory copies\n",
            view.removed, view.pattern
        )),
        format => emit(&structured(format, &view)?),
    }
}

#[derive(Serialize)]
struct Stats {
    entries: u64,
    hits: u64,
    misses: u64,
    hit_ratio: f64,
    stores: u64,
    redis_used_memory_bytes: u64,
    index_bytes: u64,
}

async fn stats(ctx: &Context) -> anyhow::Result<()> {
    let cp = ctx.connect().await?;
    let s = cp
        .admin()
        .get_cache_stats(pb::GetCacheStatsRequest {})
        .await
        .map_err(|s| cp.explain(Api::Admin, s))?
        .into_inner();
    let lookups = s.hits + s.misses;
    let view = Stats {
        entries: s.entries,
        hits: s.hits,
        misses: s.misses,
        hit_ratio: if lookups == 0 {
            0.0
        } else {
            s.hits as f64 / lookups as f64
        },
        stores: s.stores,
        redis_used_memory_bytes: s.redis_used_memory_bytes,
        index_bytes: s.index_bytes,
    };
    match ctx.format {
        Format::Table => {
            let mut table = Table::new([
                "ENTRIES",
                "HITS",
                "MISSES",
                "HIT RATIO",
                "STORES",
                "INDEX BYTES",
                "REDIS MEMORY",
            ]);
            table.row(vec![
                view.entries.to_string(),
                view.hits.to_string(),
                view.misses.to_string(),
                format!("{:.1}%", view.hit_ratio * 100.0),
                view.stores.to_string(),
                view.index_bytes.to_string(),
                view.redis_used_memory_bytes.to_string(),
            ]);
            emit(&table.render())
        }
        format => emit(&structured(format, &view)?),
    }
}
