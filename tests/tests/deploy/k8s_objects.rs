//! Reading the Kubernetes deployment (`deploy/k8s`: a kustomize base and overlays built on it):
//! the objects each kustomization renders, and what a gateway container is set to by its
//! flags, variables, Secrets and the sources' defaults.

use super::*;

/// The Kubernetes deployment: a kustomize base and overlays built on it.
pub(super) const K8S: &str = "deploy/k8s";
/// The base every overlay builds on.
pub(super) const K8S_BASE: &str = "deploy/k8s/base";
/// The overlays, each under `deploy/k8s/overlays/`.
pub(super) const OVERLAYS: [&str; 2] = ["dev", "production"];

/// Objects of a deployment by (kind, name).
pub(super) type Objects = BTreeMap<(String, String), Value>;

/// Every kustomization an operator may apply: the base and each overlay.
pub(super) fn kustomizations() -> Vec<String> {
    std::iter::once(K8S_BASE.to_string())
        .chain(OVERLAYS.iter().map(|o| format!("{K8S}/overlays/{o}")))
        .collect()
}

/// Every manifest file of the base (its kustomization aside).
pub(super) fn manifest_files() -> Vec<String> {
    files_under(K8S_BASE, &[".yaml", ".yml"])
        .into_iter()
        .filter(|f| !f.ends_with("kustomization.yaml"))
        .collect()
}

/// Objects by (kind, name); `what` names their source in messages.
pub(super) fn index(what: &str, documents: Vec<Value>) -> Objects {
    let mut objects = BTreeMap::new();
    for object in documents {
        let kind = text(&object, "/kind", what).to_string();
        let name = text(&object, "/metadata/name", what).to_string();
        let previous = objects.insert((kind.clone(), name.clone()), object);
        assert!(previous.is_none(), "{what}: {kind}/{name} is defined twice");
    }
    objects
}

/// Every object of the base's manifest files, as written.
pub(super) fn manifests() -> Objects {
    index(
        K8S_BASE,
        manifest_files()
            .iter()
            .flat_map(|f| yaml_documents(f))
            .collect(),
    )
}

/// `kubectl kustomize DIR`: what `kubectl apply -k DIR` applies, as YAML.
pub(super) fn kustomize(dir: &str) -> String {
    let output = run_tool("kubectl", &["kustomize".to_string(), dir.to_string()]);
    assert!(
        output.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kubectl writes UTF-8")
}

/// The objects `kubectl apply -k DIR` applies.
pub(super) fn rendered(dir: &str) -> Objects {
    index(dir, yaml_text_documents(dir, &kustomize(dir)))
}

pub(super) fn object<'a>(objects: &'a Objects, kind: &str, name: &str) -> &'a Value {
    objects
        .get(&(kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

/// The one container of a workload's pod template.
pub(super) fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    list(workload, "/spec/template/spec/containers")
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Literal env values of a container (valueFrom entries map to None).
pub(super) fn container_env(container: &Value) -> BTreeMap<String, Option<String>> {
    list(container, "/env")
        .iter()
        .map(|e| {
            (
                text(e, "/name", "env entry").to_string(),
                e.get("value").and_then(Value::as_str).map(str::to_string),
            )
        })
        .collect()
}

/// Whether Secret `name` exists and holds `key` (in `stringData` or `data`).
pub(super) fn secret_has_key(objects: &Objects, name: &str, key: &str) -> bool {
    objects
        .get(&("Secret".to_string(), name.to_string()))
        .is_some_and(|s| {
            s.pointer(&format!("/stringData/{key}")).is_some()
                || s.pointer(&format!("/data/{key}")).is_some()
        })
}

/// The value of `key` in Secret `name`, from `stringData` or (base64) `data`.
pub(super) fn secret_value(objects: &Objects, name: &str, key: &str) -> String {
    use base64::Engine as _;
    let secret = object(objects, "Secret", name);
    if let Some(value) = secret
        .pointer(&format!("/stringData/{key}"))
        .and_then(Value::as_str)
    {
        return value.to_string();
    }
    let encoded = secret
        .pointer(&format!("/data/{key}"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("Secret {name} has no key {key}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|e| panic!("Secret {name}, key {key}: not base64: {e}"));
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("Secret {name}, key {key}: {e}"))
}

/// The env entry of a container that sets `variable` (the last one wins, as in Kubernetes).
pub(super) fn env_entry<'a>(container: &'a Value, variable: &str) -> Option<&'a Value> {
    list(container, "/env")
        .iter()
        .rev()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(variable))
}

/// The value a container gives `variable`: a literal, or the Secret key it references.
/// None when it is unset or comes from elsewhere (the downward API).
pub(super) fn env_value(objects: &Objects, container: &Value, variable: &str) -> Option<String> {
    let entry = env_entry(container, variable)?;
    if let Some(value) = entry.get("value").and_then(Value::as_str) {
        return Some(value.to_string());
    }
    let reference = entry.pointer("/valueFrom/secretKeyRef")?;
    Some(secret_value(
        objects,
        text(reference, "/name", variable),
        text(reference, "/key", variable),
    ))
}

/// The Secret key (secret, key) `variable` of a container comes from, if it does.
pub(super) fn env_secret(container: &Value, variable: &str) -> Option<(String, String)> {
    let reference = env_entry(container, variable)?.pointer("/valueFrom/secretKeyRef")?;
    Some((
        text(reference, "/name", variable).to_string(),
        text(reference, "/key", variable).to_string(),
    ))
}

/// A binary's setting in a container: its flag in `command`/`args` (which wins, as with clap),
/// else its variable. `source` is the binary's clap definition.
pub(super) fn setting(
    objects: &Objects,
    container: &Value,
    source: &str,
    variable: &str,
) -> Option<String> {
    let flag = clap_long(source, variable);
    let words: Vec<&str> = strings(list(container, "/command"))
        .into_iter()
        .chain(strings(list(container, "/args")))
        .collect();
    for (i, word) in words.iter().enumerate() {
        if let Some(value) = word.strip_prefix(&format!("{flag}=")) {
            return Some(value.to_string());
        }
        if *word == flag {
            return words.get(i + 1).map(|v| v.to_string());
        }
    }
    env_value(objects, container, variable)
}

/// The container ports a container declares, by number, with their names.
pub(super) fn declared_ports(container: &Value) -> BTreeMap<u16, Option<String>> {
    list(container, "/ports")
        .iter()
        .map(|p| {
            (
                p.get("containerPort")
                    .and_then(Value::as_u64)
                    .expect("containerPort") as u16,
                p.get("name").and_then(Value::as_str).map(str::to_string),
            )
        })
        .collect()
}

/// The container port a probe or Service port names (by name or number); a number must be
/// one the container declares.
pub(super) fn resolve_port(container: &Value, port: &Value) -> u16 {
    let declared = declared_ports(container);
    match port {
        Value::Number(n) => {
            let n = n.as_u64().expect("port") as u16;
            assert!(
                declared.contains_key(&n),
                "port {n} is not a container port of {}",
                text(container, "/name", "container")
            );
            n
        }
        Value::String(name) => declared
            .iter()
            .find(|(_, n)| n.as_deref() == Some(name.as_str()))
            .map(|(port, _)| *port)
            .unwrap_or_else(|| panic!("no container port named {name}")),
        other => panic!("bad port {other}"),
    }
}

/// (port, path) of an httpGet probe.
pub(super) fn http_probe(container: &Value, probe: &str) -> (u16, String) {
    let get = container
        .pointer(&format!("/{probe}/httpGet"))
        .unwrap_or_else(|| panic!("no httpGet {probe}"));
    (
        resolve_port(container, &get["port"]),
        text(get, "/path", probe).to_string(),
    )
}

pub(super) fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Whether a label selector (`matchLabels` only; an empty selector selects everything)
/// selects `labels`.
pub(super) fn selector_selects(selector: &Value, labels: &Value) -> bool {
    assert!(
        selector.get("matchExpressions").is_none(),
        "these checks read matchLabels only: {selector}"
    );
    selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The workloads (objects with a pod template) whose pods a Service selects.
pub(super) fn selected_workloads<'a>(
    objects: &'a Objects,
    service: &Value,
) -> Vec<(String, &'a Value)> {
    let selector = service.pointer("/spec/selector").unwrap_or(&Value::Null);
    objects
        .iter()
        .filter(|(_, o)| {
            o.pointer("/spec/template/metadata/labels")
                .is_some_and(|labels| labels_match(selector, labels))
        })
        .map(|((kind, name), o)| (format!("{kind}/{name}"), o))
        .collect()
}

/// Whether an image is the gateway's (any registry, any tag).
pub(super) fn is_gateway_image(image: &str) -> bool {
    let without_digest = image.split('@').next().unwrap_or_default();
    let last = without_digest.rsplit('/').next().unwrap_or_default();
    last.split(':').next() == Some("gateway")
}

/// A gateway process of a deployment: the workload and container running `binary`, with the
/// ports it listens on, worked out from its flags, variables and the sources' defaults.
pub(super) struct Plane<'a> {
    pub(super) kind_name: String,
    pub(super) workload: &'a Value,
    pub(super) container: &'a Value,
    /// Client traffic: the data plane's listener, the control plane's gRPC.
    pub(super) traffic: u16,
    /// Health and metrics: the data plane's admin listener, the control plane's HTTP.
    pub(super) admin: u16,
}

/// Every workload whose gateway container runs `binary`, by (kind/name, workload, container).
pub(super) fn running<'a>(
    objects: &'a Objects,
    binary: &str,
) -> Vec<(String, &'a Value, &'a Value)> {
    let mut found = Vec::new();
    for ((kind, name), workload) in objects {
        for c in list(workload, "/spec/template/spec/containers") {
            let command = strings(list(c, "/command"));
            let program = command.first().map(|p| p.rsplit('/').next().unwrap_or(p));
            if is_gateway_image(text(c, "/image", name)) && program == Some(binary) {
                found.push((format!("{kind}/{name}"), workload, c));
            }
        }
    }
    found
}

/// The control planes of a deployment, their ports agreeing with their flags.
pub(super) fn control_planes<'a>(objects: &'a Objects, facts: &Facts) -> Vec<Plane<'a>> {
    running(objects, "control-plane")
        .into_iter()
        .map(|(kind_name, workload, container)| {
            let port = |variable: &str, default: u16| {
                setting(objects, container, CP_CLI, variable).map_or(default, |a| port_of(&a))
            };
            Plane {
                traffic: port("CP_GRPC_ADDR", facts.cp_grpc),
                admin: port("CP_HTTP_ADDR", facts.cp_http),
                kind_name,
                workload,
                container,
            }
        })
        .collect()
}

/// The data planes of a deployment, their ports agreeing with their flags (GW_LISTEN wins
/// over PORT, as in the data plane).
pub(super) fn data_planes<'a>(objects: &'a Objects, facts: &Facts) -> Vec<Plane<'a>> {
    running(objects, "data-plane")
        .into_iter()
        .map(|(kind_name, workload, container)| {
            let get = |variable: &str| setting(objects, container, DP_CLI, variable);
            Plane {
                traffic: get("GW_LISTEN")
                    .or_else(|| get("PORT"))
                    .map_or(facts.dp_listen, |a| port_of(&a)),
                admin: get("GW_ADMIN_LISTEN").map_or(facts.dp_admin, |a| port_of(&a)),
                kind_name,
                workload,
                container,
            }
        })
        .collect()
}

/// The pods a workload runs at least: its HorizontalPodAutoscaler's minimum, else its replicas.
pub(super) fn least_replicas(objects: &Objects, kind: &str, name: &str, workload: &Value) -> u64 {
    let autoscaler = objects.iter().find(|((k, _), hpa)| {
        k == "HorizontalPodAutoscaler"
            && hpa
                .pointer("/spec/scaleTargetRef/kind")
                .and_then(Value::as_str)
                == Some(kind)
            && hpa
                .pointer("/spec/scaleTargetRef/name")
                .and_then(Value::as_str)
                == Some(name)
    });
    match autoscaler {
        Some((_, hpa)) => hpa
            .pointer("/spec/minReplicas")
            .and_then(Value::as_u64)
            .unwrap_or(1),
        None => workload
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1),
    }
}

/// A Deployment's replicas (None: not set, as when an autoscaler owns the count).
pub(super) fn replicas(objects: &Objects, name: &str) -> Option<u64> {
    object(objects, "Deployment", name)
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
}

/// Whether some object of `kind` selects the pods of Deployment `name`.
pub(super) fn has_selecting(objects: &Objects, kind: &str, name: &str) -> bool {
    let labels = object(objects, "Deployment", name)
        .pointer("/spec/template/metadata/labels")
        .expect("pod labels");
    objects.iter().any(|((k, _), o)| {
        k == kind
            && o.pointer("/spec/selector")
                .is_some_and(|s| selector_selects(s, labels))
    })
}

/// Whether an autoscaler scales Deployment `name`.
pub(super) fn autoscaled(objects: &Objects, name: &str) -> bool {
    objects.iter().any(|((kind, _), hpa)| {
        kind == "HorizontalPodAutoscaler"
            && hpa
                .pointer("/spec/scaleTargetRef/name")
                .and_then(Value::as_str)
                == Some(name)
    })
}
