//! Header rewriting between client and upstream: hop-by-hop headers never
//! cross the proxy, `X-Forwarded-*` tell the upstream who asked.

use http::header::{
    HeaderName, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderValue};
use std::net::IpAddr;

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 section 7.6.1, plus the legacy ones).
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Position of `name` in [`HOP_BY_HOP`], if it is one.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Removes the hop-by-hop headers and those `Connection` names.
///
/// Most messages carry none or only `Connection: keep-alive`, so one pass
/// over the names finds which are present, only those are removed, and the
/// names a `Connection` header lists are removed without allocating.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let present = headers
        .keys()
        .filter_map(hop_by_hop_index)
        .fold(0u16, |bits, i| bits | 1 << i);
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Header values hyper parsed share the read buffer: cloning is cheap,
        // and the usual single `Connection` header needs no vector.
        let mut values = headers.get_all(CONNECTION).iter();
        let first = values.next().cloned();
        let more: Vec<HeaderValue> = values.cloned().collect();
        for value in first.iter().chain(&more) {
            let Ok(text) = value.to_str() else { continue };
            for token in text.split(',').map(str::trim) {
                if !token.is_empty()
                    && !token.eq_ignore_ascii_case("close")
                    && !token.eq_ignore_ascii_case("keep-alive")
                {
                    headers.remove(token);
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Removes every header whose (lower-case) name starts with `prefix`.
/// Nothing is allocated unless one is present.
pub fn remove_prefixed(headers: &mut HeaderMap, prefix: &str) {
    if !headers.keys().any(|n| n.as_str().starts_with(prefix)) {
        return;
    }
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with(prefix))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Prepares the headers of a response going to the client: hop-by-hop
/// and `x-internal-*` headers removed.
pub fn prepare_response(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    crate::security::strip_internal_response_headers(headers);
}

/// The client address as a header value, made once per connection.
pub fn peer_value(ip: IpAddr) -> HeaderValue {
    // An IP address formats to ASCII digits, dots, colons and hex letters.
    HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Prepares the headers of a request going upstream: hop-by-hop removed,
/// `Host` set to `upstream_host` (the instance), `X-Forwarded-For` extended
/// with `peer`, `X-Forwarded-Proto: http`, `X-Forwarded-Host` set to the
/// original host (the `Host` header, else `uri_host`).
pub fn prepare_request(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    upstream_host: &HeaderValue,
    uri_host: Option<&str>,
) {
    remove_hop_by_hop(headers);
    let host = headers
        .insert(HOST, upstream_host.clone())
        .or_else(|| uri_host.and_then(|h| HeaderValue::from_str(h).ok()));
    let forwarded_for = match headers.get(X_FORWARDED_FOR) {
        Some(existing) => {
            let mut joined = Vec::with_capacity(existing.len() + 2 + peer.len());
            joined.extend_from_slice(existing.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer.clone())
        }
        None => peer.clone(),
    };
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    headers.insert(
        crate::security::X_GATEWAY_FORWARDED,
        HeaderValue::from_static("true"),
    );
    // Set beforehand to the resolved client address (trusted proxies);
    // a client's own copy was removed on arrival.
    if !headers.contains_key(crate::security::X_ORIGINAL_IP) {
        headers.insert(crate::security::X_ORIGINAL_IP, peer.clone());
    }
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_headers() {
        let peer = peer_value("10.1.2.3".parse().unwrap());
        let upstream = HeaderValue::from_static("10.0.0.1:80");
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("api.example.com"));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        prepare_request(&mut h, &peer, &upstream, None);
        assert_eq!(h[HOST], "10.0.0.1:80");
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 10.1.2.3");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "api.example.com");
        assert_eq!(h["x-gateway-forwarded"], "true");
        assert_eq!(h["x-original-ip"], "10.1.2.3");

        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("spoofed"));
        prepare_request(&mut h, &peer, &upstream, None);
        assert_eq!(h[X_FORWARDED_FOR], "10.1.2.3");
        assert!(!h.contains_key(X_FORWARDED_HOST));
        let mut h = HeaderMap::new();
        prepare_request(&mut h, &peer, &upstream, Some("from-uri.example.com"));
        assert_eq!(h[X_FORWARDED_HOST], "from-uri.example.com");
    }
}
