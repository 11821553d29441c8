#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::ReadBuf;

/// A connection that hands out `pieces` one per read, then reports the close.
struct Pieces(VecDeque<Vec<u8>>);

impl Pieces {
    fn new<I: IntoIterator<Item = Vec<u8>>>(pieces: I) -> Self {
        Pieces(pieces.into_iter().collect())
    }

    /// `wire` cut into pieces of `size` bytes.
    fn split(wire: &[u8], size: usize) -> Self {
        Self::new(wire.chunks(size).map(<[u8]>::to_vec))
    }
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(mut p) = self.0.pop_front() {
            let n = p.len().min(buf.remaining());
            buf.put_slice(&p[..n]);
            if n < p.len() {
                self.0.push_front(p.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The whole body, read as the relay does; and whether the connection may be reused.
async fn body(mut r: Response<Pieces>) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    while let Some(b) = r.read_body_bytes().await.unwrap() {
        assert!(!b.is_empty(), "an empty read before the end");
        out.extend_from_slice(&b);
    }
    assert!(r.is_body_done());
    (out, r.reuse().is_some())
}

async fn read(wire: &[u8], size: usize) -> Response<Pieces> {
    Response::read(Pieces::split(wire, size), false, |_| false)
        .await
        .unwrap()
}

const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
Transfer-Encoding: chunked\r\n\r\n\
7\r\ndata: a\r\n14;ext=\"x\"\r\ndata: {\"k\":\"bb\"}\r\n\r\n\r\n\
0\r\nX-Trailer: t\r\n\r\n";
const CHUNKED_BODY: &[u8] = b"data: adata: {\"k\":\"bb\"}\r\n\r\n";

#[tokio::test]
async fn a_content_length_body_is_read_whole_at_every_split() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Request-Id: r1\r\nSet-Cookie: a=1\r\n\
set-cookie: b=2\r\n\r\nhello world";
    for size in 1..=wire.len() {
        let r = read(wire, size).await;
        assert_eq!(r.head().status, StatusCode::OK);
        let h = &r.head().headers;
        assert_eq!(h["x-request-id"], "r1");
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"], "repeated headers are all kept");
        assert_eq!(
            body(r).await,
            (b"hello world".to_vec(), true),
            "split {size}"
        );
    }
}

#[tokio::test]
async fn a_chunked_body_is_decoded_at_every_split() {
    for size in 1..=CHUNKED.len() {
        let r = read(CHUNKED, size).await;
        assert!(
            r.head().headers.contains_key("transfer-encoding"),
            "the head is kept as sent"
        );
        assert_eq!(body(r).await, (CHUNKED_BODY.to_vec(), true), "split {size}");
    }
}

#[tokio::test]
async fn the_body_ends_with_its_last_data_when_the_last_chunk_came_with_it() {
    let mut r = read(CHUNKED, CHUNKED.len()).await;
    // Both chunks were read together: their data comes as one piece, and the body has ended.
    let all = r.read_body_bytes().await.unwrap().unwrap();
    assert_eq!(&all[..], CHUNKED_BODY);
    assert!(
        r.is_body_done(),
        "the caller settles before sending the last bytes"
    );
    assert!(r.read_body_bytes().await.unwrap().is_none());
}

#[tokio::test]
async fn every_chunk_read_together_comes_in_one_piece() {
    let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
3\r\nab\n\r\n3\r\ncd\n\r\n3\r\nef\n\r\n3\r\ngh\n\r\n";
    let mut r = read(wire, wire.len()).await;
    assert_eq!(
        &r.read_body_bytes().await.unwrap().unwrap()[..],
        b"ab\ncd\nef\ngh\n"
    );
    assert!(!r.is_body_done(), "the last chunk has not come");
}

/// The head and its chunks cut where `cuts` say (byte offsets into `CHUNKED`).
fn cut_at(cuts: &[usize]) -> Pieces {
    let mut at = 0;
    let mut pieces = Vec::new();
    for &c in cuts.iter().chain([&CHUNKED.len()]) {
        pieces.push(CHUNKED[at..c].to_vec());
        at = c;
    }
    Pieces::new(pieces)
}

#[tokio::test]
async fn chunks_read_apart_come_apart_and_nothing_waits_for_more() {
    let second = memchr::memmem::find(CHUNKED, b"14;").unwrap();
    let mut r = Response::read(cut_at(&[second]), false, |_| false)
        .await
        .unwrap();
    assert_eq!(&r.read_body_bytes().await.unwrap().unwrap()[..], b"data: a");
    assert!(!r.is_body_done());
    let last = r.read_body_bytes().await.unwrap().unwrap();
    assert_eq!(&last[..], b"data: {\"k\":\"bb\"}\r\n\r\n");
    assert!(r.is_body_done());
}

#[tokio::test]
async fn data_before_a_framing_error_still_comes_out_first() {
    let mut wire = CHUNKED[..memchr::memmem::find(CHUNKED, b"14;").unwrap()].to_vec();
    wire.extend_from_slice(b"zz\r\nnot a chunk\r\n");
    let mut r = read(&wire, wire.len()).await;
    assert_eq!(&r.read_body_bytes().await.unwrap().unwrap()[..], b"data: a");
    let err = r.read_body_bytes().await.unwrap_err();
    assert_eq!(err.etype(), &ErrorType::InvalidHTTPHeader);
}

#[tokio::test]
async fn informational_answers_are_skipped() {
    let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    for size in [1, 7, wire.len()] {
        let r = read(wire, size).await;
        assert_eq!(r.head().status, StatusCode::CREATED);
        assert!(!r.head().headers.contains_key("link"));
        assert_eq!(body(r).await, (b"ok".to_vec(), true));
    }
}

#[tokio::test]
async fn no_body_after_head_204_and_304() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    let r = Response::read(Pieces::split(wire, wire.len()), true, |_| false)
        .await
        .unwrap();
    assert_eq!(body(r).await, (Vec::new(), true));
    for status in ["204 No Content", "304 Not Modified"] {
        let wire = format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n");
        let r = read(wire.as_bytes(), 3).await;
        assert!(r.is_body_done());
        assert_eq!(body(r).await, (Vec::new(), true));
    }
}

#[tokio::test]
async fn without_framing_the_body_runs_to_the_close_and_the_connection_is_not_reused() {
    for head in [
        "HTTP/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        let wire = format!("{head}all of it");
        let r = read(wire.as_bytes(), 4).await;
        assert_eq!(body(r).await, (b"all of it".to_vec(), false), "{head:?}");
    }
}

#[tokio::test]
async fn keep_alive_follows_the_version_and_connection() {
    for (head, reusable) in [
        ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n", true),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n",
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: x, Close\r\n",
            false,
        ),
        ("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n", false),
        (
            "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n",
            true,
        ),
    ] {
        let wire = format!("{head}\r\nx");
        let r = read(wire.as_bytes(), wire.len()).await;
        assert_eq!(body(r).await, (b"x".to_vec(), reusable), "{head:?}");
    }
}

#[tokio::test]
async fn bytes_after_the_body_make_the_connection_unusable() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n";
    let r = read(wire, wire.len()).await;
    assert_eq!(body(r).await, (b"ok".to_vec(), false));
}

#[tokio::test]
async fn content_length_beside_transfer_encoding_is_dropped() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
2\r\nok\r\n0\r\n\r\n";
    let r = read(wire, 5).await;
    assert!(!r.head().headers.contains_key("content-length"));
    assert_eq!(body(r).await, (b"ok".to_vec(), true));
}

/// The caller's dropped headers are left out of a successful answer's head; framing headers are
/// read whatever it says, and any other answer keeps every header.
#[tokio::test]
async fn dropped_headers_are_left_out_of_a_successful_head() {
    let dropped = |n: &[u8]| !n.eq_ignore_ascii_case(b"content-type");
    let head = |status: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nX-RateLimit-Remaining-Tokens: 0\r\n\
             Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTransfer-Encoding: chunked\r\n\r\n\
             2\r\nok\r\n0\r\n\r\n"
        )
    };
    let wire = head("200 OK");
    let r = Response::read(Pieces::split(wire.as_bytes(), 5), false, dropped)
        .await
        .unwrap();
    let names: Vec<&str> = r.head().headers.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["content-type", "connection", "transfer-encoding"]);
    assert_eq!(body(r).await, (b"ok".to_vec(), true));
    let wire = head("429 Too Many Requests");
    let mut r = Response::read(Pieces::split(wire.as_bytes(), 5), false, dropped)
        .await
        .unwrap();
    let h = &r.head().headers;
    assert_eq!(h.len(), 5);
    assert!(h.contains_key("x-ratelimit-remaining-tokens"));
    // The relay takes the map whole; the status stays and the body still reads to its end.
    let taken = r.take_headers();
    assert_eq!(taken.len(), 5);
    assert!(r.head().headers.is_empty());
    assert_eq!(r.head().status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body(r).await, (b"ok".to_vec(), true));
}

#[tokio::test]
async fn a_repeated_equal_content_length_is_accepted() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok";
    assert_eq!(body(read(wire, 3).await).await, (b"ok".to_vec(), true));
}

async fn failure(wire: &[u8]) -> ErrorType {
    let r = Response::read(Pieces::split(wire, 3), false, |_| false).await;
    let mut r = match r {
        Err(e) => return e.etype().clone(),
        Ok(r) => r,
    };
    loop {
        match r.read_body_bytes().await {
            Err(e) => return e.etype().clone(),
            Ok(None) => panic!("{:?} was read whole", String::from_utf8_lossy(wire)),
            Ok(Some(_)) => {}
        }
    }
}

#[tokio::test]
async fn broken_answers_fail() {
    use ErrorType::*;
    for (wire, kind) in [
        (&b""[..], ConnectionClosed),
        (b"HTTP/1.1 200 OK\r\nContent-Le", ConnectionClosed),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
            ConnectionClosed,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            ConnectionClosed,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
            ConnectionClosed,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            InvalidHTTPHeader,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            InvalidHTTPHeader,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            InvalidHTTPHeader,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
            InvalidHTTPHeader,
        ),
        (b"HTTX/1.1 200 OK\r\n\r\n", InvalidHTTPHeader),
    ] {
        assert_eq!(
            failure(wire).await,
            kind,
            "{:?}",
            String::from_utf8_lossy(wire)
        );
    }
}

#[tokio::test]
async fn a_folded_header_value_is_unfolded() {
    let wire = b"HTTP/1.1 200 OK\r\nX-Long: a\r\n  b\r\nContent-Length: 0\r\n\r\n";
    let r = read(wire, wire.len()).await;
    let v = r.head().headers["x-long"].as_bytes().to_vec();
    assert!(!v.contains(&b'\r') && !v.contains(&b'\n'), "{v:?}");
    assert_eq!(
        String::from_utf8(v)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
}
