//! Leader election through the store's lock: only the holder runs the
//! health checker and the lease sweeper.
//!
//! The lock is taken with `SET NX PX ttl`, renewed every third of the TTL
//! (compare-and-pexpire) and released at shutdown. A replica that cannot
//! renew for two thirds of the TTL steps down before its lock can lapse,
//! so two replicas never act as leader for long at the same time.

use crate::health::HealthChecker;
use crate::leases;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::view::View;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the leader runs.
pub struct LeaderDuties {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The replica's view (the checker's instances).
    pub view: Arc<View>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// This replica's id.
    pub replica: String,
    /// Lifetime of the lock.
    pub ttl: Duration,
    /// Interval of the lease sweeper.
    pub lease_sweep_interval: Duration,
}

struct Term {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    renewed: Instant,
}

impl LeaderDuties {
    fn start_term(&self) -> Term {
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let checker =
            HealthChecker::new(self.view.clone(), self.store.clone(), self.metrics.clone());
        tasks.spawn(checker.run(cancel.clone()));
        tasks.spawn(leases::sweep(
            self.store.clone(),
            self.metrics.clone(),
            self.lease_sweep_interval,
            cancel.clone(),
        ));
        self.metrics.leader.set(1);
        tracing::info!(replica = %self.replica, "became leader: running health checks and lease expiry");
        Term {
            cancel,
            tasks,
            renewed: Instant::now(),
        }
    }

    async fn end_term(&self, mut term: Term, why: &str) {
        term.cancel.cancel();
        while term.tasks.join_next().await.is_some() {}
        self.metrics.leader.set(0);
        tracing::info!(replica = %self.replica, why, "stopped being leader");
    }

    /// Campaigns for the lock until `cancel` fires; `leading` tells whether
    /// this replica leads. The lock is released on the way out.
    pub async fn run(
        self,
        leading: watch::Sender<bool>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let period = self.ttl / 3;
        let give_up_after = self.ttl * 2 / 3;
        let mut term: Option<Term> = None;
        loop {
            term = match term {
                None => match self.store.acquire_leader(&self.replica, self.ttl).await {
                    Ok(true) => Some(self.start_term()),
                    Ok(false) => None,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot campaign for leadership");
                        None
                    }
                },
                Some(mut current) => match self.store.renew_leader(&self.replica, self.ttl).await {
                    Ok(true) => {
                        current.renewed = Instant::now();
                        Some(current)
                    }
                    Ok(false) => {
                        self.end_term(current, "lock held by another replica").await;
                        None
                    }
                    Err(e) if current.renewed.elapsed() >= give_up_after => {
                        self.end_term(current, "cannot renew the lock").await;
                        tracing::warn!(error = %e, "leadership lost: the store does not answer");
                        None
                    }
                    Err(_) => Some(current),
                },
            };
            leading.send_replace(term.is_some());
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(period) => {}
            }
        }
        if let Some(current) = term {
            self.end_term(current, "shutting down").await;
            if let Err(e) = self.store.release_leader(&self.replica).await {
                tracing::warn!(error = %e, "cannot release the leader lock; it lapses on its own");
            }
        }
        leading.send_replace(false);
        Ok(())
    }
}
