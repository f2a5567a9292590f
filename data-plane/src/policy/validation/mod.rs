//! Request validation, a route policy: the JSON body and the query
//! parameters of a request are checked against the route's JSON Schemas
//! for its method before the request is forwarded.
//!
//! Runs after authentication (an anonymous caller learns nothing of the
//! schema) and before the deadline, breaker and balancer. A route with no
//! policy for the method passes its body through as a stream; a validated
//! body is read whole (bounded by the route's limit and timeout), checked,
//! stripped of unknown fields if the route says so, and forwarded as the
//! bytes read (or, when fields were stripped, re-serialised, with its
//! `Content-Length` set to match).
//!
//! Answers: 415 for a body not declared as JSON, 400 for one that is not a
//! JSON document (or missing), 413 over the limit, 408 when it does not
//! arrive in time, 422 with `details` listing the failing fields.

mod fields;
mod query;

pub use fields::Fields;
pub use query::QueryParams;

use crate::edge::errors::GatewayError;
use crate::policy::RouteContext;
use crate::upstream::h1::body::ClientBody;
use bytes::Bytes;
use gateway_common::config::RouteConfig;
use gateway_common::request_schema::{self, RequestValidation, UnknownFields};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use std::time::Instant;

use crate::upstream::h1::response::ProxyBody;

/// Most failing fields listed in one answer.
pub const MAX_DETAILS: usize = 50;

/// A route's validation policy, compiled once per config.
#[derive(Debug)]
pub struct RouteValidation {
    methods: Vec<(Method, MethodValidation)>,
    /// Largest body read for validation.
    body_limit: u64,
}

/// What is checked on one method.
#[derive(Debug)]
pub struct MethodValidation {
    body: Option<Schema>,
    query: Option<(Schema, QueryParams)>,
    unknown: UnknownFields,
}

/// A compiled schema and the fields it names.
#[derive(Debug)]
struct Schema {
    validator: jsonschema::Validator,
    fields: Fields,
}

impl Schema {
    fn compile(schema: &Value) -> Result<Self, String> {
        Ok(Self {
            validator: request_schema::compile(schema)?,
            fields: Fields::of(schema),
        })
    }
}

/// A request refused by validation.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    /// Status and code.
    pub error: GatewayError,
    /// For people.
    pub message: String,
    /// Failing fields (`[{field, message, type}]`), for a 422.
    pub details: Option<Value>,
}

impl Refusal {
    fn plain(error: GatewayError, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
            details: None,
        }
    }

    fn invalid(what: &str, details: Vec<Value>) -> Self {
        Self {
            error: GatewayError::ValidationFailed,
            message: format!("{what} validation failed"),
            details: Some(Value::Array(details)),
        }
    }

    /// The answer to the client.
    pub fn response(self, request_id: Option<&HeaderValue>) -> Response<ProxyBody> {
        self.error
            .response_with_details(&self.message, self.details, request_id)
    }
}

impl RouteValidation {
    /// Compiles `route`'s policy; `None` when it has none.
    pub fn compile(route: &RouteConfig) -> Result<Option<Self>, String> {
        let Some(policy) = &route.validation else {
            return Ok(None);
        };
        let mut methods = Vec::with_capacity(policy.len());
        for (method, rules) in policy {
            let parsed = Method::from_bytes(method.as_bytes())
                .map_err(|_| format!("route {}: unknown method {method}", route.name))?;
            let compiled = MethodValidation::compile(rules)
                .map_err(|e| format!("route {}: validation.{method}: {e}", route.name))?;
            methods.push((parsed, compiled));
        }
        Ok(Some(Self {
            methods,
            body_limit: route.validated_body_limit(),
        }))
    }

    /// The policy for `method`, if it has one.
    pub fn for_method(&self, method: &Method) -> Option<&MethodValidation> {
        self.methods
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, rules)| rules)
    }

    /// Largest body read for validation.
    pub fn body_limit(&self) -> u64 {
        self.body_limit
    }
}

impl MethodValidation {
    fn compile(rules: &RequestValidation) -> Result<Self, String> {
        Ok(Self {
            body: rules
                .body
                .as_ref()
                .map(Schema::compile)
                .transpose()
                .map_err(|e| format!("body: {e}"))?,
            query: rules
                .query
                .as_ref()
                .map(|q| Schema::compile(q).map(|s| (s, QueryParams::of(q))))
                .transpose()
                .map_err(|e| format!("query: {e}"))?,
            unknown: rules.unknown_fields,
        })
    }

    /// Checks the query string; `Ok(Some(query))`: forward `query` instead
    /// (unknown parameters stripped).
    pub fn check_query(&self, query: Option<&str>) -> Result<Option<String>, Refusal> {
        let Some((schema, params)) = &self.query else {
            return Ok(None);
        };
        let read = params.read(query, self.unknown == UnknownFields::Allow);
        let mut details = Vec::new();
        if self.unknown == UnknownFields::Reject {
            details.extend(
                read.unknown
                    .iter()
                    .take(MAX_DETAILS)
                    .map(|n| not_allowed(n)),
            );
        }
        collect_errors(schema, &read.object, &mut details);
        if !details.is_empty() {
            return Err(Refusal::invalid("Query", details));
        }
        if self.unknown == UnknownFields::Strip && !read.unknown.is_empty() {
            return Ok(query.and_then(|q| params.strip(q)));
        }
        Ok(None)
    }

    /// Whether a body is checked.
    pub fn checks_body(&self) -> bool {
        self.body.is_some()
    }

    /// Checks a body read whole; `Ok(Some(bytes))`: forward `bytes` instead
    /// (unknown fields stripped).
    pub fn check_body(&self, headers: &HeaderMap, body: &[u8]) -> Result<Option<Bytes>, Refusal> {
        let Some(schema) = &self.body else {
            return Ok(None);
        };
        if body.is_empty() {
            return Err(Refusal::plain(
                GatewayError::InvalidJson,
                "A JSON request body is required",
            ));
        }
        if !is_json(headers) {
            return Err(unsupported_media_type());
        }
        let mut document: Value = serde_json::from_slice(body).map_err(|e| {
            Refusal::plain(
                GatewayError::InvalidJson,
                format!("Request body is not valid JSON: {e}"),
            )
        })?;
        let mut details = Vec::new();
        let mut stripped = 0;
        match self.unknown {
            UnknownFields::Strip => stripped = schema.fields.strip(&mut document),
            UnknownFields::Reject => details.extend(
                schema
                    .fields
                    .unknown(&document, MAX_DETAILS)
                    .iter()
                    .map(|f| not_allowed(f)),
            ),
            UnknownFields::Allow => {}
        }
        collect_errors(schema, &document, &mut details);
        if !details.is_empty() {
            return Err(Refusal::invalid("Body", details));
        }
        if stripped == 0 {
            return Ok(None);
        }
        serde_json::to_vec(&document)
            .map(|bytes| Some(Bytes::from(bytes)))
            .map_err(|_| {
                Refusal::plain(
                    GatewayError::InvalidJson,
                    "Request body cannot be re-encoded",
                )
            })
    }
}

fn unsupported_media_type() -> Refusal {
    Refusal::plain(
        GatewayError::UnsupportedMediaType,
        "Request body must be JSON (Content-Type: application/json)",
    )
}

/// `application/json` or `application/*+json`, parameters aside.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5
                && subtype
                    .get(subtype.len() - 5..)
                    .is_some_and(|s| s.eq_ignore_ascii_case("+json")))
}

/// A detail for a field the schema does not name (Joi's wording).
fn not_allowed(field: &str) -> Value {
    let name = field.rsplit('.').next().unwrap_or(field);
    json!({
        "field": field,
        "message": format!("\"{name}\" is not allowed"),
        "type": "unknown",
    })
}

/// Appends `{field, message, type}` for each way `document` breaks the
/// schema, up to [`MAX_DETAILS`] in all.
fn collect_errors(schema: &Schema, document: &Value, details: &mut Vec<Value>) {
    if details.len() >= MAX_DETAILS || schema.validator.is_valid(document) {
        return;
    }
    for error in schema.validator.iter_errors(document) {
        let at: Vec<String> = error
            .instance_path()
            .as_str()
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let keyword = error.kind().keyword().to_string();
        let message = error.to_string();
        let named: Vec<String> = match error.kind() {
            jsonschema::error::ValidationErrorKind::Required { property } => {
                vec![property
                    .as_str()
                    .map_or_else(|| property.to_string(), str::to_string)]
            }
            jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                unexpected.clone()
            }
            _ => vec![String::new()],
        };
        for name in named {
            if details.len() >= MAX_DETAILS {
                return;
            }
            let mut field = at.clone();
            if !name.is_empty() {
                field.push(name);
            }
            details.push(json!({
                "field": field.join("."),
                "message": message,
                "type": keyword,
            }));
        }
    }
}

/// Checks `req` against `route`'s policy for its method: the request to
/// forward, or the answer refusing it. Routes without a policy pay one
/// `Option` check and keep their body streaming.
pub async fn check(
    policy: &RouteValidation,
    route: RouteContext<'_>,
    req: Request<Incoming>,
    request_id: Option<&HeaderValue>,
    start: Instant,
) -> Result<Request<ClientBody>, Response<ProxyBody>> {
    let Some(rules) = policy.for_method(req.method()) else {
        return Ok(req.map(ClientBody::Streaming));
    };
    let result = validate(route, policy, rules, req, start).await;
    result.map_err(|refusal| {
        tracing::debug!(
            route = %route.name,
            status = refusal.error.status().as_u16(),
            message = %refusal.message,
            "request refused by validation"
        );
        refusal.response(request_id)
    })
}

async fn validate(
    route: RouteContext<'_>,
    policy: &RouteValidation,
    rules: &MethodValidation,
    req: Request<Incoming>,
    start: Instant,
) -> Result<Request<ClientBody>, Refusal> {
    let (mut parts, body) = req.into_parts();
    if let Some(query) = rules.check_query(parts.uri.query())? {
        parts.uri = with_query(&parts.uri, &query)?;
    }
    if !rules.checks_body() {
        return Ok(Request::from_parts(parts, ClientBody::Streaming(body)));
    }
    // Refused from the head alone, before reading anything.
    if !is_json(&parts.headers) && !http_body::Body::is_end_stream(&body) {
        return Err(unsupported_media_type());
    }
    let limit = policy.body_limit();
    if crate::headers::content_length(&parts.headers).is_some_and(|len| len > limit) {
        return Err(too_large(limit));
    }
    let deadline = tokio::time::Instant::from_std(start) + route.timeout;
    let bytes =
        match tokio::time::timeout_at(deadline, Limited::new(body, limit as usize).collect()).await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(too_large(limit))
            }
            Ok(Err(_)) => {
                return Err(Refusal::plain(
                    GatewayError::BadRequest,
                    "The request body could not be read",
                ))
            }
            Err(_) => {
                return Err(Refusal::plain(
                    GatewayError::RequestTimeout,
                    "The request body did not arrive in time",
                ))
            }
        };
    let bytes = rules.check_body(&parts.headers, &bytes)?.unwrap_or(bytes);
    parts.headers.remove(TRANSFER_ENCODING);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Ok(Request::from_parts(parts, ClientBody::Buffered(bytes)))
}

fn too_large(limit: u64) -> Refusal {
    Refusal::plain(
        GatewayError::PayloadTooLarge,
        format!("Request body is larger than the limit of {limit} bytes"),
    )
}

/// `uri` with its query replaced by `query` (none when empty).
fn with_query(uri: &Uri, query: &str) -> Result<Uri, Refusal> {
    let mut pq = uri.path().to_string();
    if !query.is_empty() {
        pq.push('?');
        pq.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = PathAndQuery::from_maybe_shared(Bytes::from(pq)).ok();
    Uri::from_parts(parts)
        .map_err(|_| Refusal::plain(GatewayError::BadRequest, "The query cannot be rewritten"))
}

#[cfg(test)]
mod tests;
