//! Aggregate routes: one GET fanned out to several services at once, their
//! JSON answers reshaped and merged into one object with `_metadata`.
//!
//! Every source goes through its service's breaker, balancer, outlier
//! detector and connection pool like a proxied request (so it counts in the
//! instance's in-flight load), within its own timeout capped by the
//! request's deadline. A failed required source fails the request (502
//! naming it); a failed optional source is replaced by its fallback.

use crate::config::routing::{parse_template, TemplatePart};
use crate::edge::errors::{iso8601, GatewayError};
use crate::headers;
use crate::ops::metrics::UpstreamErrorKind;
use crate::upstream::balancer::Endpoint;
use crate::upstream::call::{self, CallError};
use crate::upstream::deadline::{self, Deadline, DEADLINE_HEADER};
use crate::upstream::h1::response::ProxyBody;
use crate::upstream::service::Services;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use gateway_common::config::{AggregateConfig, RouteConfig, SourceConfig, TimeSide};
use http::header::{
    HeaderName, ACCEPT, ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST,
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tracing::Instrument as _;

/// Time given beyond the longest source timeout to merge the answers.
pub const MERGE_ALLOWANCE: Duration = Duration::from_millis(100);

/// Largest answer a source may send.
pub const MAX_SOURCE_BODY: usize = 8 * 1024 * 1024;

/// Request headers not sent to sources: the client's body and validators
/// describe its request, not the sources', and an encoded or partial answer
/// could not be parsed.
const NOT_FORWARDED: [HeaderName; 11] = [
    CONTENT_LENGTH,
    CONTENT_TYPE,
    ACCEPT,
    ACCEPT_ENCODING,
    EXPECT,
    RANGE,
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
];

/// An aggregate route, compiled once per config.
#[derive(Debug)]
pub struct Aggregate {
    sources: Vec<Source>,
    /// The parameter each segment of the route's exact path captures.
    segments: Vec<Option<Box<str>>>,
}

#[derive(Debug)]
struct Source {
    name: Arc<str>,
    service: Box<str>,
    template: Vec<TemplatePart>,
    forward_query: bool,
    required: bool,
    timeout: Duration,
    fallback: Value,
    select: Vec<(String, Vec<String>)>,
    split: Option<Split>,
}

#[derive(Debug)]
struct Split {
    field: Vec<String>,
    into: Vec<(String, TimeSide)>,
}

/// Why a source gave no data.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SourceFailure {
    UnknownService,
    CircuitOpen,
    NoInstance,
    TimedOut(Duration),
    Unreachable(UpstreamErrorKind),
    Status(StatusCode),
    BodyTooLarge,
    NotJson,
    Shape(String),
}

impl std::fmt::Display for SourceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownService => f.write_str("its service is not configured"),
            Self::CircuitOpen => f.write_str("its service's circuit breaker is open"),
            Self::NoInstance => f.write_str("no healthy instance"),
            Self::TimedOut(t) => write!(f, "no answer within {} ms", t.as_millis()),
            Self::Unreachable(UpstreamErrorKind::ConnectRefused) => {
                f.write_str("connection refused")
            }
            Self::Unreachable(UpstreamErrorKind::ConnectTimeout) => {
                f.write_str("connection timed out")
            }
            Self::Unreachable(_) => f.write_str("the service failed to answer"),
            Self::Status(s) => write!(f, "answered {}", s.as_u16()),
            Self::BodyTooLarge => write!(f, "answer larger than {MAX_SOURCE_BODY} bytes"),
            Self::NotJson => f.write_str("answer is not JSON"),
            Self::Shape(why) => f.write_str(why),
        }
    }
}

/// What one source produced.
struct SourceResult {
    result: Result<Value, SourceFailure>,
    latency: Duration,
}

impl Aggregate {
    /// Compiles the aggregate of `route`.
    pub fn from_config(route: &RouteConfig, config: &AggregateConfig) -> Self {
        let segments = route
            .matcher
            .path
            .as_deref()
            .map(|p| {
                p.split('/')
                    .skip(1)
                    .map(|s| {
                        s.strip_prefix('{')
                            .and_then(|s| s.strip_suffix('}'))
                            .map(Box::from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            sources: config.sources.iter().map(Source::from_config).collect(),
            segments,
        }
    }

    /// The request's time limit when the route sets none: the longest
    /// source timeout, plus [`MERGE_ALLOWANCE`] so that a source's own
    /// timeout, not the request's, is what ends a slow call.
    pub fn default_timeout(&self) -> Duration {
        self.sources
            .iter()
            .map(|s| s.timeout)
            .max()
            .unwrap_or_default()
            + MERGE_ALLOWANCE
    }

    /// Answers `req` (authenticated already, identity headers set) from
    /// the sources, all called at once; `timeout` is the route's.
    pub async fn respond(
        &self,
        services: &dyn Services,
        req: &Request<Incoming>,
        peer: &HeaderValue,
        request_id: Option<&HeaderValue>,
        start: std::time::Instant,
        timeout: Duration,
    ) -> Response<ProxyBody> {
        let now = SystemTime::now();
        let deadline = Deadline::new(Instant::from_std(start), timeout, req.headers());
        let params = self.params(req.uri().path());
        let tls = crate::connection::TlsConnection::of(req);
        let headers = source_headers(req.headers(), peer, tls);
        let mut calls: FuturesUnordered<_> = self
            .sources
            .iter()
            .enumerate()
            .map(|(i, source)| {
                let path = source.path(&params, req.uri().query());
                let headers = &headers;
                async move {
                    let begun = Instant::now();
                    let at = deadline.at().min(begun + source.timeout);
                    let budget = at.saturating_duration_since(begun);
                    let span = crate::ops::spans::source(&source.name, &source.service);
                    let result = match path {
                        Some(path) => {
                            fetch(services, source, path, headers, peer, at, budget)
                                .instrument(span.clone())
                                .await
                        }
                        None => Err(SourceFailure::Shape(
                            "its path is not a valid URI path".into(),
                        )),
                    };
                    let result = result.and_then(|value| source.transform(value, now));
                    crate::ops::spans::source_done(&span, &result);
                    (
                        i,
                        SourceResult {
                            result,
                            latency: begun.elapsed(),
                        },
                    )
                }
            })
            .collect();
        let mut outcomes: Vec<Option<SourceResult>> = self.sources.iter().map(|_| None).collect();
        while let Some((i, outcome)) = calls.next().await {
            let source = &self.sources[i];
            if let (true, Err(failure)) = (source.required, &outcome.result) {
                // The answer is decided: the other calls are dropped
                // (cancelled) rather than waited for.
                tracing::warn!(
                    source = %source.name,
                    service = %source.service,
                    request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or(""),
                    reason = %failure,
                    "required aggregate source failed"
                );
                return GatewayError::AggregateSourceFailed.response(
                    &format!("Required source '{}' failed: {failure}", source.name),
                    request_id,
                );
            }
            outcomes[i] = Some(outcome);
        }
        let outcomes = outcomes.into_iter().flatten().collect();
        self.merge(outcomes, now, request_id)
    }

    /// The route's `{param}` values in `path` (which the route matched).
    fn params<'p>(&self, path: &'p str) -> Vec<(&str, &'p str)> {
        self.segments
            .iter()
            .zip(path.split('/').skip(1))
            .filter_map(|(name, value)| name.as_deref().map(|n| (n, value)))
            .collect()
    }

    fn merge(
        &self,
        outcomes: Vec<SourceResult>,
        now: SystemTime,
        request_id: Option<&HeaderValue>,
    ) -> Response<ProxyBody> {
        let mut answer = Map::new();
        let mut meta = Map::new();
        for (source, outcome) in self.sources.iter().zip(outcomes) {
            let mut m = Map::new();
            m.insert("required".into(), source.required.into());
            m.insert("success".into(), outcome.result.is_ok().into());
            m.insert(
                "latency_ms".into(),
                u64::try_from(outcome.latency.as_millis())
                    .unwrap_or(u64::MAX)
                    .into(),
            );
            m.insert("fallback".into(), outcome.result.is_err().into());
            let data = match outcome.result {
                Ok(data) => data,
                Err(failure) => {
                    tracing::debug!(source = %source.name, reason = %failure, "optional aggregate source replaced by its fallback");
                    m.insert("error".into(), failure.to_string().into());
                    source.fallback.clone()
                }
            };
            answer.insert(source.name.to_string(), data);
            meta.insert(source.name.to_string(), Value::Object(m));
        }
        let mut metadata = Map::new();
        metadata.insert("timestamp".into(), iso8601(now).into());
        metadata.insert("sources".into(), Value::Object(meta));
        answer.insert(
            gateway_common::aggregation::METADATA_KEY.into(),
            Value::Object(metadata),
        );
        let mut response = Response::new(ProxyBody::full(Value::Object(answer).to_string()));
        let h = response.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // The answer is made for the caller's identity.
        h.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
        if let Some(id) = request_id {
            h.insert(crate::edge::errors::X_REQUEST_ID, id.clone());
        }
        response
    }
}

impl Source {
    fn from_config(config: &SourceConfig) -> Self {
        let field = |path: &str| path.split('.').map(String::from).collect::<Vec<_>>();
        Self {
            name: config.name.as_str().into(),
            service: config.service.as_str().into(),
            template: parse_template(&config.path),
            forward_query: config.forward_query,
            required: config.required,
            timeout: config.timeout,
            fallback: config.fallback.clone().unwrap_or(Value::Null),
            select: config
                .select
                .iter()
                .map(|(out, from)| (out.clone(), field(from)))
                .collect(),
            split: config.split_by_time.as_ref().map(|s| Split {
                field: field(&s.field),
                into: s.into.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            }),
        }
    }

    /// The upstream path and query, `{param}`s filled in.
    fn path(&self, params: &[(&str, &str)], query: Option<&str>) -> Option<PathAndQuery> {
        let mut out = String::new();
        for part in &self.template {
            match part {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Param(name) => {
                    let value = params.iter().find(|(n, _)| n == name).map_or("", |p| p.1);
                    out.push_str(value);
                }
            }
        }
        if let Some(q) = query.filter(|q| self.forward_query && !q.is_empty()) {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(q);
        }
        PathAndQuery::from_maybe_shared(Bytes::from(out)).ok()
    }

    /// Field selection, then the split by time.
    fn transform(&self, value: Value, now: SystemTime) -> Result<Value, SourceFailure> {
        let value = if self.select.is_empty() {
            value
        } else {
            select(&self.select, value).map_err(SourceFailure::Shape)?
        };
        match &self.split {
            Some(split) => split.apply(value, now).map_err(SourceFailure::Shape),
            None => Ok(value),
        }
    }
}

/// Keeps the selected fields, renamed, of an object or of each object of a
/// list.
fn select(fields: &[(String, Vec<String>)], value: Value) -> Result<Value, String> {
    let pick = |item: &Value| -> Result<Value, String> {
        if !item.is_object() {
            return Err(format!("cannot select fields of {}", kind(item)));
        }
        let mut out = Map::new();
        for (name, path) in fields {
            out.insert(
                name.clone(),
                lookup(item, path).cloned().unwrap_or(Value::Null),
            );
        }
        Ok(Value::Object(out))
    };
    match &value {
        Value::Array(items) => items
            .iter()
            .map(pick)
            .collect::<Result<_, _>>()
            .map(Value::Array),
        _ => pick(&value),
    }
}

impl Split {
    /// `{output: [elements], ...}`; an element whose field holds no
    /// readable time goes to no output (as the seed's date comparisons did).
    fn apply(&self, value: Value, now: SystemTime) -> Result<Value, String> {
        let Value::Array(items) = value else {
            return Err(format!("cannot split {} by time", kind(&value)));
        };
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i128::try_from(d.as_millis()).unwrap_or(i128::MAX));
        let mut out: Vec<(String, Vec<Value>)> = self
            .into
            .iter()
            .map(|(k, _)| (k.clone(), Vec::new()))
            .collect();
        for item in items {
            let Some(at) = lookup(&item, &self.field).and_then(timestamp_ms) else {
                continue;
            };
            let after = at > now_ms;
            for ((_, side), (_, list)) in self.into.iter().zip(out.iter_mut()) {
                if (*side == TimeSide::AfterNow) == after {
                    list.push(item.clone());
                }
            }
        }
        Ok(Value::Object(
            out.into_iter().map(|(k, v)| (k, Value::Array(v))).collect(),
        ))
    }
}

fn lookup<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A time as Unix milliseconds: an RFC 3339 string, a date
/// (`2026-05-01`, midnight UTC as JavaScript reads it), or a number of
/// milliseconds.
fn timestamp_ms(value: &Value) -> Option<i128> {
    use time::format_description::well_known::Rfc3339;
    match value {
        Value::Number(n) => n.as_i64().map(i128::from),
        Value::String(s) => {
            let parsed = if s.len() == 10 {
                time::OffsetDateTime::parse(&format!("{s}T00:00:00Z"), &Rfc3339)
            } else {
                time::OffsetDateTime::parse(s, &Rfc3339)
            };
            parsed.ok().map(|t| t.unix_timestamp_nanos() / 1_000_000)
        }
        _ => None,
    }
}

/// The headers every source gets: the client's end-to-end headers (its
/// identity as set by authentication, `X-Request-ID`, `traceparent`, ...)
/// with the forwarding headers, minus those describing the client's body
/// or asking for a partial or encoded answer.
fn source_headers(
    client: &HeaderMap,
    peer: &HeaderValue,
    tls: Option<&crate::connection::TlsConnection>,
) -> HeaderMap {
    let mut headers = client.clone();
    for name in &NOT_FORWARDED {
        headers.remove(name);
    }
    headers::forwarding(&mut headers, peer, None, tls.cloned()).insert_into(&mut headers);
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers
}

/// Calls one source through its service's breaker, balancer and pool.
async fn fetch(
    services: &dyn Services,
    source: &Source,
    path: PathAndQuery,
    headers: &HeaderMap,
    peer: &HeaderValue,
    at: Instant,
    budget: Duration,
) -> Result<Value, SourceFailure> {
    let service = services
        .service_named(&source.service)
        .ok_or(SourceFailure::UnknownService)?;
    let hash = service
        .balancer
        .hash_on()
        .and_then(|on| on.key_hash(headers, peer));
    let headers = |endpoint: &Endpoint| {
        let mut headers = headers.clone();
        headers.insert(HOST, endpoint.host_header.clone());
        headers.insert(
            DEADLINE_HEADER,
            deadline::header_value(at.saturating_duration_since(Instant::now())),
        );
        crate::ops::spans::inject_current(endpoint, &mut headers);
        headers
    };
    match call::call(service, Uri::from(path), hash, headers, at, MAX_SOURCE_BODY).await {
        Ok((status, body)) => parse(status, &body),
        Err(CallError::CircuitOpen) => Err(SourceFailure::CircuitOpen),
        Err(CallError::NoInstance) => Err(SourceFailure::NoInstance),
        Err(CallError::Unreachable(kind, _)) => Err(SourceFailure::Unreachable(kind)),
        Err(CallError::TooLarge) => Err(SourceFailure::BodyTooLarge),
        Err(CallError::TimedOut) => Err(SourceFailure::TimedOut(budget)),
    }
}

/// The JSON of a 2xx answer (an empty body is null).
fn parse(status: StatusCode, body: &[u8]) -> Result<Value, SourceFailure> {
    if !status.is_success() {
        return Err(SourceFailure::Status(status));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|_| SourceFailure::NotJson)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(yaml: &str) -> Source {
        let config: SourceConfig = serde_norway::from_str(yaml).unwrap();
        Source::from_config(&config)
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn select_keeps_and_renames_fields_of_objects_and_lists() {
        let s = source(
            "{name: t, service: s, path: /x, select: {available: available_count, tiers: ticket_tiers, city: venue.city}}",
        );
        let one = json!({"available_count": 3, "ticket_tiers": ["a"], "venue": {"city": "Oslo"}, "secret": 1});
        assert_eq!(
            s.transform(one, at(0)).unwrap(),
            json!({"available": 3, "tiers": ["a"], "city": "Oslo"})
        );
        let list = json!([{"available_count": 1}, {"ticket_tiers": []}]);
        assert_eq!(
            s.transform(list, at(0)).unwrap(),
            json!([
                {"available": 1, "tiers": null, "city": null},
                {"available": null, "tiers": [], "city": null}
            ])
        );
        assert!(s.transform(json!("text"), at(0)).is_err());
        assert!(s.transform(json!([1, 2]), at(0)).is_err());
    }

    #[test]
    fn split_by_time_is_relative_to_now() {
        let s = source(
            "{name: t, service: s, path: /x, split_by_time: {field: event_date, into: {upcoming: after_now, past: before_now}}}",
        );
        let now = at(1_767_225_600_000); // 2026-01-01T00:00:00Z
        let tickets = json!([
            {"id": 1, "event_date": "2026-01-02T00:00:00Z"},
            {"id": 2, "event_date": "2025-12-31T23:59:59+00:00"},
            {"id": 3, "event_date": "2026-01-01T00:00:00Z"},
            {"id": 4, "event_date": 1_767_225_600_001_i64},
            {"id": 5, "event_date": "2026-01-01T01:00:00+02:00"},
            {"id": 6, "event_date": "2026-03-01"},
            {"id": 7, "event_date": "not a date"},
            {"id": 8}
        ]);
        let out = s.transform(tickets, now).unwrap();
        let ids = |key: &str| -> Vec<i64> {
            out[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_i64().unwrap())
                .collect()
        };
        assert_eq!(ids("upcoming"), [1, 4, 6]);
        assert_eq!(ids("past"), [2, 3, 5]);
        assert!(s.transform(json!({"a": 1}), now).is_err());
    }

    #[test]
    fn paths_fill_params_and_may_forward_the_query() {
        let s =
            source("{name: t, service: s, path: \"/users/{id}/tx?limit=10\", forward_query: true}");
        let p = s.path(&[("id", "42")], Some("page=2")).unwrap();
        assert_eq!(p.as_str(), "/users/42/tx?limit=10&page=2");
        let s = source("{name: t, service: s, path: \"/users/{id}\"}");
        assert_eq!(
            s.path(&[("id", "7")], Some("x=1")).unwrap().as_str(),
            "/users/7"
        );
    }

    #[test]
    fn params_come_from_the_matched_path() {
        let route: RouteConfig = serde_norway::from_str(
            "{name: r, match: {path: \"/a/{id}/b/{tid}\", methods: [GET]}, aggregate: {sources: [{name: x, service: s, path: /x}]}}",
        )
        .unwrap();
        let agg = Aggregate::from_config(&route, route.aggregate.as_ref().unwrap());
        assert_eq!(agg.params("/a/1/b/2"), [("id", "1"), ("tid", "2")]);
    }

    #[test]
    fn only_2xx_json_is_data() {
        assert_eq!(
            parse(StatusCode::OK, b"{\"a\":1}").unwrap(),
            json!({"a": 1})
        );
        assert_eq!(parse(StatusCode::NO_CONTENT, b"").unwrap(), Value::Null);
        assert_eq!(
            parse(StatusCode::NOT_FOUND, b"{}").unwrap_err(),
            SourceFailure::Status(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            parse(StatusCode::OK, b"<html>").unwrap_err(),
            SourceFailure::NotJson
        );
    }

    #[test]
    fn sources_get_the_callers_headers_but_not_its_body_headers() {
        let mut client = HeaderMap::new();
        client.insert("x-user-id", HeaderValue::from_static("u1"));
        client.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        client.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        client.insert(IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        client.insert("connection", HeaderValue::from_static("keep-alive"));
        let h = source_headers(&client, &HeaderValue::from_static("10.0.0.1"), None);
        assert_eq!(h["x-user-id"], "u1");
        assert_eq!(h["traceparent"], "00-abc-def-01");
        assert_eq!(h[ACCEPT], "application/json");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert!(!h.contains_key(ACCEPT_ENCODING));
        assert!(!h.contains_key(IF_NONE_MATCH));
        assert!(!h.contains_key("connection"));
    }
}
