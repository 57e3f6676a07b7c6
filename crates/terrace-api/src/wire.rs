//! The answers hyper writes itself. When a request cannot be parsed at all
//! (headers too large: 431, a URI too long: 414, bad framing: 400), hyper
//! answers on its own with an empty body, before any of Terrace's layers
//! see a request. [`Answering`] sits between hyper and the socket and
//! rewrites exactly those answers into problem documents with an
//! `X-Request-Id` (CONTRACT §5), so that every response carries both.
//!
//! Such an answer is recognised by its shape: hyper writes it only when no
//! other response is being written, at the start of a write, as a head with
//! one of those statuses and no `x-request-id` (every answer of Terrace's
//! own carries one: the edge layer sets it).

use crate::problem::Problem;
use http::StatusCode;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use terrace_domain::RequestId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose bare error answers are rewritten; reads pass through.
#[derive(Debug)]
pub(crate) struct Answering<S> {
    inner: S,
    rewrite: Option<Rewrite>,
}

/// A replacement being written: its bytes, how far it got, and how many of
/// hyper's bytes it stands for.
#[derive(Debug)]
struct Rewrite {
    bytes: Vec<u8>,
    written: usize,
    replaces: usize,
}

impl<S> Answering<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner, rewrite: None }
    }
}

/// If `buf` starts with one of hyper's own error heads: its status and the
/// head's length.
fn bare_error_head(buf: &[u8]) -> Option<(StatusCode, usize)> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ").or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let status = match rest.get(..4)? {
        b"400 " => StatusCode::BAD_REQUEST,
        b"414 " => StatusCode::URI_TOO_LONG,
        b"431 " => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &buf[..end];
    let has = |name: &[u8]| {
        head.split(|&b| b == b'\n')
            .any(|line| line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name))
    };
    if has(b"x-request-id:") || !has(b"content-length: 0") {
        return None;
    }
    Some((status, end))
}

fn problem_for(status: StatusCode) -> Problem {
    match status {
        StatusCode::URI_TOO_LONG => Problem::new(status, "uri_too_long", "the request's URI is too long"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            Problem::new(status, "headers_too_large", "the request's headers are too large or too many")
        }
        _ => Problem::new(status, "bad_request", "the request is not well-formed HTTP/1.1"),
    }
}

/// The whole replacement answer: a problem document with a new request id
/// (the caller's could not be read), and the connection closed after it.
fn replacement(status: StatusCode) -> Vec<u8> {
    let id = RequestId::generate();
    let body = problem_for(status).to_json(Some(id.as_str()));
    tracing::info!(request_id = %id, status = status.as_u16(), "answered a request that could not be parsed");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nx-request-id: {}\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len(),
        id.as_str(),
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

impl<S: AsyncWrite + Unpin> Answering<S> {
    /// Writes the pending replacement; `Ready(Ok(n))` with the number of
    /// hyper's bytes it stands for once it is all out.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(r) = self.rewrite.as_mut() else { return Poll::Ready(Ok(0)) };
        while r.written < r.bytes.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &r.bytes[r.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            r.written += n;
        }
        let replaces = r.replaces;
        self.rewrite = None;
        Poll::Ready(Ok(replaces))
    }

    fn notice(&mut self, buf: &[u8]) {
        if self.rewrite.is_none() {
            if let Some((status, head)) = bare_error_head(buf) {
                self.rewrite = Some(Rewrite { bytes: replacement(status), written: 0, replaces: head });
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Answering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Answering<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.notice(buf);
        if this.rewrite.is_some() {
            return this.drive(cx);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            this.notice(first);
        }
        if this.rewrite.is_some() {
            return this.drive(cx);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_error_heads_are_recognised() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(bare_error_head(bare), Some((StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, bare.len())));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: abc\r\n\r\n";
        assert_eq!(bare_error_head(ours), None, "Terrace's own answers carry a request id");
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n";
        assert_eq!(bare_error_head(with_body), None);
        assert_eq!(bare_error_head(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"), None);
        assert_eq!(bare_error_head(b"{\"HTTP/1.1 400 \"}"), None);
    }
}
