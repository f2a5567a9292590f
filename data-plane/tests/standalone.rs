//! Standalone mode: the declarative file plus the seed's service URLs.

mod common;

use common::*;
use data_plane::DataPlane;

fn doc(dead_port: u16) -> String {
    format!(
        r#"
version: 1
services:
  - name: auth
    instances: ["http://127.0.0.1:{dead_port}"]
  - name: venue
    instances: ["http://127.0.0.1:{dead_port}"]
routes:
  - {{ name: auth, match: {{ path_prefix: /api/v1/auth }}, service: auth, strip_prefix: true }}
  - {{ name: venue, match: {{ path_prefix: /api/v1/venues }}, service: venue }}
"#
    )
}

#[tokio::test]
async fn service_urls_replace_the_file_instances() {
    let auth = Upstream::start("auth").await;
    let dead = gateway_tests::free_port();
    let (plane, _file) = standalone_with(&doc(dead), |s| {
        s.service_urls = vec![
            ("auth".into(), auth.url()),
            // Not in the file: warned about and ignored.
            ("ticket".into(), "http://127.0.0.1:1".into()),
        ];
    })
    .await;
    let answer = get(&plane, "/api/v1/auth/login?next=/").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["upstream"], "auth");
    assert_eq!(answer.json()["uri"], "/login?next=/");
    // venue keeps the file's instance, where nothing listens.
    get(&plane, "/api/v1/venues/1")
        .await
        .assert_error(503, "UPSTREAM_UNAVAILABLE");
    let in_flight = plane.runtime().in_flight();
    let mut ids: Vec<_> = in_flight.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            format!("static:auth:127.0.0.1:{}", auth.port()).as_str(),
            format!("static:venue:127.0.0.1:{dead}").as_str()
        ]
    );
    plane.shutdown().await;
}

#[tokio::test]
async fn an_invalid_service_url_refuses_to_start() {
    let file = TempConfig::new(&doc(1));
    let mut settings = local_settings();
    settings.config_file = Some(file.path.clone());
    settings.service_urls = vec![("auth".into(), "auth-service:3001".into())];
    let err = DataPlane::start(settings).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("auth service URL"), "{text}");
}

#[tokio::test]
async fn a_bad_file_refuses_to_start_with_the_reason() {
    let file = TempConfig::new(
        "version: 1\nroutes:\n  - { name: r, match: { path_prefix: /x }, service: ghost }\n",
    );
    let mut settings = local_settings();
    settings.config_file = Some(file.path.clone());
    let err = DataPlane::start(settings).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("unknown service \"ghost\""), "{text}");

    let mut settings = local_settings();
    settings.config_file = Some(file.dir.join("missing.yaml"));
    let text = format!("{:#}", DataPlane::start(settings).await.unwrap_err());
    assert!(text.contains("cannot read"), "{text}");
}
