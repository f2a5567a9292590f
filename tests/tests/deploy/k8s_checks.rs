//! Checks of the Kubernetes deployment, run on what `kubectl kustomize` renders for the base and
//! for each overlay: what every kustomization must get right to work as shipped, and what each
//! overlay promises.

use super::*;

/// Pod-level and container-level hardening of a workload.
fn assert_hardened(kind_name: &str, workload: &Value) {
    let pod = workload
        .pointer("/spec/template/spec")
        .unwrap_or_else(|| panic!("{kind_name}: no pod template"));
    assert_eq!(
        pod.pointer("/securityContext/runAsNonRoot"),
        Some(&Value::Bool(true)),
        "{kind_name}: runAsNonRoot"
    );
    let uid = pod
        .pointer("/securityContext/runAsUser")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{kind_name}: no runAsUser"));
    assert_ne!(uid, 0, "{kind_name}: runs as root");
    for c in list(pod, "/containers") {
        let name = text(c, "/name", kind_name);
        let sc = c
            .get("securityContext")
            .unwrap_or_else(|| panic!("{kind_name}/{name}: no securityContext"));
        assert_eq!(
            sc.get("readOnlyRootFilesystem"),
            Some(&Value::Bool(true)),
            "{kind_name}/{name}: readOnlyRootFilesystem"
        );
        assert_eq!(
            sc.get("allowPrivilegeEscalation"),
            Some(&Value::Bool(false)),
            "{kind_name}/{name}: allowPrivilegeEscalation"
        );
        assert!(
            strings(list(sc, "/capabilities/drop")).contains(&"ALL"),
            "{kind_name}/{name}: capabilities not dropped"
        );
        for resource in ["cpu", "memory"] {
            assert!(
                c.pointer(&format!("/resources/requests/{resource}"))
                    .is_some(),
                "{kind_name}/{name}: no {resource} request"
            );
        }
        assert!(
            c.pointer("/resources/limits/memory").is_some(),
            "{kind_name}/{name}: no memory limit"
        );
    }
}

/// A PodDisruptionBudget and a Service select the workload's pods.
fn assert_selected_by(objects: &Objects, kind: &str, workload_name: &str, workload: &Value) {
    let labels = workload
        .pointer("/spec/template/metadata/labels")
        .expect("pod labels");
    let selector_pointer = if kind == "Service" {
        "/spec/selector"
    } else {
        "/spec/selector/matchLabels"
    };
    let selecting: Vec<&String> = objects
        .iter()
        .filter(|((k, _), o)| {
            k == kind
                && o.pointer(selector_pointer)
                    .is_some_and(|s| labels_match(s, labels))
        })
        .map(|((_, n), _)| n)
        .collect();
    assert!(
        !selecting.is_empty(),
        "no {kind} selects the pods of {workload_name}"
    );
}

/// A plane declares exactly the ports it listens on, and is probed on its admin port at paths
/// its admin server serves: readiness on /health/ready, liveness on /health/live.
fn assert_ports_and_probes(dir: &str, plane: &Plane, admin_paths: &BTreeSet<String>) {
    let who = format!("{dir}: {}", plane.kind_name);
    let declared: BTreeSet<u16> = declared_ports(plane.container).into_keys().collect();
    assert_eq!(
        declared,
        BTreeSet::from([plane.traffic, plane.admin]),
        "{who}: container ports are not the ports its flags make it listen on"
    );
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        if plane.container.get(probe).is_none() {
            continue;
        }
        let (port, path) = http_probe(plane.container, probe);
        assert_eq!(port, plane.admin, "{who}: {probe} is not on the admin port");
        assert!(
            admin_paths.contains(&path),
            "{who}: {probe} asks {path}, which the binary does not serve ({admin_paths:?})"
        );
    }
    assert_eq!(
        http_probe(plane.container, "readinessProbe").1,
        "/health/ready",
        "{who}: readinessProbe"
    );
    assert_eq!(
        http_probe(plane.container, "livenessProbe").1,
        "/health/live",
        "{who}: livenessProbe"
    );
}

/// Every Service selects pods and targets ports they declare; a plane's admin port is on a
/// Service of its own, never on the Service of its traffic.
fn assert_services(dir: &str, objects: &Objects, planes: &[Plane]) {
    let mut exposed: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for ((kind, name), service) in objects {
        if kind != "Service" {
            continue;
        }
        let selected = selected_workloads(objects, service);
        assert!(
            !selected.is_empty(),
            "{dir}: Service/{name} selects no pods"
        );
        for (workload_name, workload) in selected {
            let containers = list(workload, "/spec/template/spec/containers");
            let targets: BTreeSet<u16> = list(service, "/spec/ports")
                .iter()
                .map(|p| {
                    let target = p.get("targetPort").unwrap_or(&p["port"]);
                    containers
                        .iter()
                        .find_map(|c| {
                            let named = target
                                .as_str()
                                .is_none_or(|n| list(c, "/ports").iter().any(|p| p["name"] == n));
                            named.then(|| resolve_port(c, target))
                        })
                        .unwrap_or_else(|| {
                            panic!("{dir}: Service/{name}: {workload_name} has no port {target}")
                        })
                })
                .collect();
            let Some(plane) = planes.iter().find(|p| p.kind_name == workload_name) else {
                continue;
            };
            let traffic = targets.contains(&plane.traffic);
            let admin = targets.contains(&plane.admin);
            assert!(
                !(traffic && admin),
                "{dir}: Service/{name} exposes the admin port {} of {workload_name} with its traffic port {}: put it on a Service of its own",
                plane.admin,
                plane.traffic
            );
            let seen = exposed.entry(workload_name).or_default();
            *seen = (seen.0 || traffic, seen.1 || admin);
        }
    }
    for plane in planes {
        let (traffic, admin) = exposed.get(&plane.kind_name).copied().unwrap_or_default();
        assert!(
            traffic,
            "{dir}: no Service for the traffic of {}",
            plane.kind_name
        );
        assert!(
            admin,
            "{dir}: no Service for the admin port of {}",
            plane.kind_name
        );
    }
}

/// Whether a NetworkPolicy lets pods labelled `labels` in namespace `ns` reach `port`
/// (number and name) of the pods it selects.
fn policy_admits(
    objects: &Objects,
    policy: &Value,
    ns: &str,
    labels: &Value,
    port: (u16, &str),
) -> bool {
    let namespace_labels = object(objects, "Namespace", ns)
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(Value::Null);
    list(policy, "/spec/ingress").iter().any(|rule| {
        let ports = list(rule, "/ports");
        let port_ok = ports.is_empty()
            || ports.iter().any(|p| {
                p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == "TCP"
                    && match p.get("port") {
                        None => true,
                        Some(Value::Number(n)) => n.as_u64() == Some(u64::from(port.0)),
                        Some(Value::String(name)) => name == port.1,
                        Some(_) => false,
                    }
            });
        let peers = list(rule, "/from");
        let peer_ok = peers.is_empty()
            || peers.iter().any(|peer| {
                let pods = peer
                    .get("podSelector")
                    .is_none_or(|s| selector_selects(s, labels));
                let namespaces = match peer.get("namespaceSelector") {
                    None => peer.get("podSelector").is_some(),
                    Some(s) => selector_selects(s, &namespace_labels),
                };
                pods && namespaces
            });
        port_ok && peer_ok
    })
}

/// Each Redis client reaches the in-cluster Redis it is pointed at: the URL names the redis
/// Service and one of its ports, and the NetworkPolicies over the Redis pods (if any) let the
/// client in.
fn assert_reaches_redis(dir: &str, objects: &Objects, ns: &str, client: &Plane, url: &str) {
    let (host, port) = redis_host_port(url);
    let service_name = host.split('.').next().unwrap_or_default();
    let in_cluster = [
        service_name.to_string(),
        format!("{service_name}.{ns}"),
        format!("{service_name}.{ns}.svc"),
        format!("{service_name}.{ns}.svc.cluster.local"),
    ];
    assert!(
        in_cluster.contains(&host),
        "{dir}: {}: REDIS_URL {url} is not a Service of namespace {ns}",
        client.kind_name
    );
    let service = object(objects, "Service", service_name);
    let service_port = list(service, "/spec/ports")
        .iter()
        .find(|p| p["port"].as_u64() == Some(u64::from(port)))
        .unwrap_or_else(|| panic!("{dir}: Service/{service_name} has no port {port}"));
    let target = service_port
        .get("targetPort")
        .unwrap_or(&service_port["port"]);
    let selected = selected_workloads(objects, service);
    assert!(
        !selected.is_empty(),
        "{dir}: Service/{service_name} selects no pods"
    );
    let client_labels = client
        .workload
        .pointer("/spec/template/metadata/labels")
        .expect("pod labels");
    for (redis_name, redis) in selected {
        let redis_container = &list(redis, "/spec/template/spec/containers")[0];
        let container_port = resolve_port(redis_container, target);
        let port_name = declared_ports(redis_container)
            .get(&container_port)
            .cloned()
            .flatten()
            .unwrap_or_default();
        let redis_labels = redis
            .pointer("/spec/template/metadata/labels")
            .expect("pod labels");
        let policies: Vec<(&String, &Value)> = objects
            .iter()
            .filter(|((kind, _), p)| {
                kind == "NetworkPolicy"
                    && p.pointer("/spec/podSelector")
                        .is_some_and(|s| selector_selects(s, redis_labels))
                    && (p.pointer("/spec/policyTypes").is_none()
                        || strings(list(p, "/spec/policyTypes")).contains(&"Ingress"))
            })
            .map(|((_, name), p)| (name, p))
            .collect();
        assert!(
            policies.is_empty()
                || policies.iter().any(|(_, p)| {
                    policy_admits(objects, p, ns, client_labels, (container_port, &port_name))
                }),
            "{dir}: the NetworkPolicies over {redis_name} ({:?}) do not let {} reach port {container_port}",
            policies.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            client.kind_name
        );
    }
}

/// Every data plane shares the control plane's Redis, under its key prefix, so that rate limits,
/// sessions, API keys and revocations are one for the fleet; IP_SALT comes from a Secret, the
/// same for every pod; the Discovery token agrees; the data plane streams from the control
/// plane's Service.
fn assert_data_planes_join_the_control_plane(
    dir: &str,
    objects: &Objects,
    facts: &Facts,
    ns: &str,
    cp: &Plane,
    data_planes: &[Plane],
) {
    let cp_store = (
        setting(objects, cp.container, CP_CLI, "REDIS_URL")
            .unwrap_or_else(|| panic!("{dir}: {} has no REDIS_URL", cp.kind_name)),
        setting(objects, cp.container, CP_CLI, "CP_KEY_PREFIX")
            .unwrap_or(facts.cp_key_prefix.clone()),
    );
    assert_reaches_redis(dir, objects, ns, cp, &cp_store.0);
    let cp_service = object(objects, "Service", "control-plane");
    for dp in data_planes {
        let who = format!("{dir}: {}", dp.kind_name);
        for variable in ["REDIS_URL", "IP_SALT"] {
            assert!(
                env_secret(dp.container, variable).is_some(),
                "{who}: {variable} is not taken from a Secret (without REDIS_URL each pod counts its own limits, answers /auth/refresh 503 and never sees API keys or revocations; IP_SALT must be one for all pods)"
            );
        }
        let dp_store = (
            setting(objects, dp.container, DP_CLI, "REDIS_URL").expect("REDIS_URL"),
            setting(objects, dp.container, DP_CLI, "GW_KEY_PREFIX")
                .unwrap_or(facts.dp_key_prefix.clone()),
        );
        assert_eq!(
            dp_store, cp_store,
            "{who}: REDIS_URL and GW_KEY_PREFIX are not the control plane's REDIS_URL and CP_KEY_PREFIX"
        );
        assert_reaches_redis(dir, objects, ns, dp, &dp_store.0);
        let cp_token = setting(objects, cp.container, CP_CLI, "GW_DATAPLANE_TOKEN");
        let dp_token = setting(objects, dp.container, DP_CLI, "GW_DATAPLANE_TOKEN");
        assert_eq!(
            cp_token.is_some(),
            dp_token.is_some(),
            "{who}: GW_DATAPLANE_TOKEN set on one plane only"
        );
        assert!(
            cp_token == dp_token,
            "{who}: GW_DATAPLANE_TOKEN differs from the control plane's"
        );
        let url = setting(objects, dp.container, DP_CLI, "CONTROL_PLANE_URL")
            .unwrap_or_else(|| panic!("{who}: no CONTROL_PLANE_URL"));
        let (host, port) = host_port_of_url(&url);
        assert!(
            host == "control-plane" || host.starts_with(&format!("control-plane.{ns}.")),
            "{who}: CONTROL_PLANE_URL {url} is not the control-plane Service"
        );
        let target = list(cp_service, "/spec/ports")
            .iter()
            .find(|p| p["port"].as_u64() == Some(u64::from(port)))
            .map(|p| resolve_port(cp.container, p.get("targetPort").unwrap_or(&p["port"])));
        assert_eq!(
            target,
            Some(cp.traffic),
            "{who}: CONTROL_PLANE_URL port {port} is not the control plane's gRPC port"
        );
    }
}

/// The data plane keeps its config cache on a writable volume (the root filesystem is read
/// only), and drains before it is killed.
fn assert_data_plane_pod(dir: &str, objects: &Objects, facts: &Facts, dp: &Plane) {
    let who = format!("{dir}: {}", dp.kind_name);
    let cache = setting(objects, dp.container, DP_CLI, "GW_CONFIG_CACHE")
        .unwrap_or(facts.dp_config_cache.clone());
    assert!(
        !matches!(cache.trim(), "" | "off"),
        "{who}: the config cache is off"
    );
    let mount = list(dp.container, "/volumeMounts")
        .iter()
        .find(|m| {
            let path = text(m, "/mountPath", "volumeMount").trim_end_matches('/');
            cache == path || cache.starts_with(&format!("{path}/"))
        })
        .unwrap_or_else(|| panic!("{who}: nothing is mounted at GW_CONFIG_CACHE {cache}"));
    assert_ne!(
        mount.get("readOnly"),
        Some(&Value::Bool(true)),
        "{who}: the config cache is mounted read-only"
    );
    let volume = list(dp.workload, "/spec/template/spec/volumes")
        .iter()
        .find(|v| v.get("name") == mount.get("name"))
        .unwrap_or_else(|| panic!("{who}: no volume {}", mount["name"]));
    assert!(
        ["emptyDir", "persistentVolumeClaim", "ephemeral"]
            .iter()
            .any(|k| volume.get(*k).is_some()),
        "{who}: the config cache volume is not writable storage: {volume}"
    );

    let pre_stop = strings(list(dp.container, "/lifecycle/preStop/exec/command"));
    let sleep = match pre_stop.as_slice() {
        ["sleep", seconds] => Duration::from_secs(seconds.parse().expect("sleep seconds")),
        other => panic!("{who}: preStop is not `sleep N`: {other:?}"),
    };
    let grace = duration(
        &setting(objects, dp.container, DP_CLI, "GW_SHUTDOWN_GRACE")
            .unwrap_or_else(|| clap_default(DP_CLI, "GW_SHUTDOWN_GRACE", None)),
    );
    let termination = Duration::from_secs(
        dp.workload
            .pointer("/spec/template/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{who}: no terminationGracePeriodSeconds")),
    );
    assert!(
        termination > sleep + grace,
        "{who}: terminationGracePeriodSeconds ({termination:?}) must exceed preStop ({sleep:?}) + GW_SHUTDOWN_GRACE ({grace:?})"
    );
}

/// Autoscalers own their workload's replica count and scale on CPU the pods request; every
/// disruption budget lets a node drain evict a pod.
fn assert_scaling(dir: &str, objects: &Objects) {
    for ((kind, name), hpa) in objects {
        if kind != "HorizontalPodAutoscaler" {
            continue;
        }
        assert_eq!(text(hpa, "/apiVersion", name), "autoscaling/v2");
        let target_kind = text(hpa, "/spec/scaleTargetRef/kind", name);
        let target_name = text(hpa, "/spec/scaleTargetRef/name", name);
        let target = object(objects, target_kind, target_name);
        assert!(
            target.pointer("/spec/replicas").is_none(),
            "{dir}: {target_kind}/{target_name} sets replicas, which fights its HorizontalPodAutoscaler"
        );
        assert!(
            hpa.pointer("/spec/minReplicas").and_then(Value::as_u64) >= Some(2),
            "{dir}: HorizontalPodAutoscaler/{name}: minReplicas below 2"
        );
        assert!(
            list(hpa, "/spec/metrics")
                .iter()
                .any(|m| m.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")),
            "{dir}: HorizontalPodAutoscaler/{name} does not scale on CPU"
        );
        for c in list(target, "/spec/template/spec/containers") {
            assert!(
                c.pointer("/resources/requests/cpu").is_some(),
                "{dir}: CPU utilisation of {target_name} needs a CPU request"
            );
        }
    }
    for ((kind, name), pdb) in objects {
        if kind != "PodDisruptionBudget" {
            continue;
        }
        let selector = pdb.pointer("/spec/selector").expect("PDB selector");
        let selected: Vec<(&(String, String), &Value)> = objects
            .iter()
            .filter(|(_, w)| {
                w.pointer("/spec/template/metadata/labels")
                    .is_some_and(|labels| selector_selects(selector, labels))
            })
            .collect();
        assert!(
            !selected.is_empty(),
            "{dir}: PodDisruptionBudget/{name} selects no pods"
        );
        for ((workload_kind, workload_name), workload) in selected {
            let pods = least_replicas(objects, workload_kind, workload_name, workload);
            let evictable = match (
                pdb.pointer("/spec/minAvailable"),
                pdb.pointer("/spec/maxUnavailable"),
            ) {
                (Some(Value::Number(min)), None) => min.as_u64().is_some_and(|m| m < pods),
                (None, Some(Value::Number(max))) => max.as_u64().is_some_and(|m| m >= 1),
                other => panic!("{dir}: PodDisruptionBudget/{name}: these checks read one integer, not {other:?}"),
            };
            assert!(
                evictable,
                "{dir}: PodDisruptionBudget/{name} never lets a drain evict a pod of {workload_name} ({pods} pods)"
            );
        }
    }
}

/// The ConfigMap holds a valid config, applied by a Job running `gwctl apply` against the
/// control plane's gRPC port with the admin token.
fn assert_config_job(dir: &str, objects: &Objects, ns: &str, cp: &Plane) {
    let configmap = object(objects, "ConfigMap", "gateway-config");
    let job = object(objects, "Job", "gateway-config-apply");
    let job_container = &list(job, "/spec/template/spec/containers")[0];
    let command = strings(list(job_container, "/command"));
    assert_eq!(
        &command[..2],
        ["gwctl", "apply"],
        "{dir}: the Job does not run gwctl apply"
    );
    let file = command
        .iter()
        .position(|w| *w == "-f")
        .and_then(|i| command.get(i + 1))
        .expect("apply -f FILE");
    let (mount_dir, key) = file.rsplit_once('/').expect("FILE is a path");
    let mount = list(job_container, "/volumeMounts")
        .iter()
        .find(|m| m.get("mountPath").and_then(Value::as_str) == Some(mount_dir))
        .unwrap_or_else(|| panic!("{dir}: the Job does not mount {mount_dir}"));
    let volume = list(job, "/spec/template/spec/volumes")
        .iter()
        .find(|v| v.get("name") == mount.get("name"))
        .expect("the mounted volume");
    assert_eq!(
        volume.pointer("/configMap/name").and_then(Value::as_str),
        Some("gateway-config"),
        "{dir}: the Job does not mount the ConfigMap"
    );
    let document = text(configmap, &format!("/data/{key}"), "ConfigMap");
    GatewayConfig::load(document.as_bytes()).unwrap_or_else(|e| {
        panic!("{dir}: the ConfigMap's {key} is not a config gwctl apply accepts: {e}")
    });
    let job_env = container_env(job_container);
    let (host, port) = host_port_of_url(
        job_env
            .get("GW_CONTROL_PLANE")
            .and_then(|v| v.as_deref())
            .expect("the Job's GW_CONTROL_PLANE"),
    );
    assert!(
        host == "control-plane" || host.starts_with(&format!("control-plane.{ns}.")),
        "{dir}: the Job's GW_CONTROL_PLANE is not the control-plane Service"
    );
    let cp_service = object(objects, "Service", "control-plane");
    let target = list(cp_service, "/spec/ports")
        .iter()
        .find(|p| p["port"].as_u64() == Some(u64::from(port)))
        .map(|p| resolve_port(cp.container, p.get("targetPort").unwrap_or(&p["port"])));
    assert_eq!(
        target,
        Some(cp.traffic),
        "{dir}: the Job's GW_CONTROL_PLANE port"
    );
    assert!(
        job_env.contains_key("GW_ADMIN_TOKEN"),
        "{dir}: the Job sends no GW_ADMIN_TOKEN"
    );
}

/// Every workload: hardened; every Secret key and ConfigMap it references exists; its gateway
/// containers run the gateway's binaries with variables they read.
fn assert_workloads_resolve(dir: &str, objects: &Objects, facts: &Facts) {
    let read_by_binaries = variables_read();
    for ((kind, name), workload) in objects {
        let Some(pod) = workload.pointer("/spec/template/spec") else {
            continue;
        };
        let who = format!("{dir}: {kind}/{name}");
        assert_hardened(&who, workload);
        for c in list(pod, "/containers") {
            for e in list(c, "/env") {
                if let Some(reference) = e.pointer("/valueFrom/secretKeyRef") {
                    let secret = text(reference, "/name", name);
                    let key = text(reference, "/key", name);
                    assert!(
                        secret_has_key(objects, secret, key),
                        "{who}: {} reads key {key} of Secret {secret}, which has no such key",
                        text(e, "/name", name)
                    );
                }
            }
            for from in list(c, "/envFrom") {
                if let Some(secret) = from.pointer("/secretRef/name").and_then(Value::as_str) {
                    object(objects, "Secret", secret);
                }
            }
            if !is_gateway_image(text(c, "/image", name)) {
                continue;
            }
            let binary = strings(list(c, "/command"))
                .first()
                .map(|b| b.rsplit('/').next().unwrap_or(b).to_string())
                .unwrap_or_else(|| panic!("{who}: no command"));
            assert!(
                facts.binaries.contains(&binary),
                "{who}: {binary} is not in the image"
            );
            for variable in container_env(c).keys() {
                assert!(
                    read_by_binaries.contains(variable),
                    "{who}: no binary reads {variable}"
                );
            }
        }
        for v in list(pod, "/volumes") {
            if let Some(map) = v.pointer("/configMap/name").and_then(Value::as_str) {
                object(objects, "ConfigMap", map);
            }
            if let Some(secret) = v.pointer("/secret/secretName").and_then(Value::as_str) {
                object(objects, "Secret", secret);
            }
        }
    }
}

/// The checks every kustomization must pass, on the objects it renders: a deployment that
/// works as shipped.
fn assert_works_as_shipped(dir: &str, objects: &Objects) {
    let facts = facts();

    // One namespace holds everything.
    let namespaces: Vec<&String> = objects
        .keys()
        .filter(|(kind, _)| kind == "Namespace")
        .map(|(_, name)| name)
        .collect();
    let [ns] = namespaces.as_slice() else {
        panic!("{dir}: not one Namespace: {namespaces:?}")
    };
    for ((kind, name), o) in objects {
        if kind != "Namespace" {
            assert_eq!(
                o.pointer("/metadata/namespace").and_then(Value::as_str),
                Some(ns.as_str()),
                "{dir}: {kind}/{name} is not in namespace {ns}"
            );
        }
    }
    assert_workloads_resolve(dir, objects, &facts);

    let control_planes = control_planes(objects, &facts);
    let data_planes = data_planes(objects, &facts);
    let [cp] = control_planes.as_slice() else {
        panic!("{dir}: not one control-plane workload")
    };
    assert_eq!(cp.kind_name, "Deployment/control-plane", "{dir}");
    assert!(!data_planes.is_empty(), "{dir}: no data plane");
    assert_ports_and_probes(dir, cp, &facts.cp_http_paths);
    for variable in ["REDIS_URL", "GW_ADMIN_TOKEN", "GW_REGISTRATION_TOKEN"] {
        assert!(
            env_secret(cp.container, variable).is_some(),
            "{dir}: the control plane does not take {variable} from a Secret"
        );
    }
    for dp in &data_planes {
        assert_ports_and_probes(dir, dp, &facts.dp_admin_paths);
        assert_data_plane_pod(dir, objects, &facts, dp);
    }
    let planes: Vec<Plane> = control_planes.into_iter().chain(data_planes).collect();
    assert_services(dir, objects, &planes);
    let (cp, data_planes) = planes.split_first().expect("planes");
    assert_data_planes_join_the_control_plane(dir, objects, &facts, ns, cp, data_planes);
    assert_scaling(dir, objects);

    // Redis: a StatefulSet keeping its data on a volume claim.
    let redis = object(objects, "StatefulSet", "redis");
    let claims = list(redis, "/spec/volumeClaimTemplates");
    assert!(!claims.is_empty(), "{dir}: redis keeps no data on a volume");
    assert!(
        list(container(redis, "redis"), "/volumeMounts")
            .iter()
            .any(|m| m.get("name") == claims[0].pointer("/metadata/name")),
        "{dir}: redis does not mount its volume claim"
    );
    assert_config_job(dir, objects, ns, cp);
}

#[test]
fn the_kubernetes_base_lists_every_manifest_and_marks_every_secret_a_placeholder() {
    let objects = manifests();
    let kustomization = &yaml_documents(&format!("{K8S_BASE}/kustomization.yaml"))[0];
    let listed: BTreeSet<String> = strings(list(kustomization, "/resources"))
        .into_iter()
        .map(|r| format!("{K8S_BASE}/{r}"))
        .collect();
    assert_eq!(
        listed,
        manifest_files().into_iter().collect::<BTreeSet<_>>(),
        "base/kustomization.yaml resources"
    );
    for overlay in OVERLAYS {
        let kustomization =
            &yaml_documents(&format!("{K8S}/overlays/{overlay}/kustomization.yaml"))[0];
        assert_eq!(
            strings(list(kustomization, "/resources")),
            ["../../base"],
            "overlay {overlay} does not build on the base"
        );
    }

    let secret = object(&objects, "Secret", "gateway-secrets");
    let secret_data = secret
        .get("stringData")
        .and_then(Value::as_object)
        .expect("Secret stringData");
    for key in [
        "GW_ADMIN_TOKEN",
        "GW_REGISTRATION_TOKEN",
        "GW_DATAPLANE_TOKEN",
        "JWT_SECRET",
        "IP_SALT",
    ] {
        let value = secret_data
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("Secret lacks {key}"));
        assert!(
            value.starts_with("REPLACE_ME"),
            "Secret {key} is not marked as a placeholder"
        );
        assert!(
            value.len() >= 32,
            "Secret {key}: even the placeholder must be 32 bytes or more"
        );
    }
}

#[test]
fn every_kustomization_renders_a_deployment_that_works_as_shipped() {
    for dir in kustomizations() {
        assert_works_as_shipped(&dir, &rendered(&dir));
    }
}

#[test]
fn the_base_runs_two_control_planes_and_autoscaled_data_planes() {
    let objects = rendered(K8S_BASE);
    assert_eq!(replicas(&objects, "control-plane"), Some(2));
    assert!(
        object(&objects, "Deployment", "control-plane")
            .pointer("/spec/template/spec/affinity/podAntiAffinity")
            .is_some(),
        "control-plane has no anti-affinity"
    );
    assert!(
        autoscaled(&objects, "data-plane"),
        "no autoscaler for data-plane"
    );
    for plane in ["control-plane", "data-plane"] {
        let workload = object(&objects, "Deployment", plane);
        assert_selected_by(&objects, "PodDisruptionBudget", plane, workload);
    }
}

#[test]
fn the_dev_overlay_runs_one_of_each() {
    let dir = format!("{K8S}/overlays/dev");
    let objects = rendered(&dir);
    for plane in ["control-plane", "data-plane"] {
        assert_eq!(
            replicas(&objects, plane),
            Some(1),
            "{dir}: {plane} replicas"
        );
        assert!(!autoscaled(&objects, plane), "{dir}: {plane} is autoscaled");
        assert!(
            !has_selecting(&objects, "PodDisruptionBudget", plane),
            "{dir}: a disruption budget over the one {plane} pod blocks node drains"
        );
    }
    assert_eq!(
        object(&objects, "StatefulSet", "redis")
            .pointer("/spec/replicas")
            .and_then(Value::as_u64),
        Some(1)
    );
}

#[test]
fn the_production_overlay_is_highly_available() {
    let dir = format!("{K8S}/overlays/production");
    let objects = rendered(&dir);
    assert_eq!(
        replicas(&objects, "control-plane"),
        Some(3),
        "{dir}: control-plane replicas"
    );
    assert!(
        autoscaled(&objects, "data-plane"),
        "{dir}: data-plane is not autoscaled"
    );
    assert!(
        least_replicas(
            &objects,
            "Deployment",
            "data-plane",
            object(&objects, "Deployment", "data-plane")
        ) >= 3,
        "{dir}: fewer than three data planes, one per zone"
    );
    for plane in ["control-plane", "data-plane"] {
        assert!(
            has_selecting(&objects, "PodDisruptionBudget", plane),
            "{dir}: no disruption budget for {plane}"
        );
        let workload = object(&objects, "Deployment", plane);
        let labels = workload
            .pointer("/spec/template/metadata/labels")
            .expect("pod labels");
        let constraints = list(workload, "/spec/template/spec/topologySpreadConstraints");
        for key in ["topology.kubernetes.io/zone", "kubernetes.io/hostname"] {
            let constraint = constraints
                .iter()
                .find(|c| c.get("topologyKey").and_then(Value::as_str) == Some(key))
                .unwrap_or_else(|| panic!("{dir}: {plane} is not spread over {key}"));
            assert!(
                constraint
                    .get("labelSelector")
                    .is_some_and(|s| selector_selects(s, labels) && s.get("matchLabels").is_some()),
                "{dir}: the {key} spread of {plane} does not select its pods"
            );
        }
    }
}
