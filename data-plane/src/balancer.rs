//! Load balancing over the routable instances of a service.
//!
//! [`Balancer`] is an enum so the per-request pick is a direct call; a new
//! strategy (least-request, random, consistent-hash) is a new variant built
//! in [`Balancer::build`] and matched in [`Balancer::pick`].

use crate::upstream::ConnPool;
use gateway_common::config::Strategy;
use http::uri::Authority;
use http::HeaderValue;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Longest precomputed round-robin schedule; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 16_384;

/// Live counters of one instance; shared by successive snapshots so that
/// in-flight counts survive config updates.
#[derive(Debug, Default)]
pub struct InstanceLoad {
    in_flight: AtomicU64,
}

impl InstanceLoad {
    /// Requests currently sent to the instance.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard { load: self.clone() }
    }
}

/// Holds one in-flight request against an instance; releases it on drop.
#[derive(Debug)]
pub struct InFlightGuard {
    load: Arc<InstanceLoad>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A routable instance as the proxy needs it.
#[derive(Debug)]
pub struct Endpoint {
    /// Instance id.
    pub id: Arc<str>,
    /// `host:port`, validated.
    pub authority: Authority,
    /// The same as a `Host` header value, made once.
    pub host_header: HeaderValue,
    /// Relative weight, at least 1.
    pub weight: u32,
    /// Live counters.
    pub load: Arc<InstanceLoad>,
    /// Keep-alive connections to the instance.
    pub pool: Arc<ConnPool>,
}

/// Picks an instance for each request.
#[derive(Debug)]
pub enum Balancer {
    /// No routable instance.
    Empty,
    /// Smooth weighted round-robin.
    RoundRobin(WeightedRoundRobin),
}

impl Balancer {
    /// A balancer over `endpoints` for `strategy`.
    ///
    /// Strategies other than round-robin are not implemented yet and use
    /// round-robin (the snapshot builder logs this once per service).
    pub fn build(_strategy: Strategy, endpoints: Vec<Arc<Endpoint>>) -> Self {
        if endpoints.is_empty() {
            Balancer::Empty
        } else {
            Balancer::RoundRobin(WeightedRoundRobin::new(endpoints))
        }
    }

    /// The instance for the next request, if any is routable.
    #[inline]
    pub fn pick(&self) -> Option<&Arc<Endpoint>> {
        match self {
            Balancer::Empty => None,
            Balancer::RoundRobin(rr) => Some(rr.next()),
        }
    }

    /// The endpoints this balancer spreads requests over.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        match self {
            Balancer::Empty => &[],
            Balancer::RoundRobin(rr) => &rr.endpoints,
        }
    }
}

/// Smooth weighted round-robin (as in nginx), precomputed into one
/// interleaved schedule and walked with an atomic cursor: weights 5,1,1 give
/// `a a b a c a a` rather than `a a a a a b c`.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    endpoints: Vec<Arc<Endpoint>>,
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
}

impl WeightedRoundRobin {
    /// Builds the schedule; `endpoints` must not be empty.
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        let weights = scaled_weights(&endpoints);
        let schedule = smooth_schedule(&weights);
        // Start at a random point so that frequent rebuilds do not favour
        // the first instance.
        let start = rand::random::<u32>() as usize % schedule.len().max(1);
        Self {
            endpoints,
            schedule,
            cursor: AtomicUsize::new(start),
        }
    }

    #[inline]
    fn next(&self) -> &Arc<Endpoint> {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        let slot = self.schedule[n % self.schedule.len()] as usize;
        &self.endpoints[slot]
    }
}

/// Weights divided by their gcd, then scaled down if their sum is too large
/// for a precomputed schedule (every instance keeps at least 1).
fn scaled_weights(endpoints: &[Arc<Endpoint>]) -> Vec<u64> {
    let raw: Vec<u64> = endpoints
        .iter()
        .map(|e| u64::from(e.weight.max(1)))
        .collect();
    let g = raw.iter().copied().fold(0, gcd).max(1);
    let mut weights: Vec<u64> = raw.iter().map(|w| w / g).collect();
    let sum: u64 = weights.iter().sum();
    if sum > MAX_SCHEDULE {
        for w in &mut weights {
            *w = (*w * MAX_SCHEDULE / sum).max(1);
        }
    }
    weights
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One full cycle of smooth weighted round-robin over `weights`.
fn smooth_schedule(weights: &[u64]) -> Box<[u32]> {
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str, weight: u32) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            id: id.into(),
            authority: Authority::from_static("127.0.0.1:1"),
            host_header: HeaderValue::from_static("127.0.0.1:1"),
            weight,
            load: Arc::default(),
            pool: Arc::new(ConnPool::new("127.0.0.1:1".into())),
        })
    }

    #[test]
    fn schedule_is_smooth() {
        let order: Vec<u32> = smooth_schedule(&[5, 1, 1]).into_vec();
        assert_eq!(order, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn distribution_follows_weights() {
        let b = Balancer::build(
            Strategy::RoundRobin,
            vec![endpoint("a", 3), endpoint("b", 1)],
        );
        let mut counts = std::collections::HashMap::new();
        for _ in 0..400 {
            *counts.entry(b.pick().unwrap().id.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts[&Arc::<str>::from("a")], 300);
        assert_eq!(counts[&Arc::<str>::from("b")], 100);
    }

    #[test]
    fn huge_weight_sums_are_scaled() {
        let endpoints: Vec<_> = (0..100)
            .map(|i| endpoint(&i.to_string(), if i == 0 { 1000 } else { 999 }))
            .collect();
        let weights = scaled_weights(&endpoints);
        assert!(weights.iter().sum::<u64>() <= MAX_SCHEDULE);
        assert!(weights.iter().all(|&w| w >= 1));
    }

    #[test]
    fn empty_balancer_picks_nothing() {
        assert!(Balancer::build(Strategy::RoundRobin, vec![])
            .pick()
            .is_none());
    }

    #[test]
    fn guard_releases_the_count() {
        let load = Arc::new(InstanceLoad::default());
        let g1 = load.begin();
        let g2 = load.begin();
        assert_eq!(load.in_flight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(load.in_flight(), 0);
    }
}
