//! Lease expiry, run by the leader only: instances whose lease lapsed are
//! removed (one version per sweep), and data planes gone for long are
//! forgotten.

use crate::metrics::Metrics;
use crate::store::{unix_ms, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most instances removed by one store call.
const BATCH: usize = 1_000;
/// How often forgotten data planes are looked for.
const DATAPLANE_PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Disconnected data planes are listed for this long.
pub const DATAPLANE_RETENTION: Duration = Duration::from_secs(3600);

/// Removes lapsed leases every `interval` until `cancel` fires.
pub async fn sweep(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        expire_due(store.as_ref(), &metrics).await;
        if last_prune.elapsed() >= DATAPLANE_PRUNE_EVERY {
            prune_dataplanes(store.as_ref()).await;
            last_prune = tokio::time::Instant::now();
        }
    }
}

async fn expire_due(store: &dyn Store, metrics: &Metrics) {
    loop {
        match store.expire_leases(BATCH).await {
            Ok(expired) => {
                if !expired.is_empty() {
                    metrics.lease_expiries.inc_by(expired.len() as u64);
                    tracing::info!(count = expired.len(), ids = ?expired.iter().take(10).collect::<Vec<_>>(), "leases expired");
                }
                if expired.len() < BATCH {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot expire leases");
                return;
            }
        }
    }
}

async fn prune_dataplanes(store: &dyn Store) {
    let Ok(records) = store.list_dataplanes().await else {
        return;
    };
    let cutoff = unix_ms().saturating_sub(DATAPLANE_RETENTION.as_millis() as u64);
    let stale: Vec<String> = records
        .into_iter()
        .filter(|r| r.last_seen_unix_ms < cutoff)
        .map(|r| r.node_id)
        .collect();
    if !stale.is_empty() {
        tracing::info!(
            count = stale.len(),
            "forgetting data planes not seen for an hour"
        );
        if let Err(e) = store.forget_dataplanes(&stale).await {
            tracing::debug!(error = %e, "cannot forget data planes");
        }
    }
}
