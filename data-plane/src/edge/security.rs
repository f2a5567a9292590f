//! Request hygiene before routing: path normalisation (the path that is
//! routed, checked against public paths and sent upstream is one and the
//! same), refusal of ambiguous requests, removal of headers a client must
//! never set, and the security event log.

use crate::headers::{API_KEY_HEADER, API_KEY_IDENTITY_HEADERS, IDENTITY_HEADERS};
use http::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Uri, Version};
use std::borrow::Cow;

pub use crate::headers::{X_GATEWAY_FORWARDED, X_ORIGINAL_IP};

/// Request headers that only the gateway may set: a client's copies are
/// removed before anything else looks at the request (the seed's blocked
/// list, the identity headers, the verified client certificate's subject,
/// and every `x-internal-*`).
///
/// The lists are statics: iterating a `const` array of header names builds
/// and drops a copy of it each time.
static CLIENT_FORBIDDEN: [HeaderName; 6] = [
    X_GATEWAY_FORWARDED,
    X_ORIGINAL_IP,
    crate::headers::X_CLIENT_CERT_SUBJECT,
    HeaderName::from_static("x-admin-token"),
    HeaderName::from_static("x-privileged"),
    HeaderName::from_static("x-real-ip"),
];

/// Headers the gateway sets on what it forwards, in place of a client's
/// copies: their spellings with `_` are dropped on every route.
static SET_BY_GATEWAY: [HeaderName; 6] = [
    crate::headers::X_FORWARDED_FOR,
    crate::headers::X_FORWARDED_PROTO,
    crate::headers::X_FORWARDED_HOST,
    crate::headers::X_FORWARDED_PORT,
    crate::upstream::deadline::DEADLINE_HEADER,
    crate::edge::errors::X_REQUEST_ID,
];

/// Logs a security event as one structured line with a `severity` field
/// (`low`, `medium`, `high`, `critical`), as the seed's `logSecurityEvent`.
#[macro_export]
macro_rules! security_event {
    ($event:expr, $severity:expr, $($field:tt)*) => {
        ::tracing::warn!(
            target: "security",
            security_event = $event,
            severity = $severity,
            $($field)*
        )
    };
}

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2f` or `%5c`: an encoded separator.
    EncodedSeparator,
    /// A raw backslash.
    Backslash,
    /// NUL, CR, LF or another control character, raw or encoded.
    Control,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// A segment ending in `.` or whitespace (`/admin.`, `/admin%20`).
    TrailingDotOrSpace,
    /// `..;x` or `.;x`: a dot segment with parameters.
    DotSegmentParams,
}

impl PathError {
    /// For people and logs.
    pub fn message(self) -> &'static str {
        match self {
            Self::EncodedSeparator => "Encoded path separators are not allowed",
            Self::Backslash => "Backslashes are not allowed in the path",
            Self::Control => "Control characters are not allowed in the path",
            Self::BadEscape => "Malformed percent-encoding in the path",
            Self::TrailingDotOrSpace => "Path segments must not end with a dot or whitespace",
            Self::DotSegmentParams => "Dot segments with parameters are not allowed",
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether the path needs no normalisation (the common case, no work).
fn is_plain(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' | b';' | b'\\' => return false,
            0..=0x20 | 0x7f => return false,
            b'/' if prev == b'/' => return false,
            // A segment that ends in a dot: `.`, `..`, `/admin.`.
            b'.' if matches!(path.get(i + 1), None | Some(b'/')) => return false,
            _ => {}
        }
        prev = b;
    }
    true
}

/// Normalises an origin-form request path: unreserved characters
/// percent-decoded (other escapes kept, hex upper-cased), `//` collapsed,
/// `.` and `..` segments resolved (never above the root), a trailing `/`
/// kept. `;parameters` stay in the path (they are the upstream's business)
/// but are ignored when public paths are matched. Comparison stays
/// case-sensitive, as routing is.
///
/// Refused: encoded `/` or `\`, raw `\`, NUL/CR/LF and other controls (raw
/// or encoded), malformed escapes, segments ending in `.` or whitespace,
/// dot segments with parameters.
///
/// Returns `Cow::Borrowed` when the path is already normal.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if !path.starts_with('/') || is_plain(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let mut segments: Vec<String> = Vec::new();
    let raw_segments: Vec<&str> = path[1..].split('/').collect();
    let last = raw_segments.len() - 1;
    let mut trailing_slash = false;
    for (i, raw) in raw_segments.iter().enumerate() {
        let mut seg = String::with_capacity(raw.len());
        let mut ends_with_space = false;
        let rb = raw.as_bytes();
        let mut j = 0;
        while j < rb.len() {
            let b = rb[j];
            match b {
                b'\\' => return Err(PathError::Backslash),
                0..=0x1f | 0x7f => return Err(PathError::Control),
                b'%' => {
                    let (Some(h), Some(l)) = (
                        rb.get(j + 1).copied().and_then(hex),
                        rb.get(j + 2).copied().and_then(hex),
                    ) else {
                        return Err(PathError::BadEscape);
                    };
                    let d = h << 4 | l;
                    match d {
                        b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                        0..=0x1f | 0x7f => return Err(PathError::Control),
                        _ if is_unreserved(d) => {
                            seg.push(d as char);
                            ends_with_space = false;
                        }
                        _ => {
                            seg.push('%');
                            seg.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                            seg.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
                            ends_with_space = d == b' ';
                        }
                    }
                    j += 3;
                    continue;
                }
                b' ' => {
                    ends_with_space = true;
                    seg.push(' ');
                }
                _ => {
                    ends_with_space = false;
                    seg.push(b as char);
                }
            }
            j += 1;
        }
        let (name, has_params) = match seg.split_once(';') {
            Some((name, _)) => (name, true),
            None => (seg.as_str(), false),
        };
        let name_ends_space = if has_params {
            name.ends_with(' ') || name.ends_with("%20")
        } else {
            ends_with_space
        };
        match name {
            "" if !has_params => {
                if i == last {
                    trailing_slash = true;
                }
            }
            "." | ".." if has_params => return Err(PathError::DotSegmentParams),
            "." => trailing_slash = i == last,
            ".." => {
                segments.pop();
                trailing_slash = i == last;
            }
            _ => {
                if name.ends_with('.') || name_ends_space {
                    return Err(PathError::TrailingDotOrSpace);
                }
                segments.push(seg);
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    if out == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(out))
    }
}

/// One segment of a public path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// Exactly this text.
    Literal(String),
    /// Text with `*` wildcards within the segment.
    Wild(String),
    /// `**`: any number of segments, none included.
    Any,
    /// A trailing `/`: one or more segments.
    Some,
}

/// A route's public paths, compiled once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicPaths {
    patterns: Vec<Vec<Seg>>,
}

impl PublicPaths {
    /// Compiles validated patterns (see `gateway_common::config::AuthConfig`).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Self {
        let patterns = patterns
            .iter()
            .map(|p| {
                let p = p.as_ref();
                let (body, tail) = if let Some(body) = p.strip_suffix("/*") {
                    (body, Some(Seg::Any))
                } else if p.len() > 1 && p.ends_with('/') {
                    (&p[..p.len() - 1], Some(Seg::Some))
                } else {
                    (p, None)
                };
                let mut segs: Vec<Seg> = body
                    .split('/')
                    .skip(1)
                    .filter(|s| !(s.is_empty() && body.len() <= 1 && tail.is_some()))
                    .map(|s| match s {
                        "**" => Seg::Any,
                        s if s.contains('*') => Seg::Wild(s.to_string()),
                        s => Seg::Literal(s.to_string()),
                    })
                    .collect();
                segs.extend(tail);
                segs
            })
            .collect();
        Self { patterns }
    }

    /// Whether there is no public path.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the normalised `path` is public (`;parameters` ignored).
    pub fn matches(&self, path: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let segments: Vec<&str> = path
            .strip_prefix('/')
            .unwrap_or(path)
            .split('/')
            .map(|s| s.split(';').next().unwrap_or(""))
            .collect();
        self.patterns
            .iter()
            .any(|pattern| match_segments(pattern, &segments))
    }
}

fn match_segments(pattern: &[Seg], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((Seg::Any, rest)) => (0..=path.len()).any(|i| match_segments(rest, &path[i..])),
        Some((Seg::Some, rest)) => (1..=path.len()).any(|i| match_segments(rest, &path[i..])),
        Some((seg, rest)) => match path.split_first() {
            Some((first, tail)) => {
                let ok = match seg {
                    Seg::Literal(text) => text == first,
                    Seg::Wild(glob) => wildcard(glob.as_bytes(), first.as_bytes()),
                    Seg::Any | Seg::Some => false,
                };
                ok && match_segments(rest, tail)
            }
            None => false,
        },
    }
}

/// `*` matches any run of bytes (within one segment).
fn wildcard(glob: &[u8], text: &[u8]) -> bool {
    match glob.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| wildcard(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && wildcard(rest, &text[1..]),
    }
}

/// Why a request head was refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Both `Content-Length` and `Transfer-Encoding` (request smuggling).
    ConflictingFraming,
    /// More than one `Content-Length`.
    DuplicateContentLength,
    /// More than one `Authorization`: which one would be verified, and
    /// which one would the service read?
    DuplicateAuthorization,
    /// More than one `Host` (RFC 9112 section 3.2).
    DuplicateHost,
    /// More than one `X-API-Key`.
    DuplicateApiKey,
    /// An HTTP/1.1 request without `Host` (RFC 9112 section 3.2).
    MissingHost,
    /// An HTTP/2 request whose `Host` names another authority than its
    /// `:authority` (RFC 9113 section 8.3.1): which one is routed, and which
    /// one would the service read?
    HostAuthorityMismatch,
}

impl HeadError {
    /// For people and logs.
    pub fn message(self) -> &'static str {
        match self {
            Self::ConflictingFraming => {
                "Requests must not carry both Content-Length and Transfer-Encoding"
            }
            Self::DuplicateContentLength => "Requests must carry at most one Content-Length",
            Self::DuplicateAuthorization => "Requests must carry at most one Authorization",
            Self::DuplicateHost => "Requests must carry at most one Host",
            Self::DuplicateApiKey => "Requests must carry at most one X-API-Key",
            Self::MissingHost => "HTTP/1.1 requests must carry a Host",
            Self::HostAuthorityMismatch => "The Host header and :authority must agree",
        }
    }

    /// The security event it is logged as.
    pub fn event(self) -> &'static str {
        match self {
            Self::ConflictingFraming | Self::DuplicateContentLength => "malformed_request",
            Self::DuplicateAuthorization | Self::DuplicateHost | Self::DuplicateApiKey => {
                "duplicate_header"
            }
            Self::MissingHost => "missing_host",
            Self::HostAuthorityMismatch => "host_mismatch",
        }
    }
}

/// What screening did to a request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screened {
    /// The first header only the gateway may set that the client sent (all
    /// of them were removed): a spoofing attempt worth logging.
    pub spoofed: Option<HeaderName>,
    /// Whether a name contains `_`. Such headers stay until the route is
    /// known; see [`drop_underscore_headers`].
    pub underscores: bool,
}

/// What one pass over a request's header names found.
#[derive(Debug, Default)]
struct Survey {
    host: bool,
    connection: bool,
    content_length: bool,
    transfer_encoding: bool,
    forbidden: bool,
    underscores: bool,
}

/// One pass over the names. Most names are standard ones, told apart by
/// comparing a small tag; the others are read once for `x-` and `_`.
fn survey(headers: &HeaderMap) -> Survey {
    let mut found = Survey::default();
    for name in headers.keys() {
        if *name == HOST {
            found.host = true;
        } else if *name == CONNECTION {
            found.connection = true;
        } else if *name == CONTENT_LENGTH {
            found.content_length = true;
        } else if *name == TRANSFER_ENCODING {
            found.transfer_encoding = true;
        } else if has_underscore(name.as_str().as_bytes()) {
            found.underscores = true;
            found.forbidden |= is_gateway_name_spelled(name.as_str().as_bytes());
        } else {
            found.forbidden |= is_client_forbidden(name);
        }
    }
    found
}

/// Whether `name` holds a `_`, eight bytes at a time (every name of every
/// request is looked at: `memchr` costs about three times as much on names
/// this short).
fn has_underscore(name: &[u8]) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    const UNDERSCORES: u64 = u64::from_le_bytes([b'_'; 8]);
    // A zero byte in `word ^ UNDERSCORES` is a `_` in `word`.
    let has = |word: u64| {
        let x = word ^ UNDERSCORES;
        x.wrapping_sub(ONES) & !x & HIGH != 0
    };
    let word = |at: usize| {
        name.get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let len = name.len();
    if len < 8 {
        // The bytes shifted into one word; the empty ones stay zero.
        return has(name.iter().fold(0, |w, &b| w << 8 | u64::from(b)));
    }
    let mut at = 0;
    while at + 8 < len {
        if has(word(at)) {
            return true;
        }
        at += 8;
    }
    // The last eight bytes, overlapping the word before.
    has(word(len - 8))
}

/// Screens a request's head before routing, in this order:
///
/// 1. Refuses ambiguous heads ([`HeadError`]): conflicting framing, more
///    than one `Content-Length`, `Authorization`, `Host` or `X-API-Key`,
///    or an HTTP/1.1 request without `Host`.
/// 2. Removes the fields the client's `Connection` names, and `Connection`
///    itself, before the gateway sets any header of its own (but the
///    request id, already set and kept).
/// 3. Removes the headers only the gateway may set, also when spelled with
///    `_` (`X_User_Id`), which CGI and WSGI servers read as `X-User-Id`.
///
/// One pass over the names, and nothing allocated, when there is nothing
/// to remove. `scanned_conflict` is the connection scanner's note that the
/// head named both `Content-Length` and `Transfer-Encoding`.
pub fn screen_headers(
    headers: &mut HeaderMap,
    version: Version,
    scanned_conflict: bool,
) -> Result<Screened, HeadError> {
    let found = survey(headers);
    check_head(headers, version, &found, scanned_conflict)?;
    if found.connection {
        crate::headers::remove_connection_options(
            headers,
            Some(&crate::edge::errors::X_REQUEST_ID),
        );
    }
    let spoofed = if found.forbidden {
        strip_client_forbidden(headers)
    } else {
        None
    };
    Ok(Screened {
        spoofed,
        underscores: found.underscores,
    })
}

/// Refuses an HTTP/2 request whose `Host` header and `:authority` (the
/// URI's authority) name different authorities (ASCII case aside). Routing
/// and `X-Forwarded-Host` read the `Host` header first, like HTTP/1.1; an
/// HTTP/2 request without one is routed by its `:authority`. Requests of
/// other versions are not looked at (one comparison).
#[inline]
pub fn check_authority(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<(), HeadError> {
    if version != Version::HTTP_2 {
        return Ok(());
    }
    let (Some(authority), Some(host)) = (uri.authority(), headers.get(HOST)) else {
        return Ok(());
    };
    let authority = authority.as_str();
    // RFC 9113 forbids userinfo in `:authority`; compare what follows it.
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if host.as_bytes().eq_ignore_ascii_case(authority.as_bytes()) {
        Ok(())
    } else {
        Err(HeadError::HostAuthorityMismatch)
    }
}

/// Checks the framing and the single-value fields of a request head.
///
/// hyper accepts a request with both `Content-Length` and
/// `Transfer-Encoding: chunked` (chunked wins); a proxy must not, as the
/// next hop might frame it by the length. Over HTTP/1, hyper drops the
/// `Content-Length` of such a request before the gateway sees it, so the
/// connection's scanner ([`crate::edge::framing`]) tells.
///
/// hyper checks neither how many `Host` fields there are nor that an
/// HTTP/1.1 request has one; RFC 9112 section 3.2 wants 400 for both.
/// `Authorization` and `X-API-Key` hold one credential: with two, the one
/// verified and the one a service reads could differ.
///
/// NUL, CR and LF in header values or the request target never get here:
/// hyper's parser (httparse) answers 400 itself, and the `http` crate
/// cannot represent them in a header value.
fn check_head(
    headers: &HeaderMap,
    version: Version,
    found: &Survey,
    scanned_conflict: bool,
) -> Result<(), HeadError> {
    if found.transfer_encoding && (scanned_conflict || found.content_length) {
        return Err(HeadError::ConflictingFraming);
    }
    // With no name given twice (the usual case) this is two loads.
    if headers.len() != headers.keys_len() {
        for (name, error) in [
            (CONTENT_LENGTH, HeadError::DuplicateContentLength),
            (AUTHORIZATION, HeadError::DuplicateAuthorization),
            (HOST, HeadError::DuplicateHost),
            (API_KEY_HEADER, HeadError::DuplicateApiKey),
        ] {
            if headers.get_all(name).iter().nth(1).is_some() {
                return Err(error);
            }
        }
    }
    if !found.host && version == Version::HTTP_11 {
        return Err(HeadError::MissingHost);
    }
    Ok(())
}

/// Removes the headers only the gateway may set, in either spelling.
/// Returns the name of the first one found, if any.
fn strip_client_forbidden(headers: &mut HeaderMap) -> Option<HeaderName> {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_protected(n))
        .cloned()
        .collect();
    for name in &names {
        headers.remove(name);
    }
    names.into_iter().next()
}

fn is_protected(name: &HeaderName) -> bool {
    let bytes = name.as_str().as_bytes();
    if has_underscore(bytes) {
        is_gateway_name_spelled(bytes)
    } else {
        is_client_forbidden(name)
    }
}

fn is_client_forbidden(name: &HeaderName) -> bool {
    let n = name.as_str();
    // Every forbidden name starts with `x-`: most headers fail this at once.
    if !n.starts_with("x-") {
        return false;
    }
    n.starts_with("x-internal-")
        || IDENTITY_HEADERS.iter().any(|h| h == name)
        || CLIENT_FORBIDDEN.iter().any(|h| h == name)
        || API_KEY_IDENTITY_HEADERS.iter().any(|h| h == name)
}

/// Whether `name` (lower case, with some `_`) reads as one of the
/// gateway's own headers once each `_` is taken for `-`.
fn is_gateway_name_spelled(name: &[u8]) -> bool {
    let same = |a: &[u8], b: &[u8]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x == y || (*x == b'_' && *y == b'-'))
    };
    let internal = b"x-internal-";
    name.get(..internal.len())
        .is_some_and(|p| same(p, internal))
        || IDENTITY_HEADERS
            .iter()
            .chain(&CLIENT_FORBIDDEN)
            .chain(&API_KEY_IDENTITY_HEADERS)
            .chain(&SET_BY_GATEWAY)
            .any(|h| same(name, h.as_str().as_bytes()))
}

/// Removes the request headers whose names contain `_`, on a route that
/// does not allow them (once [`Screened::underscores`] said there are
/// some). nginx drops them too: CGI and WSGI servers read `X_Foo` as
/// `X-Foo`, so a name the gateway never checks could stand in for one a
/// service trusts. Each is logged at debug level only: well-meaning clients
/// send them on every request.
pub fn drop_underscore_headers(
    headers: &mut HeaderMap,
    route: &str,
    request_id: Option<&HeaderValue>,
) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        headers.remove(&name);
        tracing::debug!(
            target: "security",
            security_event = "underscore_header",
            severity = "low",
            header = name.as_str(),
            route,
            request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or(""),
            "request header with '_' in its name dropped"
        );
    }
}

pub use crate::headers::strip_internal_response_headers;

#[cfg(test)]
mod tests;
