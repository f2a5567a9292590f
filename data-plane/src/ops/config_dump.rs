//! `GET /config` on the admin listener: what this data plane serves, as
//! Envoy's `config_dump` shows it. The version, epoch and source of the
//! config in force, the config itself (routes, services and their
//! policies), every instance with its state and in-flight requests, and the
//! state of every circuit breaker. Nothing secret is in it: signing secrets
//! and keys are never config (routes name the environment variable that
//! holds a signature secret, not the secret), and neither tokens nor API
//! keys pass through the runtime.

use crate::config::runtime::Runtime;
use serde_json::{json, Value};

/// The dump of `runtime` as JSON.
pub fn dump(runtime: &Runtime) -> Value {
    let snapshot = runtime.snapshot();
    let instances: Vec<Value> = runtime
        .instances()
        .into_iter()
        .map(|(instance, in_flight)| {
            let mut value = serde_json::to_value(&instance).unwrap_or(Value::Null);
            if let Some(object) = value.as_object_mut() {
                object.insert("in_flight".into(), in_flight.into());
            }
            value
        })
        .collect();
    let breakers: serde_json::Map<String, Value> = runtime
        .breaker_states()
        .into_iter()
        .map(|(service, state)| (service, state.as_str().into()))
        .collect();
    json!({
        "epoch": snapshot.epoch,
        "version": snapshot.version,
        "source": snapshot.source.as_str(),
        "config": serde_json::to_value(&*snapshot.config).unwrap_or(Value::Null),
        "instances": instances,
        "breakers": breakers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::metrics::Metrics;
    use gateway_common::GatewayConfig;
    use std::sync::Arc;

    #[tokio::test]
    async fn the_dump_shows_config_instances_and_breakers_but_no_secret() {
        let runtime = Runtime::new(Arc::new(Metrics::new()));
        let config = GatewayConfig::load(
            br#"
version: 1
services:
  - name: app
    instances: ["http://127.0.0.1:9"]
    circuit_breaker: { error_threshold_percent: 50 }
routes:
  - name: signed
    match: { path_prefix: /hooks }
    service: app
    signature: { secret_env: PARTNER_HOOK_SECRET }
"#,
        )
        .unwrap();
        runtime
            .apply(crate::config::standalone::change(config, 3))
            .unwrap();
        let dump = dump(&runtime);
        assert_eq!(dump["version"], 3);
        assert_eq!(dump["source"], "file");
        assert_eq!(dump["config"]["routes"][0]["name"], "signed");
        assert_eq!(dump["instances"][0]["spec"]["service"], "app");
        assert_eq!(dump["instances"][0]["in_flight"], 0);
        assert_eq!(dump["breakers"]["app"], "closed");
        let text = dump.to_string();
        assert!(
            text.contains("PARTNER_HOOK_SECRET"),
            "the variable's name is shown"
        );
    }
}
