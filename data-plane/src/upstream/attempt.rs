//! One attempt of a call to a service, the only place the gateway sends a
//! request upstream: the breaker admits it, the balancer picks an instance,
//! its in-flight count guards it, the pool sends it, the result is
//! classified and recorded in the breaker and outlier detector. Proxied
//! requests, their retries, aggregate sources and lookups all go through
//! [`attempt`].

use crate::headers::Forwarding;
use crate::ops::metrics::UpstreamErrorKind;
use crate::ops::spans;
use crate::rolling::now_ms;
use crate::upstream::balancer::{Endpoint, InFlightGuard};
use crate::upstream::breaker::{Permit, Rejected};
use crate::upstream::deadline;
use crate::upstream::h1::body::{ClientFault, LimitedBody};
use crate::upstream::h1::response::UpstreamBody;
use crate::upstream::h1::send::{classify, send_with, Failure, SendError};
use crate::upstream::pool::TlsDial;
use crate::upstream::service::ServiceRuntime;
use http::{Request, Response};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Span;

/// Where and how an attempt goes.
pub(crate) struct Call<'s, 't> {
    /// The service called.
    pub service: &'s ServiceRuntime,
    /// Consistent-hashing key, when the balancer hashes.
    pub hash: Option<u64>,
    /// Instances tried already (a retry goes elsewhere when it can).
    pub tried: &'t [Arc<Endpoint>],
    /// When the attempt gives up waiting for its answer.
    pub deadline: tokio::time::Instant,
    /// Forwarding headers written after the request's own, with `Host` and
    /// the time left; `None`: the request's headers are complete.
    pub forwarding: Option<&'t Forwarding>,
    /// The attempt's number in its trace span; `None`: not traced.
    pub traced: Option<u32>,
}

/// How an attempt ended.
pub(crate) enum Attempted<'s, T> {
    /// The breaker is open.
    Refused(Rejected),
    /// No routable instance (none left untried).
    NoInstance,
    /// The instance answered (any status); `T` is what `finish` made of it.
    Answered(&'s Arc<Endpoint>, T),
    /// The exchange failed (counted against the service when it is the
    /// upstream's fault).
    Failed(&'s Arc<Endpoint>, Failure, SendError),
    /// No answer before the deadline (counted).
    TimedOut(&'s Arc<Endpoint>),
    /// The deadline fell while the client was still slow to send its body:
    /// its fault, nothing recorded.
    ClientTooSlow,
}

/// How an attempt ended, for the breaker and outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure,
    /// Says nothing about the upstream (the client's body was too large).
    Neutral,
}

impl Outcome {
    /// A 5xx answer is a failure; any other, a success.
    pub(crate) fn of_status(status: http::StatusCode) -> Self {
        if status.is_server_error() {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

/// What an attempt does with the response head it got: turns it (and the
/// instance's in-flight guard) into what the caller gets, and says how the
/// attempt went.
pub(crate) enum Finish<N, L> {
    /// At once, from the head (the proxy path: no future to move the
    /// response through).
    Now(N),
    /// After reading on (a lookup reads the body), within the deadline the
    /// finisher bounds itself.
    Later(L),
}

/// A finisher's future when it never waits.
type Never<T> = std::future::Pending<(Outcome, T)>;

impl<T, N> Finish<N, fn(Response<UpstreamBody>, InFlightGuard) -> Never<T>>
where
    N: FnOnce(Response<UpstreamBody>, InFlightGuard) -> (Outcome, T),
{
    /// Finishes at once with `finish`.
    pub(crate) fn now(finish: N) -> Self {
        Finish::Now(finish)
    }
}

impl<T, L, F> Finish<fn(Response<UpstreamBody>, InFlightGuard) -> (Outcome, T), L>
where
    L: FnOnce(Response<UpstreamBody>, InFlightGuard) -> F,
    F: Future<Output = (Outcome, T)>,
{
    /// Finishes with what `finish`'s future says.
    pub(crate) fn later(finish: L) -> Self {
        Finish::Later(finish)
    }
}

/// Sends the request `request` builds for the instance picked, within
/// `call.deadline`; `finish` turns the response (and the instance's
/// in-flight guard) into `T` and says how the attempt went. The deadline
/// bounds the wait for the response head; a finisher that reads on bounds
/// that read by the same deadline itself.
pub(crate) async fn attempt<'s, T, N, L, F>(
    call: Call<'s, '_>,
    request: impl FnOnce(&Endpoint) -> Request<LimitedBody>,
    finish: Finish<N, L>,
) -> Attempted<'s, T>
where
    N: FnOnce(Response<UpstreamBody>, InFlightGuard) -> (Outcome, T),
    L: FnOnce(Response<UpstreamBody>, InFlightGuard) -> F,
    F: Future<Output = (Outcome, T)>,
{
    let service = call.service;
    let permit = match admit(service) {
        Ok(permit) => permit,
        Err(rejected) => return Attempted::Refused(rejected),
    };
    let Some(endpoint) = service.balancer.pick_excluding(call.hash, call.tried) else {
        return Attempted::NoInstance;
    };
    let mut req = request(endpoint);
    let remaining;
    let fields;
    let extra = match call.forwarding {
        Some(forwarding) => {
            let left = call
                .deadline
                .saturating_duration_since(tokio::time::Instant::now());
            remaining = deadline::header_value(left);
            // The Host value is made once per instance, so the client
            // formats none.
            fields = forwarding.fields(&endpoint.host_header, &remaining);
            fields.as_slice()
        }
        None => &[],
    };
    let span = match call.traced {
        Some(number) => spans::attempt(&service.name, endpoint, number, req.headers_mut()),
        None => Span::none(),
    };
    let guard = endpoint.load.begin();
    let client_wait = req.body().client_wait();
    // The clock is read only when a breaker or outlier detector needs it.
    let sent_at = Clock::start(service);
    service.errors.attempt();
    // The send is awaited under the deadline as is, with no async block
    // around it: moving a larger future costs copies on the plain path.
    let tls = endpoint.tls.as_ref().map(|host| TlsDial {
        client: service.tls.as_deref(),
        host,
    });
    let exchange = send_with(
        &endpoint.pool,
        service.config.connect_timeout,
        tls,
        req,
        extra,
    );
    match tokio::time::timeout_at(call.deadline, exchange).await {
        Ok(Ok(response)) => {
            spans::answered(&span, response.status());
            let (outcome, answer) = match finish {
                Finish::Now(finish) => finish(response, guard),
                Finish::Later(finish) => finish(response, guard).await,
            };
            record_outcome(service, endpoint, permit, outcome, sent_at.elapsed());
            Attempted::Answered(endpoint, answer)
        }
        Ok(Err(err)) => {
            spans::send_failed(&span, &err);
            let failure = classify(&err);
            let outcome = match failure {
                Failure::Client(_) => Outcome::Neutral,
                Failure::Upstream(kind) => {
                    service.errors.count(kind);
                    Outcome::Failure
                }
            };
            record_outcome(service, endpoint, permit, outcome, sent_at.elapsed());
            Attempted::Failed(endpoint, failure, err)
        }
        Err(_elapsed) if client_wait.is_some_and(|w| w.waiting()) => {
            // The upstream was still being sent the body the client is slow
            // to give (the permit goes unrecorded).
            spans::failed(&span, ClientFault::TooSlow.as_str());
            Attempted::ClientTooSlow
        }
        Err(_elapsed) => {
            spans::failed(&span, UpstreamErrorKind::Timeout.as_str());
            service.errors.count(UpstreamErrorKind::Timeout);
            record_outcome(
                service,
                endpoint,
                permit,
                Outcome::Failure,
                sent_at.elapsed(),
            );
            Attempted::TimedOut(endpoint)
        }
    }
}

/// Reports an attempt's outcome to the service's breaker and outlier
/// detector (when it has them).
fn record_outcome(
    service: &ServiceRuntime,
    endpoint: &Endpoint,
    permit: Option<Permit>,
    outcome: Outcome,
    elapsed: Duration,
) {
    if outcome == Outcome::Neutral {
        return;
    }
    let failed = outcome == Outcome::Failure;
    let outlier = service.balancer.outlier();
    if permit.is_none() && outlier.is_none() {
        return;
    }
    let now = now_ms();
    if let Some(permit) = permit {
        let success = permit.breaker().counts_as_success(!failed, elapsed);
        permit.record(success, now);
    }
    if let Some(detector) = outlier {
        detector.record(endpoint, failed, now, service.balancer.endpoints());
    }
}

/// When an attempt was sent, read only for services whose breaker or
/// outlier detector needs its duration.
struct Clock(Option<Instant>);

impl Clock {
    fn start(service: &ServiceRuntime) -> Self {
        Clock(
            (service.breaker.is_some() || service.balancer.outlier().is_some()).then(Instant::now),
        )
    }

    fn elapsed(&self) -> Duration {
        self.0.map(|t| t.elapsed()).unwrap_or_default()
    }
}

/// Asks the service's breaker (if any) to let a call through.
fn admit(service: &ServiceRuntime) -> Result<Option<Permit>, Rejected> {
    match &service.breaker {
        Some(breaker) => breaker.try_acquire(now_ms()).map(Some),
        None => Ok(None),
    }
}
