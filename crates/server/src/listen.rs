//! The accept loop: HTTP/1 and HTTP/2 on one port, with the limits a public server
//! needs (a deadline for each request head, which also closes idle keep-alive
//! connections; a cap on open connections), JSON bodies on the answers hyper writes
//! by itself, and a graceful shutdown with a deadline for running requests.

use crate::Shutdown;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct Limits {
    /// A connection must deliver a whole request head within this long of being ready
    /// for one: bounds slow senders and idle keep-alive connections alike.
    pub header_timeout: Duration,
    /// Open connections; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long running requests may finish after a shutdown signal.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` until `signal` resolves, then stops accepting, lets running requests
/// finish for `limits.shutdown_timeout`, ends the rest through `shutdown` (their
/// streams get an error event) and returns.
pub async fn serve(
    listener: TcpListener,
    app: crate::App,
    limits: Limits,
    shutdown: Shutdown,
    signal: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    tokio::pin!(signal);
    loop {
        let permit = tokio::select! {
            () = &mut signal => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = &mut signal => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Streams are many small writes: without NODELAY, Nagle holds each one until the
        // client's delayed ACK (~40 ms per stream, measured).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY; streams may be delayed");
        }
        let io = TokioIo::new(JsonParseErrors::new(tcp));
        // The peer address rides on each request (sign-in throttling, the audit log).
        let with_peer = tower::ServiceBuilder::new()
            .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(crate::account::Peer(peer));
                req
            })
            .service(app.clone());
        let service = TowerToHyperService::new(with_peer);
        let conn = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        let conn = graceful.watch(conn);
        parlance_core::task::spawn("connection", async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        eprintln!(
            "shutting down: no new connections; waiting up to {:.0?} for {open} open connection(s) to finish (send the signal again to exit now)",
            limits.shutdown_timeout
        );
    }
    let finished = tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown());
    let graceful_done = finished.await.is_ok();
    if !graceful_done {
        eprintln!("shutdown deadline passed: ending the requests still running");
        shutdown.end_requests();
        // Their error events need a moment to be written.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// hyper answers a request head it cannot parse (400, 414 URI too long, 431 headers
/// too large) by itself, with an empty body. This wrapper writes the same answer with
/// the JSON error body every other error has. Those answers are recognisable: they
/// are the only 4xx this server sends with `content-length: 0`.
struct JsonParseErrors {
    inner: TcpStream,
    /// A rewritten answer not yet fully written, and the length hyper asked to write.
    pending: Option<(Vec<u8>, usize)>,
}

impl JsonParseErrors {
    fn new(inner: TcpStream) -> Self {
        JsonParseErrors {
            inner,
            pending: None,
        }
    }
}

/// The answer with a JSON body, when `head` is one of hyper's parse-error answers.
fn rewrite_parse_error(head: &[u8]) -> Option<Vec<u8>> {
    let (status, message) = if head.starts_with(b"HTTP/1.1 400 ") {
        (
            400,
            "The HTTP request could not be parsed (bad request line or header).",
        )
    } else if head.starts_with(b"HTTP/1.1 414 ") {
        (414, "The request URI is too long.")
    } else if head.starts_with(b"HTTP/1.1 431 ") {
        (431, "The request headers are too large or too many.")
    } else {
        return None;
    };
    let text = std::str::from_utf8(head).ok()?;
    if !text.ends_with("\r\n\r\n") {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let at = lower.find("\r\ncontent-length: 0\r\n")?;
    let body = serde_json::json!({"error": {
        "message": message,
        "type": "invalid_request_error",
        "param": null,
        "code": if status == 400 { "bad_request" } else if status == 414 { "uri_too_long" } else { "headers_too_large" },
    }})
    .to_string();
    let mut out = String::with_capacity(text.len() + body.len() + 64);
    out.push_str(&text[..at]);
    out.push_str(&format!(
        "\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    ));
    out.push_str(&text[at + "\r\ncontent-length: 0\r\n".len()..]);
    out.push_str(&body);
    Some(out.into_bytes())
}

impl JsonParseErrors {
    /// Writes what is left of a rewritten answer; Ready once all of it is out.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((buf, asked)) = self.pending.as_mut() {
            if buf.is_empty() {
                let asked = *asked;
                self.pending = None;
                return Poll::Ready(Ok(asked));
            }
            let n = match Pin::new(&mut self.inner).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            buf.drain(..n);
        }
        Poll::Ready(Ok(0))
    }
}

impl AsyncRead for JsonParseErrors {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for JsonParseErrors {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_some() {
            return self.drain(cx);
        }
        if buf.starts_with(b"HTTP/1.1 4") {
            if let Some(answer) = rewrite_parse_error(buf) {
                self.pending = Some((answer, buf.len()));
                return self.drain(cx);
            }
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_some() {
            return self.drain(cx);
        }
        // A parse-error answer is a head alone: one slice.
        let first = bufs.iter().find(|b| !b.is_empty());
        if let Some(b) = first {
            if b.starts_with(b"HTTP/1.1 4") && bufs.iter().filter(|b| !b.is_empty()).count() == 1 {
                if let Some(answer) = rewrite_parse_error(b) {
                    self.pending = Some((answer, b.len()));
                    return self.drain(cx);
                }
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_some() {
            match self.drain(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
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
    fn hyper_parse_error_heads_get_a_json_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 23 Nov 2026 20:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite_parse_error(head).unwrap()).unwrap();
        let (h, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(h.starts_with("HTTP/1.1 431 "));
        assert!(h.contains("content-type: application/json"));
        assert!(h.contains(&format!("content-length: {}", body.len())));
        assert!(h.contains("date: "));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "headers_too_large");
        // Answers of the app itself are left alone.
        assert!(
            rewrite_parse_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 80\r\n\r\n")
                .is_none()
        );
        assert!(rewrite_parse_error(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
    }
}
