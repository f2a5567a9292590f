//! Exchanges against a scripted instance on a real loopback socket: each
//! accepted connection reads request heads and answers with the bytes the
//! test gives, written in small pieces so that every parser state meets a
//! boundary.

use super::*;
use crate::upstream::h1::send::{self, SendError};
use crate::upstream::pool::ConnPool;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the scripted instance does with one request.
#[derive(Clone)]
enum Reply {
    /// Writes these bytes, a few at a time.
    Bytes(&'static [u8]),
    /// Writes these bytes, then closes the connection.
    BytesThenClose(&'static [u8]),
    /// Closes the connection without answering.
    Close,
}

/// An instance answering the n-th request of each connection with
/// `replies[n]`; counts connections and reports the request heads it read.
struct Instance {
    pool: Arc<ConnPool>,
    accepted: Arc<AtomicUsize>,
    heads: mpsc::UnboundedReceiver<String>,
}

async fn instance(replies: Vec<Reply>) -> Instance {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, heads) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let replies = replies.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for reply in replies {
                    let Some(head) = read_request(&mut stream).await else {
                        return;
                    };
                    let _ = tx.send(head);
                    match reply {
                        Reply::Bytes(bytes) => dribble(&mut stream, bytes).await,
                        Reply::BytesThenClose(bytes) => {
                            dribble(&mut stream, bytes).await;
                            return;
                        }
                        Reply::Close => return,
                    }
                }
            });
        }
    });
    Instance {
        pool: Arc::new(ConnPool::new(addr.to_string())),
        accepted,
        heads,
    }
}

/// Reads one request (head and a `content-length` body) as text.
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        seen.push(byte[0]);
    }
    let head = String::from_utf8(seen).ok()?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |n| n.trim().parse::<usize>().unwrap_or(0));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(head + &String::from_utf8_lossy(&body))
}

async fn dribble(stream: &mut TcpStream, bytes: &[u8]) {
    for piece in bytes.chunks(3) {
        if stream.write_all(piece).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn request(method: Method, path: &str, body: &'static [u8]) -> Request<LimitedBody> {
    let mut req = Request::new(LimitedBody::buffered(Bytes::from_static(body)));
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().unwrap();
    req.headers_mut()
        .insert(http::header::HOST, HeaderValue::from_static("up"));
    req
}

use http::Request;

async fn send(
    inst: &Instance,
    method: Method,
    body: &'static [u8],
) -> Result<Response<UpstreamBody>, SendError> {
    send::send(
        &inst.pool,
        Duration::from_secs(2),
        request(method, "/p?q=1", body),
    )
    .await
}

/// The body's data and its trailers.
async fn read_all(body: UpstreamBody) -> Result<(Vec<u8>, Option<HeaderMap>), ExchangeError> {
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes().to_vec(), trailers))
}

#[tokio::test]
async fn a_length_delimited_answer_is_read_and_its_connection_reused() {
    let reply =
        Reply::Bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\nx-a: 2\r\n\r\nhello");
    let mut inst = instance(vec![reply.clone(), reply]).await;
    for _ in 0..2 {
        let response = send(&inst, Method::GET, b"").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(response.body().size_hint().exact(), Some(5));
        assert_eq!(read_all(response.into_body()).await.unwrap().0, b"hello");
        assert_eq!(inst.pool.idle_count(), 1);
    }
    assert_eq!(inst.accepted.load(Ordering::SeqCst), 1);
    let head = inst.heads.recv().await.unwrap();
    assert!(
        head.starts_with("GET /p?q=1 HTTP/1.1\r\nhost: up\r\n"),
        "{head}"
    );
    assert!(
        !head.contains("content-length"),
        "a GET without body announces none: {head}"
    );
}

#[tokio::test]
async fn chunked_answers_are_decoded_with_their_trailers() {
    let reply = Reply::Bytes(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n, chunked!\r\n0\r\nx-sum: 42\r\n\r\n",
    );
    let inst = instance(vec![reply.clone(), reply]).await;
    for _ in 0..2 {
        let response = send(&inst, Method::GET, b"").await.unwrap();
        let (data, trailers) = read_all(response.into_body()).await.unwrap();
        assert_eq!(data, b"hello, chunked!");
        assert_eq!(trailers.unwrap().get("x-sum").unwrap(), "42");
    }
    assert_eq!(
        inst.accepted.load(Ordering::SeqCst),
        1,
        "the connection is reused"
    );
}

#[tokio::test]
async fn malformed_chunks_fail_the_body_and_close_the_connection() {
    for reply in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\n",
    ] {
        let inst = instance(vec![Reply::Bytes(reply)]).await;
        let response = send(&inst, Method::GET, b"").await.unwrap();
        let err = read_all(response.into_body()).await.unwrap_err();
        assert!(matches!(err, ExchangeError::Malformed(_)), "{err}");
        assert_eq!(inst.pool.idle_count(), 0);
    }
}

#[tokio::test]
async fn an_answer_without_length_runs_until_close_and_is_not_reused() {
    let inst = instance(vec![Reply::BytesThenClose(
        b"HTTP/1.1 200 OK\r\n\r\nall of it",
    )])
    .await;
    let response = send(&inst, Method::GET, b"").await.unwrap();
    assert_eq!(
        read_all(response.into_body()).await.unwrap().0,
        b"all of it"
    );
    assert_eq!(inst.pool.idle_count(), 0);
}

#[tokio::test]
async fn a_body_cut_short_is_an_error() {
    let inst = instance(vec![Reply::BytesThenClose(
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
    )])
    .await;
    let response = send(&inst, Method::GET, b"").await.unwrap();
    let err = read_all(response.into_body()).await.unwrap_err();
    assert!(matches!(err, ExchangeError::Truncated), "{err}");
    assert_eq!(inst.pool.idle_count(), 0);
}

#[tokio::test]
async fn interim_answers_are_skipped_and_switching_protocols_refused() {
    let inst = instance(vec![Reply::Bytes(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
    )])
    .await;
    let response = send(&inst, Method::GET, b"").await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().get("link").is_none());
    assert_eq!(read_all(response.into_body()).await.unwrap().0, b"ok");

    let inst = instance(vec![Reply::Bytes(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
    )])
    .await;
    let err = send(&inst, Method::GET, b"").await.unwrap_err();
    assert!(err.to_string().contains("switching protocols"), "{err}");
}

#[tokio::test]
async fn broken_heads_are_refused_with_a_reason() {
    let cases: [(&'static [u8], &str); 5] = [
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            "conflicting content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\nabc",
            "invalid content-length",
        ),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "invalid response head"),
        (
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.0",
        ),
        (
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "invalid response head",
        ),
    ];
    for (reply, reason) in cases {
        let inst = instance(vec![Reply::Bytes(reply)]).await;
        let err = send(&inst, Method::GET, b"").await.unwrap_err();
        assert!(
            err.to_string().contains(reason),
            "{err} should say {reason}"
        );
        assert_eq!(
            send::classify(&err),
            send::Failure::Upstream(crate::ops::metrics::UpstreamErrorKind::Protocol)
        );
    }
}

#[tokio::test]
async fn an_endless_head_is_cut_off() {
    static HUGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let head = HUGE.get_or_init(|| {
        let mut head = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        head.resize(MAX_HEAD_BYTES + 10, b'a');
        head
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await;
        let _ = stream.write_all(head).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let pool = Arc::new(ConnPool::new(addr.to_string()));
    let err = send::send(
        &pool,
        Duration::from_secs(2),
        request(Method::GET, "/", b""),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            SendError::Exchange {
                source: ExchangeError::HeadTooLarge,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn length_and_chunked_together_trust_the_chunks_and_close_after() {
    let inst = instance(vec![Reply::Bytes(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )])
    .await;
    let response = send(&inst, Method::GET, b"").await.unwrap();
    assert!(response.headers().get("content-length").is_none());
    assert_eq!(read_all(response.into_body()).await.unwrap().0, b"ok");
    assert_eq!(inst.pool.idle_count(), 0);
}

#[tokio::test]
async fn keep_alive_follows_the_version_and_connection_header() {
    let cases: [(&'static [u8], usize); 4] = [
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", 0),
        (
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
            1,
        ),
        (
            b"HTTP/1.1 200 OK\r\nconnection: x, close\r\ncontent-length: 2\r\n\r\nok",
            0,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok-and-more",
            0,
        ),
    ];
    for (reply, idle) in cases {
        let inst = instance(vec![Reply::Bytes(reply)]).await;
        let response = send(&inst, Method::GET, b"").await.unwrap();
        // The extra bytes of the last case may arrive after the body.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(read_all(response.into_body()).await.unwrap().0, b"ok");
        assert_eq!(
            inst.pool.idle_count(),
            idle,
            "{}",
            String::from_utf8_lossy(reply)
        );
    }
}

#[tokio::test]
async fn answers_without_a_body_end_at_the_head() {
    let inst = instance(vec![
        Reply::Bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
        Reply::Bytes(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"),
        Reply::Bytes(b"HTTP/1.1 204 No Content\r\n\r\n"),
    ])
    .await;
    let head = send::send(
        &inst.pool,
        Duration::from_secs(2),
        request(Method::HEAD, "/", b""),
    )
    .await
    .unwrap();
    assert!(head.body().is_end_stream());
    assert_eq!(head.headers().get("content-length").unwrap(), "5");
    assert_eq!(inst.pool.idle_count(), 1, "released with the head");
    for status in [StatusCode::NOT_MODIFIED, StatusCode::NO_CONTENT] {
        let response = send(&inst, Method::GET, b"").await.unwrap();
        assert_eq!(response.status(), status);
        assert!(response.body().is_end_stream());
    }
    assert_eq!(inst.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn request_bodies_are_sent_with_their_length() {
    let ok = Reply::Bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    let mut inst = instance(vec![ok.clone(), ok]).await;
    send(&inst, Method::POST, b"{\"a\":1}").await.unwrap();
    send(&inst, Method::POST, b"").await.unwrap();
    let first = inst.heads.recv().await.unwrap();
    assert!(first.starts_with("POST /p?q=1 HTTP/1.1\r\n"), "{first}");
    assert!(
        first.ends_with("content-length: 7\r\n\r\n{\"a\":1}"),
        "{first}"
    );
    let second = inst.heads.recv().await.unwrap();
    assert!(
        second.ends_with("content-length: 0\r\n\r\n"),
        "a POST announces its empty body: {second}"
    );
}

#[tokio::test]
async fn a_closed_idle_connection_is_noticed_before_use() {
    let inst = instance(vec![Reply::BytesThenClose(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )])
    .await;
    let first = send(&inst, Method::GET, b"").await.unwrap();
    read_all(first.into_body()).await.unwrap();
    assert_eq!(inst.pool.idle_count(), 1);
    // Let the close reach the socket, and the runtime see it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = send(&inst, Method::POST, b"x").await.unwrap();
    assert_eq!(read_all(second.into_body()).await.unwrap().0, b"ok");
    assert_eq!(inst.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_closed_unanswered_is_retried_only_for_safe_requests() {
    let ok = Reply::Bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    // Each connection answers one request, then drops the next unanswered.
    let inst = instance(vec![ok, Reply::Close]).await;
    let first = send(&inst, Method::GET, b"").await.unwrap();
    read_all(first.into_body()).await.unwrap();
    let again = send(&inst, Method::GET, b"").await.unwrap();
    assert_eq!(read_all(again.into_body()).await.unwrap().0, b"ok");
    assert_eq!(
        inst.accepted.load(Ordering::SeqCst),
        2,
        "the GET went again on a new connection"
    );

    let err = send(&inst, Method::POST, b"x").await.unwrap_err();
    assert!(
        matches!(
            err,
            SendError::Exchange {
                source: ExchangeError::Closed,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        inst.accepted.load(Ordering::SeqCst),
        2,
        "the POST is not repeated"
    );
}

#[tokio::test]
async fn extra_fields_follow_the_request_headers() {
    let ok = Reply::Bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    let mut inst = instance(vec![ok]).await;
    let name = HeaderName::from_static("x-forwarded-for");
    let value = HeaderValue::from_static("10.1.2.3");
    send::send_with(
        &inst.pool,
        Duration::from_secs(2),
        None,
        request(Method::GET, "/p", b""),
        &[(&name, &value)],
    )
    .await
    .unwrap();
    let head = inst.heads.recv().await.unwrap();
    assert_eq!(
        head,
        "GET /p HTTP/1.1\r\nhost: up\r\nx-forwarded-for: 10.1.2.3\r\n\r\n"
    );
}

#[tokio::test]
async fn connection_level_fields_are_consumed() {
    let inst = instance(vec![
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        Reply::Bytes(b"HTTP/1.1 200 OK\r\nconnection: x-hop\r\nx-hop: 1\r\ncontent-length: 2\r\n\r\nok"),
    ])
    .await;
    let response = send(&inst, Method::GET, b"").await.unwrap();
    let names: Vec<&str> = response.headers().keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["x-a"]);
    assert_eq!(read_all(response.into_body()).await.unwrap().0, b"ok");
    // A Connection naming other fields stays, for the proxy to remove them.
    let response = send(&inst, Method::GET, b"").await.unwrap();
    assert_eq!(response.headers()["connection"], "x-hop");
    assert_eq!(response.headers()["content-length"], "2");
}
