//! OpenTelemetry tracing over real processes: a control plane, data planes
//! and `test-upstream` export their spans to an OTLP receiver run by the
//! test, which checks the chain from the client's `traceparent` to the one
//! the upstream received.

use gateway_tests::cluster::{
    start_test, wait_until, write_temp_file, ControlPlaneProc, DataPlaneProc, Tokens, Upstream,
};
use gateway_tests::free_port;
use gateway_tests::http::HttpResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest wait for a span to be exported (the batch delay is 100 ms).
const EXPORTED: Duration = Duration::from_secs(10);

/// One span as the receiver got it, ids in lowercase hex.
#[derive(Debug, Clone)]
struct Recorded {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
    attributes: BTreeMap<String, String>,
    /// Keys whose value came as an OTLP integer.
    integers: BTreeSet<String>,
    error: bool,
}

impl Recorded {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map(String::as_str).unwrap_or("")
    }

    /// The attribute, which must have been exported as an integer (so that
    /// `status >= 500` queries of trace backends match it).
    fn int_attr(&self, key: &str) -> &str {
        assert!(
            self.integers.contains(key),
            "{key} is not exported as an integer: {:?}",
            self.attributes.get(key)
        );
        self.attr(key)
    }
}

/// An OTLP/gRPC trace receiver recording every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Recorded>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut recorded = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    recorded.push(Recorded {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_id: hex(&span.parent_span_id),
                        attributes: attributes(&span.attributes),
                        integers: integers(&span.attributes),
                        // STATUS_CODE_ERROR
                        error: span.status.is_some_and(|s| s.code == 2),
                    });
                }
            }
        }
        self.spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(recorded);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Serves on a free port in a runtime of its own; the endpoint URL.
    fn start(&self) -> (tokio::runtime::Runtime, String) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("receiver runtime");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .expect("bind the OTLP receiver");
        let service = TraceServiceServer::new(self.clone());
        runtime.spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        (runtime, format!("http://{addr}"))
    }

    fn spans(&self) -> Vec<Recorded> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until a span matching `found` has arrived.
    fn wait_for(&self, what: &str, found: impl Fn(&Recorded) -> bool) -> Recorded {
        wait_until(what, EXPORTED, || {
            self.spans().into_iter().find(|s| found(s)).ok_or_else(|| {
                let seen: Vec<String> = self
                    .spans()
                    .iter()
                    .map(|s| format!("{}:{}:{}<-{}", s.service, s.name, s.span_id, s.parent_id))
                    .collect();
                format!("spans so far: {seen:?}")
            })
        })
    }
}

fn integers(kvs: &[KeyValue]) -> BTreeSet<String> {
    kvs.iter()
        .filter(|kv| {
            matches!(
                kv.value.as_ref().and_then(|v| v.value.as_ref()),
                Some(AnyValue::IntValue(_))
            )
        })
        .map(|kv| kv.key.clone())
        .collect()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                _ => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh `traceparent` (sampled) and its trace and span ids.
fn client_traceparent() -> (String, String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}

/// `(trace id, parent id)` of a `traceparent`.
fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {value:?}");
    (parts[1].to_string(), parts[2].to_string())
}

fn get_with(dp: &DataPlaneProc, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    dp.send("GET", path, headers, b"")
}

fn otel_env(endpoint: &str, service: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("OTEL_SERVICE_NAME", service.to_string()),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn a_request_is_traced_from_the_client_to_the_upstream() {
    let _test = start_test();
    let receiver = Receiver::default();
    let (_runtime, endpoint) = receiver.start();
    let upstream = Upstream::start("u1");
    let tokens = Tokens::random();
    let cp_env = otel_env(&endpoint, "cp-under-test");
    let cp = ControlPlaneProc::start_with_env("cp-a", None, &tokens, &borrowed(&cp_env));
    let yaml = format!(
        "version: 1\nservices:\n  - {{ name: app, instances: [\"{}\"] }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: /app }}, service: app, strip_prefix: true }}\n",
        upstream.url()
    );
    cp.gwctl().apply(&yaml).success();
    let dp_env = otel_env(&endpoint, "dp-under-test");
    let mut dp = DataPlaneProc::start_with_env("dp-1", &cp.url(), None, &borrowed(&dp_env));
    dp.wait_ready();
    wait_until(
        "the route to reach the data plane",
        EXPORTED,
        || match get_with(&dp, "/app/warmup", &[]).status {
            200 => Ok(()),
            status => Err(format!("status {status}")),
        },
    );

    let (traceparent, trace_id, client_span) = client_traceparent();
    let r = get_with(
        &dp,
        "/app/orders/7",
        &[("traceparent", &traceparent), ("tracestate", "vendor=abc")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let echoed = r.json();
    let received = echoed["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent upstream: {echoed}"))
        .to_string();
    assert_eq!(echoed["headers"]["tracestate"], "vendor=abc", "{echoed}");

    let server = receiver.wait_for("the data plane's server span", |s| {
        s.trace_id == trace_id && s.attr("http.request.method") == "GET"
    });
    assert_eq!(server.service, "dp-under-test");
    assert_eq!(server.parent_id, client_span, "{server:?}");
    assert_eq!(server.name, "GET app");
    assert_eq!(server.attr("gateway.route"), "app");
    assert_eq!(server.int_attr("http.response.status_code"), "200");
    assert!(!server.error, "{server:?}");

    let attempt = receiver.wait_for("the upstream-attempt span", |s| {
        s.trace_id == trace_id && s.name == "upstream attempt"
    });
    assert_eq!(attempt.parent_id, server.span_id, "{attempt:?}");
    assert_eq!(attempt.attr("server.address"), upstream.address());
    assert_eq!(attempt.int_attr("gateway.attempt"), "1");
    assert_eq!(attempt.int_attr("http.response.status_code"), "200");
    assert_eq!(
        parse_traceparent(&received),
        (trace_id.clone(), attempt.span_id.clone()),
        "the upstream's traceparent names the attempt span"
    );

    let route = receiver.wait_for("the route-match span", |s| {
        s.trace_id == trace_id && s.name == "route match"
    });
    assert_eq!(route.parent_id, server.span_id);
    assert_eq!(route.attr("gateway.route"), "app");

    // The data plane's config stream and gwctl's apply are RPCs.
    let rpc = receiver.wait_for("a control-plane RPC span", |s| {
        s.service == "cp-under-test" && s.attr("rpc.system") == "grpc"
    });
    assert!(rpc.name.starts_with("gateway.v1."), "{rpc:?}");
    assert!(!rpc.attr("rpc.method").is_empty(), "{rpc:?}");

    // Every span of the request is in the client's trace.
    let ours: Vec<Recorded> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.service == "dp-under-test" && s.trace_id == trace_id)
        .collect();
    assert!(ours.len() >= 3, "{ours:?}");

    // A request without a traceparent starts a trace of its own, which
    // still reaches the upstream.
    let r = get_with(&dp, "/app/fresh", &[]);
    let (fresh_trace, parent) = parse_traceparent(
        r.json()["headers"]["traceparent"]
            .as_str()
            .unwrap_or_else(|| panic!("no traceparent upstream: {}", r.text())),
    );
    let fresh_attempt = receiver.wait_for("the new trace's attempt span", |s| {
        s.trace_id == fresh_trace && s.name == "upstream attempt"
    });
    assert_eq!(fresh_attempt.span_id, parent);
    let fresh_server = receiver.wait_for("the new trace's server span", |s| {
        s.trace_id == fresh_trace && s.span_id == fresh_attempt.parent_id
    });
    assert!(fresh_server.parent_id.is_empty(), "{fresh_server:?}");
}

#[test]
fn sources_failed_attempts_and_refusals_are_spans_and_tracing_off_passes_traceparent_on() {
    let _test = start_test();
    let receiver = Receiver::default();
    let (_runtime, endpoint) = receiver.start();
    let upstream = Upstream::start("src");
    // Nothing listens there: connections are refused.
    let down = format!("http://127.0.0.1:{}", free_port());
    let config = write_temp_file(
        "tracing.yaml",
        &format!(
            r#"
version: 1
services:
  - {{ name: src, instances: ["{}"] }}
  - {{ name: down, instances: ["{down}"] }}
routes:
  - name: board
    match: {{ path: "/board/{{id}}", methods: [GET] }}
    aggregate:
      sources:
        - {{ name: first, service: src, path: "/one/{{id}}", required: true }}
        - {{ name: second, service: src, path: "/two/{{id}}", required: true }}
  - {{ name: plain, match: {{ path_prefix: /plain }}, service: src }}
  - {{ name: broken, match: {{ path_prefix: /broken }}, service: down }}
  - {{ name: secured, match: {{ path_prefix: /secured }}, service: src, auth: {{}} }}
"#,
            upstream.url()
        ),
    );
    let env = otel_env(&endpoint, "dp-standalone");
    let mut dp = DataPlaneProc::standalone_with_env("dp-agg", &config, &borrowed(&env));
    dp.wait_ready();

    let (traceparent, trace_id, client_span) = client_traceparent();
    let r = get_with(&dp, "/board/42", &[("traceparent", &traceparent)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let server = receiver.wait_for("the aggregate's server span", |s| {
        s.trace_id == trace_id && s.name == "GET board"
    });
    assert_eq!(server.parent_id, client_span);
    for name in ["first", "second"] {
        let source = receiver.wait_for(&format!("source span {name}"), |s| {
            s.trace_id == trace_id && s.attr("gateway.source") == name
        });
        assert_eq!(source.name, "aggregate source");
        assert_eq!(source.parent_id, server.span_id, "{source:?}");
        assert_eq!(source.attr("server.address"), upstream.address());
        assert!(!source.error, "{source:?}");
        let received = body[name]["headers"]["traceparent"]
            .as_str()
            .unwrap_or_else(|| panic!("source {name} got no traceparent: {body}"));
        assert_eq!(
            parse_traceparent(received),
            (trace_id.clone(), source.span_id.clone())
        );
    }

    // An attempt that cannot connect is an error span with its reason.
    let (traceparent, trace_id, _) = client_traceparent();
    let r = get_with(&dp, "/broken/x", &[("traceparent", &traceparent)]);
    assert_eq!(r.status, 503, "{}", r.text());
    let attempt = receiver.wait_for("the failed attempt's span", |s| {
        s.trace_id == trace_id && s.name == "upstream attempt"
    });
    assert!(attempt.error, "{attempt:?}");
    assert_eq!(attempt.attr("error.type"), "connect_refused");
    let server = receiver.wait_for("the failed request's server span", |s| {
        s.trace_id == trace_id && s.span_id == attempt.parent_id
    });
    assert_eq!(server.attr("http.response.status_code"), "503");
    assert!(server.error, "{server:?}");

    // A refused authentication is an error span under the request's.
    let (traceparent, trace_id, _) = client_traceparent();
    let r = get_with(&dp, "/secured/x", &[("traceparent", &traceparent)]);
    assert_eq!(r.status, 401, "{}", r.text());
    let auth = receiver.wait_for("the authentication span", |s| {
        s.trace_id == trace_id && s.name == "authentication"
    });
    assert!(auth.error, "{auth:?}");
    assert_eq!(auth.attr("error.type"), "auth_not_configured");
    let server = receiver.wait_for("the refused request's server span", |s| {
        s.trace_id == trace_id && s.span_id == auth.parent_id
    });
    assert_eq!(server.attr("http.response.status_code"), "401");
    assert!(
        receiver
            .spans()
            .iter()
            .all(|s| s.trace_id != trace_id || s.name != "upstream attempt"),
        "a refused request went upstream"
    );

    // Without OTLP settings, the client's trace context goes upstream as is.
    let mut plain = DataPlaneProc::standalone("dp-plain", &config);
    plain.wait_ready();
    let (traceparent, _, _) = client_traceparent();
    let r = get_with(
        &plain,
        "/plain/x",
        &[("traceparent", &traceparent), ("tracestate", "k=v")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["traceparent"], traceparent.as_str());
    assert_eq!(r.json()["headers"]["tracestate"], "k=v");
    let _ = std::fs::remove_file(config);
}

#[test]
fn spans_still_queued_are_exported_at_shutdown() {
    let _test = start_test();
    let receiver = Receiver::default();
    let (_runtime, endpoint) = receiver.start();
    let upstream = Upstream::start("u1");
    let config = write_temp_file(
        "flush.yaml",
        &format!(
            "version: 1\nservices:\n  - {{ name: app, instances: [\"{}\"] }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: /app }}, service: app }}\n",
            upstream.url()
        ),
    );
    // A batch delay far longer than the test: only the shutdown flush can
    // export the spans in time.
    let mut env = otel_env(&endpoint, "dp-flush");
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "600000".to_string()));
    let mut dp = DataPlaneProc::standalone_with_env("dp-flush", &config, &borrowed(&env));
    dp.wait_ready();
    let (traceparent, trace_id, _) = client_traceparent();
    let r = get_with(&dp, "/app/x", &[("traceparent", &traceparent)]);
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        receiver.spans().iter().all(|s| s.trace_id != trace_id),
        "exported before the shutdown: the test proves nothing"
    );
    dp.process().terminate();
    let status = dp.process().wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    receiver.wait_for("the request's spans after the shutdown", |s| {
        s.trace_id == trace_id && s.name == "upstream attempt"
    });
    let _ = std::fs::remove_file(config);
}

#[test]
fn an_unusable_sampler_ratio_is_refused_at_start() {
    let _test = start_test();
    let out = gateway_tests::procs::Spec::new("dp-bad-ratio", "data-plane")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_TRACES_SAMPLER_ARG", "2")
        .run(Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OTEL_TRACES_SAMPLER_ARG"), "{stderr}");
}

#[test]
fn each_retry_is_an_attempt_span_with_its_number() {
    let _test = start_test();
    let receiver = Receiver::default();
    let (_runtime, endpoint) = receiver.start();
    let flaky = Upstream::start("flaky");
    flaky.set_fail(503);
    let config = write_temp_file(
        "retries.yaml",
        &format!(
            r#"
version: 1
services:
  - name: flaky
    instances: ["{}"]
    retry: {{ max_attempts: 2, base_delay: 1ms, max_delay: 2ms, retry_on: [503] }}
routes:
  - {{ name: flaky, match: {{ path_prefix: /flaky }}, service: flaky }}
"#,
            flaky.url()
        ),
    );
    let env = otel_env(&endpoint, "dp-retries");
    let mut dp = DataPlaneProc::standalone_with_env("dp-retries", &config, &borrowed(&env));
    dp.wait_ready();
    let (traceparent, trace_id, _) = client_traceparent();
    let r = get_with(&dp, "/flaky/x", &[("traceparent", &traceparent)]);
    assert_eq!(r.status, 503, "{}", r.text());
    let server = receiver.wait_for("the server span", |s| {
        s.trace_id == trace_id && s.name == "GET flaky"
    });
    let attempts = wait_until("both attempt spans", EXPORTED, || {
        let mut attempts: Vec<Recorded> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id && s.name == "upstream attempt")
            .collect();
        attempts.sort_by(|a, b| a.attr("gateway.attempt").cmp(b.attr("gateway.attempt")));
        match attempts.len() {
            2 => Ok(attempts),
            n => Err(format!("{n} attempt spans")),
        }
    });
    for (attempt, number) in attempts.iter().zip(["1", "2"]) {
        assert_eq!(attempt.attr("gateway.attempt"), number);
        assert_eq!(attempt.parent_id, server.span_id, "{attempt:?}");
        assert_eq!(attempt.attr("http.response.status_code"), "503");
        assert!(attempt.error, "{attempt:?}");
    }
    assert_ne!(attempts[0].span_id, attempts[1].span_id);
    let _ = std::fs::remove_file(config);
}
