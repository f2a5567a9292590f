//! Helpers several config sections share: the request methods a config may
//! name, header-name syntax, duration range checks and the `true` default.

use crate::duration;
use std::time::Duration;

/// The request methods a config may name, upper case.
pub(super) const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// The serde default of switches that are on unless turned off.
pub(super) fn default_true() -> bool {
    true
}

/// Pushes an error at `at` unless `value` is between `min` and `max`.
pub(super) fn check_range(
    errors: &mut Vec<String>,
    at: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) {
    if value < min || value > max {
        errors.push(format!(
            "{at}: must be between {} and {}, got {}",
            duration::format(min),
            duration::format(max),
            duration::format(value)
        ));
    }
}

/// Whether `name` is a valid HTTP header name (an RFC 9110 token).
pub(super) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
