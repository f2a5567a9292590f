//! The response cache's layout in Redis, shared by the data planes (which
//! read and write entries) and the control plane (which invalidates them
//! and reports statistics): the cache key, the Redis key names, the index
//! and the invalidation pattern.
//!
//! * `{prefix}cache:{hash}`: one entry (string with a PX expiry).
//! * `{prefix}cache:index`: sorted set of `"{route} {path} {hash}"` scored by
//!   the entry's expiry (unix ms); invalidation scans it with `ZSCAN MATCH`
//!   and trims it with `ZREMRANGEBYSCORE`, never `KEYS` or `SCAN`.
//! * `{prefix}cache:stats`: hash of counters (`hits`, `misses`, `stores`).
//! * `{prefix}cache:invalidate`: pub/sub channel carrying each invalidation
//!   pattern, so that every data plane drops matching entries of its
//!   in-memory layer.

use sha2::{Digest, Sha256};
use std::fmt;

/// Version tag of the key text; bump when the key's composition changes.
const KEY_VERSION: &str = "v1";
/// Longest path glob of an invalidation pattern.
pub const MAX_PATTERN_LEN: usize = 1024;

/// Name of the entry key of `hash`.
pub fn entry_key(prefix: &str, hash: &str) -> String {
    format!("{prefix}cache:{hash}")
}

/// Name of the index (sorted set by expiry).
pub fn index_key(prefix: &str) -> String {
    format!("{prefix}cache:index")
}

/// Name of the counters hash.
pub fn stats_key(prefix: &str) -> String {
    format!("{prefix}cache:stats")
}

/// Name of the invalidation channel.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}cache:invalidate")
}

/// Whether `name` may be listed in `vary_by_query`.
pub fn is_query_param_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~[]".contains(&b))
}

/// Who a cached answer belongs to: the verified tenant and user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller<'a> {
    /// Tenant id from the verified token.
    pub tenant: &'a str,
    /// User id (`sub`) from the verified token.
    pub user: &'a str,
}

/// The key of one cached answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// The full key text (stored in the entry and compared on every read,
    /// so that a hash collision can never serve another key's answer).
    pub text: String,
    /// Hex digest of the text (128 bits of SHA-256): the Redis key suffix.
    pub hash: String,
    /// Route name, for the index and invalidation.
    pub route: String,
    /// Normalised request path, for the index and invalidation.
    pub path: String,
}

impl CacheKey {
    /// The key of a GET of `path` (already normalised) with `query` on
    /// `route`: only the parameters named in `vary_by` count (sorted, so
    /// their order does not matter; repeated ones all count), and `caller`,
    /// when given, makes the entry private to that tenant and user.
    pub fn build(
        route: &str,
        path: &str,
        query: Option<&str>,
        vary_by: &[String],
        caller: Option<Caller<'_>>,
    ) -> CacheKey {
        let mut selected: Vec<(&str, &str)> = Vec::new();
        if let Some(query) = query.filter(|_| !vary_by.is_empty()) {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if vary_by.iter().any(|v| v == name) {
                    selected.push((name, value));
                }
            }
        }
        selected.sort_unstable();
        let mut text = String::with_capacity(64 + route.len() + path.len());
        text.push_str(KEY_VERSION);
        // Every part is length-prefixed: no value can be read as another
        // part, whatever characters it holds.
        push_part(&mut text, "r", route);
        push_part(&mut text, "p", path);
        for (name, value) in &selected {
            push_part(&mut text, "q", name);
            push_part(&mut text, "v", value);
        }
        match caller {
            Some(c) => {
                push_part(&mut text, "t", c.tenant);
                push_part(&mut text, "u", c.user);
            }
            None => text.push_str("|shared"),
        }
        let digest = Sha256::digest(text.as_bytes());
        let hash = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        CacheKey {
            text,
            hash,
            route: route.to_string(),
            path: path.to_string(),
        }
    }

    /// The key's member in the index.
    pub fn index_member(&self) -> String {
        format!("{} {} {}", self.route, self.path, self.hash)
    }
}

fn push_part(text: &mut String, tag: &str, value: &str) {
    use std::fmt::Write;
    let _ = write!(text, "|{tag}{}:{value}", value.len());
}

/// Splits an index member into route, path and hash.
pub fn parse_index_member(member: &str) -> Option<(&str, &str, &str)> {
    let (route, rest) = member.split_once(' ')?;
    let (path, hash) = rest.rsplit_once(' ')?;
    Some((route, path, hash))
}

/// What an invalidation removes: the entries of a route, of the paths
/// matching a glob, or both.
///
/// Syntax: `route:NAME`, `PATH_GLOB` or `route:NAME PATH_GLOB`, where the
/// glob starts with `/` and `*` stands for any run of characters
/// (including `/`); every other character matches itself. The glob is
/// matched against the normalised request path, without the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePattern {
    /// Only entries of this route.
    pub route: Option<String>,
    /// Only entries whose path matches this glob.
    pub path: Option<String>,
}

impl CachePattern {
    /// Parses the pattern syntax above.
    pub fn parse(text: &str) -> Result<CachePattern, String> {
        let mut pattern = CachePattern {
            route: None,
            path: None,
        };
        for token in text.split_whitespace() {
            if let Some(name) = token.strip_prefix("route:") {
                if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                    return Err(format!("{token:?}: route:NAME needs a route name"));
                }
                if pattern.route.replace(name.to_string()).is_some() {
                    return Err("more than one route:NAME".into());
                }
            } else if token.starts_with('/') {
                if token.len() > MAX_PATTERN_LEN || token.chars().any(char::is_control) {
                    return Err(format!(
                        "the path glob must be at most {MAX_PATTERN_LEN} visible characters"
                    ));
                }
                if pattern.path.replace(token.to_string()).is_some() {
                    return Err("more than one path glob".into());
                }
            } else {
                return Err(format!(
                    "{token:?} is neither route:NAME nor a path glob starting with '/'"
                ));
            }
        }
        if pattern.route.is_none() && pattern.path.is_none() {
            return Err(
                "empty pattern: give route:NAME, a path glob such as /api/v1/events/*, or both"
                    .into(),
            );
        }
        Ok(pattern)
    }

    /// Whether an entry of `route` for `path` is covered.
    pub fn matches(&self, route: &str, path: &str) -> bool {
        self.route.as_deref().is_none_or(|r| r == route)
            && self.path.as_deref().is_none_or(|g| glob_matches(g, path))
    }

    /// The `MATCH` argument of a `ZSCAN` of the index that returns at least
    /// the members this pattern covers (each is checked with
    /// [`Self::matches`] as well).
    pub fn index_match(&self) -> String {
        let route = self.route.as_deref().map_or("*".into(), escape_literal);
        let path = match &self.path {
            Some(glob) => glob
                .split('*')
                .map(escape_literal)
                .collect::<Vec<_>>()
                .join("*"),
            None => "*".into(),
        };
        format!("{route} {path} *")
    }
}

impl fmt::Display for CachePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.route, &self.path) {
            (Some(r), Some(p)) => write!(f, "route:{r} {p}"),
            (Some(r), None) => write!(f, "route:{r}"),
            (None, Some(p)) => f.write_str(p),
            (None, None) => Ok(()),
        }
    }
}

/// Escapes Redis glob metacharacters so that `text` matches itself.
fn escape_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Matches `text` against `glob` where `*` is any run of characters.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No '*': the whole text must be the literal.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vary(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    const ALICE: Caller<'static> = Caller {
        tenant: "t1",
        user: "alice",
    };

    #[test]
    fn only_the_selected_query_parameters_count_in_any_order() {
        let v = vary(&["page", "limit"]);
        let a = CacheKey::build("events", "/e", Some("page=2&limit=10&x=1"), &v, None);
        let b = CacheKey::build("events", "/e", Some("limit=10&utm=y&page=2"), &v, None);
        assert_eq!(a, b);
        let c = CacheKey::build("events", "/e", Some("page=3&limit=10"), &v, None);
        assert_ne!(a.hash, c.hash);
        // Absent and empty are different answers.
        let absent = CacheKey::build("events", "/e", None, &v, None);
        let empty = CacheKey::build("events", "/e", Some("page="), &v, None);
        assert_ne!(absent.hash, empty.hash);
        // Without vary_by_query, the query is ignored.
        let none = CacheKey::build("events", "/e", Some("page=9"), &[], None);
        assert_eq!(none.hash, absent_without_vary());
    }

    fn absent_without_vary() -> String {
        CacheKey::build("events", "/e", None, &[], None).hash
    }

    #[test]
    fn the_caller_separates_entries() {
        let shared = CacheKey::build("r", "/p", None, &[], None);
        let alice = CacheKey::build("r", "/p", None, &[], Some(ALICE));
        let bob = CacheKey::build(
            "r",
            "/p",
            None,
            &[],
            Some(Caller {
                tenant: "t1",
                user: "bob",
            }),
        );
        let alice_elsewhere = CacheKey::build(
            "r",
            "/p",
            None,
            &[],
            Some(Caller {
                tenant: "t2",
                user: "alice",
            }),
        );
        let hashes = [&shared.hash, &alice.hash, &bob.hash, &alice_elsewhere.hash];
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(alice.hash.len(), 32);
    }

    #[test]
    fn parts_cannot_bleed_into_each_other() {
        // Without length prefixes these two would build the same text.
        let a = CacheKey::build(
            "r",
            "/p",
            None,
            &[],
            Some(Caller {
                tenant: "a|u1:b",
                user: "c",
            }),
        );
        let b = CacheKey::build(
            "r",
            "/p",
            None,
            &[],
            Some(Caller {
                tenant: "a",
                user: "b|u1:c",
            }),
        );
        assert_ne!(a.text, b.text);
        assert_ne!(
            CacheKey::build("r", "/a b", None, &[], None).hash,
            CacheKey::build("r", "/a", None, &[], None).hash
        );
    }

    #[test]
    fn index_members_round_trip() {
        let key = CacheKey::build("events", "/api/v1/events/1", None, &[], None);
        let member = key.index_member();
        assert_eq!(
            parse_index_member(&member),
            Some(("events", "/api/v1/events/1", key.hash.as_str()))
        );
        assert_eq!(parse_index_member("nospace"), None);
    }

    #[test]
    fn patterns_parse_and_match() {
        let p = CachePattern::parse("/api/v1/events/*").unwrap();
        assert!(p.matches("any", "/api/v1/events/1"));
        assert!(p.matches("any", "/api/v1/events/1/tickets"));
        assert!(!p.matches("any", "/api/v1/events"));
        assert!(!p.matches("any", "/api/v1/venues/1"));
        let p = CachePattern::parse("route:events").unwrap();
        assert!(p.matches("events", "/x"));
        assert!(!p.matches("venues", "/x"));
        let p = CachePattern::parse("route:events /a/*/b").unwrap();
        assert!(p.matches("events", "/a/1/b"));
        assert!(!p.matches("events", "/a/1/c"));
        assert!(!p.matches("venues", "/a/1/b"));
        assert_eq!(p.to_string(), "route:events /a/*/b");
        assert_eq!(CachePattern::parse(&p.to_string()).unwrap(), p);
        let exact = CachePattern::parse("/a").unwrap();
        assert!(exact.matches("r", "/a"));
        assert!(!exact.matches("r", "/ab"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            "   ",
            "events",
            "route:",
            "route:a route:b",
            "/a /b",
            "*",
        ] {
            assert!(CachePattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("/{}", "a".repeat(MAX_PATTERN_LEN));
        assert!(CachePattern::parse(&long).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_matches("/a*", "/a"));
        assert!(glob_matches("/a*", "/abc/d"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("/*/x*y", "/1/x2y"));
        assert!(!glob_matches("/*/x*y", "/1/x2z"));
        assert!(glob_matches("/a*a", "/aa"));
        assert!(!glob_matches("/a*a", "/a"));
        assert!(glob_matches("/x**", "/x"));
    }

    #[test]
    fn the_index_match_escapes_literal_metacharacters() {
        let p = CachePattern::parse("route:r[1] /a?b/*").unwrap();
        assert_eq!(p.index_match(), "r\\[1\\] /a\\?b/* *");
        let p = CachePattern::parse("/api/*").unwrap();
        assert_eq!(p.index_match(), "* /api/* *");
        let p = CachePattern::parse("route:events").unwrap();
        assert_eq!(p.index_match(), "events * *");
    }
}
