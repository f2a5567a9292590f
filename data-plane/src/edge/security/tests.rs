//! Tests of request screening and path normalisation.

use super::*;
use http::HeaderValue;

fn norm(p: &str) -> Result<String, PathError> {
    normalize_path(p).map(|c| c.into_owned())
}

#[test]
fn plain_paths_are_borrowed() {
    for p in ["/", "/a", "/a/b/", "/a/b.json", "/a.b/c", "/a-b_c~d"] {
        assert!(matches!(normalize_path(p), Ok(Cow::Borrowed(_))), "{p}");
    }
}

#[test]
fn dot_segments_are_resolved() {
    assert_eq!(norm("/public/../admin").unwrap(), "/admin");
    assert_eq!(norm("/public/./x").unwrap(), "/public/x");
    assert_eq!(norm("/../../etc").unwrap(), "/etc");
    assert_eq!(norm("/a/b/..").unwrap(), "/a/");
    assert_eq!(norm("/a/.").unwrap(), "/a/");
    assert_eq!(norm("/..").unwrap(), "/");
}

#[test]
fn encoded_dots_are_resolved() {
    assert_eq!(norm("/public/%2e%2e/admin").unwrap(), "/admin");
    assert_eq!(norm("/public/%2E%2e/admin").unwrap(), "/admin");
    assert_eq!(norm("/public/.%2e/admin").unwrap(), "/admin");
    assert_eq!(norm("/public/%2e/x").unwrap(), "/public/x");
}

#[test]
fn double_slashes_collapse() {
    assert_eq!(norm("//admin").unwrap(), "/admin");
    assert_eq!(norm("/a//b///c").unwrap(), "/a/b/c");
    assert_eq!(norm("/a/b//").unwrap(), "/a/b/");
}

#[test]
fn unreserved_escapes_are_decoded_others_upper_cased() {
    assert_eq!(norm("/%61dmin").unwrap(), "/admin");
    assert_eq!(norm("/a%7ex").unwrap(), "/a~x");
    assert_eq!(norm("/a%3fb").unwrap(), "/a%3Fb");
    assert_eq!(norm("/a%20b").unwrap(), "/a%20b");
}

#[test]
fn parameters_are_kept_but_dot_segment_parameters_refused() {
    assert_eq!(norm("/public;x=1/y").unwrap(), "/public;x=1/y");
    assert_eq!(norm("/public/..;/admin"), Err(PathError::DotSegmentParams));
    assert_eq!(norm("/public/.;x/admin"), Err(PathError::DotSegmentParams));
    assert_eq!(
        norm("/public/%2e%2e;/admin"),
        Err(PathError::DotSegmentParams)
    );
}

#[test]
fn separators_controls_and_bad_escapes_are_refused() {
    assert_eq!(
        norm("/public%2f..%2fadmin"),
        Err(PathError::EncodedSeparator)
    );
    assert_eq!(norm("/public%2F"), Err(PathError::EncodedSeparator));
    assert_eq!(norm("/a%5cb"), Err(PathError::EncodedSeparator));
    assert_eq!(norm("/a\\b"), Err(PathError::Backslash));
    assert_eq!(norm("/a%00"), Err(PathError::Control));
    assert_eq!(norm("/a%0d%0aX-Injected:%201"), Err(PathError::Control));
    assert_eq!(norm("/a%0A"), Err(PathError::Control));
    assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
    assert_eq!(norm("/a%2"), Err(PathError::BadEscape));
}

#[test]
fn trailing_dots_and_whitespace_are_refused() {
    assert_eq!(norm("/admin."), Err(PathError::TrailingDotOrSpace));
    assert_eq!(norm("/admin%2e"), Err(PathError::TrailingDotOrSpace));
    assert_eq!(norm("/admin%20"), Err(PathError::TrailingDotOrSpace));
    assert_eq!(norm("/admin%20;x"), Err(PathError::TrailingDotOrSpace));
    assert_eq!(norm("/admin.../x"), Err(PathError::TrailingDotOrSpace));
    assert_eq!(norm("/admin%09"), Err(PathError::Control));
}

fn public(patterns: &[&str]) -> PublicPaths {
    PublicPaths::new(patterns)
}

#[test]
fn public_path_forms() {
    let p = public(&["/api/health"]);
    assert!(p.matches("/api/health"));
    assert!(!p.matches("/api/health/x"));
    assert!(!p.matches("/api/healthz"));
    let p = public(&["/docs/*"]);
    assert!(p.matches("/docs"));
    assert!(p.matches("/docs/a/b"));
    assert!(!p.matches("/docsx"));
    let p = public(&["/files/"]);
    assert!(!p.matches("/files"));
    assert!(p.matches("/files/a"));
    assert!(p.matches("/files/a/b"));
    let p = public(&["/api/*/status", "/x/**/ping"]);
    assert!(p.matches("/api/v1/status"));
    assert!(!p.matches("/api/v1/v2/status"));
    assert!(p.matches("/x/ping"));
    assert!(p.matches("/x/a/b/ping"));
    assert!(!p.matches("/x/a/b/pong"));
    let p = public(&["/v*/events"]);
    assert!(p.matches("/v1/events"));
    assert!(!p.matches("/w1/events"));
    let p = public(&["/"]);
    assert!(p.matches("/"));
    assert!(!p.matches("/x"));
    assert!(!public(&[]).matches("/"));
}

#[test]
fn tricks_do_not_make_a_path_public() {
    let p = public(&["/api/health", "/public/*"]);
    let check = |raw: &str| match normalize_path(raw) {
        Ok(path) => p.matches(&path),
        Err(_) => false,
    };
    // Case: paths compare case-sensitively, so a case variant is
    // simply not public (it needs a token).
    assert!(!check("/API/health"));
    assert!(!check("/api/HEALTH"));
    // Dot segments resolve to the real target.
    assert!(!check("/public/../admin"));
    assert!(!check("/public/%2e%2e/admin"));
    assert!(!check("/public/..;/admin"));
    assert!(!check("/public%2f..%2fadmin"));
    // Parameters do not hide a path, nor make one public.
    assert!(check("/api/health;jsessionid=1"));
    assert!(!check("/api/health;/../../admin"));
    assert!(!check("/api/health.;"));
    assert!(!check("/api/health."));
    assert!(!check("/api/health%20"));
    // Harmless variants of a public path are still public.
    assert!(check("//api//health"));
    assert!(check("/api/./health"));
    assert!(check("/%61pi/health"));
    assert!(check("/public/x/../y"));
}

fn screen(h: &mut HeaderMap) -> Result<Screened, HeadError> {
    screen_headers(h, Version::HTTP_11, false)
}

fn with_host() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HOST, HeaderValue::from_static("gw"));
    h
}

#[test]
fn head_checks() {
    let mut h = with_host();
    h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
    assert!(screen(&mut h).is_ok());
    h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    assert_eq!(screen(&mut h), Err(HeadError::ConflictingFraming));
    let mut h = with_host();
    h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    assert!(screen(&mut h).is_ok());
    assert_eq!(
        screen_headers(&mut h, Version::HTTP_11, true),
        Err(HeadError::ConflictingFraming)
    );
    let mut h = with_host();
    h.append(CONTENT_LENGTH, HeaderValue::from_static("5"));
    h.append(CONTENT_LENGTH, HeaderValue::from_static("6"));
    assert_eq!(screen(&mut h), Err(HeadError::DuplicateContentLength));
    // The http crate cannot hold these in a header value at all.
    for bad in [&b"a\0b"[..], b"a\rb", b"a\nb"] {
        assert!(HeaderValue::from_bytes(bad).is_err());
    }
}

#[test]
fn single_value_fields_come_once_and_http_1_1_needs_a_host() {
    for (name, error) in [
        (AUTHORIZATION, HeadError::DuplicateAuthorization),
        (HOST, HeadError::DuplicateHost),
        (API_KEY_HEADER, HeadError::DuplicateApiKey),
    ] {
        let mut h = with_host();
        h.insert(name.clone(), HeaderValue::from_static("one"));
        h.append("accept", HeaderValue::from_static("a"));
        h.append("accept", HeaderValue::from_static("b"));
        assert!(screen(&mut h).is_ok(), "{name}");
        h.append(name.clone(), HeaderValue::from_static("two"));
        assert_eq!(screen(&mut h), Err(error), "{name}");
        assert_eq!(error.event(), "duplicate_header");
    }
    let mut h = HeaderMap::new();
    assert_eq!(screen(&mut h), Err(HeadError::MissingHost));
    assert_eq!(HeadError::MissingHost.event(), "missing_host");
    assert!(screen_headers(&mut h, Version::HTTP_10, false).is_ok());
}

#[test]
fn connection_options_go_before_the_gateway_sets_anything() {
    let mut h = with_host();
    h.insert(
        CONNECTION,
        HeaderValue::from_static("keep-alive, X-Foo, x-request-id, host"),
    );
    h.insert("x-foo", HeaderValue::from_static("1"));
    h.insert("x-request-id", HeaderValue::from_static("r-1"));
    let screened = screen(&mut h).unwrap();
    assert_eq!(screened.spoofed, None);
    assert!(!screened.underscores);
    // The request id is the gateway's own by now; the rest go (`Host`
    // was there when the head was checked).
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h["x-request-id"], "r-1");
}

#[test]
fn underscores_are_found_anywhere_in_a_name() {
    for len in 1..40 {
        let clean = vec![b'a'; len];
        assert!(!has_underscore(&clean), "{len}");
        for at in 0..len {
            let mut name = clean.clone();
            name[at] = b'_';
            assert!(has_underscore(&name), "{len} {at}");
        }
    }
    // Bytes next to `_` in value do not count.
    assert!(!has_underscore(b"x-custom-header^`~"));
    assert!(!has_underscore(b""));
}

#[test]
fn underscore_spellings_of_the_gateways_headers_always_go() {
    let mut h = with_host();
    for name in [
        "x_user_id",
        "x-tenant_id",
        "x_internal_thing",
        "x_original_ip",
        "x_api_key_id",
        "x_forwarded_for",
        "x_request_deadline_ms",
        "x_request_id",
    ] {
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static("evil"),
        );
    }
    h.insert("x_custom_thing", HeaderValue::from_static("1"));
    h.insert("x_user_identity", HeaderValue::from_static("1"));
    let screened = screen(&mut h).unwrap();
    assert!(screened.spoofed.is_some());
    assert!(screened.underscores);
    let mut left: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
    left.sort_unstable();
    assert_eq!(left, ["host", "x_custom_thing", "x_user_identity"]);
    drop_underscore_headers(&mut h, "r", None);
    assert_eq!(h.len(), 1);
    let mut plain = with_host();
    plain.insert("x-custom-thing", HeaderValue::from_static("1"));
    assert_eq!(
        screen(&mut plain),
        Ok(Screened {
            spoofed: None,
            underscores: false
        })
    );
    assert_eq!(plain.len(), 2);
}

#[test]
fn forbidden_headers_go() {
    let mut h = HeaderMap::new();
    h.insert("x-tenant-id", HeaderValue::from_static("evil"));
    h.insert("x-internal-service", HeaderValue::from_static("1"));
    h.insert("x-user-id", HeaderValue::from_static("admin"));
    h.insert("x-kept", HeaderValue::from_static("1"));
    assert!(strip_client_forbidden(&mut h).is_some());
    assert_eq!(h.len(), 1);
    assert!(strip_client_forbidden(&mut h).is_none());
    let mut h = HeaderMap::new();
    h.insert("x-internal-key", HeaderValue::from_static("1"));
    h.insert("x-upstream", HeaderValue::from_static("1"));
    strip_internal_response_headers(&mut h);
    assert_eq!(h.len(), 1);
}

#[test]
fn an_h2_host_must_name_the_authority() {
    let uri: Uri = "https://api.example.com:8443/x".parse().unwrap();
    let host = |value: &'static str| {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static(value));
        h
    };
    let check = |version, headers: &HeaderMap| check_authority(version, &uri, headers);
    assert_eq!(check(Version::HTTP_2, &HeaderMap::new()), Ok(()));
    assert_eq!(
        check(Version::HTTP_2, &host("API.example.com:8443")),
        Ok(())
    );
    assert_eq!(
        check(Version::HTTP_2, &host("api.example.com")),
        Err(HeadError::HostAuthorityMismatch)
    );
    assert_eq!(
        check(Version::HTTP_2, &host("other.example.com:8443")),
        Err(HeadError::HostAuthorityMismatch)
    );
    assert_eq!(HeadError::HostAuthorityMismatch.event(), "host_mismatch");
    // HTTP/1.1 is not looked at; an origin-form URI has no authority.
    assert_eq!(check(Version::HTTP_11, &host("other.example.com")), Ok(()));
    let origin: Uri = "/x".parse().unwrap();
    let headers = host("other.example.com");
    assert_eq!(check_authority(Version::HTTP_2, &origin, &headers), Ok(()));
}
