//! One deadline per request: fixed when the request arrives from the
//! timeout in force (per-endpoint override, else the route's, else the
//! service's), shortened by a smaller budget the caller sent in
//! [`DEADLINE_HEADER`]. Every attempt gets what remains, no attempt starts
//! after it, and what remains is sent upstream in [`DEADLINE_HEADER`] so the
//! service can honour it.

use gateway_common::config::EndpointPattern;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// Milliseconds left before the gateway gives up on the request; sent on
/// every upstream request, and read (when smaller) from the client's.
pub const DEADLINE_HEADER: HeaderName = HeaderName::from_static("x-request-deadline-ms");

/// When a request must be answered by.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    /// The deadline of a request that arrived at `start` with `timeout` in
    /// force and the client's `headers`.
    pub fn new(start: Instant, timeout: Duration, headers: &HeaderMap) -> Self {
        let budget = match headers.get(&DEADLINE_HEADER).and_then(parse_ms) {
            Some(asked) if asked < timeout => asked,
            _ => timeout,
        };
        Self {
            at: start + budget,
            budget,
        }
    }

    /// The instant it falls.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// The whole budget the request was given.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Time left.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether it has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// `remaining` as a header value in whole milliseconds (at least 1 while
/// any time is left).
pub fn header_value(remaining: Duration) -> HeaderValue {
    let ms = remaining.as_millis().min(u128::from(u64::MAX)) as u64;
    let ms = if ms == 0 && !remaining.is_zero() {
        1
    } else {
        ms
    };
    HeaderValue::from(ms)
}

fn parse_ms(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_millis)
}

/// A service's per-endpoint timeouts, matched on method and the path the
/// service receives.
#[derive(Debug, Default)]
pub struct EndpointTimeouts {
    entries: Vec<(Method, EndpointPattern, Duration)>,
}

impl EndpointTimeouts {
    /// From the config's `endpoint_timeouts` (keys validated already;
    /// unparsable ones are skipped).
    pub fn new(config: &BTreeMap<String, Duration>) -> Self {
        let mut entries: Vec<_> = config
            .iter()
            .filter_map(|(key, timeout)| {
                let pattern = EndpointPattern::parse(key).ok()?;
                let method = Method::from_bytes(pattern.method.as_bytes()).ok()?;
                Some((method, pattern, *timeout))
            })
            .collect();
        // More literal segments first, so the most specific key wins.
        entries.sort_by_key(|(_, p, _)| {
            std::cmp::Reverse(
                p.segments
                    .iter()
                    .filter(|s| matches!(s, gateway_common::config::EndpointSegment::Literal(_)))
                    .count(),
            )
        });
        Self { entries }
    }

    /// Whether there are none (the common case: no lookup per request).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The timeout of `method path`, if one is configured.
    pub fn lookup(&self, method: &Method, path: &str) -> Option<Duration> {
        self.entries
            .iter()
            .find(|(m, p, _)| m == method && p.matches(m.as_str(), path))
            .map(|(_, _, t)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_client_may_shorten_the_budget_but_not_extend_it() {
        let start = Instant::now();
        let mut headers = HeaderMap::new();
        let d = Deadline::new(start, Duration::from_secs(5), &headers);
        assert_eq!(d.budget(), Duration::from_secs(5));
        headers.insert(DEADLINE_HEADER, HeaderValue::from_static("1500"));
        assert_eq!(
            Deadline::new(start, Duration::from_secs(5), &headers).budget(),
            Duration::from_millis(1500)
        );
        headers.insert(DEADLINE_HEADER, HeaderValue::from_static("90000"));
        assert_eq!(
            Deadline::new(start, Duration::from_secs(5), &headers).budget(),
            Duration::from_secs(5)
        );
        headers.insert(DEADLINE_HEADER, HeaderValue::from_static("soon"));
        assert_eq!(
            Deadline::new(start, Duration::from_secs(5), &headers).budget(),
            Duration::from_secs(5)
        );
        tokio::time::advance(Duration::from_millis(4200)).await;
        assert_eq!(d.remaining(), Duration::from_millis(800));
        assert!(!d.expired());
        tokio::time::advance(Duration::from_millis(800)).await;
        assert!(d.expired());
        assert_eq!(d.remaining(), Duration::ZERO);
    }

    #[test]
    fn header_values_are_whole_milliseconds() {
        assert_eq!(header_value(Duration::from_micros(1_500_900)), "1500");
        assert_eq!(header_value(Duration::from_micros(10)), "1");
        assert_eq!(header_value(Duration::ZERO), "0");
    }

    #[test]
    fn the_most_specific_endpoint_wins() {
        let config: BTreeMap<String, Duration> = [
            ("POST /payments/{id}".to_string(), Duration::from_secs(2)),
            ("POST /payments/refunds".to_string(), Duration::from_secs(9)),
            ("GET /reports/*".to_string(), Duration::from_secs(60)),
        ]
        .into_iter()
        .collect();
        let t = EndpointTimeouts::new(&config);
        assert_eq!(
            t.lookup(&Method::POST, "/payments/refunds"),
            Some(Duration::from_secs(9))
        );
        assert_eq!(
            t.lookup(&Method::POST, "/payments/7"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            t.lookup(&Method::GET, "/reports/2026/q1"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(t.lookup(&Method::GET, "/payments/7"), None);
    }
}
