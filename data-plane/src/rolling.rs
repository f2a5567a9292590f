//! Lock-free rolling counters over time buckets, shared by the circuit
//! breaker (successes and failures) and the retry budget (requests and
//! retries), and the data plane's millisecond clock.
//!
//! Every call takes the current time as an argument (milliseconds from
//! [`now_ms`]) so that tests drive the clock themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the first call in this process (monotonic).
pub fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = BASE.get_or_init(Instant::now);
    // Starts at 1 so that 0 can mean "never" in atomics.
    u64::try_from(base.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Epoch of a bucket that holds nothing.
const EMPTY: u64 = u64::MAX;

#[derive(Debug)]
struct Bucket<const K: usize> {
    epoch: AtomicU64,
    counts: [AtomicU64; K],
}

/// `K` counters summed over a window of `buckets` time buckets.
///
/// A bucket is reused when time moves past it: the first writer of a new
/// period resets it. Concurrent writers racing with that reset may lose a
/// count or two, which is fine for the statistics it feeds.
#[derive(Debug)]
pub struct RollingWindow<const K: usize> {
    buckets: Box<[Bucket<K>]>,
    bucket_ms: u64,
}

impl<const K: usize> RollingWindow<K> {
    /// A window of `window_ms` divided into `buckets` buckets (each at least 1 ms).
    pub fn new(window_ms: u64, buckets: u32) -> Self {
        let n = buckets.max(1) as u64;
        let bucket_ms = (window_ms / n).max(1);
        Self {
            buckets: (0..n)
                .map(|_| Bucket {
                    epoch: AtomicU64::new(EMPTY),
                    counts: std::array::from_fn(|_| AtomicU64::new(0)),
                })
                .collect(),
            bucket_ms,
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    /// Adds `n` to counter `slot` at time `now`.
    pub fn add(&self, now: u64, slot: usize, n: u64) {
        let epoch = now / self.bucket_ms;
        let bucket = &self.buckets[(epoch % self.len()) as usize];
        let seen = bucket.epoch.load(Ordering::Acquire);
        if seen != epoch
            && bucket
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for count in &bucket.counts {
                count.store(0, Ordering::Relaxed);
            }
        }
        if let Some(count) = bucket.counts.get(slot) {
            count.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The sums of the counters over the window ending at `now`.
    pub fn totals(&self, now: u64) -> [u64; K] {
        let epoch = now / self.bucket_ms;
        let mut sums = [0u64; K];
        for bucket in self.buckets.iter() {
            let e = bucket.epoch.load(Ordering::Acquire);
            if e == EMPTY || e > epoch || epoch - e >= self.len() {
                continue;
            }
            for (sum, count) in sums.iter_mut().zip(&bucket.counts) {
                *sum += count.load(Ordering::Relaxed);
            }
        }
        sums
    }

    /// Forgets everything.
    pub fn reset(&self) {
        for bucket in self.buckets.iter() {
            bucket.epoch.store(EMPTY, Ordering::Release);
            for count in &bucket.counts {
                count.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_roll_out_of_the_window() {
        let w = RollingWindow::<2>::new(1000, 10);
        w.add(5, 0, 1);
        w.add(150, 1, 2);
        w.add(999, 0, 1);
        assert_eq!(w.totals(999), [2, 2]);
        // At 1050 the bucket of t=5 (0-99) has left the window.
        assert_eq!(w.totals(1050), [1, 2]);
        // Writing at 1120 reuses the bucket of 120-ish and resets it.
        w.add(1150, 0, 5);
        assert_eq!(w.totals(1150), [6, 0]);
        assert_eq!(w.totals(5000), [0, 0]);
        w.reset();
        assert_eq!(w.totals(1150), [0, 0]);
    }

    #[test]
    fn the_clock_starts_above_zero_and_moves_forward() {
        let a = now_ms();
        assert!(a >= 1);
        assert!(now_ms() >= a);
    }
}
