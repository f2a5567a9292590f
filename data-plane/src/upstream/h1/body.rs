//! The request body on its way up: the client's, streamed with the route's
//! size limit (or read whole), as an exchange sends it. Frames pass through
//! as they come.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The request body grew past the route's limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit in bytes.
    pub limit: u64,
}

/// Error of a streamed request body: always the client's side.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// Over the limit.
    #[error(transparent)]
    TooLarge(#[from] BodyTooLarge),
    /// The client's stream failed.
    #[error("reading the request body: {0}")]
    Read(#[from] hyper::Error),
}

/// How a client's request body failed. None of these says anything about
/// the upstream: they are answered to the client and never count against a
/// service (breaker, outlier detection, retries, upstream error metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// More bytes than the route's limit (413).
    TooLarge,
    /// Framing that does not parse: a bad chunk size or chunk line (400).
    Malformed,
    /// The client closed the connection before the end of its body (499).
    Gone,
    /// The body did not arrive before the request's deadline (408).
    TooSlow,
}

impl ClientFault {
    /// Name in spans and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientFault::TooLarge => "body_too_large",
            ClientFault::Malformed => "client_body_malformed",
            ClientFault::Gone => "client_closed",
            ClientFault::TooSlow => "client_body_timeout",
        }
    }

    /// The fault a failed read of the client's body stands for.
    pub fn of_read(err: &hyper::Error) -> Self {
        let malformed = std::error::Error::source(err)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                )
            });
        if malformed || err.is_parse() {
            ClientFault::Malformed
        } else {
            ClientFault::Gone
        }
    }
}

impl RequestBodyError {
    /// What the client did wrong.
    pub fn fault(&self) -> ClientFault {
        match self {
            RequestBodyError::TooLarge(_) => ClientFault::TooLarge,
            RequestBodyError::Read(err) => ClientFault::of_read(err),
        }
    }
}

/// Whether a streamed request body is waiting for the client's next bytes.
/// The body sets it as it is polled; the attempt reads it when its deadline
/// passes, to tell a client too slow to send its body (408) from an
/// upstream too slow to answer (504).
#[derive(Debug, Clone, Default)]
pub struct ClientWait(Arc<AtomicBool>);

impl ClientWait {
    /// Whether the last poll of the body found nothing from the client.
    pub fn waiting(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, waiting: bool) {
        self.0.store(waiting, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A request body going upstream: the client's, forwarded frame by
    /// frame and failing with [`BodyTooLarge`] once more than `limit` bytes
    /// have passed; or one read whole beforehand so that the request can be
    /// sent again (a retry).
    #[project = LimitedBodyProj]
    pub enum LimitedBody {
        /// Streamed from the client.
        Streaming {
            #[pin]
            inner: Incoming,
            limit: u64,
            seen: u64,
            // Only for a body that has bytes to come.
            wait: Option<ClientWait>,
        },
        /// Buffered; sent as one frame.
        Buffered {
            data: Option<Bytes>,
        },
    }
}

impl LimitedBody {
    /// Wraps `inner` with a limit of `limit` bytes.
    pub fn new(inner: Incoming, limit: u64) -> Self {
        let wait = (!inner.is_end_stream()).then(ClientWait::default);
        LimitedBody::Streaming {
            inner,
            limit,
            seen: 0,
            wait,
        }
    }

    /// The flag that tells whether this body is waiting for the client
    /// (`None` for a body that is already whole).
    pub fn client_wait(&self) -> Option<ClientWait> {
        match self {
            LimitedBody::Streaming { wait, .. } => wait.clone(),
            LimitedBody::Buffered { .. } => None,
        }
    }

    /// A body already read (empty for none).
    pub fn buffered(data: Bytes) -> Self {
        LimitedBody::Buffered {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl LimitedBody {
    /// Counts a frame from the client against the limit.
    fn limit_frame(
        frame: Option<Result<Frame<Bytes>, hyper::Error>>,
        limit: &u64,
        seen: &mut u64,
    ) -> Option<Result<Frame<Bytes>, RequestBodyError>> {
        match frame? {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    *seen += data.len() as u64;
                    if *seen > *limit {
                        return Some(Err(BodyTooLarge { limit: *limit }.into()));
                    }
                }
                Some(Ok(frame))
            }
            Err(e) => Some(Err(e.into())),
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            LimitedBodyProj::Streaming {
                inner,
                limit,
                seen,
                wait,
            } => match inner.poll_frame(cx) {
                Poll::Pending => {
                    if let Some(wait) = wait {
                        wait.set(true);
                    }
                    Poll::Pending
                }
                Poll::Ready(frame) => {
                    if let Some(wait) = wait {
                        wait.set(false);
                    }
                    Poll::Ready(Self::limit_frame(frame, limit, seen))
                }
            },
            LimitedBodyProj::Buffered { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            LimitedBody::Streaming { inner, .. } => inner.is_end_stream(),
            LimitedBody::Buffered { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            LimitedBody::Streaming { inner, .. } => inner.size_hint(),
            LimitedBody::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// A client's request body on its way to the upstream: streamed as it
/// comes, or already read whole (a validated body, possibly rewritten).
#[derive(Debug)]
pub enum ClientBody {
    /// Not read yet.
    Streaming(Incoming),
    /// Read whole.
    Buffered(Bytes),
}

impl ClientBody {
    /// Whether there is nothing (more) to send.
    pub fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Streaming(inner) => inner.is_end_stream(),
            ClientBody::Buffered(data) => data.is_empty(),
        }
    }

    /// The body sent upstream, with `limit` on a streamed one (a buffered
    /// one was limited when read).
    pub fn into_upstream(self, limit: u64) -> LimitedBody {
        match self {
            ClientBody::Streaming(inner) => LimitedBody::new(inner, limit),
            ClientBody::Buffered(data) => LimitedBody::buffered(data),
        }
    }
}
