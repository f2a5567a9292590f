//! One OpenTelemetry span per gRPC call (method and status), continuing
//! the caller's `traceparent` when its metadata carries one. A tower layer
//! around every gRPC service; when tracing is off it only passes calls on.

use gateway_common::telemetry;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tracing::field::Empty;
use tracing::{Instrument as _, Span};

/// Adds [`RpcSpans`] to a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcSpansLayer;

impl<S> tower::Layer<S> for RpcSpansLayer {
    type Service = RpcSpans<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcSpans { inner }
    }
}

/// A gRPC service whose calls are traced.
#[derive(Debug, Clone)]
pub struct RpcSpans<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcSpans<S>
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
        let Some(span) = rpc_span(&req) else {
            return Box::pin(self.inner.call(req));
        };
        let call = span.in_scope(|| self.inner.call(req));
        Box::pin(async move {
            let result = call.instrument(span.clone()).await;
            match &result {
                Ok(response) => record_status(&span, grpc_status(response.headers())),
                Err(_) => record_status(&span, GRPC_UNKNOWN),
            }
            result
        })
    }
}

const GRPC_UNKNOWN: u16 = 2;

/// The span of the call `req` (`None` when tracing is off).
fn rpc_span<B>(req: &http::Request<B>) -> Option<Span> {
    if !telemetry::enabled() {
        return None;
    }
    let path = req.uri().path().trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "rpc",
        otel.name = path,
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
    );
    telemetry::continue_from(&span, req.headers());
    Some(span)
}

/// The status in the response head: an error answered at once is there
/// (trailers-only); a call that got as far as a body is OK there, its
/// final status following in the trailers.
pub(crate) fn grpc_status(headers: &http::HeaderMap) -> u16 {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn record_status(span: &Span, code: u16) {
    span.record("rpc.grpc.status_code", code);
    if code != 0 {
        span.record("otel.status_code", "ERROR");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_comes_from_the_head_else_ok() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), 0);
        headers.insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(grpc_status(&headers), 16);
        headers.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&headers), 0);
    }

    #[tokio::test]
    async fn calls_pass_through_when_tracing_is_off() {
        use tower::{Layer as _, ServiceExt as _};
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(http::Response::new(req.uri().path().to_string()))
        });
        let svc = RpcSpansLayer.layer(inner);
        let req = http::Request::builder()
            .uri("/gateway.v1.Admin/GetConfig")
            .body(())
            .unwrap();
        let response = svc.oneshot(req).await.unwrap();
        assert_eq!(response.body(), "/gateway.v1.Admin/GetConfig");
    }
}
