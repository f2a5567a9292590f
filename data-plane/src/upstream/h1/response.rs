//! The response side of an exchange: the head read and parsed, the body
//! framed (by length, chunked, or until the instance closes) while it
//! streams to the client, and [`ProxyBody`], what the client is answered
//! with (holding the instance's in-flight count until the stream ends).

use super::{Busy, ExchangeError};
use super::{
    HEADROOM, MAX_CHUNK_LINE, MAX_HEADERS, MAX_HEAD_BYTES, MAX_TRAILERS, MAX_TRAILER_BYTES,
    READ_CHUNK,
};
use crate::upstream::balancer::InFlightGuard;
use crate::upstream::pool::Conn;
use crate::upstream::pool::ConnPool;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A final response head.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    pub(super) hints: Hints,
}

/// What a head's fields say about its connection and the framing of its
/// body, gathered while the fields are read (no lookups afterwards).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Hints {
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
    /// A `Transfer-Encoding` is present.
    transfer_encoding: bool,
    /// The last transfer coding is `chunked`.
    chunked_last: bool,
    /// The `Content-Length`: every value (and list item) the same run of
    /// digits.
    content_length: Option<u64>,
}

/// Whether a field goes into the response's headers, or was about this
/// connection only and is consumed by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Kept,
    Consumed,
}

impl Hints {
    /// Takes note of one field. `Transfer-Encoding`, `Keep-Alive` and a
    /// `Connection` naming only `close`/`keep-alive` are consumed: the body
    /// is handed on decoded and the connection is the client's. A
    /// `Connection` listing other names is kept, so that the proxy removes
    /// the fields it names (RFC 9110 section 7.6.1).
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<Field, ExchangeError> {
        if name == CONNECTION {
            let mut others = false;
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                let close = token.eq_ignore_ascii_case(b"close");
                let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                self.close |= close;
                self.keep_alive |= keep_alive;
                others |= !(close || keep_alive || token.is_empty());
            }
            if !others {
                return Ok(Field::Consumed);
            }
        } else if name == KEEP_ALIVE {
            return Ok(Field::Consumed);
        } else if name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
            let last = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or(b"");
            self.chunked_last = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            return Ok(Field::Consumed);
        } else if name == CONTENT_LENGTH {
            for item in value.as_bytes().split(|&b| b == b',') {
                let length = parse_length(item.trim_ascii())
                    .ok_or(ExchangeError::Malformed("invalid content-length"))?;
                if self.content_length.is_some_and(|l| l != length) {
                    return Err(ExchangeError::Malformed(
                        "conflicting content-length values",
                    ));
                }
                self.content_length = Some(length);
            }
        }
        Ok(Field::Kept)
    }
}

/// A run of decimal digits as a number (no sign, no blanks, no overflow).
pub(super) fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

pub(super) const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Reads until a final (non-1xx) response head is complete; interim heads
/// are skipped.
pub(super) async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    fields: &mut Vec<[usize; 4]>,
) -> Result<Head, ExchangeError> {
    let mut consumed = 0usize;
    let mut any = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            match parse_head(buf, fields)? {
                Parsed::Final(head) => return Ok(head),
                Parsed::Interim(len) => {
                    consumed += len;
                    continue;
                }
                Parsed::Partial => {}
            }
        }
        if consumed + buf.len() >= MAX_HEAD_BYTES {
            return Err(ExchangeError::HeadTooLarge);
        }
        buf.reserve(READ_CHUNK);
        match rd.read_buf(buf).await {
            Ok(0) if !any => return Err(ExchangeError::Closed),
            Ok(0) => {
                return Err(ExchangeError::Malformed(
                    "the connection closed inside the response head",
                ))
            }
            Ok(_) => any = true,
            Err(e)
                if !any
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
            {
                return Err(ExchangeError::Closed)
            }
            Err(e) => return Err(ExchangeError::Read(e)),
        }
    }
}

/// What the bytes read so far hold.
pub(super) enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A 1xx head of this many bytes, consumed.
    Interim(usize),
    /// A final head, consumed.
    Final(Head),
}

/// Parses a response head at the start of `buf` and consumes it when whole.
/// Header values share the head's bytes rather than being copied.
pub(super) fn parse_head(
    buf: &mut BytesMut,
    fields: &mut Vec<[usize; 4]>,
) -> Result<Parsed, ExchangeError> {
    let (len, code, minor) = {
        let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ExchangeError::Malformed("more than 100 header fields"))
            }
            Err(_) => return Err(ExchangeError::Malformed("invalid response head")),
        };
        let base = buf.as_ptr() as usize;
        fields.clear();
        for field in parsed.headers.iter() {
            let name = field.name.as_ptr() as usize - base;
            let value = field.value.as_ptr() as usize - base;
            fields.push([
                name,
                name + field.name.len(),
                value,
                value + field.value.len(),
            ]);
        }
        (len, parsed.code.unwrap_or(0), parsed.version.unwrap_or(1))
    };
    let status =
        StatusCode::from_u16(code).map_err(|_| ExchangeError::Malformed("invalid status code"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ExchangeError::Malformed(
            "switching protocols was not asked for",
        ));
    }
    if status.is_informational() {
        buf.advance(len);
        return Ok(Parsed::Interim(len));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len() + HEADROOM);
    let mut hints = Hints::default();
    for &[name_start, name_end, value_start, value_end] in fields.iter() {
        let name = HeaderName::from_bytes(&head[name_start..name_end])
            .map_err(|_| ExchangeError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| ExchangeError::Malformed("invalid header value"))?;
        if hints.note(&name, &value)? == Field::Kept {
            headers.append(name, value);
        }
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    Ok(Parsed::Final(Head {
        status,
        version,
        headers,
        hints,
    }))
}

/// How a response body is delimited (RFC 9112 section 6.3), and whether the
/// connection may carry another request afterwards. A `Content-Length`
/// next to `Transfer-Encoding` is dropped and the connection not reused.
pub(super) fn response_framing(
    head: &mut Head,
    head_request: bool,
) -> Result<(BodyState, bool), ExchangeError> {
    let hints = head.hints;
    let mut keep_alive = if head.version == Version::HTTP_10 {
        hints.keep_alive
    } else {
        !hints.close
    };
    if head_request
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED
    {
        return Ok((BodyState::Done, keep_alive));
    }
    if hints.transfer_encoding {
        if head.version == Version::HTTP_10 {
            return Err(ExchangeError::Malformed(
                "transfer-encoding in an HTTP/1.0 response",
            ));
        }
        if head.headers.remove(CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        if hints.chunked_last {
            return Ok((BodyState::Chunked(Chunk::Size), keep_alive));
        }
        return Ok((BodyState::UntilClose, false));
    }
    match hints.content_length {
        Some(0) => Ok((BodyState::Done, keep_alive)),
        Some(len) => Ok((BodyState::Length(len), keep_alive)),
        None => Ok((BodyState::UntilClose, false)),
    }
}

/// Where the body decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyState {
    /// This many bytes still to come.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// Everything until the instance closes the connection.
    UntilClose,
    /// Read to its end.
    Done,
}

/// Where the chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes to go.
    Data(u64),
    /// Expecting the CRLF that ends a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

/// What one decoding step gave.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    /// Body bytes.
    Data(Bytes),
    /// The trailer fields; the body is complete.
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes must be read first.
    More,
}

impl BodyState {
    /// Decodes what it can from the front of `buf`.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, ExchangeError> {
        loop {
            match self {
                BodyState::Done => return Ok(Step::End),
                BodyState::Length(left) => {
                    let Some(data) = take(buf, left) else {
                        return Ok(Step::More);
                    };
                    if *left == 0 {
                        *self = BodyState::Done;
                    }
                    return Ok(Step::Data(data));
                }
                BodyState::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                BodyState::Chunked(chunk) => match chunk {
                    Chunk::Size => {
                        if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
                            return Err(ExchangeError::Malformed("invalid chunk size"));
                        }
                        match httparse::parse_chunk_size(buf) {
                            Ok(httparse::Status::Complete((used, size))) => {
                                buf.advance(used);
                                *chunk = if size == 0 {
                                    Chunk::Trailers
                                } else {
                                    Chunk::Data(size)
                                };
                            }
                            Ok(httparse::Status::Partial) if buf.len() <= MAX_CHUNK_LINE => {
                                return Ok(Step::More)
                            }
                            Ok(httparse::Status::Partial) | Err(_) => {
                                return Err(ExchangeError::Malformed("invalid chunk size"))
                            }
                        }
                    }
                    Chunk::Data(left) => {
                        let Some(data) = take(buf, left) else {
                            return Ok(Step::More);
                        };
                        if *left == 0 {
                            *chunk = Chunk::DataEnd;
                        }
                        return Ok(Step::Data(data));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Step::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(ExchangeError::Malformed(
                                "chunk data longer than its size",
                            ));
                        }
                        buf.advance(2);
                        *chunk = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        let step = trailers(buf)?;
                        if step != Step::More {
                            *self = BodyState::Done;
                        }
                        return Ok(step);
                    }
                },
            }
        }
    }
}

/// Up to `left` bytes from the front of `buf`, counted off `left`; none
/// when `buf` is empty.
pub(super) fn take(buf: &mut BytesMut, left: &mut u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(*left).map_or(buf.len(), |left| left.min(buf.len()));
    *left -= n as u64;
    Some(buf.split_to(n).freeze())
}

/// The trailer section after the last chunk.
pub(super) fn trailers(buf: &mut BytesMut) -> Result<Step, ExchangeError> {
    if buf.starts_with(b"\r\n") {
        buf.advance(2);
        return Ok(Step::End);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((used, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for field in fields {
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(field.name.as_bytes()),
                    HeaderValue::from_bytes(field.value),
                ) else {
                    return Err(ExchangeError::Malformed("invalid trailer field"));
                };
                map.append(name, value);
            }
            buf.advance(used);
            Ok(Step::Trailers(map))
        }
        Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILER_BYTES => Ok(Step::More),
        Ok(httparse::Status::Partial) | Err(_) => {
            Err(ExchangeError::Malformed("invalid trailer section"))
        }
    }
}

/// A response body streamed from an instance's connection, which goes back
/// to its pool when the body has been read to its end and is closed if the
/// body is dropped before (or fails).
#[derive(Debug)]
pub struct UpstreamBody {
    state: BodyState,
    conn: Option<Busy>,
    pool: Arc<ConnPool>,
    keep_alive: bool,
}

impl UpstreamBody {
    pub(super) fn new(conn: Busy, pool: Arc<ConnPool>, state: BodyState, keep_alive: bool) -> Self {
        let mut body = Self {
            state,
            conn: Some(conn),
            pool,
            keep_alive,
        };
        if state == BodyState::Done {
            body.finish();
        }
        body
    }

    /// The body is complete: the connection carries the next request,
    /// unless it may not, the instance sent more than it announced, or the
    /// request body has not all gone out.
    fn finish(&mut self) {
        self.state = BodyState::Done;
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !self.keep_alive || !conn.bufs.read.is_empty() {
            return;
        }
        if let Some(stream) = conn.wire.into_whole() {
            self.pool.checkin(Conn {
                stream,
                bufs: conn.bufs,
            });
        }
    }

    fn fail(&mut self, err: ExchangeError) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        self.state = BodyState::Done;
        self.conn = None;
        Poll::Ready(Some(Err(err)))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match this.state.step(&mut conn.bufs.read) {
                Ok(step) => step,
                Err(err) => return this.fail(err),
            };
            match step {
                Step::Data(data) => {
                    if this.state == BodyState::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Trailers(map) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(map))));
                }
                Step::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Step::More => {
                    conn.bufs.read.reserve(READ_CHUNK);
                    let read = ready!(conn.wire.poll_read_buf(cx, &mut conn.bufs.read));
                    match read {
                        Ok(0) if this.state == BodyState::UntilClose => {
                            this.state = BodyState::Done;
                            this.conn = None;
                            return Poll::Ready(None);
                        }
                        Ok(0) => return this.fail(ExchangeError::Truncated),
                        Ok(_) => {}
                        Err(e) => return this.fail(ExchangeError::Read(e)),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(left) => SizeHint::with_exact(left),
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Chunked(_) | BodyState::UntilClose => SizeHint::default(),
        }
    }
}

pin_project_lite::pin_project! {
    /// What the proxy answers with: an upstream body streamed through, or a
    /// body the gateway made itself (errors).
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// Streamed from an upstream (whose connection goes back to its
        /// pool when the stream ends); the in-flight count is released when
        /// the stream ends or fails.
        Upstream {
            #[pin]
            inner: UpstreamBody,
            guard: Option<InFlightGuard>,
        },
        /// Made by the gateway.
        Full {
            #[pin]
            inner: Full<Bytes>,
        },
        /// An upstream body whose first frames were read ahead (an answer
        /// found too large to cache): those frames first, then the rest
        /// streamed through.
        Prefixed {
            frames: VecDeque<Frame<Bytes>>,
            rest: Pin<Box<ProxyBody>>,
        },
    }
}

impl ProxyBody {
    /// A body streamed from an upstream, holding `guard` until it ends.
    pub fn upstream(inner: UpstreamBody, guard: InFlightGuard) -> Self {
        // No body at all: the exchange is already complete.
        let guard = (!inner.is_end_stream()).then_some(guard);
        ProxyBody::Upstream { inner, guard }
    }

    /// A body made by the gateway.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full {
            inner: Full::new(bytes.into()),
        }
    }

    /// `frames` already read from `rest`, then whatever `rest` still holds.
    pub fn prefixed(frames: VecDeque<Frame<Bytes>>, rest: Pin<Box<ProxyBody>>) -> Self {
        ProxyBody::Prefixed { frames, rest }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            ProxyBodyProj::Upstream { mut inner, guard } => {
                let polled = ready!(inner.as_mut().poll_frame(cx));
                // hyper stops polling once `is_end_stream` holds, so the last
                // frame may be the last poll.
                if !matches!(polled, Some(Ok(_))) || inner.is_end_stream() {
                    guard.take();
                }
                Poll::Ready(polled)
            }
            ProxyBodyProj::Full { inner } => match ready!(inner.poll_frame(cx)) {
                Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
                Some(Err(never)) => match never {},
                None => Poll::Ready(None),
            },
            ProxyBodyProj::Prefixed { frames, rest } => match frames.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => rest.as_mut().poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Full { inner } => inner.is_end_stream(),
            ProxyBody::Prefixed { frames, rest } => frames.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Full { inner } => inner.size_hint(),
            ProxyBody::Prefixed { .. } => SizeHint::default(),
        }
    }
}
