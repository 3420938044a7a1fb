//! The OpenAI front door: chat completions and the model list.

mod functions;
pub(crate) mod request;
mod response;

pub use request::to_ir;

use crate::auth::Principal;
use crate::body::read_json;
use crate::door::{Door, Frames};
use crate::error::ApiError;
use crate::gate::WireFormat;
use crate::metering::counted;
use crate::reqlog::RequestCtx;
use crate::sse::SseEvent;
use crate::AppState;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use futures::stream::BoxStream;
use futures::StreamExt;
use parlance_core::collect::collect;
use parlance_core::Code;
use parlance_core::{Error, EventStream, ModelInfo};
use parlance_protocol::openai as wire;
use response::{ResponseMeta, SsePayload, StreamOptions};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Extension(principal): Extension<Principal>,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    headers: axum::http::HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| Error::invalid(format!("Invalid query string: {}", e.body_text())))?;
    let mut wire_req: wire::ChatCompletionRequest = read_json(body, state.body_limit).await?;
    // GigaChat's base URL is `/api/v1`: its functions API answers with object arguments.
    let functions = functions::into_tools(&mut wire_req)?.then(|| {
        if uri.path().starts_with("/api/") {
            functions::Arguments::Object
        } else {
            functions::Arguments::String
        }
    });
    ctx.set_model(&wire_req.model);
    let include_usage = wire_req
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let update_interval = wire_req
        .update_interval
        .filter(|&s| s > 0.0)
        .map(Duration::from_secs_f64);
    let max_param = if wire_req.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let mut req = match to_ir(wire_req) {
        Err(e) if functions.is_some() => return Err(functions::rename(e).into()),
        other => other?,
    };
    req.debug = debug_flag(&query);
    // GigaChat's session header: the turns of one conversation stay on one deployment.
    req.context.session = headers
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string);

    let door = ChatDoor {
        meta: ResponseMeta {
            id: crate::ids::random("chatcmpl-").into(),
            created: now_secs(),
            model: req.model.as_str().into(),
            fingerprint: Arc::clone(&state.fingerprint),
        },
        opts: StreamOptions {
            n: req.n,
            include_usage,
            want_logprobs: req.logprobs.is_some(),
            update_interval,
        },
        functions,
        max_param,
    };
    Ok(crate::door::chat(&state, &ctx, &principal, door, req).await)
}

/// Chat completions' wire format.
struct ChatDoor {
    meta: ResponseMeta,
    opts: StreamOptions,
    /// GigaChat's functions API: answers carry `function_call`.
    functions: Option<functions::Arguments>,
    /// `max_tokens` or `max_completion_tokens`, whichever the caller sent.
    max_param: &'static str,
}

impl Door for ChatDoor {
    const NAME: &'static str = "openai";
    type Whole = wire::ChatCompletion;

    const WIRE: WireFormat = WireFormat::OpenAi;

    fn output_cap_error(&self, asked: u32, limit: u32, _model: &str) -> Error {
        let p = self.max_param;
        Error::invalid_param(
            p,
            format!("{p} is too large: {asked}. This model supports at most {limit} completion tokens, whereas you provided {asked}."),
        )
        .with_code(Code::MaxTokensTooLarge)
    }

    async fn whole(self, events: EventStream) -> Result<wire::ChatCompletion, Error> {
        let done = collect(events, self.opts.n).await?;
        let body = response::completion(&self.meta, done, self.opts.want_logprobs);
        Ok(match self.functions {
            Some(style) => functions::whole(body, style),
            None => body,
        })
    }

    fn stream(self, events: EventStream) -> Frames {
        let chunks = response::chunks(self.meta, self.opts, events);
        let chunks: BoxStream<'static, SsePayload> = match self.functions {
            Some(style) => Box::pin(functions::streamed(chunks, style)),
            None => Box::pin(chunks),
        };
        let mut encoder = response::ChunkEncoder::default();
        Frames::Sse(Box::pin(chunks.map(move |payload| {
            let data = match payload {
                SsePayload::Chunk(c) => encoder.encode(&c),
                SsePayload::Error(e) => serde_json::to_string(&e),
                SsePayload::Done => Ok("[DONE]".to_string()),
            };
            SseEvent::data(data.unwrap_or_else(|e| {
                json!({"error": {"message": format!("could not encode a chunk: {e}"), "type": "server_error", "param": null, "code": null}}).to_string()
            }))
        })))
    }
}

fn model_object(m: &ModelInfo) -> wire::Model {
    let mut extra = Map::new();
    extra.insert("type".into(), json!(m.kind));
    extra.insert("context_length".into(), json!(m.context_length));
    if let Some(max) = m.max_output_tokens {
        extra.insert("max_output_tokens".into(), json!(max));
    }
    if let Some(d) = m.dimensions {
        extra.insert("dimensions".into(), json!(d));
    }
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

pub async fn list_models(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Response {
    // The Anthropic SDK lists models at the same path, with its version header.
    if headers.contains_key("anthropic-version") {
        return Json(crate::anthropic::models(&state)).into_response();
    }
    // Google's SDKs list models at the same path with their key header.
    if headers.contains_key("x-goog-api-key") {
        return crate::gemini::list_models(State(state))
            .await
            .into_response();
    }
    Json(wire::ModelList {
        object: "list".into(),
        data: state.router.models().iter().map(model_object).collect(),
    })
    .into_response()
}

pub async fn get_model(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| {
        Error::invalid_param(
            "model",
            format!("Invalid model id in the URL: {}", e.body_text()),
        )
    })?;
    if headers.contains_key("x-goog-api-key") {
        return Ok(crate::gemini::get_model(State(state), Path(id))
            .await
            .into_response());
    }
    let route = state.router.resolve(&id)?;
    Ok(Json(model_object(&route.info)).into_response())
}

/// GigaChat's `POST /tokens/count`: `{model, input: [strings]}` -> one count per string.
pub async fn count_tokens(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<Json<Vec<wire::TokensCount>>, ApiError> {
    let req: wire::TokensCountRequest = read_json(body, state.body_limit).await?;
    ctx.set_model(&req.model);
    let route = state.router.resolve(&req.model)?;
    let counts = counted(
        &state,
        &ctx,
        &principal,
        &route.info,
        ChatDoor::NAME,
        route.backend.count_tokens(&req.input),
    )
    .await?;
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

/// An unknown path (also for the console's and accounts' own lookups).
pub async fn not_found() -> ApiError {
    ApiError(crate::gate::unknown_url())
}

#[derive(serde::Deserialize)]
pub struct TokenizeRequest {
    /// Which model's tokenizer (default: the first model served).
    #[serde(default)]
    model: Option<String>,
    content: String,
    #[serde(default = "yes")]
    add_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

fn yes() -> bool {
    true
}

fn route_for(
    state: &AppState,
    model: Option<&str>,
) -> Result<Arc<parlance_core::router::Route>, Error> {
    match model {
        Some(m) => state.router.resolve(m),
        None => state
            .router
            .routes()
            .next()
            .ok_or_else(|| Error::model_not_found("(none)")),
    }
}

/// llama-server's `POST /tokenize`: `{content, add_special?, with_pieces?, model?}` -> `{tokens}`.
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: TokenizeRequest = read_json(body, state.body_limit).await?;
    let route = route_for(&state, req.model.as_deref())?;
    ctx.set_model(&route.info.id);
    let work = async {
        let tokens = route
            .backend
            .tokenize(&req.content, req.add_special)
            .await?;
        if !req.with_pieces {
            return Ok(json!({"tokens": tokens}));
        }
        let mut pieces = Vec::with_capacity(tokens.len());
        for &t in &tokens {
            let piece = route.backend.detokenize(&[t]).await?;
            pieces.push(json!({"id": t, "piece": piece}));
        }
        Ok(json!({"tokens": pieces}))
    };
    let answer = counted(&state, &ctx, &principal, &route.info, ChatDoor::NAME, work).await?;
    Ok(Json(answer))
}

#[derive(serde::Deserialize)]
pub struct DetokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    tokens: Vec<u32>,
}

/// llama-server's `POST /detokenize`: `{tokens, model?}` -> `{content}`.
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: DetokenizeRequest = read_json(body, state.body_limit).await?;
    let route = route_for(&state, req.model.as_deref())?;
    ctx.set_model(&route.info.id);
    let work = route.backend.detokenize(&req.tokens);
    let content = counted(&state, &ctx, &principal, &route.info, ChatDoor::NAME, work).await?;
    Ok(Json(json!({"content": content})))
}
