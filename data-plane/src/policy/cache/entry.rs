//! One cached answer: what is stored (status, kept headers, body), how it
//! is encoded in Redis, and which upstream answers may be stored at all.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{AGE, CACHE_CONTROL, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::time::Duration;

/// Magic and format version of an encoded entry.
const MAGIC: &[u8; 4] = b"GWC1";

/// Headers of the upstream answer never stored: they belong to one
/// exchange, not to the resource.
const NOT_STORED: [HeaderName; 4] = [
    SET_COOKIE,
    AGE,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-cache"),
];

/// A cached answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The full cache key text, compared on every read.
    pub key: String,
    /// Route, for invalidation of the in-memory layer.
    pub route: String,
    /// Normalised path, for invalidation of the in-memory layer.
    pub path: String,
    /// Status code.
    pub status: u16,
    /// Headers kept.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Bytes,
    /// When it was stored (unix ms).
    pub stored_at_ms: u64,
    /// When it expires (unix ms).
    pub expires_at_ms: u64,
}

impl Entry {
    /// Approximate memory it takes, for the in-memory layer's size bound.
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 16)
            .sum();
        let total = self.body.len() + headers + self.key.len() + self.path.len() + 128;
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// The headers of the answer worth keeping.
    pub fn keep_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        headers
            .iter()
            .filter(|(name, _)| !NOT_STORED.contains(name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    /// Binary form stored in Redis.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.weight() as usize);
        out.put_slice(MAGIC);
        for text in [&self.key, &self.route, &self.path] {
            put_bytes(&mut out, text.as_bytes());
        }
        out.put_u16(self.status);
        out.put_u64(self.stored_at_ms);
        out.put_u64(self.expires_at_ms);
        out.put_u32(self.headers.len() as u32);
        for (name, value) in &self.headers {
            put_bytes(&mut out, name.as_str().as_bytes());
            put_bytes(&mut out, value.as_bytes());
        }
        put_bytes(&mut out, &self.body);
        out.freeze()
    }

    /// Reads [`Self::encode`]'s output; `None` for anything else (an entry
    /// of another format version is simply a miss).
    pub fn decode(mut data: Bytes) -> Option<Entry> {
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            return None;
        }
        data.advance(MAGIC.len());
        let key = take_string(&mut data)?;
        let route = take_string(&mut data)?;
        let path = take_string(&mut data)?;
        if data.remaining() < 2 + 8 + 8 + 4 {
            return None;
        }
        let status = data.get_u16();
        let stored_at_ms = data.get_u64();
        let expires_at_ms = data.get_u64();
        let count = data.get_u32() as usize;
        let mut headers = Vec::with_capacity(count.min(256));
        for _ in 0..count {
            let name = HeaderName::from_bytes(&take_bytes(&mut data)?).ok()?;
            let value = HeaderValue::from_maybe_shared(take_bytes(&mut data)?).ok()?;
            headers.push((name, value));
        }
        let body = take_bytes(&mut data)?;
        StatusCode::from_u16(status).ok()?;
        Some(Entry {
            key,
            route,
            path,
            status,
            headers,
            body,
            stored_at_ms,
            expires_at_ms,
        })
    }
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(bytes.len() as u32);
    out.put_slice(bytes);
}

fn take_bytes(data: &mut Bytes) -> Option<Bytes> {
    if data.remaining() < 4 {
        return None;
    }
    let len = data.get_u32() as usize;
    if data.remaining() < len {
        return None;
    }
    Some(data.split_to(len))
}

fn take_string(data: &mut Bytes) -> Option<String> {
    String::from_utf8(take_bytes(data)?.to_vec()).ok()
}

/// How long an upstream answer may be kept, at most `ttl`; `None` when it
/// must not be stored: a status other than 2xx (or a 206), a `Set-Cookie`,
/// a `Vary` (the key carries no request headers), or a `Cache-Control`
/// with `no-store`, `private`, `no-cache` or a zero `max-age`/`s-maxage`.
/// A smaller `s-maxage` (else `max-age`) shortens the TTL.
pub fn storable_ttl(status: StatusCode, headers: &HeaderMap, ttl: Duration) -> Option<Duration> {
    if !status.is_success() || status == StatusCode::PARTIAL_CONTENT {
        return None;
    }
    if headers.contains_key(SET_COOKIE) || headers.contains_key(VARY) {
        return None;
    }
    let mut max_age = None;
    let mut s_maxage = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(text) = value.to_str() else {
            return None;
        };
        for directive in text.split(',') {
            let directive = directive.trim();
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive, None),
            };
            let seconds = || arg.and_then(|a| a.parse::<u64>().ok());
            if name.eq_ignore_ascii_case("no-store")
                || name.eq_ignore_ascii_case("private")
                || name.eq_ignore_ascii_case("no-cache")
            {
                return None;
            } else if name.eq_ignore_ascii_case("s-maxage") {
                s_maxage = Some(seconds()?);
            } else if name.eq_ignore_ascii_case("max-age") {
                max_age = Some(seconds()?);
            }
        }
    }
    let ttl = match s_maxage.or(max_age) {
        Some(0) => return None,
        Some(seconds) => ttl.min(Duration::from_secs(seconds)),
        None => ttl,
    };
    Some(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        map
    }

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn entries_round_trip_and_garbage_is_a_miss() {
        let entry = Entry {
            key: "v1|r1:e".into(),
            route: "events".into(),
            path: "/api/events".into(),
            status: 200,
            headers: Entry::keep_headers(&headers(&[
                ("content-type", "application/json"),
                ("x-request-id", "abc"),
                ("etag", "\"1\""),
            ])),
            body: Bytes::from_static(b"{\"events\":[]}"),
            stored_at_ms: 1,
            expires_at_ms: 60_001,
        };
        assert_eq!(entry.headers.len(), 2, "x-request-id is not stored");
        let encoded = entry.encode();
        assert_eq!(Entry::decode(encoded.clone()), Some(entry));
        assert_eq!(Entry::decode(encoded.slice(..encoded.len() - 1)), None);
        assert_eq!(Entry::decode(Bytes::from_static(b"GWC0xxxx")), None);
        assert_eq!(Entry::decode(Bytes::new()), None);
    }

    #[test]
    fn what_may_be_stored() {
        let ok = StatusCode::OK;
        assert_eq!(storable_ttl(ok, &HeaderMap::new(), TTL), Some(TTL));
        assert_eq!(
            storable_ttl(StatusCode::NO_CONTENT, &HeaderMap::new(), TTL),
            Some(TTL)
        );
        for status in [
            StatusCode::PARTIAL_CONTENT,
            StatusCode::NOT_FOUND,
            StatusCode::MOVED_PERMANENTLY,
            StatusCode::INTERNAL_SERVER_ERROR,
        ] {
            assert_eq!(storable_ttl(status, &HeaderMap::new(), TTL), None);
        }
        for refused in [
            headers(&[("cache-control", "no-store")]),
            headers(&[("cache-control", "public, No-Store")]),
            headers(&[("cache-control", "private, max-age=60")]),
            headers(&[("cache-control", "no-cache")]),
            headers(&[("cache-control", "max-age=0")]),
            headers(&[("cache-control", "max-age=soon")]),
            headers(&[("cache-control", "public"), ("cache-control", "no-store")]),
            headers(&[("set-cookie", "session=1")]),
            headers(&[("vary", "accept-language")]),
        ] {
            assert_eq!(storable_ttl(ok, &refused, TTL), None, "{refused:?}");
        }
    }

    #[test]
    fn upstream_max_age_only_shortens_the_ttl() {
        let ok = StatusCode::OK;
        assert_eq!(
            storable_ttl(ok, &headers(&[("cache-control", "public, max-age=5")]), TTL),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            storable_ttl(ok, &headers(&[("cache-control", "max-age=3600")]), TTL),
            Some(TTL)
        );
        assert_eq!(
            storable_ttl(
                ok,
                &headers(&[("cache-control", "max-age=5, s-maxage=10")]),
                TTL
            ),
            Some(Duration::from_secs(10))
        );
    }
}
