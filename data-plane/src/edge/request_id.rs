//! Cross-cutting request policy as tower layers around the proxy handler:
//! the request id, and the count of requests in flight.

use crate::edge::errors::X_REQUEST_ID;
use http::{HeaderMap, HeaderValue, Request, Response};
use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower::{Layer, Service};

/// Longest incoming request id kept.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether an incoming `X-Request-ID` is kept: 1-128 visible ASCII characters.
pub fn is_valid_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_LEN
        && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// A fresh uuid v4 request id.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    // A hyphenated uuid is always a valid header value.
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Keeps a well-formed `X-Request-ID` or replaces it by a fresh one, and
/// returns the id to set on the response.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(X_REQUEST_ID) {
        if is_valid_request_id(id) {
            return id.clone();
        }
    }
    let id = new_request_id();
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

/// Gives every request an `X-Request-ID` (kept or generated), sent upstream
/// and returned on the response, errors included.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

/// See [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = ensure_request_id(req.headers_mut());
        RequestIdFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`RequestId`].
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, RB, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(id)) = (&mut result, this.id.take()) {
            response.headers_mut().insert(X_REQUEST_ID, id);
        }
        Poll::Ready(result)
    }
}

/// Counts requests in flight (from arrival to response head) in a gauge;
/// a request whose client goes away is released too.
#[derive(Debug, Clone)]
pub struct InFlightLayer {
    gauge: Gauge,
}

impl InFlightLayer {
    /// Counts into `gauge`.
    pub fn new(gauge: Gauge) -> Self {
        Self { gauge }
    }
}

impl<S> Layer<S> for InFlightLayer {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlight {
            inner,
            gauge: self.gauge.clone(),
        }
    }
}

/// See [`InFlightLayer`].
#[derive(Debug, Clone)]
pub struct InFlight<S> {
    inner: S,
    gauge: Gauge,
}

/// Decrements the gauge when dropped.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl<S, B> Service<Request<B>> for InFlight<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = InFlightFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.gauge.inc();
        InFlightFuture {
            inner: self.inner.call(req),
            _guard: GaugeGuard(self.gauge.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`InFlight`].
    pub struct InFlightFuture<F> {
        #[pin]
        inner: F,
        _guard: GaugeGuard,
    }
}

impl<F: Future> Future for InFlightFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{service_fn, ServiceExt};

    #[test]
    fn request_ids_are_checked() {
        assert!(is_valid_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!is_valid_request_id(&HeaderValue::from_static("has space")));
        assert!(!is_valid_request_id(&HeaderValue::from_static("")));
        let long = "a".repeat(129);
        assert!(!is_valid_request_id(&HeaderValue::from_str(&long).unwrap()));
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert!(uuid::Uuid::parse_str(id.to_str().unwrap()).is_ok());
    }

    #[tokio::test]
    async fn layers_set_the_id_and_count() {
        let gauge = Gauge::default();
        let inner = service_fn(|req: Request<()>| async move {
            let seen = req.headers()[X_REQUEST_ID].clone();
            Ok::<_, Infallible>(Response::new(seen))
        });
        let svc = tower::ServiceBuilder::new()
            .layer(RequestIdLayer)
            .layer(InFlightLayer::new(gauge.clone()))
            .service(inner);
        let req = Request::builder()
            .header(X_REQUEST_ID, "keep-me")
            .body(())
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.headers()[X_REQUEST_ID], "keep-me");
        assert_eq!(resp.body(), "keep-me");
        let req = Request::builder()
            .header(X_REQUEST_ID, "bad id")
            .body(())
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.headers()[X_REQUEST_ID], resp.body());
        assert_ne!(resp.body(), "bad id");
        assert_eq!(gauge.get(), 0);
    }
}
