//! What the Responses and legacy-completions doors share around the backend call:
//! the output cap check, the gate and meter, and starting the backend.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::metering::{admit, record_refusal, watch, with_rate_headers};
use crate::reqlog::RequestCtx;
use crate::AppState;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use parlance_core::ir::ChatRequest;
use parlance_core::router::Route;
use parlance_core::{Error, EventStream};
use parlance_tenancy::limits::RateHeaders;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// A backend that has started answering, its events metered and observed.
pub struct Started {
    pub events: EventStream,
    pub rate: RateHeaders,
}

/// A 400 naming `param` when the request asks for more output than the model allows.
pub fn check_output_cap(route: &Route, req: &ChatRequest, param: &str) -> Result<(), Error> {
    match (req.max_tokens, route.info.max_output_tokens) {
        (Some(asked), Some(limit)) if asked > limit => Err(Error::invalid_param(
            param,
            format!("'{param}' is too large: {asked}. This model supports at most {limit} output tokens."),
        )
        .with_code("max_tokens_too_large")),
        _ => Ok(()),
    }
}

/// Backends name parameters as chat completions does (`messages`, `max_tokens`);
/// `names` maps those to this door's own (`input`, `max_output_tokens`).
pub fn rename_param(mut e: Error, names: &[(&str, &str)]) -> Error {
    if let Some(p) = e.param.as_deref() {
        for (from, to) in names {
            if let Some(rest) = p.strip_prefix(from) {
                if rest.is_empty() || rest.starts_with(['.', '[']) {
                    e.param = Some(format!("{to}{rest}"));
                    break;
                }
            }
        }
    }
    e
}

/// Gate, meter and start; `Err` is the refusal, already rendered and metered.
pub async fn start(
    state: &AppState,
    ctx: &Arc<RequestCtx>,
    principal: &Principal,
    route: &Route,
    mut req: ChatRequest,
    front_door: &str,
    names: &[(&str, &str)],
) -> Result<Started, Response> {
    let model = req.model.clone();
    let (meter, rate) = admit(state, ctx, principal, &route.info, &mut req, front_door).await?;
    let origins = req.origins.clone();
    match route.backend.chat(req).await {
        Ok(events) => Ok(Started {
            events: watch(state, meter, events, &model, ctx),
            rate,
        }),
        Err(e) => {
            // Parts first, by where they came from; then this door's parameter names.
            let e = rename_param(origins.rename(e), names);
            record_refusal(meter, &e).await;
            Err(with_rate_headers(ApiError(e).into_response(), &rate))
        }
    }
}

/// How often an SSE comment keeps a connection alive while a prompt is prefilled.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// A streamed answer: its events, keep-alive comments while it is quiet, and the
/// caller's rate headers.
pub fn sse_response(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
    rate: &RateHeaders,
) -> Response {
    let resp = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response();
    with_rate_headers(resp, rate)
}

/// Prompt tokens the request's images take on its model (token counting endpoints);
/// an unusable image is a 400 naming its part as the caller sent it.
pub async fn image_tokens(route: &Route, req: &ChatRequest) -> Result<u32, Error> {
    route
        .backend
        .count_image_tokens(&req.messages)
        .await
        .map_err(|e| req.origins.rename(e))
}
