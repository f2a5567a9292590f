//! Request routing: the shared route table plus what the data plane adds to
//! it (host normalisation and the upstream path of a matched request).

use gateway_common::config::RouteConfig;
use gateway_common::routing::{Lookup, RouteConflict, RouteSpec, RouteTable};
use http::header::HOST;
use http::Request;
use std::borrow::Cow;

/// How a matched path becomes the upstream path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    /// Forward the path unchanged.
    Keep,
    /// Drop the matched prefix; the remainder (or `/`) is forwarded.
    StripPrefix,
    /// Replace the matched prefix by this path.
    ReplacePrefix(String),
    /// Replace the whole (exact) path by this template, `{param}` filled in.
    Template(Vec<TemplatePart>),
}

/// A piece of a rewrite template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Literal text.
    Text(String),
    /// The value captured for this parameter name.
    Param(String),
}

impl PathRewrite {
    /// The rewrite a route config asks for.
    pub fn of(route: &RouteConfig) -> Self {
        match (&route.rewrite, route.matcher.path_prefix.is_some()) {
            (Some(rewrite), true) => PathRewrite::ReplacePrefix(rewrite.clone()),
            (Some(rewrite), false) => PathRewrite::Template(parse_template(rewrite)),
            (None, true) if route.strip_prefix => PathRewrite::StripPrefix,
            (None, _) => PathRewrite::Keep,
        }
    }

    /// The upstream path for a request matched with `remainder` and `params`;
    /// `None` when the original path is forwarded unchanged.
    pub fn apply(&self, remainder: &str, params: &[(&str, &str)]) -> Option<String> {
        match self {
            PathRewrite::Keep => None,
            PathRewrite::StripPrefix => Some(if remainder.is_empty() {
                "/".to_string()
            } else {
                remainder.to_string()
            }),
            PathRewrite::ReplacePrefix(prefix) => {
                let mut out = String::with_capacity(prefix.len() + remainder.len());
                out.push_str(prefix);
                if out.ends_with('/') && remainder.starts_with('/') {
                    out.push_str(&remainder[1..]);
                } else {
                    out.push_str(remainder);
                }
                Some(out)
            }
            PathRewrite::Template(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        TemplatePart::Text(t) => out.push_str(t),
                        TemplatePart::Param(name) => {
                            let value = params
                                .iter()
                                .find(|(n, _)| n == name)
                                .map_or("", |(_, v)| *v);
                            out.push_str(value);
                        }
                    }
                }
                Some(out)
            }
        }
    }
}

/// Splits a path template into literal text and `{param}` references.
pub fn parse_template(template: &str) -> Vec<TemplatePart> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        if open > 0 {
            parts.push(TemplatePart::Text(rest[..open].to_string()));
        }
        parts.push(TemplatePart::Param(rest[open + 1..close].to_string()));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_string()));
    }
    parts
}

/// The route table of a snapshot.
pub struct Router<T> {
    table: RouteTable<T>,
}

impl<T> std::fmt::Debug for Router<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.table.len())
            .finish()
    }
}

impl<T> Router<T> {
    /// Builds the table from routes and their values.
    pub fn build<'a>(
        routes: impl IntoIterator<Item = (&'a RouteConfig, T)>,
    ) -> Result<Self, RouteConflict> {
        let table = RouteTable::build(
            routes
                .into_iter()
                .map(|(route, value)| (RouteSpec::from_route(route), value)),
        )?;
        Ok(Self { table })
    }

    /// A table without routes.
    pub fn empty() -> Self {
        Self {
            table: RouteTable::empty(),
        }
    }

    /// Looks a request up by host and path as if its method were `method`
    /// (a CORS preflight is routed by the method it asks about).
    pub fn lookup_as<'t, 'p, B>(&'t self, method: &str, req: &'p Request<B>) -> Lookup<'t, 'p, T> {
        let host = self.host_of(req);
        self.table.lookup(method, host.as_deref(), req.uri().path())
    }

    /// Looks a request up by method, host and path.
    #[inline]
    pub fn lookup<'t, 'p, B>(&'t self, req: &'p Request<B>) -> Lookup<'t, 'p, T> {
        let host = self.host_of(req);
        self.table
            .lookup(req.method().as_str(), host.as_deref(), req.uri().path())
    }

    /// The request's host, worked out only when some route names a host.
    fn host_of<'p, B>(&self, req: &'p Request<B>) -> Option<Cow<'p, str>> {
        if self.table.matches_hosts() {
            request_host(req)
        } else {
            None
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there is no route.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// The request's host (Host header, else the URI authority), lower-cased
/// and without port.
pub fn request_host<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let raw = match req.headers().get(HOST) {
        Some(value) => value.to_str().ok()?,
        None => req.uri().host()?,
    };
    let host = strip_port(raw);
    if host.is_empty() {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::GatewayConfig;
    use http::HeaderValue;

    fn routes(doc: &str) -> GatewayConfig {
        GatewayConfig::load(doc.as_bytes()).unwrap()
    }

    #[test]
    fn rewrites() {
        let config = routes(
            r#"
version: 1
services: [{ name: a }]
routes:
  - { name: keep, match: { path_prefix: /keep }, service: a }
  - { name: strip, match: { path_prefix: /strip }, service: a, strip_prefix: true }
  - { name: prefix, match: { path_prefix: /old }, service: a, rewrite: /new }
  - { name: root, match: { path_prefix: /r }, service: a, rewrite: / }
  - { name: exact, match: { path: "/u/{id}/t/{tid}" }, service: a, rewrite: "/users/{id}/tickets/{tid}" }
"#,
        );
        let of = |i: usize| PathRewrite::of(&config.routes[i]);
        assert_eq!(of(0).apply("/x", &[]), None);
        assert_eq!(of(1).apply("/x/y", &[]).unwrap(), "/x/y");
        assert_eq!(of(1).apply("", &[]).unwrap(), "/");
        assert_eq!(of(2).apply("/x", &[]).unwrap(), "/new/x");
        assert_eq!(of(2).apply("", &[]).unwrap(), "/new");
        assert_eq!(of(3).apply("/x", &[]).unwrap(), "/x");
        assert_eq!(
            of(4).apply("", &[("id", "7"), ("tid", "9")]).unwrap(),
            "/users/7/tickets/9"
        );
    }

    fn route_name<B>(router: &Router<String>, req: &Request<B>) -> Option<String> {
        match router.lookup(req) {
            Lookup::Found(found) => Some(found.value.clone()),
            _ => None,
        }
    }

    /// A router over `routes` (YAML list items) to one service `a`, each
    /// route's value its name.
    fn router(routes_yaml: &str) -> Router<String> {
        let config = routes(&format!(
            "version: 1\nservices: [{{ name: a }}]\nroutes:\n{routes_yaml}"
        ));
        Router::build(config.routes.iter().map(|r| (r, r.name.clone()))).unwrap()
    }

    /// A request for `/x` with this Host header.
    fn with_host(host: HeaderValue) -> Request<()> {
        Request::builder()
            .uri("/x")
            .header(HOST, host)
            .body(())
            .unwrap()
    }

    #[test]
    fn host_routes_see_the_request_host() {
        let router = router(
            "  - { name: any, match: { path_prefix: / }, service: a }
  - { name: api, match: { path_prefix: /, host: api.example.com }, service: a }",
        );
        let req = |host| with_host(HeaderValue::from_static(host));
        assert_eq!(
            route_name(&router, &req("API.Example.com:8080")).unwrap(),
            "api"
        );
        assert_eq!(route_name(&router, &req("www.example.com")).unwrap(), "any");
    }

    #[test]
    fn without_host_routes_any_host_matches() {
        let router = router("  - { name: any, match: { path_prefix: / }, service: a }");
        let odd = with_host(HeaderValue::from_bytes(b"caf\xe9").unwrap());
        assert_eq!(route_name(&router, &odd).unwrap(), "any");
        let none = Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(route_name(&router, &none).unwrap(), "any");
    }

    #[test]
    fn host_is_lower_cased_without_port() {
        let req = with_host(HeaderValue::from_static("API.Example.com:8080"));
        assert_eq!(request_host(&req).unwrap(), "api.example.com");
        let req = Request::builder()
            .uri("http://a.example.com/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).unwrap(), "a.example.com");
        let req = with_host(HeaderValue::from_static("[::1]:80"));
        assert_eq!(request_host(&req).unwrap(), "[::1]");
        let req = Request::builder().uri("/x").body(()).unwrap();
        assert!(request_host(&req).is_none());
    }
}
