//! The config of aggregate routes: one client request fanned out to several
//! services, their JSON answers reshaped and merged into one object.
//!
//! An aggregate is a route with an `aggregate:` block instead of a
//! `service:`, so it shares the route table (conflicts are found like any
//! other route's) and the route policies (auth, CORS, timeout).

use crate::duration;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Most sources an aggregate may have.
pub const MAX_SOURCES: usize = 32;

/// Longest time a source may be given.
pub const MAX_SOURCE_TIMEOUT: Duration = Duration::from_secs(60);

/// Key of the metadata object in an aggregate's answer.
pub const METADATA_KEY: &str = "_metadata";

/// What an aggregate route calls and how it shapes the answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// The calls made for each request, all at once.
    pub sources: Vec<SourceConfig>,
}

/// One call of an aggregate route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Key of this source's data in the answer (`[A-Za-z0-9_]{1,64}`).
    pub name: String,
    /// Service called.
    pub service: String,
    /// Upstream path and optional query, with the route's `{param}`s
    /// filled in: `/api/v1/events/{id}/availability`.
    pub path: String,
    /// Append the client's query string to the path (after the template's
    /// own query, if any).
    #[serde(default, skip_serializing_if = "is_false")]
    pub forward_query: bool,
    /// A failed required source fails the whole request (502); a failed
    /// optional one is replaced by its `fallback`.
    #[serde(default)]
    pub required: bool,
    /// Time allowed for this source's whole answer (capped by the
    /// request's deadline).
    #[serde(default = "default_source_timeout", with = "duration")]
    pub timeout: Duration,
    /// Data used when an optional source fails or times out (default null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<serde_json::Value>,
    /// Keeps only these fields, renamed: output key -> input field
    /// (dotted for nested fields: `venue.name`). Applied to each element
    /// of a list. A missing field becomes null.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub select: BTreeMap<String, String>,
    /// Splits a list by a timestamp field relative to the time of the
    /// request (after `select`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_by_time: Option<SplitByTime>,
}

/// Splits a list into named lists by whether a timestamp is after or not
/// after the time of the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitByTime {
    /// The element field holding the timestamp (RFC 3339, or Unix
    /// milliseconds), dotted for nested fields.
    pub field: String,
    /// Output key -> which elements it takes.
    pub into: BTreeMap<String, TimeSide>,
}

/// Which elements a split output takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeSide {
    /// Timestamps strictly after now.
    AfterNow,
    /// Timestamps at or before now.
    BeforeNow,
}

fn default_source_timeout() -> Duration {
    Duration::from_secs(2)
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Whether `name` may key data in an answer: `[A-Za-z0-9_]{1,64}`, not
/// the metadata key.
fn is_valid_key(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name != METADATA_KEY
}

/// Whether `path` is a dotted field path: non-empty parts without spaces.
fn is_valid_field(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 256
        && path
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b > b' ' && b != 0x7f))
}

/// The `{param}` names of a path template, or why it is not one.
pub fn template_params(template: &str) -> Result<Vec<&str>, String> {
    let (path, query) = match template.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (template, None),
    };
    if !path.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if template.len() > 2048 {
        return Err("must be at most 2048 bytes".into());
    }
    if template
        .bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'#' || b >= 0x80)
    {
        return Err("must not hold spaces, controls, '#' or non-ASCII".into());
    }
    if query.is_some_and(|q| q.contains(['{', '}'])) {
        return Err("parameters may only appear in the path, not the query".into());
    }
    let mut params = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            return Err("has an unclosed '{'".into());
        };
        let name = &rest[open + 1..close];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "parameter {{{name}}} must be {{name}} with letters, digits or _"
            ));
        }
        params.push(name);
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err("has a '}' without '{'".into());
    }
    Ok(params)
}

impl AggregateConfig {
    /// Checks the aggregate of a route matching `route_params`; `services`
    /// are the names the config defines.
    pub fn validate(
        &self,
        at: &str,
        route_params: &[&str],
        services: &BTreeSet<&str>,
        errors: &mut Vec<String>,
    ) {
        if self.sources.is_empty() || self.sources.len() > MAX_SOURCES {
            errors.push(format!(
                "{at}.sources: must have between 1 and {MAX_SOURCES} sources"
            ));
        }
        let mut names = BTreeSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let at = format!("{at}.sources[{i}]");
            if !names.insert(source.name.as_str()) {
                errors.push(format!("{at}.name: duplicate source {:?}", source.name));
            }
            source.validate(&at, route_params, services, errors);
        }
    }
}

impl SourceConfig {
    fn validate(
        &self,
        at: &str,
        route_params: &[&str],
        services: &BTreeSet<&str>,
        errors: &mut Vec<String>,
    ) {
        if !is_valid_key(&self.name) {
            errors.push(format!(
                "{at}.name: {:?} must be 1-64 letters, digits or _ (and not {METADATA_KEY})",
                self.name
            ));
        }
        if !services.contains(self.service.as_str()) {
            errors.push(format!("{at}.service: unknown service {:?}", self.service));
        }
        match template_params(&self.path) {
            Ok(params) => {
                for p in params {
                    if !route_params.contains(&p) {
                        errors.push(format!(
                            "{at}.path: {{{p}}} is not a parameter of the route's match.path"
                        ));
                    }
                }
            }
            Err(e) => errors.push(format!("{at}.path: {:?} {e}", self.path)),
        }
        if self.timeout.is_zero() || self.timeout > MAX_SOURCE_TIMEOUT {
            errors.push(format!(
                "{at}.timeout: must be between 1ms and {}, got {}",
                duration::format(MAX_SOURCE_TIMEOUT),
                duration::format(self.timeout)
            ));
        }
        if self.required && self.fallback.is_some() {
            errors.push(format!(
                "{at}.fallback: a required source has no fallback (its failure fails the request)"
            ));
        }
        for (out, field) in &self.select {
            if !is_valid_key(out) {
                errors.push(format!(
                    "{at}.select: output key {out:?} must be 1-64 letters, digits or _"
                ));
            }
            if !is_valid_field(field) {
                errors.push(format!("{at}.select.{out}: {field:?} is not a field path"));
            }
        }
        if let Some(split) = &self.split_by_time {
            if !is_valid_field(&split.field) {
                errors.push(format!(
                    "{at}.split_by_time.field: {:?} is not a field path",
                    split.field
                ));
            }
            if split.into.is_empty() {
                errors.push(format!(
                    "{at}.split_by_time.into: must name at least one output"
                ));
            }
            for out in split.into.keys() {
                if !is_valid_key(out) {
                    errors.push(format!(
                        "{at}.split_by_time.into: output key {out:?} must be 1-64 letters, digits or _"
                    ));
                }
            }
        }
    }
}

/// The `{param}` names of a route's exact match path.
pub fn route_params(path: Option<&str>) -> Vec<&str> {
    path.map(|p| {
        p.split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_their_params() {
        assert_eq!(
            template_params("/users/{id}/tickets?limit=10").unwrap(),
            ["id"]
        );
        assert_eq!(template_params("/a/{x}-{y}/b").unwrap(), ["x", "y"]);
        assert!(template_params("users/{id}").is_err());
        assert!(template_params("/users/{id").is_err());
        assert!(template_params("/users/id}").is_err());
        assert!(template_params("/users/{}").is_err());
        assert!(template_params("/users/{a b}").is_err());
        assert!(template_params("/users?x={id}").is_err());
        assert!(template_params("/users/é").is_err());
    }

    #[test]
    fn route_params_come_from_the_exact_path() {
        assert_eq!(route_params(Some("/a/{id}/b/{tid}")), ["id", "tid"]);
        assert!(route_params(None).is_empty());
    }
}
