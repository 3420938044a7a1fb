//! The gate in front of every front door's routes. A door's routes are mounted with
//! their [`WireFormat`], so whatever refuses a request before or around the door's
//! handler (a missing or wrong key, a panic, an extractor's rejection, an unknown
//! method) answers in that door's error shape, rendered once from the typed error. The
//! wire format is known from where the route is mounted, never guessed from a path.

use crate::auth;
use crate::door::{error_response, message_naming_param};
use crate::reqlog::RequestCtx;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::MethodRouter;
use axum::Router;
use futures::FutureExt;
use parlance_core::Code;
use parlance_core::{Error, ErrorKind};
use serde_json::{json, Value};
use std::sync::Arc;

/// A front door's wire format, as routing sees it: the shape of its error answers and
/// its name on metrics.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum WireFormat {
    /// OpenAI's (Chat Completions, Completions, Responses, embeddings, rerank, models).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Gemini generateContent.
    Gemini,
    /// Ollama's `/api/*`.
    Ollama,
}

impl WireFormat {
    pub(crate) fn name(self) -> &'static str {
        match self {
            WireFormat::OpenAi => "openai",
            WireFormat::Anthropic => "anthropic",
            WireFormat::Gemini => "gemini",
            WireFormat::Ollama => "ollama",
        }
    }

    /// The error body for `e` (the HTTP status is `e.status()`).
    pub(crate) fn error_body(self, e: &Error) -> Value {
        match self {
            WireFormat::OpenAi => crate::error::openai_value(e),
            _ => {
                let dotted = self == WireFormat::Anthropic;
                self.status_body(e.status(), &message_naming_param(e, dotted))
            }
        }
    }

    /// The error body for an answer that has only a status and a text (a rejection
    /// made outside Parlance's code: axum's extractors and routing).
    fn status_body(self, status: u16, message: &str) -> Value {
        match self {
            WireFormat::OpenAi => crate::error::openai_status_body(status, message),
            WireFormat::Anthropic => crate::anthropic::error_body(status, message),
            WireFormat::Gemini => crate::gemini::error_body(status, message),
            WireFormat::Ollama => json!({"error": message}),
        }
    }

    /// `e` answered in this wire format.
    pub(crate) fn refuse(self, e: &Error) -> Response {
        error_response(e, self.error_body(e))
    }

    pub(crate) fn not_found(self) -> Response {
        self.refuse(&unknown_url())
    }

    fn method_not_allowed(self) -> Response {
        self.refuse(&Error::new(
            ErrorKind::MethodNotAllowed,
            "This endpoint does not accept that HTTP method.",
        ))
    }

    /// Mounts `routes` as this door's: each sits behind the gate (key check, panics
    /// and rejections in this format), an unknown method is this format's 405, and
    /// `fallback` makes an unknown path under the routes' mount point this format's 404.
    pub(crate) fn mount(
        self,
        state: &Arc<AppState>,
        routes: Router<Arc<AppState>>,
        fallback: bool,
    ) -> Router<Arc<AppState>> {
        let gated = routes
            .route_layer(axum::middleware::from_fn_with_state(
                self.gate(state),
                guard,
            ))
            .method_not_allowed_fallback(move || async move { self.method_not_allowed() });
        if fallback {
            gated.fallback(move || async move { self.not_found() })
        } else {
            gated
        }
    }

    /// One method of a route whose methods belong to different doors, behind this
    /// door's gate.
    pub(crate) fn method(
        self,
        state: &Arc<AppState>,
        method: MethodRouter<Arc<AppState>>,
    ) -> MethodRouter<Arc<AppState>> {
        method.route_layer(axum::middleware::from_fn_with_state(
            self.gate(state),
            guard,
        ))
    }

    fn gate(self, state: &Arc<AppState>) -> Gate {
        Gate {
            state: Arc::clone(state),
            wire: self,
        }
    }
}

/// The refusal of a path no route serves.
pub(crate) fn unknown_url() -> Error {
    Error::new(
        ErrorKind::NotFound,
        "Unknown endpoint. See the README for the routes this server serves.",
    )
    .with_code(Code::UnknownUrl)
}

#[derive(Clone)]
pub(crate) struct Gate {
    state: Arc<AppState>,
    wire: WireFormat,
}

/// Checks the key, then runs the handler; a panic in it, or an answer made outside
/// Parlance's code, comes back in the door's format.
async fn guard(State(g): State<Gate>, mut req: Request, next: Next) -> Response {
    if let Some(ctx) = req.extensions().get::<Arc<RequestCtx>>() {
        ctx.set_front_door(g.wire.name());
    }
    let presented = auth::presented(&req);
    match auth::resolve(&g.state, presented.as_deref()).await {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
        }
        Err(e) => return auth::unread_body(g.wire.refuse(&e), req.headers()),
    }
    // The handler's future runs here, so its panic is caught here and answered in the
    // door's format (the outer catch-all would answer OpenAI's).
    let resp = match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(resp) => resp,
        Err(_) => {
            return g.wire.refuse(&Error::internal(
                "internal error: the server hit a bug handling this request",
            ))
        }
    };
    in_format(resp, g.wire).await
}

/// An error answer that is not JSON yet (a plain-text rejection, an empty body) as
/// this format's error body, its status and headers kept.
pub(crate) async fn in_format(resp: Response, wire: WireFormat) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    // JSON already (rendered by Parlance), or a page meant for a person (single
    // sign-on's refusals).
    let kept = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if kept {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    } else {
        text
    };
    let body = wire.status_body(status.as_u16(), &message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

/// Names the admin API on metrics (its routes check their own key).
pub(crate) async fn admin_label(req: Request, next: Next) -> Response {
    if let Some(ctx) = req.extensions().get::<Arc<RequestCtx>>() {
        ctx.set_front_door("admin");
    }
    next.run(req).await
}

/// An unknown method on a route outside the doors.
pub(crate) async fn method_not_allowed() -> Response {
    WireFormat::OpenAi.method_not_allowed()
}

/// A panic outside a door's handler (in a layer or a non-door route).
pub(crate) fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    WireFormat::OpenAi.refuse(&Error::internal(
        "internal error: the server hit a bug handling this request",
    ))
}
