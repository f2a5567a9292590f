//! When this replica's view applied each recent version, so that a data
//! plane's ACK can be timed against it (`control_plane_config_propagation_seconds`).
//!
//! The start is the moment the view applied the version from the store's
//! change log (a blocking read, so milliseconds after the commit), measured
//! on this replica's monotonic clock: no clock of another host is compared.
//! Versions the view loaded with a snapshot (at start, or after a reload)
//! have no time and are not measured.

use std::collections::VecDeque;
use std::time::Instant;

/// Versions whose apply time is kept (a data plane further behind is not
/// measured).
const KEPT: usize = 4096;

/// Apply times of the most recent consecutive versions.
#[derive(Debug, Default)]
pub struct AppliedTimes {
    times: VecDeque<(u64, Instant)>,
}

impl AppliedTimes {
    /// Records that `version` was applied at `at`. A version that does not
    /// follow the last one recorded starts the record afresh.
    pub fn record(&mut self, version: u64, at: Instant) {
        if self
            .times
            .back()
            .is_some_and(|(last, _)| *last + 1 != version)
        {
            self.times.clear();
        }
        if self.times.len() == KEPT {
            self.times.pop_front();
        }
        self.times.push_back((version, at));
    }

    /// Forgets everything (the view loaded a snapshot).
    pub fn clear(&mut self) {
        self.times.clear();
    }

    /// When `version` was applied, if it is still recorded.
    pub fn get(&self, version: u64) -> Option<Instant> {
        let first = self.times.front()?.0;
        let index = usize::try_from(version.checked_sub(first)?).ok()?;
        self.times
            .get(index)
            .filter(|(v, _)| *v == version)
            .map(|(_, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_found_by_version_within_bounds() {
        let start = Instant::now();
        let mut times = AppliedTimes::default();
        assert_eq!(times.get(1), None);
        for v in 5..10 {
            times.record(v, start + Duration::from_millis(v));
        }
        assert_eq!(times.get(4), None);
        assert_eq!(times.get(5), Some(start + Duration::from_millis(5)));
        assert_eq!(times.get(9), Some(start + Duration::from_millis(9)));
        assert_eq!(times.get(10), None);
        // A jump (the store's history was replaced) forgets the old times.
        times.record(20, start);
        assert_eq!(times.get(9), None);
        assert_eq!(times.get(20), Some(start));
        times.clear();
        assert_eq!(times.get(20), None);
    }

    #[test]
    fn only_the_most_recent_versions_are_kept() {
        let start = Instant::now();
        let mut times = AppliedTimes::default();
        for v in 1..=(KEPT as u64 + 10) {
            times.record(v, start);
        }
        assert_eq!(times.get(10), None);
        assert_eq!(times.get(11), Some(start));
        assert_eq!(times.get(KEPT as u64 + 10), Some(start));
    }
}
