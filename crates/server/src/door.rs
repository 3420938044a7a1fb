//! The one pipeline every generating request takes, whichever front door it came in
//! by: resolve the model, check its output cap, admit (keys, limits, budgets, the
//! usage meter), start the backend, meter and observe its events, then answer whole or
//! streamed with keep-alives. A door supplies only its wire format: the [`Door`] trait.

use crate::auth::Principal;
use crate::gate::WireFormat;
use crate::metering::{admit, record_refusal, watch, with_rate_headers};
use crate::reqlog::RequestCtx;
use crate::sse::SseEvent;
use crate::AppState;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::BoxStream;
use futures::StreamExt;
use parlance_core::ir::ChatRequest;
use parlance_core::router::Route;
use parlance_core::{Error, EventStream, ParamPath};
use parlance_tenancy::limits::RateHeaders;
use serde_json::Value;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// How often an SSE comment keeps a connection alive while a prompt is prefilled.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// How long a streamed request may wait for its backend to start before the stream's
/// headers go out anyway (errors after that arrive as the door's error events).
const HEADERS_AFTER: Duration = Duration::from_millis(500);

/// A streamed answer's body.
pub(crate) enum Frames {
    /// Server-sent events, with keep-alive comments while the stream is quiet.
    Sse(BoxStream<'static, SseEvent>),
    /// A body of its own content type, sent as it comes (Gemini's JSON array).
    Raw(&'static str, BoxStream<'static, String>),
}

/// A front door's wire format: how it names and renders what the pipeline produces.
pub(crate) trait Door: Send + Sized + 'static {
    /// The door's name in usage rows.
    const NAME: &'static str;

    /// Its wire format: the shape of its error answers, here and on the routes that
    /// lead to it (see `gate`).
    const WIRE: WireFormat;

    /// This door's error body for `e` (the HTTP status is `e.status()`).
    fn error_body(e: &Error) -> Value {
        Self::WIRE.error_body(e)
    }

    /// The refusal of an output cap above the model's limit, worded as this door's
    /// provider words it.
    fn output_cap_error(&self, asked: u32, limit: u32, model: &str) -> Error;

    /// Backends name parameters as the IR does (`messages`, `max_tokens`); these map
    /// them to this door's own (`input`, `max_output_tokens`).
    fn param_names(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// A whole answer's body.
    type Whole: serde::Serialize + Send;

    /// The whole answer, from the metered events.
    fn whole(self, events: EventStream) -> impl Future<Output = Result<Self::Whole, Error>> + Send;

    /// The streamed answer; an error in `events` ends it with this door's error event.
    fn stream(self, events: EventStream) -> Frames;
}

/// An error answered in door `D`'s wire format; handlers return it with `?`.
pub(crate) struct Refusal<D>(pub Error, PhantomData<D>);

impl<D> From<Error> for Refusal<D> {
    fn from(e: Error) -> Self {
        Refusal(e, PhantomData)
    }
}

impl<D: Door> IntoResponse for Refusal<D> {
    fn into_response(self) -> Response {
        error_response(&self.0, D::error_body(&self.0))
    }
}

/// An error body as an HTTP answer: its status, `Retry-After` when it has one.
pub(crate) fn error_response(e: &Error, body: Value) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!(error = %e, "request failed");
    }
    let mut resp = (status, Json(body)).into_response();
    if let Some(secs) = e.retry_after {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

/// The message with the parameter it names in front, for doors whose error bodies
/// have no `param` field: Gemini's `contents[0].parts[1]: ...`, or with `dotted`
/// Anthropic's `messages.0.content.1: ...` (where the message quotes the path in the
/// IR's style, it is reworded in the door's).
pub(crate) fn message_naming_param(e: &Error, dotted: bool) -> String {
    let Some(p) = &e.param else {
        return e.message.clone();
    };
    let (named, message) = if dotted {
        let named = p.dotted();
        (named.clone(), e.message.replace(&**p, &named))
    } else {
        (p.to_string(), e.message.clone())
    };
    if message.contains(&named) {
        message
    } else {
        format!("{named}: {message}")
    }
}

/// A backend that has started answering, its events metered and observed.
pub(crate) struct Started {
    pub events: EventStream,
    pub rate: RateHeaders,
}

/// Names a backend's parameter path as the door does.
pub(crate) fn rename_param(mut e: Error, names: &[(&str, &str)]) -> Error {
    let renamed = e.param.as_ref().and_then(|p| {
        let (from, to) = names.iter().find(|(from, _)| p.head() == Some(*from))?;
        p.renamed(from, &ParamPath::parse(to))
    });
    if renamed.is_some() {
        e.param = renamed;
    }
    e
}

/// One generating request, start to answer.
pub(crate) async fn chat<D: Door>(
    state: &AppState,
    ctx: &Arc<RequestCtx>,
    principal: &Principal,
    door: D,
    req: ChatRequest,
) -> Response {
    let stream = req.stream;
    let route = match state.router.resolve(&req.model) {
        Ok(r) => r,
        Err(e) => return Refusal::<D>::from(e).into_response(),
    };
    match start(state, ctx, principal, &door, &route, req).await {
        Ok(started) => answer(ctx, door, started, stream).await,
        Err(refused) => refused,
    }
}

/// Checks the output cap, admits and starts the backend; `Err` is the refusal,
/// rendered in the door's format and metered.
pub(crate) async fn start<D: Door>(
    state: &AppState,
    ctx: &Arc<RequestCtx>,
    principal: &Principal,
    door: &D,
    route: &Route,
    mut req: ChatRequest,
) -> Result<Started, Response> {
    if let (Some(asked), Some(limit)) = (req.max_tokens, route.info.max_output_tokens) {
        if asked > limit {
            let e = door.output_cap_error(asked, limit, &req.model);
            return Err(Refusal::<D>::from(e).into_response());
        }
    }
    let model = req.model.clone();
    let stream = req.stream;
    let (meter, rate) = match admit(state, ctx, principal, &route.info, &mut req, D::NAME).await {
        Ok(a) => a,
        Err((e, headers)) => {
            return Err(with_rate_headers(
                Refusal::<D>::from(e).into_response(),
                &headers,
            ))
        }
    };
    let origins = req.origins.clone();
    let names = door.param_names();
    // Parts first, by where they came from; then this door's parameter names.
    let named = move |e: Error| rename_param(origins.rename(e), names);
    let backend = Arc::clone(&route.backend);
    let mut call = Box::pin(async move { backend.chat(req).await });
    // A backend that answers quickly (local models queue at once; an upstream's 400)
    // gets a plain HTTP status. A stream whose backend takes longer (an upstream's
    // first token, a pool's retries) gets its headers now, and keep-alives while it
    // works, so proxies and clients with idle timeouts do not give up; its errors
    // become the door's error events.
    let events: EventStream = tokio::select! {
        r = &mut call => match r {
            Ok(events) => events,
            Err(e) => {
                let e = named(e);
                record_refusal(meter, &e).await;
                return Err(with_rate_headers(Refusal::<D>::from(e).into_response(), &rate));
            }
        },
        () = tokio::time::sleep(HEADERS_AFTER), if stream => {
            Box::pin(futures::stream::once(call).flat_map(move |r| match r {
                Ok(events) => events,
                Err(e) => Box::pin(futures::stream::once(async move { Err(e) })) as EventStream,
            }))
        }
    };
    Ok(Started {
        events: watch(state, meter, events, &model, ctx, stream),
        rate,
    })
}

/// The door's answer to a started request, with the caller's rate headers.
pub(crate) async fn answer<D: Door>(
    ctx: &RequestCtx,
    door: D,
    started: Started,
    stream: bool,
) -> Response {
    let Started { events, rate } = started;
    let resp = if stream {
        match door.stream(events) {
            Frames::Sse(events) => crate::sse::response(events, KEEP_ALIVE),
            Frames::Raw(content_type, body) => (
                [(header::CONTENT_TYPE, content_type)],
                axum::body::Body::from_stream(body.map(Ok::<_, Infallible>)),
            )
                .into_response(),
        }
    } else {
        match door.whole(events).await {
            Ok(body) => {
                ctx.first_token();
                json_answer::<D, _>(&body)
            }
            Err(e) => Refusal::<D>::from(e).into_response(),
        }
    };
    with_rate_headers(resp, &rate)
}

/// `body` as a JSON answer. Encoded into a `Vec`: axum's `Json` writes through a
/// `BytesMut` writer that takes each of serde's many small writes on its own (~5% of a
/// proxied request's instructions, counted with callgrind).
fn json_answer<D: Door, T: serde::Serialize>(body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => Refusal::<D>::from(Error::internal(format!("could not encode the answer: {e}")))
            .into_response(),
    }
}

/// Prompt tokens the request's images take on its model (token counting endpoints);
/// an unusable image is a 400 naming its part as the caller sent it.
pub(crate) async fn image_tokens(route: &Route, req: &ChatRequest) -> Result<u32, Error> {
    route
        .backend
        .count_image_tokens(&req.messages)
        .await
        .map_err(|e| req.origins.rename(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use parlance_core::ParamPath;

    #[test]
    fn a_door_without_a_param_field_names_the_part_in_its_own_style() {
        let at = ParamPath::field("tools")
            .at(1)
            .then("function")
            .then("name");
        let e = Error::invalid_param(at.clone(), format!("Invalid '{at}': empty."));
        assert_eq!(
            message_naming_param(&e, true),
            "Invalid 'tools.1.function.name': empty."
        );
        assert_eq!(
            message_naming_param(&e, false),
            "Invalid 'tools[1].function.name': empty."
        );
        let e = Error::invalid_param(ParamPath::field("contents").at(0), "no parts");
        assert_eq!(message_naming_param(&e, false), "contents[0]: no parts");
        assert_eq!(message_naming_param(&Error::invalid("bad"), true), "bad");
    }

    #[test]
    fn a_backend_param_is_renamed_by_its_leading_field() {
        let names = &[
            ("max_tokens", "generationConfig.maxOutputTokens"),
            ("messages", "input"),
        ];
        let e = rename_param(Error::invalid_param("max_tokens", "too many"), names);
        assert_eq!(e.param.as_deref(), Some("generationConfig.maxOutputTokens"));
        let e = rename_param(Error::invalid_param("messages[2].content", "x"), names);
        assert_eq!(e.param.as_deref(), Some("input[2].content"));
        let e = rename_param(Error::invalid_param("max_tokens_x", "x"), names);
        assert_eq!(e.param.as_deref(), Some("max_tokens_x"));
    }
}
