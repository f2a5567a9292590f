//! Authorisation end to end: a standalone data plane over a private Redis,
//! in front of `test-upstream` instances acting as the backend, the venue
//! service and the auth service (whose request counts prove what the
//! caches saved).

use gateway_tests::cluster::{start_test, wait_until, write_temp_file, DataPlaneProc, Upstream};
use gateway_tests::http::{self, HttpResponse};
use gateway_tests::{free_port, RedisServer};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const JWT_SECRET: &str = "authorization-test-secret-of-32-bytes";

struct Platform {
    dp: DataPlaneProc,
    redis: RedisServer,
    app: Upstream,
    venue: Upstream,
    auth: Upstream,
    _missing: Upstream,
}

fn platform() -> Platform {
    let redis = RedisServer::start();
    let app = Upstream::start("app");
    let venue = Upstream::start("venue");
    let auth = Upstream::start("auth");
    let missing = Upstream::start("auth-missing");
    // Every lookup of this auth service says "no such user".
    let r = http::post(missing.addr, "/_control/fail?status=404", b"").unwrap();
    assert_eq!(r.status, 200);
    venue.respond("/api/v1/venues/v1/access", &json!({ "allowed": true }));
    venue.respond("/api/v1/venues/v2/access", &json!({ "allowed": false }));
    auth.respond(
        "/api/v1/users/u-active",
        &json!({ "id": "u-active", "email": "a@example.com", "role": "customer", "status": "active" }),
    );
    auth.respond(
        "/api/v1/users/u-disabled",
        &json!({ "id": "u-disabled", "role": "admin", "status": "suspended" }),
    );
    // Nothing listens there: connections are refused.
    let down = format!("http://127.0.0.1:{}", free_port());
    let yaml = format!(
        r#"
version: 1
services:
  - {{ name: app, health_check: {{ enabled: false }}, instances: ["{app}"] }}
  - {{ name: venue, health_check: {{ enabled: false }}, instances: ["{venue}"] }}
  - {{ name: auth, health_check: {{ enabled: false }}, instances: ["{auth}"] }}
  - {{ name: auth-missing, health_check: {{ enabled: false }}, instances: ["{missing}"] }}
  - {{ name: down, health_check: {{ enabled: false }}, instances: ["{down}"] }}
routes:
  - name: reports
    match: {{ path_prefix: /api/v1/reports }}
    service: app
    auth: {{ permission: "reports:export" }}
  - name: events
    match: {{ path: "/api/v1/events/{{eventId}}", methods: [GET, DELETE] }}
    service: app
    auth: {{ permissions: {{ DELETE: "events:delete" }} }}
  - name: user-tickets
    match: {{ path: "/api/v1/users/{{userId}}/tickets", methods: [GET] }}
    service: app
    auth: {{ permission: "tickets:view", owner_param: userId }}
  - name: venue-events
    match: {{ path: "/api/v1/venues/{{venueId}}/events", methods: [GET, POST] }}
    service: app
    auth:
      permissions: {{ GET: "tickets:view", POST: "events:create" }}
      venue_param: venueId
  - name: venue-down
    match: {{ path: "/api/v1/down/{{venueId}}", methods: [GET] }}
    service: app
    auth:
      permission: "tickets:view"
      venue_param: venueId
      venue_access: {{ service: down, path: "/api/v1/venues/{{venueId}}/access" }}
  - name: me
    match: {{ path_prefix: /api/v1/me }}
    service: app
    auth: {{ user_details: true }}
  - name: admin-reports
    match: {{ path_prefix: /api/v1/admin-reports }}
    service: app
    auth: {{ permission: "reports:export", user_details: true }}
  - name: missing
    match: {{ path_prefix: /api/v1/missing }}
    service: app
    auth: {{ user_details: true, user_lookup: {{ service: auth-missing, path: "/api/v1/users/{{userId}}" }} }}
  - name: auth-down
    match: {{ path_prefix: /api/v1/auth-down }}
    service: app
    auth: {{ user_details: true, user_lookup: {{ service: down, path: "/api/v1/users/{{userId}}" }} }}
"#,
        app = app.url(),
        venue = venue.url(),
        auth = auth.url(),
        missing = missing.url(),
    );
    let file = write_temp_file("authorization.yaml", &yaml);
    let dp = DataPlaneProc::standalone_with_env(
        "authz",
        &file,
        &[("JWT_SECRET", JWT_SECRET), ("REDIS_URL", &redis.url())],
    );
    Platform {
        dp,
        redis,
        app,
        venue,
        auth,
        _missing: missing,
    }
}

fn token(sub: &str, role: &str, permissions: Option<&[&str]>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({
        "sub": sub, "tenant_id": "tenant-a", "type": "access", "role": role,
        "iat": now, "exp": now + 900,
    });
    if let Some(p) = permissions {
        claims["permissions"] = json!(p);
    }
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn send_as(
    p: &Platform,
    method: &str,
    path: &str,
    token: &str,
    extra: &[(&str, &str)],
) -> HttpResponse {
    let bearer = format!("Bearer {token}");
    let mut headers = vec![("authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    http::request(
        p.dp.listen,
        method,
        path,
        &headers,
        b"",
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn as_role(p: &Platform, role: &str, method: &str, path: &str) -> u16 {
    send_as(p, method, path, &token("u1", role, None), &[]).status
}

fn assert_forbidden(r: &HttpResponse, message: &str) {
    assert_eq!(r.status, 403, "{}", r.text());
    let body: Value = r.json();
    assert_eq!(body["code"], "AUTHORIZATION_ERROR");
    assert_eq!(body["error"], "Forbidden");
    assert_eq!(body["message"], message);
    assert_eq!(body["statusCode"], 403);
}

#[test]
fn roles_are_allowed_and_denied_by_the_seed_table() {
    let _guard = start_test();
    let p = platform();
    // reports:export: exact for venue-manager, `*` for admin and
    // venue-owner; box-office, door-staff and customer lack it.
    for (role, status) in [
        ("admin", 200),
        ("venue-owner", 200),
        ("venue-manager", 200),
        ("box-office", 403),
        ("door-staff", 403),
        ("customer", 403),
        ("root", 403),
    ] {
        assert_eq!(
            as_role(&p, role, "GET", "/api/v1/reports/q3"),
            status,
            "{role}"
        );
    }
    let r = send_as(
        &p,
        "GET",
        "/api/v1/reports/q3",
        &token("u1", "customer", None),
        &[],
    );
    assert_forbidden(&r, "Insufficient permissions: reports:export required");
    // Per method: GET needs nothing beyond a token, DELETE events:delete.
    assert_eq!(as_role(&p, "customer", "GET", "/api/v1/events/7"), 200);
    assert_eq!(as_role(&p, "customer", "DELETE", "/api/v1/events/7"), 403);
    assert_eq!(
        as_role(&p, "venue-manager", "DELETE", "/api/v1/events/7"),
        200
    );
    assert_eq!(as_role(&p, "door-staff", "DELETE", "/api/v1/events/7"), 403);
    // The token's permissions claim replaces the role's (as in the seed):
    // `resource:*` covers the resource only.
    let wild = token("u1", "admin", Some(&["events:*"]));
    assert_eq!(
        send_as(&p, "DELETE", "/api/v1/events/7", &wild, &[]).status,
        200
    );
    assert_eq!(
        send_as(&p, "GET", "/api/v1/reports/q3", &wild, &[]).status,
        403
    );
    let all = token("u1", "customer", Some(&["*"]));
    assert_eq!(
        send_as(&p, "GET", "/api/v1/reports/q3", &all, &[]).status,
        200
    );
    // A refused request never reaches the backend.
    let before = p.app.served();
    assert_eq!(as_role(&p, "customer", "GET", "/api/v1/reports/q3"), 403);
    assert_eq!(p.app.served(), before);
}

#[test]
fn own_permissions_need_the_caller_to_own_the_resource() {
    let _guard = start_test();
    let p = platform();
    let customer = token("c-1", "customer", None);
    // tickets:view-own: its own tickets only.
    let own = send_as(&p, "GET", "/api/v1/users/c-1/tickets", &customer, &[]);
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(own.json()["headers"]["x-user-id"], "c-1");
    let other = send_as(&p, "GET", "/api/v1/users/c-2/tickets", &customer, &[]);
    assert_forbidden(&other, "Insufficient permissions: tickets:view required");
    // tickets:view (door staff): anyone's.
    assert_eq!(
        as_role(&p, "door-staff", "GET", "/api/v1/users/c-2/tickets"),
        200
    );
    // A -own grant of another action does not count.
    let transfer_only = token("c-1", "customer", Some(&["tickets:transfer-own"]));
    assert_eq!(
        send_as(&p, "GET", "/api/v1/users/c-1/tickets", &transfer_only, &[]).status,
        403
    );
}

#[test]
fn venue_scoped_roles_are_checked_with_the_venue_service() {
    let _guard = start_test();
    let p = platform();
    let manager = token("m-1", "venue-manager", None);
    // The venue service allows v1 and denies v2.
    let r = send_as(&p, "GET", "/api/v1/venues/v1/events", &manager, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let asked = p.venue.served();
    assert_eq!(asked, 1);
    // Cached: the venue service is not asked again.
    assert_eq!(
        send_as(&p, "GET", "/api/v1/venues/v1/events", &manager, &[]).status,
        200
    );
    assert_eq!(p.venue.served(), asked);
    let denied = send_as(&p, "GET", "/api/v1/venues/v2/events", &manager, &[]);
    assert_forbidden(&denied, "Access denied to this venue");
    assert_eq!(p.venue.served(), asked + 1);
    // Denials are cached too.
    assert_eq!(
        send_as(&p, "GET", "/api/v1/venues/v2/events", &manager, &[]).status,
        403
    );
    assert_eq!(p.venue.served(), asked + 1);
    // The permission is checked first: door staff cannot create events.
    let staff = token("d-1", "door-staff", None);
    assert_eq!(
        send_as(&p, "POST", "/api/v1/venues/v1/events", &staff, &[]).status,
        403
    );
    assert_eq!(p.venue.served(), asked + 1);
    // Admin is not venue-scoped: no question asked, v2 allowed.
    let admin = token("a-1", "admin", None);
    assert_eq!(
        send_as(&p, "GET", "/api/v1/venues/v2/events", &admin, &[]).status,
        200
    );
    assert_eq!(p.venue.served(), asked + 1);
    // Without a venue in the path, the x-venue-id header names it.
    let r = send_as(
        &p,
        "GET",
        "/api/v1/reports/q3",
        &manager,
        &[("x-venue-id", "v2")],
    );
    assert_forbidden(&r, "Access denied to this venue");
    let r = send_as(
        &p,
        "GET",
        "/api/v1/reports/q3",
        &manager,
        &[("x-venue-id", "v1")],
    );
    assert_eq!(r.status, 200);
    // A venue service that cannot answer fails closed.
    let r = send_as(&p, "GET", "/api/v1/down/v1", &staff, &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], "SERVICE_UNAVAILABLE");
    // An answer outside the contract is no answer either.
    let r = send_as(&p, "GET", "/api/v1/venues/v3/events", &manager, &[]);
    assert_eq!(r.status, 503, "{}", r.text());
}

#[test]
fn user_details_come_from_the_auth_service_through_redis() {
    let _guard = start_test();
    let p = platform();
    // The data plane connects to Redis in the background: wait for it
    // (this test's own connection is one client).
    wait_until(
        "the data plane connected to Redis",
        Duration::from_secs(10),
        || {
            let info = p
                .redis
                .command(&["INFO", "clients"])
                .map_err(|e| e.to_string())?;
            let clients: u32 = info
                .lines()
                .find_map(|l| l.strip_prefix("connected_clients:"))
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| info.clone())?;
            if clients >= 2 {
                Ok(())
            } else {
                Err(format!("{clients} clients"))
            }
        },
    );
    let active = token("u-active", "admin", None);
    let r = send_as(&p, "GET", "/api/v1/me", &active, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    // The auth service's current role replaces the token's.
    assert_eq!(r.json()["headers"]["x-user-role"], "customer");
    assert_eq!(p.auth.served(), 1);
    let ttl: i64 = p
        .redis
        .command(&["TTL", "gw:user:u-active"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&ttl), "TTL {ttl}");
    // Cached: the auth service is not asked again.
    assert_eq!(send_as(&p, "GET", "/api/v1/me", &active, &[]).status, 200);
    assert_eq!(p.auth.served(), 1);
    // Concurrent first requests of one user share one lookup.
    p.auth.respond(
        "/api/v1/users/u-burst",
        &json!({ "id": "u-burst", "role": "customer" }),
    );
    p.auth.set_delay(300);
    let burst = token("u-burst", "customer", None);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| send_as(&p, "GET", "/api/v1/me", &burst, &[]).status))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    p.auth.set_delay(0);
    assert_eq!(statuses, vec![200; 8]);
    assert_eq!(p.auth.served(), 2);
    // So the admin token is a customer here: no reports:export.
    let r = send_as(&p, "GET", "/api/v1/admin-reports", &active, &[]);
    assert_forbidden(&r, "Insufficient permissions: reports:export required");
    // A disabled account is refused whatever its role.
    let disabled = token("u-disabled", "admin", None);
    let r = send_as(&p, "GET", "/api/v1/me", &disabled, &[]);
    assert_forbidden(&r, "User account is disabled");
    // An unknown user is not authenticated.
    let r = send_as(
        &p,
        "GET",
        "/api/v1/missing",
        &token("ghost", "admin", None),
        &[],
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["message"], "User not found");
    assert_eq!(
        p.redis
            .command(&["EXISTS", "gw:user:ghost"])
            .unwrap()
            .trim(),
        "0"
    );
    // An auth service that cannot answer fails closed.
    let r = send_as(
        &p,
        "GET",
        "/api/v1/auth-down",
        &token("u-other", "admin", None),
        &[],
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["message"], "Service unavailable: down");
    // An auth-service answer that is not this user (the echo) is not one.
    let r = send_as(
        &p,
        "GET",
        "/api/v1/me",
        &token("u-echo", "admin", None),
        &[],
    );
    assert_eq!(r.status, 503, "{}", r.text());
}
