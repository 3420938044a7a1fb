//! One context per HTTP request: its id (the caller's `x-request-id` or a new one,
//! echoed back) and what the handler learns about it (model, tokens, time to first
//! token). One log line per request is written when its answer has been sent in full,
//! or abandoned, so streams are logged with their final token counts.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use parlance_core::ir::Usage;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Default)]
struct Fields {
    model: Option<String>,
    /// The stored key's public id (never the key).
    key_id: Option<String>,
    usage: Option<Usage>,
    ttft: Option<Duration>,
    outcome: Option<String>,
    /// The door (or console area) whose route answered, as a metrics label.
    front_door: Option<&'static str>,
}

/// Shared between the middleware and the handler (a request extension).
pub struct RequestCtx {
    pub id: String,
    started: Instant,
    fields: Mutex<Fields>,
}

impl RequestCtx {
    fn with(&self, f: impl FnOnce(&mut Fields)) {
        if let Ok(mut g) = self.fields.lock() {
            f(&mut g);
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn set_key(&self, key_id: &str) {
        self.with(|f| f.key_id = Some(key_id.to_string()));
    }

    pub fn set_model(&self, model: &str) {
        self.with(|f| f.model = Some(model.to_string()));
    }

    /// Set by the gate in front of a door's routes (see `gate`), then by the door.
    pub fn set_front_door(&self, name: &'static str) {
        self.with(|f| f.front_door = Some(name));
    }

    pub fn set_usage(&self, usage: Usage) {
        self.with(|f| f.usage = Some(usage));
    }

    /// The first content reached the caller (first delta, or the whole answer).
    pub fn first_token(&self) {
        let at = self.started.elapsed();
        self.with(|f| {
            f.ttft.get_or_insert(at);
        });
    }

    /// How a stream that already answered 200 ended, when not normally.
    pub fn set_outcome(&self, outcome: impl Into<String>) {
        let o = outcome.into();
        self.with(|f| f.outcome = Some(o));
    }
}

/// A request id a caller may choose: short, printable, no spaces.
fn usable_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?.trim();
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_string())
}

/// A request's log context, from its arrival until its answer is ready.
pub(crate) struct Arrival {
    ctx: Arc<RequestCtx>,
    method: Method,
    /// The whole URI, whose `path()` is logged: a clone shares hyper's buffer.
    uri: Uri,
}

impl Arrival {
    /// Gives `req` its context (a request extension the handlers fill in).
    pub(crate) fn begin(req: &mut Request) -> Arrival {
        let id = req
            .headers()
            .get(&REQUEST_ID)
            .and_then(usable_id)
            .unwrap_or_else(|| crate::ids::random("req_"));
        let ctx = Arc::new(RequestCtx {
            id,
            started: Instant::now(),
            fields: Mutex::new(Fields::default()),
        });
        req.extensions_mut().insert(Arc::clone(&ctx));
        Arrival {
            ctx,
            method: req.method().clone(),
            uri: req.uri().clone(),
        }
    }

    /// `resp` with the request id echoed, its body writing the log line when it ends.
    pub(crate) fn answer(self, mut resp: Response) -> Response {
        if let Ok(v) = HeaderValue::from_str(&self.ctx.id) {
            resp.headers_mut().insert(REQUEST_ID, v);
        }
        let line = LogLine {
            ctx: self.ctx,
            method: self.method,
            uri: self.uri,
            status: resp.status().as_u16(),
        };
        resp.map(|body| {
            Body::new(LoggedBody {
                inner: body,
                line: Some(line),
            })
        })
    }
}

struct LogLine {
    ctx: Arc<RequestCtx>,
    method: Method,
    uri: Uri,
    status: u16,
}

impl LogLine {
    fn write(self, complete: bool) {
        let f = self
            .ctx
            .fields
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        let outcome = match (&f.outcome, complete) {
            (Some(o), _) => o.as_str(),
            (None, true) => "complete",
            (None, false) => "client_gone",
        };
        let u = f.usage.unwrap_or_default();
        let path = self.uri.path();
        if path != "/metrics" && path != "/health" {
            crate::observe::count_request(
                f.model.as_deref().unwrap_or("-"),
                f.front_door.unwrap_or("other"),
                self.status,
                outcome,
            );
        }
        let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0;
        tracing::info!(
            target: "parlance::request",
            request_id = %self.ctx.id,
            method = %self.method,
            path = %path,
            model = %f.model.as_deref().unwrap_or("-"),
            key_id = %f.key_id.as_deref().unwrap_or("-"),
            status = self.status,
            prompt_tokens = u.prompt_tokens,
            completion_tokens = u.completion_tokens,
            ttft_ms = f.ttft.map(ms),
            duration_ms = ms(self.ctx.started.elapsed()),
            outcome = %outcome,
            "request"
        );
    }
}

/// The response body, unchanged, that writes the request's log line when it ends.
struct LoggedBody {
    inner: Body,
    line: Option<LogLine>,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some(line) = self.line.take() {
                line.write(true);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            // A body hyper never polled to its end: empty bodies count as complete.
            let complete = self.inner.is_end_stream();
            line.write(complete);
        }
    }
}
