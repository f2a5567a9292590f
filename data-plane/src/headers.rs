//! Header rewriting between client and upstream: hop-by-hop headers never
//! cross the proxy, `X-Forwarded-*` tell the upstream who asked. Also the
//! names of the headers only the gateway sets (identity, API key,
//! forwarding marks), which screening removes from every request.

use crate::connection::TlsConnection;
use crate::upstream::deadline::DEADLINE_HEADER;
use http::header::{
    HeaderName, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderValue};
use std::net::IpAddr;

/// `x-user-id`: the token's `sub`.
pub const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
/// `x-tenant-id`: the token's `tenant_id` (never the client's).
pub const X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
/// `x-tenant-source: jwt`.
pub const X_TENANT_SOURCE: HeaderName = HeaderName::from_static("x-tenant-source");
/// `x-user-role`: the token's `role`.
pub const X_USER_ROLE: HeaderName = HeaderName::from_static("x-user-role");
/// `x-user-permissions`: the token's `permissions`, comma-separated.
pub const X_USER_PERMISSIONS: HeaderName = HeaderName::from_static("x-user-permissions");
/// `x-user-tier`: the token's `tier` (`free`, `standard` or `premium`).
pub const X_USER_TIER: HeaderName = HeaderName::from_static("x-user-tier");

/// Identity headers the gateway sets from a verified token. A client's own
/// copies are always removed, on every route. A static, not a `const`:
/// iterating a `const` array of header names builds and drops a copy of it.
pub static IDENTITY_HEADERS: [HeaderName; 6] = [
    X_USER_ID,
    X_TENANT_ID,
    X_TENANT_SOURCE,
    X_USER_ROLE,
    X_USER_PERMISSIONS,
    X_USER_TIER,
];

/// `x-api-key-id`: the id of the API key that authenticated the request.
pub const X_API_KEY_ID: HeaderName = HeaderName::from_static("x-api-key-id");
/// `x-api-key-scopes`: the key's scopes, comma-separated.
pub const X_API_KEY_SCOPES: HeaderName = HeaderName::from_static("x-api-key-scopes");
/// Identity headers of an API-key caller beyond the token's; only the
/// gateway may set them.
pub static API_KEY_IDENTITY_HEADERS: [HeaderName; 2] = [X_API_KEY_ID, X_API_KEY_SCOPES];
/// `X-API-Key`, where a caller presents a key.
pub const API_KEY_HEADER: HeaderName =
    HeaderName::from_static(gateway_common::credentials::API_KEY_HEADER);

/// `x-gateway-forwarded: true`, set on every request sent upstream.
pub const X_GATEWAY_FORWARDED: HeaderName = HeaderName::from_static("x-gateway-forwarded");
/// `x-original-ip`: the client's address as the gateway saw it.
pub const X_ORIGINAL_IP: HeaderName = HeaderName::from_static("x-original-ip");

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Port`: the TLS listener's port, on requests that came over
/// TLS.
pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
/// `x-client-cert-subject`: the subject (RFC 4514) of the client
/// certificate the gateway verified during the TLS handshake. Only the
/// gateway sets it: a client's copy is removed on every route.
pub const X_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 section 7.6.1, plus the legacy ones).
static HOP_BY_HOP: [HeaderName; 9] = [
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
/// The bits of [`HOP_BY_HOP`] in a [`scan`].
const HOP_BY_HOP_BITS: u32 = (1 << 9) - 1;
const HOST_BIT: u32 = 1 << 9;
const FORWARDED_FOR_BIT: u32 = 1 << 10;
const ORIGINAL_IP_BIT: u32 = 1 << 11;
/// The names the proxy sets on a request it sends upstream (a client's
/// copies go): `X-Forwarded-Proto`, `X-Forwarded-Host`,
/// `X-Gateway-Forwarded` and the deadline.
static REPLACED: [HeaderName; 4] = [
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_GATEWAY_FORWARDED,
    DEADLINE_HEADER,
];
const REPLACED_SHIFT: usize = 12;
/// `X-Forwarded-Port`, replaced on requests that came over TLS only.
const FORWARDED_PORT_BIT: u32 = 1 << 16;

/// Bit of `name` in a [`scan`]: the hop-by-hop headers, then `Host`,
/// `X-Forwarded-For`, `X-Original-IP`, the [`REPLACED`] names and
/// `X-Forwarded-Port`.
fn scan_bit(name: &HeaderName) -> u32 {
    let index = match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        "host" => 9,
        "x-forwarded-for" => 10,
        "x-original-ip" => 11,
        "x-forwarded-proto" => 12,
        "x-forwarded-host" => 13,
        "x-gateway-forwarded" => 14,
        "x-request-deadline-ms" => 15,
        "x-forwarded-port" => 16,
        _ => return 0,
    };
    1 << index
}

/// Which of the names the proxy removes or replaces are present: one pass
/// over the names, so that only those present are looked up again.
fn scan(headers: &HeaderMap) -> u32 {
    headers.keys().fold(0, |bits, name| bits | scan_bit(name))
}

/// Removes the hop-by-hop headers and those `Connection` names.
///
/// Most messages carry none or only `Connection: keep-alive`, so one pass
/// over the names finds which are present, only those are removed, and the
/// names a `Connection` header lists are removed without allocating.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let present = scan(headers);
    if present & 1 != 0 {
        remove_connection_options(headers, None);
    }
    remove_listed_hop_by_hop(headers, present);
}

/// Removes the fields the `Connection` headers name (RFC 9110 section
/// 7.6.1), but `keep`, and the `Connection` headers themselves.
///
/// A request's are removed on arrival, from what the client sent, before
/// the gateway sets any header of its own: a client naming `x-user-id`
/// there must not strip the identity the gateway sets later. `keep` is the
/// one header the gateway sets before that (the request id).
pub fn remove_connection_options(headers: &mut HeaderMap, keep: Option<&HeaderName>) {
    // Header values hyper parsed share the read buffer: cloning is cheap,
    // and the usual single `Connection` header needs no vector.
    let mut values = headers.get_all(CONNECTION).iter();
    let first = values.next().cloned();
    let more: Vec<HeaderValue> = values.cloned().collect();
    for value in first.iter().chain(&more) {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',').map(str::trim) {
            let kept = keep.is_some_and(|k| token.eq_ignore_ascii_case(k.as_str()));
            if !token.is_empty()
                && !kept
                && !token.eq_ignore_ascii_case("close")
                && !token.eq_ignore_ascii_case("keep-alive")
            {
                headers.remove(token);
            }
        }
    }
    headers.remove(CONNECTION);
}

/// Removes the hop-by-hop headers of the fixed list found by a [`scan`].
fn remove_listed_hop_by_hop(headers: &mut HeaderMap, present: u32) {
    if present & HOP_BY_HOP_BITS == 0 {
        return;
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
    strip_internal_response_headers(headers);
}

/// The client address as a header value, made once per connection.
pub fn peer_value(ip: IpAddr) -> HeaderValue {
    // An IP address formats to ASCII digits, dots, colons and hex letters.
    HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

static FORWARDED_FOR: HeaderName = X_FORWARDED_FOR;
static FORWARDED_PROTO: HeaderName = X_FORWARDED_PROTO;
static FORWARDED_HOST: HeaderName = X_FORWARDED_HOST;
static GATEWAY_FORWARDED: HeaderName = X_GATEWAY_FORWARDED;
static ORIGINAL_IP: HeaderName = X_ORIGINAL_IP;
static DEADLINE: HeaderName = DEADLINE_HEADER;
static HOST_NAME: HeaderName = HOST;
static FORWARDED_PORT: HeaderName = X_FORWARDED_PORT;
static CLIENT_CERT_SUBJECT: HeaderName = X_CLIENT_CERT_SUBJECT;
static PROTO_HTTP: HeaderValue = HeaderValue::from_static("http");
static PROTO_HTTPS: HeaderValue = HeaderValue::from_static("https");
static TRUE: HeaderValue = HeaderValue::from_static("true");

/// What the proxy tells an upstream about the request, worked out once per
/// request by [`forwarding`]: `X-Forwarded-For` (the client's list with the
/// peer appended), `X-Forwarded-Host` (the original host), `X-Original-IP`
/// (unless set beforehand from trusted proxies), with `X-Forwarded-Proto`
/// (`http`, or `https` with `X-Forwarded-Port` and the verified client
/// certificate's subject when the request came over TLS) and
/// `X-Gateway-Forwarded: true`.
///
/// The proxy hands these to the upstream client as [`Fields`], written
/// straight into the request head, rather than inserting them into the
/// request's `HeaderMap` (hashing each name) on every request.
#[derive(Debug, Clone)]
pub struct Forwarding {
    forwarded_for: HeaderValue,
    forwarded_host: Option<HeaderValue>,
    original_ip: Option<HeaderValue>,
    /// The TLS facts of a request that came over TLS.
    tls: Option<TlsConnection>,
}

/// The most fields [`Forwarding::fields`] gives.
const MAX_FIELDS: usize = 9;

/// Header fields an upstream request carries besides those of its
/// `HeaderMap`, whose copies of the same names [`forwarding`] removed.
pub struct Fields<'a> {
    list: [(&'a HeaderName, &'a HeaderValue); MAX_FIELDS],
    len: usize,
}

impl<'a> Fields<'a> {
    fn push(&mut self, name: &'a HeaderName, value: &'a HeaderValue) {
        if let Some(slot) = self.list.get_mut(self.len) {
            *slot = (name, value);
            self.len += 1;
        }
    }

    /// The fields, in the order they are written.
    pub fn as_slice(&self) -> &[(&'a HeaderName, &'a HeaderValue)] {
        self.list.get(..self.len).unwrap_or_default()
    }
}

impl Forwarding {
    /// The fields of a request to an instance whose `Host` is `host`, with
    /// `deadline` (milliseconds left) as `x-request-deadline-ms`.
    pub fn fields<'a>(&'a self, host: &'a HeaderValue, deadline: &'a HeaderValue) -> Fields<'a> {
        let mut fields = Fields {
            list: [(&HOST_NAME, host); MAX_FIELDS],
            len: 0,
        };
        fields.push(&HOST_NAME, host);
        self.each(|name, value| fields.push(name, value));
        fields.push(&DEADLINE, deadline);
        fields
    }

    /// Inserts the forwarding headers (all but `Host` and the deadline)
    /// into `headers`, for a request built as a `HeaderMap`.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        self.each(|name, value| {
            headers.insert(name, value.clone());
        });
    }

    /// Each forwarding header but `Host` and the deadline, in the order
    /// they are written.
    fn each<'a>(&'a self, mut field: impl FnMut(&'a HeaderName, &'a HeaderValue)) {
        field(&FORWARDED_FOR, &self.forwarded_for);
        match &self.tls {
            None => field(&FORWARDED_PROTO, &PROTO_HTTP),
            Some(tls) => {
                field(&FORWARDED_PROTO, &PROTO_HTTPS);
                field(&FORWARDED_PORT, tls.port());
                if let Some(subject) = tls.client_subject() {
                    field(&CLIENT_CERT_SUBJECT, subject);
                }
            }
        }
        field(&GATEWAY_FORWARDED, &TRUE);
        if let Some(ip) = &self.original_ip {
            field(&ORIGINAL_IP, ip);
        }
        if let Some(host) = &self.forwarded_host {
            field(&FORWARDED_HOST, host);
        }
    }
}

/// Prepares the headers of a request going upstream: hop-by-hop headers
/// and the client's copies of `Host`, `X-Forwarded-*`,
/// `X-Gateway-Forwarded` and the deadline removed, and what replaces them
/// worked out. The fields a client's `Connection` named are not looked at
/// here: screening removed them on arrival
/// ([`remove_connection_options`]), so that nothing the gateway set since
/// goes with them. `X-Forwarded-For` extends the client's list with `peer`;
/// `X-Forwarded-Host` is the original host (the `Host` header, else
/// `uri_host`). A request that came over TLS (`tls`, taken from the
/// request's [`TlsConnection`] extension) is forwarded as `https` with the
/// TLS listener's port (the client's `X-Forwarded-Port` removed); a
/// client's `X-Forwarded-Proto` is never believed, whoever sent it.
pub fn forwarding(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    uri_host: Option<&str>,
    tls: Option<TlsConnection>,
) -> Forwarding {
    let present = scan(headers);
    remove_listed_hop_by_hop(headers, present);
    let host = if present & HOST_BIT != 0 {
        headers.remove(HOST)
    } else {
        None
    };
    let forwarded_host = host.or_else(|| uri_host.and_then(|h| HeaderValue::from_str(h).ok()));
    let forwarded_for = if present & FORWARDED_FOR_BIT != 0 {
        let mut joined = Vec::new();
        for existing in headers.get_all(X_FORWARDED_FOR) {
            joined.extend_from_slice(existing.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(peer.as_bytes());
        headers.remove(X_FORWARDED_FOR);
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer.clone())
    } else {
        peer.clone()
    };
    for (i, name) in REPLACED.iter().enumerate() {
        if present & (1 << (REPLACED_SHIFT + i)) != 0 {
            headers.remove(name);
        }
    }
    // Set beforehand to the resolved client address (trusted proxies); a
    // client's own copy was removed on arrival.
    let original_ip = (present & ORIGINAL_IP_BIT == 0).then(|| peer.clone());
    if tls.is_some() && present & FORWARDED_PORT_BIT != 0 {
        headers.remove(X_FORWARDED_PORT);
    }
    Forwarding {
        forwarded_for,
        forwarded_host,
        original_ip,
        tls,
    }
}

/// Removes `x-internal-*` headers from an upstream response. Nothing is
/// allocated unless one is present.
pub fn strip_internal_response_headers(headers: &mut HeaderMap) {
    remove_prefixed(headers, "x-internal-");
}

/// The request's declared body length, when its `Content-Length` is a number.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
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
    fn connection_options_go_but_the_kept_one() {
        let rid = HeaderName::from_static("x-request-id");
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("close, X-Foo, x-request-id"),
        );
        h.append(CONNECTION, HeaderValue::from_static("x-bar, not a name"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("x-bar", HeaderValue::from_static("2"));
        h.insert(rid.clone(), HeaderValue::from_static("r-1"));
        h.insert("x-kept", HeaderValue::from_static("3"));
        remove_connection_options(&mut h, Some(&rid));
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[&rid], "r-1");
        assert_eq!(h["x-kept"], "3");
    }

    #[test]
    fn forwarding_leaves_what_a_connection_header_names() {
        // Screening removed the client's options on arrival; a name listed
        // now is one the gateway set since, and it stays.
        let peer = peer_value("10.1.2.3".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("x-user-id, x-original-ip"),
        );
        h.insert("x-user-id", HeaderValue::from_static("u-1"));
        h.insert("x-original-ip", HeaderValue::from_static("203.0.113.7"));
        let seen = sent(&mut h, &peer, None);
        assert_eq!(seen["x-user-id"], "u-1");
        assert_eq!(seen["x-original-ip"], "203.0.113.7");
        assert!(!seen.contains_key(CONNECTION));
    }

    /// The head an upstream would see: what is left of `h` after
    /// [`forwarding`], plus the fields, none of them present twice.
    fn sent(h: &mut HeaderMap, peer: &HeaderValue, uri_host: Option<&str>) -> HeaderMap {
        sent_over(h, peer, uri_host, None)
    }

    fn sent_over(
        h: &mut HeaderMap,
        peer: &HeaderValue,
        uri_host: Option<&str>,
        tls: Option<&TlsConnection>,
    ) -> HeaderMap {
        let forwarding = forwarding(h, peer, uri_host, tls.cloned());
        let host = HeaderValue::from_static("10.0.0.1:80");
        let deadline = HeaderValue::from_static("250");
        let mut seen = h.clone();
        for (name, value) in forwarding.fields(&host, &deadline).as_slice() {
            assert!(!seen.contains_key(*name), "{name} sent twice");
            seen.insert((*name).clone(), (*value).clone());
        }
        seen
    }

    #[test]
    fn forwarded_headers() {
        let peer = peer_value("10.1.2.3".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("api.example.com"));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(DEADLINE_HEADER, HeaderValue::from_static("90000"));
        h.insert(CONNECTION, HeaderValue::from_static("close"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let seen = sent(&mut h, &peer, None);
        assert_eq!(seen[HOST], "10.0.0.1:80");
        assert_eq!(seen[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(seen[X_FORWARDED_PROTO], "http");
        assert_eq!(seen[X_FORWARDED_HOST], "api.example.com");
        assert_eq!(seen["x-gateway-forwarded"], "true");
        assert_eq!(seen["x-original-ip"], "10.1.2.3");
        assert_eq!(seen[DEADLINE_HEADER], "250");
        assert_eq!(seen["x-kept"], "1");
        assert!(!seen.contains_key(CONNECTION));
        assert_eq!(seen.len(), 8);

        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("spoofed"));
        h.insert("x-gateway-forwarded", HeaderValue::from_static("false"));
        let seen = sent(&mut h, &peer, None);
        assert_eq!(seen[X_FORWARDED_FOR], "10.1.2.3");
        assert_eq!(seen["x-gateway-forwarded"], "true");
        assert!(!seen.contains_key(X_FORWARDED_HOST));

        let mut h = HeaderMap::new();
        let seen = sent(&mut h, &peer, Some("from-uri.example.com"));
        assert_eq!(seen[X_FORWARDED_HOST], "from-uri.example.com");
    }

    #[test]
    fn original_ip_set_beforehand_is_kept() {
        let peer = peer_value("10.1.2.3".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert("x-original-ip", HeaderValue::from_static("203.0.113.7"));
        let seen = sent(&mut h, &peer, None);
        assert_eq!(seen["x-original-ip"], "203.0.113.7");
        assert_eq!(seen.get_all("x-original-ip").iter().count(), 1);
    }

    #[test]
    fn insert_into_a_header_map() {
        let peer = peer_value("10.1.2.3".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("api.example.com"));
        forwarding(&mut h, &peer, None, None).insert_into(&mut h);
        assert!(!h.contains_key(HOST));
        assert_eq!(h[X_FORWARDED_FOR], "10.1.2.3");
        assert_eq!(h[X_FORWARDED_HOST], "api.example.com");
        assert_eq!(h["x-gateway-forwarded"], "true");
        assert_eq!(h["x-original-ip"], "10.1.2.3");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert!(!h.contains_key(X_FORWARDED_PORT));

        let tls = TlsConnection::new(8443, Some(HeaderValue::from_static("CN=p")));
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_PORT, HeaderValue::from_static("1"));
        forwarding(&mut h, &peer, None, Some(tls.clone())).insert_into(&mut h);
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_PORT], "8443");
        assert_eq!(h[X_CLIENT_CERT_SUBJECT], "CN=p");
    }

    #[test]
    fn requests_over_tls_are_forwarded_as_https_with_the_listener_port() {
        let peer = peer_value("10.1.2.3".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        h.insert(X_FORWARDED_PORT, HeaderValue::from_static("80"));
        let tls = TlsConnection::new(8443, None);
        let seen = sent_over(&mut h, &peer, None, Some(&tls));
        assert_eq!(seen[X_FORWARDED_PROTO], "https");
        assert_eq!(seen[X_FORWARDED_PORT], "8443");
        assert_eq!(seen.get_all(X_FORWARDED_PORT).iter().count(), 1);
        assert!(!seen.contains_key(X_CLIENT_CERT_SUBJECT));

        let subject = HeaderValue::from_static("CN=partner,O=Acme");
        let tls = TlsConnection::new(443, Some(subject));
        let seen = sent_over(&mut HeaderMap::new(), &peer, None, Some(&tls));
        assert_eq!(seen[X_FORWARDED_PORT], "443");
        assert_eq!(seen[X_CLIENT_CERT_SUBJECT], "CN=partner,O=Acme");

        // A plain request keeps the client's port header, as before.
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_PORT, HeaderValue::from_static("80"));
        let seen = sent(&mut h, &peer, None);
        assert_eq!(seen[X_FORWARDED_PROTO], "http");
        assert_eq!(seen[X_FORWARDED_PORT], "80");
    }
}
