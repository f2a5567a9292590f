//! One HTTP/1.1 exchange with an instance over a pooled connection: the
//! request head (and body) written, the response head read and parsed, and
//! the response body framed (by length, chunked, or until the instance
//! closes) while it streams to the client.
//!
//! This is ours rather than hyper's client connection. hyper's client runs
//! each connection as a task of its own and hands requests, responses and
//! body chunks across channels to it; here the request's own task writes and
//! reads the socket, so a proxied request costs no task wake-ups or channel
//! hand-offs on the way to the instance. Parsing is httparse (what hyper
//! uses), with hyper's limits: 100 header fields and about 400 KiB of head.

pub mod body;
pub mod response;
pub mod send;

use crate::upstream::h1::body::{LimitedBody, RequestBodyError};
use crate::upstream::pool::{Buffers, Conn, ConnPool};
use crate::upstream::stream::{ReadHalf, Stream, WriteHalf};
use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response};
use http_body::Body;
use std::future::Future;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use response::*;

/// Most header fields a response head may carry.
const MAX_HEADERS: usize = 100;
/// Largest response head accepted, interim (1xx) heads included.
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8192;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most trailer fields accepted.
const MAX_TRAILERS: usize = 32;
/// Room left in a response's header map for the fields the gateway adds
/// without regrowing it (X-Request-ID, CORS, security headers). hyper clears
/// a connection's last response map and parses the next request head into
/// it, so the room also serves the fields added to requests (the identity
/// headers, X-Request-ID).
const HEADROOM: usize = 8;

/// A connection busy with an exchange whose response body is streaming.
#[derive(Debug)]
struct Busy {
    wire: Wire,
    bufs: Buffers,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The connection closed (or was reset) before any of a response came.
    #[error("the instance closed the connection before answering")]
    Closed,
    /// Writing the request failed.
    #[error("writing the request: {0}")]
    Write(#[source] io::Error),
    /// Reading the response failed.
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    /// The response broke HTTP/1.1.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The response head grew past [`MAX_HEAD_BYTES`].
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// The connection closed before the end of the response body.
    #[error("the instance closed the connection before the end of the response body")]
    Truncated,
    /// The request body failed (over its limit, or the client's stream).
    #[error(transparent)]
    Body(#[from] RequestBodyError),
}

impl ExchangeError {
    /// Whether the instance closed the connection before answering (a
    /// kept-alive connection it had already given up on).
    pub fn is_closed(&self) -> bool {
        matches!(self, ExchangeError::Closed)
    }
}

/// The socket of a connection: whole, or split while a request body is
/// still being sent by an upload task of its own (the response streams
/// back meanwhile, so both directions flow at once, as an echo needs).
#[derive(Debug)]
enum Wire {
    /// Only this exchange's task uses it.
    Whole(Stream),
    /// The read half is here; the write half is with the upload, which
    /// hands it back when the body has gone out.
    Split { read: ReadHalf, upload: Upload },
    /// The write half is gone (sending the body failed): not reusable.
    ReadOnly(ReadHalf),
}

/// The task sending a streamed request body; aborted when dropped.
#[derive(Debug)]
struct Upload(JoinHandle<Result<WriteHalf, ExchangeError>>);

impl Drop for Upload {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Wire {
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Wire::Whole(stream) => tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf),
            Wire::Split { read, .. } | Wire::ReadOnly(read) => {
                tokio_util::io::poll_read_buf(Pin::new(read), cx, buf)
            }
        }
    }

    /// The whole socket again, if the upload has finished sending.
    fn into_whole(self) -> Option<Stream> {
        match self {
            Wire::Whole(stream) => Some(stream),
            Wire::Split { read, mut upload } => {
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(&mut upload.0).poll(&mut cx) {
                    Poll::Ready(Ok(Ok(write))) => read.reunite(write),
                    _ => None,
                }
            }
            Wire::ReadOnly(_) => None,
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestFraming {
    /// No body; `Content-Length: 0` sent when `announce`.
    Empty { announce: bool },
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked` (length unknown beforehand).
    Chunked,
}

fn request_framing(method: &Method, headers: &HeaderMap, body: &LimitedBody) -> RequestFraming {
    if body.is_end_stream() {
        // RFC 9110 8.6: a length is sent where the method gives the content
        // a meaning, or where the client sent one.
        let bodiless_method = matches!(
            *method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
        );
        return RequestFraming::Empty {
            announce: !bodiless_method || headers.contains_key(CONTENT_LENGTH),
        };
    }
    match body.size_hint().exact() {
        Some(len) => RequestFraming::Length(len),
        None => RequestFraming::Chunked,
    }
}

/// Writes the request head into `out`: the request line, every header but
/// the framing ones, the `extra` fields, and the framing the body needs.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    extra: &[(&HeaderName, &HeaderValue)],
    framing: RequestFraming,
) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        write_field(out, name, value);
    }
    for (name, value) in extra {
        write_field(out, name, value);
    }
    match framing {
        RequestFraming::Empty { announce: false } => {}
        RequestFraming::Empty { announce: true } => out.extend_from_slice(b"content-length: 0\r\n"),
        RequestFraming::Length(len) => {
            let _ = write!(out, "content-length: {len}\r\n"); // a Vec takes every write
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

fn write_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The error of a failed write before any response came: a connection the
/// instance closed or reset shows as [`ExchangeError::Closed`].
fn write_error(e: io::Error) -> ExchangeError {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => ExchangeError::Closed,
        _ => ExchangeError::Write(e),
    }
}

/// Sends `parts` (with the `extra` header fields) and `body` over `conn`
/// and reads the response head. The body of the response streams from the
/// connection, which returns to `pool` once that body has been read to its
/// end (and is closed if it is dropped before).
pub async fn exchange(
    conn: Conn,
    parts: &http::request::Parts,
    extra: &[(&HeaderName, &HeaderValue)],
    body: LimitedBody,
    pool: &Arc<ConnPool>,
) -> Result<Response<UpstreamBody>, ExchangeError> {
    let Conn {
        mut stream,
        mut bufs,
    } = conn;
    let framing = request_framing(&parts.method, &parts.headers, &body);
    encode_head(&mut bufs.write, parts, extra, framing);
    // A body at hand goes out with the head; a streamed one after it.
    let streaming = match body {
        LimitedBody::Buffered { data } => {
            if let Some(data) = data {
                bufs.write.extend_from_slice(&data);
            }
            None
        }
        _ if matches!(framing, RequestFraming::Empty { .. }) => None,
        streaming => Some(streaming),
    };
    stream.write_all(&bufs.write).await.map_err(write_error)?;
    let (mut head, wire) = match streaming {
        None => {
            let head = read_head(&mut stream, &mut bufs.read, &mut bufs.fields).await?;
            (head, Wire::Whole(stream))
        }
        Some(body) => send_streaming(stream, body, framing, &mut bufs).await?,
    };
    let (state, keep_alive) = response_framing(&mut head, parts.method == Method::HEAD)?;
    let busy = Busy { wire, bufs };
    let mut response = Response::new(UpstreamBody::new(busy, pool.clone(), state, keep_alive));
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    Ok(response)
}

/// Sends a streamed body from a task of its own while the response head is
/// read here, so that an instance may answer before it has read the whole
/// body (a 413, or an echo) and keep reading it while it answers. A body
/// that fails before any answer (over the route's limit) fails the
/// exchange.
async fn send_streaming(
    stream: Stream,
    body: LimitedBody,
    framing: RequestFraming,
    bufs: &mut Buffers,
) -> Result<(Head, Wire), ExchangeError> {
    let Buffers { read, fields, .. } = bufs;
    let (mut rd, wr) = stream.into_split();
    let mut upload = Upload(tokio::spawn(async move {
        let mut wr = wr;
        let mut scratch = Vec::new();
        match send_body(&mut wr, body, framing, &mut scratch).await {
            Ok(()) => Ok(wr),
            Err(e) => {
                // A client's body that failed must not reach the instance
                // as a request cut short by a FIN, which it could answer
                // before the failure is seen here: the socket closes only
                // once the exchange drops its read half.
                wr.forget();
                Err(e)
            }
        }
    }));
    let first = {
        let reading = read_head(&mut rd, read, fields);
        tokio::pin!(reading);
        tokio::select! {
            biased;
            head = &mut reading => Ok(head),
            sent = &mut upload.0 => Err(sent),
        }
    };
    // Reading a head again goes on from the bytes already read.
    match first {
        Ok(head) => Ok((head?, Wire::Split { read: rd, upload })),
        Err(Ok(Ok(wr))) => {
            let head = read_head(&mut rd, read, fields).await?;
            let stream = rd.reunite(wr).ok_or_else(|| {
                ExchangeError::Write(io::Error::other("socket halves mismatched"))
            })?;
            Ok((head, Wire::Whole(stream)))
        }
        Err(Ok(Err(ExchangeError::Body(e)))) => Err(ExchangeError::Body(e)),
        // The instance may have answered before closing: that answer wins
        // over the failed write.
        Err(Ok(Err(write))) => {
            let head = read_head(&mut rd, read, fields).await.map_err(|_| write)?;
            Ok((head, Wire::ReadOnly(rd)))
        }
        Err(Err(join)) => Err(ExchangeError::Write(io::Error::other(join))),
    }
}

/// Streams `body` to `wr`, chunk-encoded when `framing` says so, checking
/// a declared length against what the body holds.
async fn send_body<W: AsyncWrite + Unpin>(
    wr: &mut W,
    body: LimitedBody,
    framing: RequestFraming,
    scratch: &mut Vec<u8>,
) -> Result<(), ExchangeError> {
    use http_body_util::BodyExt;
    let chunked = framing == RequestFraming::Chunked;
    let mut body = std::pin::pin!(body);
    let mut sent: u64 = 0;
    while let Some(frame) = body.as_mut().frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers of the client's are not forwarded
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if let RequestFraming::Length(len) = framing {
            if sent > len {
                return Err(ExchangeError::Write(io::Error::other(
                    "the request body is longer than its content-length",
                )));
            }
        }
        if chunked {
            scratch.clear();
            let _ = write!(scratch, "{:x}\r\n", data.len()); // a Vec takes every write
            scratch.extend_from_slice(&data);
            scratch.extend_from_slice(b"\r\n");
            wr.write_all(scratch).await.map_err(write_error)?;
        } else {
            wr.write_all(&data).await.map_err(write_error)?;
        }
    }
    match framing {
        RequestFraming::Chunked => wr.write_all(b"0\r\n\r\n").await.map_err(write_error),
        RequestFraming::Length(len) if sent != len => Err(ExchangeError::Write(io::Error::other(
            "the request body is shorter than its content-length",
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
