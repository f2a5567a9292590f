//! Per-endpoint timeout keys (`"METHOD /path"`): their syntax and how a
//! request is matched against them.

use super::shared::METHODS;

/// A segment of an [`EndpointPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointSegment {
    /// Must equal this text.
    Literal(String),
    /// Any one segment (`{name}`).
    Param,
    /// Any rest of the path, including nothing (a final `*`).
    Rest,
}

/// A per-endpoint timeout key, `"METHOD /path"`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPattern {
    /// Upper-case method.
    pub method: String,
    /// Path segments.
    pub segments: Vec<EndpointSegment>,
}

impl EndpointPattern {
    /// Parses `"POST /payments/{id}/capture"` or `"GET /reports/*"`.
    pub fn parse(key: &str) -> Result<EndpointPattern, String> {
        let (method, path) = key
            .split_once(' ')
            .ok_or_else(|| "must be \"METHOD /path\"".to_string())?;
        if !METHODS.contains(&method) {
            return Err(format!("unknown method {method:?} (use upper case)"));
        }
        let path = path.trim();
        if !path.starts_with('/') {
            return Err("the path must start with '/'".into());
        }
        let parts: Vec<&str> = path[1..].split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = if *part == "*" {
                if i + 1 != parts.len() {
                    return Err("'*' may only be the last segment".into());
                }
                EndpointSegment::Rest
            } else if part.starts_with('{') && part.ends_with('}') && part.len() > 2 {
                EndpointSegment::Param
            } else if part.contains(['{', '}', '*', ' ', '?', '#']) {
                return Err(format!("bad path segment {part:?}"));
            } else {
                EndpointSegment::Literal(part.to_string())
            };
            segments.push(segment);
        }
        Ok(EndpointPattern {
            method: method.to_string(),
            segments,
        })
    }

    /// Whether a request for `path` with `method` is this endpoint.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if method != self.method {
            return false;
        }
        let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
        for segment in &self.segments {
            match segment {
                EndpointSegment::Rest => return true,
                EndpointSegment::Param => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                EndpointSegment::Literal(text) => match parts.next() {
                    Some(p) if p == text => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_patterns_match_methods_and_segments() {
        let p = EndpointPattern::parse("POST /payments/{id}/capture").unwrap();
        assert!(p.matches("POST", "/payments/7/capture"));
        assert!(!p.matches("GET", "/payments/7/capture"));
        assert!(!p.matches("POST", "/payments//capture"));
        assert!(!p.matches("POST", "/payments/7/capture/x"));
        let rest = EndpointPattern::parse("GET /reports/*").unwrap();
        assert!(rest.matches("GET", "/reports"));
        assert!(rest.matches("GET", "/reports/a/b"));
        assert!(!rest.matches("GET", "/report"));
        let root = EndpointPattern::parse("GET /").unwrap();
        assert!(root.matches("GET", "/"));
        assert!(!root.matches("GET", "/x"));
    }
}
