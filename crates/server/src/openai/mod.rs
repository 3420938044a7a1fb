//! The OpenAI front door: chat completions and the model list.

mod request;
mod response;

pub use request::to_ir;

use crate::body::{parse_json, read_limited};
use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use parlance_core::collect::collect;
use parlance_core::{Error, ModelInfo};
use parlance_protocol::openai as wire;
use response::{ResponseMeta, SsePayload, StreamOptions};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often an SSE comment keeps a connection alive while a prompt is prefilled.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// NEXTgpt's `?debug=true` (its examples send Python's `True`/`False`).
fn debug_flag(query: &HashMap<String, String>) -> bool {
    query
        .get("debug")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | ""))
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_limited(body, state.body_limit).await?;
    let wire_req: wire::ChatCompletionRequest = parse_json(&bytes)?;
    let include_usage = wire_req
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let update_interval = wire_req
        .update_interval
        .filter(|&s| s > 0.0)
        .map(Duration::from_secs_f64);
    let mut req = to_ir(wire_req)?;
    req.debug = debug_flag(&query);

    let route = state.router.resolve(&req.model)?;
    let meta = ResponseMeta {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: now_secs(),
        model: req.model.clone(),
        fingerprint: state.fingerprint.clone(),
    };
    let n = req.n;
    let stream = req.stream;
    let want_logprobs = req.logprobs.is_some();
    let events = route.backend.chat(req).await?;

    if !stream {
        let done = collect(events, n).await?;
        return Ok(Json(response::completion(&meta, done, want_logprobs)).into_response());
    }
    let opts = StreamOptions {
        n,
        include_usage,
        want_logprobs,
        update_interval,
    };
    let sse = response::chunks(meta, opts, events).map(|payload| {
        let data = match payload {
            SsePayload::Chunk(c) => serde_json::to_string(&c),
            SsePayload::Error(e) => serde_json::to_string(&e),
            SsePayload::Done => Ok("[DONE]".to_string()),
        };
        Ok::<_, Infallible>(Event::default().data(data.unwrap_or_else(|e| {
            json!({"error": {"message": format!("could not encode a chunk: {e}"), "type": "server_error", "param": null, "code": null}}).to_string()
        })))
    });
    Ok(Sse::new(sse)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}

fn model_object(m: &ModelInfo) -> wire::Model {
    let mut extra = Map::new();
    extra.insert("type".into(), json!(m.kind));
    extra.insert("context_length".into(), json!(m.context_length));
    extra.insert(
        "capabilities".into(),
        serde_json::to_value(&m.capabilities).unwrap_or(Value::Null),
    );
    wire::Model {
        id: m.id.clone(),
        object: "model".into(),
        created: m.created,
        owned_by: m.owned_by.clone(),
        extra,
    }
}

pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<wire::ModelList> {
    Json(wire::ModelList {
        object: "list".into(),
        data: state.router.models().map(model_object).collect(),
    })
}

pub async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<wire::Model>, ApiError> {
    let route = state.router.resolve(&id)?;
    Ok(Json(model_object(&route.info)))
}

/// GigaChat's `POST /tokens/count`: `{model, input: [strings]}` -> one count per string.
pub async fn count_tokens(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<Vec<wire::TokensCount>>, ApiError> {
    let bytes = read_limited(body, state.body_limit).await?;
    let req: wire::TokensCountRequest = parse_json(&bytes)?;
    let route = state.router.resolve(&req.model)?;
    let counts = route.backend.count_tokens(&req.input).await?;
    Ok(Json(
        req.input
            .iter()
            .zip(counts)
            .map(|(text, tokens)| wire::TokensCount {
                object: "tokens".into(),
                tokens,
                characters: text.chars().count() as u32,
            })
            .collect(),
    ))
}

pub async fn not_found() -> ApiError {
    ApiError(
        Error::new(
            parlance_core::ErrorKind::NotFound,
            "Unknown endpoint. See the README for the routes this server serves.",
        )
        .with_code("unknown_url"),
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError(Error::new(
        parlance_core::ErrorKind::MethodNotAllowed,
        "This endpoint does not accept that HTTP method.",
    ))
}
