//! The Anthropic front door: `POST /v1/messages` (whole and streamed),
//! `POST /v1/messages/count_tokens`, Anthropic-shaped errors and model lists.

mod request;
mod response;

use crate::auth::Principal;
use crate::body::read_json;
use crate::door::{Door, Frames, Refusal};
use crate::gate::WireFormat;
use crate::metering::counted;
use crate::reqlog::RequestCtx;
use crate::sse::SseEvent;
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use parlance_core::collect::collect;
use parlance_core::ir::Progress;
use parlance_core::{Error, EventStream};
use parlance_protocol::anthropic as wire;
use parlance_protocol::json::Fields;
use parlance_tenancy::store::rfc3339;
use serde_json::{json, Value};
use std::sync::Arc;

/// Anthropic's `error.type` for an HTTP status.
fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// This door's error body for a status and message (see `gate::WireFormat`).
pub(crate) fn error_body(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

pub(crate) async fn messages(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<Response, Refusal<Messages>> {
    let wire_req: wire::MessagesRequest = read_json(body, state.body_limit).await?;
    ctx.set_model(&wire_req.model);
    let req = request::to_ir(wire_req)?;
    let door = Messages {
        id: crate::ids::random("msg_"),
        model: req.model.clone(),
        progress: req.context.progress.clone(),
    };
    Ok(crate::door::chat(&state, &ctx, &principal, door, req).await)
}

/// Anthropic Messages' wire format.
pub(crate) struct Messages {
    id: String,
    model: String,
    progress: Progress,
}

impl Door for Messages {
    const NAME: &'static str = "anthropic";
    type Whole = Value;

    const WIRE: WireFormat = WireFormat::Anthropic;

    fn output_cap_error(&self, asked: u32, limit: u32, model: &str) -> Error {
        Error::invalid_param(
            "max_tokens",
            format!("max_tokens: {asked} > {limit}, which is the maximum allowed number of output tokens for {model}"),
        )
    }

    async fn whole(self, events: EventStream) -> Result<Value, Error> {
        let done = collect(events, 1).await?;
        Ok(response::message(&self.id, &self.model, done))
    }

    fn stream(self, events: EventStream) -> Frames {
        // A local model has counted the prompt by now, as Anthropic's message_start says it.
        let input_tokens = self.progress.usage().map_or(0, |u| u.prompt_tokens);
        let sse = response::events(self.id, self.model, input_tokens, events, Self::error_body);
        Frames::Sse(Box::pin(
            sse.map(|(name, data)| SseEvent::named(name, data.to_string())),
        ))
    }
}

/// `POST /v1/messages/count_tokens`: the tokens of the request's text (system, messages,
/// tool schemas) as the model counts plain text; the chat template's own tokens are
/// not included.
pub(crate) async fn count_tokens(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<Response, Refusal<Messages>> {
    let mut v: Value = read_json(body, state.body_limit).await?;
    // count_tokens takes no max_tokens; the request type wants one.
    if v.get("max_tokens").is_none() {
        v.set("max_tokens", json!(1));
    }
    let wire_req: wire::MessagesRequest =
        serde_json::from_value(v).map_err(|e| Error::invalid(format!("Invalid request: {e}")))?;
    let req = request::to_ir(wire_req)?;
    ctx.set_model(&req.model);
    let route = state.router.resolve(&req.model)?;
    let mut texts: Vec<String> = req.messages.iter().map(|m| m.joined_text()).collect();
    texts.extend(req.tools.iter().map(|t| t.parameters.to_string()));
    texts.extend(
        req.messages
            .iter()
            .flat_map(|m| m.tool_calls.iter().map(|c| c.arguments.clone())),
    );
    let work = async {
        let texts = route.backend.count_tokens(&texts).await?;
        let images = crate::door::image_tokens(&route, &req).await?;
        Ok(texts.iter().sum::<u32>() + images)
    };
    let count = counted(&state, &ctx, &principal, &route.info, Messages::NAME, work).await?;
    Ok((StatusCode::OK, Json(json!({"input_tokens": count}))).into_response())
}

/// `GET /v1/models` for callers that send `anthropic-version`.
pub(crate) fn models(state: &AppState) -> Value {
    let data: Vec<Value> = state
        .router
        .models()
        .iter()
        .map(|m| json!({"type": "model", "id": m.id, "display_name": m.id, "created_at": rfc3339(m.created)}))
        .collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": data.first().map(|m| m["id"].clone()),
        "last_id": data.last().map(|m| m["id"].clone()),
    })
}
