//! Gateway configs of many services, for tests and benchmarks: one route
//! per service, each from `/SERVICE` to that service, prefix stripped.

/// `count` services `svc-0`, `svc-1`, … without health checks, routed by
/// `r-0`, `r-1`, … from `/svc-0`, `/svc-1`, …
pub fn numbered_config(count: usize) -> String {
    let services: Vec<(String, String)> = (0..count)
        .map(|s| (format!("svc-{s}"), format!("r-{s}")))
        .collect();
    config(&services, &["health_check: { enabled: false }"])
}

/// One service per name, routed by a route of the same name from `/NAME`,
/// with fast health checks (200 ms, thresholds 1 up / 2 down) and a 5 s
/// timeout.
pub fn config_for(services: &[&str]) -> String {
    let services: Vec<(String, String)> = services
        .iter()
        .map(|name| (name.to_string(), name.to_string()))
        .collect();
    config(
        &services,
        &[
            "health_check: { path: /health, interval: 200ms, timeout: 150ms, healthy_threshold: 1, unhealthy_threshold: 2 }",
            "timeout: 5s",
        ],
    )
}

/// A config of the `(service, route)` pairs, each service with the
/// `service_fields` (YAML lines of the service's mapping).
fn config(services: &[(String, String)], service_fields: &[&str]) -> String {
    let mut yaml = String::from("version: 1\nservices:\n");
    for (service, _) in services {
        yaml.push_str(&format!("  - name: {service}\n"));
        for field in service_fields {
            yaml.push_str(&format!("    {field}\n"));
        }
    }
    yaml.push_str("routes:\n");
    for (service, route) in services {
        yaml.push_str(&format!(
            "  - name: {route}\n    match: {{ path_prefix: /{service} }}\n    service: {service}\n    strip_prefix: true\n"
        ));
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_route_every_service() {
        assert_eq!(
            numbered_config(1),
            "version: 1\nservices:\n  - name: svc-0\n    health_check: { enabled: false }\n\
             routes:\n  - name: r-0\n    match: { path_prefix: /svc-0 }\n    service: svc-0\n    strip_prefix: true\n"
        );
        let named = config_for(&["a", "b"]);
        assert!(named.contains("  - name: b\n    match: { path_prefix: /b }\n    service: b\n"));
        assert!(named.contains("interval: 200ms"));
    }
}
