//! The route table: a segment trie from request path (plus method and host)
//! to a route.
//!
//! Each path segment is one trie level. At every level a static segment is
//! tried first, then a `{param}`, then the prefix routes ending there, with
//! backtracking, so the most specific route wins and a method or host that a
//! specific route refuses falls through to a broader one. Lookup cost grows
//! with the depth of the path, not with the number of routes.
//!
//! Both planes build this table from a config: the control plane refuses a
//! config whose table cannot be built, so every data plane can load it.

use smallvec::SmallVec;
use std::collections::HashMap;
use std::fmt;

/// Segments kept on the stack during a lookup; deeper paths spill to the heap.
const INLINE_SEGMENTS: usize = 16;

/// Request methods a route can name, in bit order.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// Matching part of a route, borrowed from its config
/// (`RouteSpec::from_route`, defined beside the route config so that this
/// module does not depend on the config model).
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec<'a> {
    /// Route name, for conflict messages.
    pub name: &'a str,
    /// The pattern: exact path with `{param}` segments, or a prefix.
    pub path: &'a str,
    /// Whether `path` is a prefix.
    pub prefix: bool,
    /// Allowed methods; empty for all.
    pub methods: &'a [String],
    /// Host (`a.example.com` or `*.example.com`); `None` for any.
    pub host: Option<&'a str>,
}

/// Checks a path pattern: starts with `/`, no trailing `/` (but the root),
/// `{param}` only as whole segments of exact paths.
pub fn check_pattern(pattern: &str, prefix: bool) -> Result<(), String> {
    if !pattern.starts_with('/') {
        return Err(format!("path {pattern:?} must start with '/'"));
    }
    if pattern.len() > 1 && pattern.ends_with('/') {
        return Err(format!("path {pattern:?} must not end with '/'"));
    }
    if pattern.len() > 2048 {
        return Err("path is longer than 2048 bytes".into());
    }
    for segment in segments(pattern) {
        if segment.is_empty() {
            return Err(format!("path {pattern:?} has an empty segment"));
        }
        if let Some(name) = param_name(segment) {
            if prefix {
                return Err(format!("path_prefix {pattern:?} cannot hold parameters"));
            }
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "parameter {segment:?} must be {{name}} with letters, digits or _"
                ));
            }
        } else if segment
            .bytes()
            .any(|b| matches!(b, b'{' | b'}' | b'?' | b'#' | b'*') || b <= b' ' || b == 0x7f)
        {
            return Err(format!(
                "segment {segment:?} of {pattern:?} holds a character paths cannot match"
            ));
        }
    }
    Ok(())
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').filter(move |_| !rest.is_empty())
}

fn param_name(segment: &str) -> Option<&str> {
    segment.strip_prefix('{')?.strip_suffix('}')
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(Box<str>),
    /// `*.example.com`, kept as `.example.com`.
    Suffix(Box<str>),
}

impl HostMatch {
    fn new(host: Option<&str>) -> Self {
        match host {
            None => HostMatch::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.into()),
                None => HostMatch::Exact(h.into()),
            },
        }
    }

    fn rank(&self) -> u8 {
        match self {
            HostMatch::Exact(_) => 0,
            HostMatch::Suffix(_) => 1,
            HostMatch::Any => 2,
        }
    }

    fn accepts(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (HostMatch::Any, _) => true,
            (HostMatch::Exact(h), Some(req)) => h.as_ref() == req,
            (HostMatch::Suffix(s), Some(req)) => req.len() > s.len() && req.ends_with(s.as_ref()),
            (_, None) => false,
        }
    }
}

fn method_bits(methods: &[String]) -> u16 {
    methods
        .iter()
        .filter_map(|m| METHODS.iter().position(|k| k == m))
        .fold(0, |bits, i| bits | (1 << i))
}

struct Entry<T> {
    value: T,
    name: Box<str>,
    /// Allowed methods; 0 means any.
    methods: u16,
    host: HostMatch,
    params: Box<[Box<str>]>,
}

impl<T> Entry<T> {
    fn accepts_method(&self, method_bit: u16) -> bool {
        self.methods == 0 || self.methods & method_bit != 0
    }
}

#[derive(Default)]
struct Node {
    statics: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// Entries whose exact path ends here.
    exact: Vec<u32>,
    /// Entries whose prefix ends here.
    prefix: Vec<u32>,
}

/// Why a route table could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConflict(pub String);

impl fmt::Display for RouteConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RouteConflict {}

/// A route table mapping requests to values of type `T`.
pub struct RouteTable<T> {
    root: Node,
    entries: Vec<Entry<T>>,
    /// Whether some route names a host.
    matches_hosts: bool,
}

/// The outcome of a lookup.
pub enum Lookup<'t, 'p, T> {
    /// A route takes the request.
    Found(RouteMatch<'t, 'p, T>),
    /// Routes match the path and host, but none allows the method.
    MethodNotAllowed,
    /// No route matches.
    NotFound,
}

/// A matched route with the parts of the path it captured.
pub struct RouteMatch<'t, 'p, T> {
    /// The route's value.
    pub value: &'t T,
    /// `{param}` names and values, in path order.
    pub params: Vec<(&'t str, &'p str)>,
    /// For a prefix route, the path after the prefix (`""` or `/x/y`);
    /// for an exact route, `""`.
    pub remainder: &'p str,
}

impl<T> RouteTable<T> {
    /// Builds a table; refuses two routes that would take the same requests.
    pub fn build<'a>(
        routes: impl IntoIterator<Item = (RouteSpec<'a>, T)>,
    ) -> Result<Self, RouteConflict> {
        let mut table = Self::empty();
        for (spec, value) in routes {
            check_pattern(spec.path, spec.prefix)
                .map_err(|e| RouteConflict(format!("route {}: {e}", spec.name)))?;
            table.insert(spec, value)?;
        }
        Ok(table)
    }

    fn insert(&mut self, spec: RouteSpec<'_>, value: T) -> Result<(), RouteConflict> {
        let mut node = &mut self.root;
        let mut params = Vec::new();
        for segment in segments(spec.path) {
            node = match param_name(segment) {
                Some(name) => {
                    params.push(Box::<str>::from(name));
                    node.param.get_or_insert_with(Box::default)
                }
                None => node.statics.entry(segment.into()).or_default(),
            };
        }
        let entry = Entry {
            value,
            name: spec.name.into(),
            methods: method_bits(spec.methods),
            host: HostMatch::new(spec.host),
            params: params.into(),
        };
        let slot = if spec.prefix {
            &mut node.prefix
        } else {
            &mut node.exact
        };
        for &other in slot.iter() {
            let other = &self.entries[other as usize];
            let methods_overlap =
                other.methods == 0 || entry.methods == 0 || other.methods & entry.methods != 0;
            if methods_overlap && other.host == entry.host {
                return Err(RouteConflict(format!(
                    "routes {} and {} both take {} {}",
                    other.name,
                    entry.name,
                    if spec.prefix { "prefix" } else { "path" },
                    spec.path
                )));
            }
        }
        let index = self.entries.len() as u32;
        self.matches_hosts |= entry.host != HostMatch::Any;
        self.entries.push(entry);
        slot.push(index);
        // Most specific first: exact host, wildcard host, any host; then
        // routes naming methods before catch-all ones.
        let entries = &self.entries;
        slot.sort_by_key(|&i| {
            let e = &entries[i as usize];
            (e.host.rank(), e.methods == 0, i)
        });
        Ok(())
    }

    /// A table without routes: every lookup is `NotFound`.
    pub fn empty() -> Self {
        RouteTable {
            root: Node::default(),
            entries: Vec::new(),
            matches_hosts: false,
        }
    }

    /// Number of routes in the table.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no route.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether some route names a host; when none does, lookups may pass
    /// `None` for the host and get the same answer.
    pub fn matches_hosts(&self) -> bool {
        self.matches_hosts
    }

    /// Finds the route for a request. `host` is lower-case without port.
    pub fn lookup<'t, 'p>(
        &'t self,
        method: &str,
        host: Option<&str>,
        path: &'p str,
    ) -> Lookup<'t, 'p, T> {
        let method_bit = METHODS
            .iter()
            .position(|m| *m == method)
            .map_or(0, |i| 1u16 << i);
        if !path.starts_with('/') {
            return Lookup::NotFound;
        }
        let mut offsets: SmallVec<[usize; INLINE_SEGMENTS]> = SmallVec::new();
        let mut segs: SmallVec<[&'p str; INLINE_SEGMENTS]> = SmallVec::new();
        let body = &path[1..];
        let mut start = 1;
        for seg in body.split('/') {
            offsets.push(start);
            segs.push(seg);
            start += seg.len() + 1;
        }
        let mut search = Search {
            table: self,
            method_bit,
            host,
            segs: &segs,
            params: SmallVec::new(),
            method_refused: false,
        };
        match search.walk(&self.root, 0) {
            Some((index, depth)) => {
                let entry = &self.entries[index as usize];
                let remainder = if depth >= segs.len() {
                    ""
                } else {
                    &path[offsets[depth] - 1..]
                };
                let params = entry
                    .params
                    .iter()
                    .map(|n| n.as_ref())
                    .zip(search.params)
                    .collect();
                Lookup::Found(RouteMatch {
                    value: &entry.value,
                    params,
                    remainder,
                })
            }
            None if search.method_refused => Lookup::MethodNotAllowed,
            None => Lookup::NotFound,
        }
    }
}

struct Search<'t, 's, 'p, T> {
    table: &'t RouteTable<T>,
    method_bit: u16,
    host: Option<&'s str>,
    segs: &'s [&'p str],
    params: SmallVec<[&'p str; 4]>,
    method_refused: bool,
}

impl<'t, T> Search<'t, '_, '_, T> {
    /// Depth-first walk; returns the entry and how many segments it consumed.
    fn walk(&mut self, node: &'t Node, depth: usize) -> Option<(u32, usize)> {
        let remaining = self.segs.len() - depth;
        // A single trailing empty segment (`/a/b/`) still matches `/a/b`.
        let at_end = remaining == 0 || (remaining == 1 && self.segs[depth].is_empty());
        if at_end {
            if let Some(i) = self.pick(&node.exact) {
                return Some((i, self.segs.len()));
            }
        }
        if remaining > 0 {
            let seg = self.segs[depth];
            if let Some(child) = node.statics.get(seg) {
                if let Some(found) = self.walk(child, depth + 1) {
                    return Some(found);
                }
            }
            if let Some(child) = node.param.as_deref() {
                if !seg.is_empty() {
                    self.params.push(seg);
                    if let Some(found) = self.walk(child, depth + 1) {
                        return Some(found);
                    }
                    self.params.pop();
                }
            }
        }
        self.pick(&node.prefix).map(|i| (i, depth))
    }

    fn pick(&mut self, candidates: &[u32]) -> Option<u32> {
        for &i in candidates {
            let entry = &self.table.entries[i as usize];
            if !entry.host.accepts(self.host) {
                continue;
            }
            if entry.accepts_method(self.method_bit) {
                return Some(i);
            }
            self.method_refused = true;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(
        name: &'a str,
        path: &'a str,
        prefix: bool,
        methods: &'a [String],
        host: Option<&'a str>,
    ) -> RouteSpec<'a> {
        RouteSpec {
            name,
            path,
            prefix,
            methods,
            host,
        }
    }

    /// (name, path, prefix, methods, host)
    type TestRoute = (
        &'static str,
        &'static str,
        bool,
        &'static [&'static str],
        Option<&'static str>,
    );

    fn table(routes: &[TestRoute]) -> RouteTable<&'static str> {
        let owned: Vec<Vec<String>> = routes
            .iter()
            .map(|r| r.3.iter().map(|m| m.to_string()).collect())
            .collect();
        RouteTable::build(
            routes
                .iter()
                .zip(&owned)
                .map(|(r, m)| (spec(r.0, r.1, r.2, m, r.4), r.0)),
        )
        .unwrap()
    }

    fn found(
        t: &RouteTable<&'static str>,
        method: &str,
        host: Option<&str>,
        path: &str,
    ) -> Option<(&'static str, String, Vec<String>)> {
        match t.lookup(method, host, path) {
            Lookup::Found(m) => Some((
                *m.value,
                m.remainder.to_string(),
                m.params.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            )),
            _ => None,
        }
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        let t = table(&[("echo", "/echo", true, &[], None)]);
        assert_eq!(found(&t, "GET", None, "/echo").unwrap().1, "");
        assert_eq!(found(&t, "GET", None, "/echo/").unwrap().1, "/");
        assert_eq!(found(&t, "GET", None, "/echo/a/b").unwrap().1, "/a/b");
        assert!(found(&t, "GET", None, "/echoes").is_none());
        assert!(found(&t, "GET", None, "/").is_none());
    }

    #[test]
    fn most_specific_route_wins_and_falls_back_on_method() {
        let t = table(&[
            ("root", "/", true, &[], None),
            ("api", "/api", true, &[], None),
            ("users", "/api/users", true, &["GET"], None),
            ("user", "/api/users/{id}", false, &["GET", "PUT"], None),
            ("me", "/api/users/me", false, &[], None),
        ]);
        assert_eq!(
            found(&t, "GET", None, "/api/users/7").unwrap(),
            ("user", "".into(), vec!["id=7".into()])
        );
        assert_eq!(found(&t, "GET", None, "/api/users/me").unwrap().0, "me");
        assert_eq!(found(&t, "DELETE", None, "/api/users/7").unwrap().0, "api");
        assert_eq!(
            found(&t, "GET", None, "/api/users/7/tickets").unwrap().0,
            "users"
        );
        assert_eq!(
            found(&t, "POST", None, "/api/users/7/tickets").unwrap().0,
            "api"
        );
        assert_eq!(found(&t, "GET", None, "/other").unwrap().0, "root");
        assert_eq!(found(&t, "GET", None, "/").unwrap().0, "root");
    }

    #[test]
    fn method_not_allowed_is_told_apart_from_not_found() {
        let t = table(&[("a", "/a/{x}", false, &["GET"], None)]);
        assert!(matches!(
            t.lookup("POST", None, "/a/1"),
            Lookup::MethodNotAllowed
        ));
        assert!(matches!(t.lookup("GET", None, "/b"), Lookup::NotFound));
        assert!(matches!(t.lookup("GET", None, "/a/1/2"), Lookup::NotFound));
    }

    #[test]
    fn hosts_are_matched_exact_then_wildcard_then_any() {
        let t = table(&[
            ("any", "/", true, &[], None),
            ("wild", "/", true, &[], Some("*.example.com")),
            ("exact", "/", true, &[], Some("api.example.com")),
        ]);
        assert_eq!(
            found(&t, "GET", Some("api.example.com"), "/x").unwrap().0,
            "exact"
        );
        assert_eq!(
            found(&t, "GET", Some("www.example.com"), "/x").unwrap().0,
            "wild"
        );
        assert_eq!(
            found(&t, "GET", Some("example.com"), "/x").unwrap().0,
            "any"
        );
        assert_eq!(found(&t, "GET", None, "/x").unwrap().0, "any");
        assert!(t.matches_hosts());
    }

    #[test]
    fn a_table_without_host_routes_says_so() {
        let t = table(&[
            ("a", "/a", true, &[], None),
            ("b", "/b", false, &["GET"], None),
        ]);
        assert!(!t.matches_hosts());
        assert!(!RouteTable::<()>::empty().matches_hosts());
        let t = table(&[
            ("a", "/a", true, &[], None),
            ("h", "/h", true, &[], Some("*.example.com")),
        ]);
        assert!(t.matches_hosts());
    }

    #[test]
    fn params_differ_by_method_on_one_path() {
        let t = table(&[
            ("get", "/u/{id}", false, &["GET"], None),
            ("put", "/u/{name}", false, &["PUT"], None),
        ]);
        assert_eq!(found(&t, "PUT", None, "/u/x").unwrap().2, vec!["name=x"]);
        assert_eq!(found(&t, "GET", None, "/u/x").unwrap().2, vec!["id=x"]);
    }

    #[test]
    fn overlapping_routes_are_refused() {
        let m = vec!["GET".to_string()];
        let routes = vec![
            (spec("a", "/x/{id}", false, &m, None), 1),
            (spec("b", "/x/{other}", false, &[], None), 2),
        ];
        let err = RouteTable::build(routes).err().unwrap();
        assert!(err.0.contains("routes a and b"), "{err}");
    }

    #[test]
    fn patterns_are_checked() {
        assert!(check_pattern("/a/{id}", false).is_ok());
        assert!(check_pattern("a", false).is_err());
        assert!(check_pattern("/a/", false).is_err());
        assert!(check_pattern("/a//b", false).is_err());
        assert!(check_pattern("/a/{id}", true).is_err());
        assert!(check_pattern("/a/x{id}", false).is_err());
        assert!(check_pattern("/a/{*rest}", false).is_err());
    }

    #[test]
    fn many_routes_resolve_correctly() {
        let names: Vec<String> = (0..2000).map(|i| format!("r{i}")).collect();
        let paths: Vec<String> = (0..2000)
            .map(|i| format!("/svc{}/v1/items{}", i % 100, i))
            .collect();
        let t = RouteTable::build(
            names
                .iter()
                .zip(&paths)
                .enumerate()
                .map(|(i, (n, p))| (spec(n, p, i % 2 == 0, &[], None), i)),
        )
        .unwrap();
        for i in [0usize, 1, 999, 1998, 1999] {
            let path = if i % 2 == 0 {
                format!("{}/deeper", paths[i])
            } else {
                paths[i].clone()
            };
            match t.lookup("GET", None, &path) {
                Lookup::Found(m) => assert_eq!(*m.value, i),
                _ => panic!("no match for {path}"),
            }
        }
    }
}
