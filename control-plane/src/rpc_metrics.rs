//! Latency of every unary gRPC call
//! (`control_plane_grpc_request_duration_seconds{method,code}`): a tower
//! layer around every gRPC service, timing the call up to its response head,
//! which for a unary call comes once the handler has answered.
//!
//! Streaming RPCs (Discovery streams, `KeepAlive`, `WatchTopology`,
//! reflection, health `Watch`) live as long as their client and are not
//! timed; neither are paths no service knows. The methods timed come from
//! the services' descriptors, so the label's values are bounded.

use crate::metrics::Metrics;
use crate::rpc_spans::grpc_status;
use prost::Message as _;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// Status of a call that failed below gRPC (no response at all).
const GRPC_UNKNOWN: u16 = 2;

/// Adds [`RpcMetrics`] to a service.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
    /// Path (`/gateway.v1.Admin/ApplyConfig`) to label (`Admin/ApplyConfig`).
    methods: Arc<HashMap<String, Arc<String>>>,
}

impl RpcMetricsLayer {
    /// Times the unary methods of the services in `descriptor_sets`
    /// (encoded `FileDescriptorSet`s) into `metrics`.
    pub fn new(metrics: Arc<Metrics>, descriptor_sets: &[&[u8]]) -> Self {
        let methods = descriptor_sets
            .iter()
            .flat_map(|bytes| unary_methods(bytes))
            .collect();
        RpcMetricsLayer {
            metrics,
            methods: Arc::new(methods),
        }
    }
}

/// `(path, label)` of every unary method of an encoded descriptor set (none
/// when it does not decode: the calls are then not timed, never refused).
fn unary_methods(descriptor_set: &[u8]) -> Vec<(String, Arc<String>)> {
    let Ok(set) = prost_types::FileDescriptorSet::decode(descriptor_set) else {
        return Vec::new();
    };
    let mut methods = Vec::new();
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            let full = if package.is_empty() {
                service.name().to_string()
            } else {
                format!("{package}.{}", service.name())
            };
            for method in &service.method {
                if method.client_streaming() || method.server_streaming() {
                    continue;
                }
                methods.push((
                    format!("/{full}/{}", method.name()),
                    Arc::new(format!("{}/{}", service.name(), method.name())),
                ));
            }
        }
    }
    methods
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// A gRPC service whose unary calls are timed.
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(method) = self.layer.methods.get(req.uri().path()).cloned() else {
            return Box::pin(self.inner.call(req));
        };
        let started = Instant::now();
        let metrics = self.layer.metrics.clone();
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                Ok(response) => grpc_status(response.headers()),
                Err(_) => GRPC_UNKNOWN,
            };
            metrics.observe_rpc(method, code, started.elapsed());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, ServiceExt as _};

    #[test]
    fn only_unary_methods_are_timed() {
        let methods: HashMap<_, _> = unary_methods(gateway_proto::FILE_DESCRIPTOR_SET)
            .into_iter()
            .collect();
        assert_eq!(
            methods["/gateway.v1.Admin/ApplyConfig"].as_str(),
            "Admin/ApplyConfig"
        );
        assert!(methods.contains_key("/gateway.v1.Registry/Register"));
        for streaming in [
            "/gateway.v1.Discovery/Stream",
            "/gateway.v1.Registry/KeepAlive",
            "/gateway.v1.Admin/WatchTopology",
        ] {
            assert!(!methods.contains_key(streaming), "{streaming}");
        }
        assert!(unary_methods(b"\xff\xff not a descriptor").is_empty());
    }

    #[tokio::test]
    async fn calls_are_timed_with_their_status() {
        let metrics = Arc::new(Metrics::new());
        let layer = RpcMetricsLayer::new(metrics.clone(), &[gateway_proto::FILE_DESCRIPTOR_SET]);
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let mut response = http::Response::new(());
            if req.uri().path().ends_with("GetConfig") {
                response
                    .headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static("16"));
            }
            Ok::<_, std::convert::Infallible>(response)
        });
        for path in [
            "/gateway.v1.Admin/GetConfig",
            "/gateway.v1.Admin/ListInstances",
            "/gateway.v1.Discovery/Stream",
            "/no.such.Service/Call",
        ] {
            let req = http::Request::builder().uri(path).body(()).unwrap();
            layer.layer(inner).oneshot(req).await.unwrap();
        }
        let text = metrics.encode();
        for needle in [
            r#"control_plane_grpc_request_duration_seconds_count{method="Admin/GetConfig",code="Unauthenticated"} 1"#,
            r#"control_plane_grpc_request_duration_seconds_count{method="Admin/ListInstances",code="Ok"} 1"#,
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(!text.contains("Discovery/Stream"), "{text}");
        assert!(!text.contains("no.such"), "{text}");
    }
}
