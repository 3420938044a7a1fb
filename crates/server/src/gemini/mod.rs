//! The Gemini front door: `models/{model}:generateContent`, `:streamGenerateContent`
//! (`?alt=sse`, or the default JSON array), `:countTokens`, and the model list, under
//! `/v1beta` and `/v1`, with Gemini-shaped errors.

mod embed;
mod fields;
mod request;

use crate::auth::Principal;
use crate::body::read_json;
use crate::door::{Door, Frames, Refusal};
use crate::gate::WireFormat;
use crate::metering::counted;
use crate::reqlog::RequestCtx;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::{Stream, StreamExt};
use parlance_core::collect::collect;
use parlance_core::ir::{FinishReason, StreamEvent, ToolCallDelta, Usage};
use parlance_core::{Error, ErrorKind, EventStream, ModelInfo};
use parlance_protocol::gemini as wire;
use parlance_protocol::json::Fields;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

fn status_name(status: u16) -> &'static str {
    match status {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// This door's error body for a status and message (see `gate::WireFormat`).
pub(crate) fn error_body(status: u16, message: &str) -> Value {
    json!({"error": {"code": status, "message": message, "status": status_name(status)}})
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop | FinishReason::ToolCalls => "STOP",
        FinishReason::Length => "MAX_TOKENS",
        FinishReason::ContentFilter => "SAFETY",
    }
}

fn usage(u: &Usage) -> Value {
    json!({"promptTokenCount": u.prompt_tokens, "candidatesTokenCount": u.completion_tokens,
           "totalTokenCount": u.total(), "cachedContentTokenCount": u.cached_tokens})
}

fn call_part(name: &str, args: &str, id: &str) -> Value {
    let args: Value = serde_json::from_str(args)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    json!({"functionCall": {"id": id, "name": name, "args": args}})
}

fn model_object(m: &ModelInfo) -> Value {
    json!({"name": format!("models/{}", m.id), "version": "1", "displayName": m.id,
           "inputTokenLimit": m.context_length, "outputTokenLimit": m.max_output_tokens.unwrap_or(m.context_length),
           "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"]})
}

pub(crate) async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"models": state.router.models().iter().map(model_object).collect::<Vec<_>>()}))
}

/// `GET models/{model}`.
pub(crate) async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Refusal<Generate>> {
    let id = name.trim_start_matches("models/");
    Ok(Json(model_object(&state.router.resolve(id)?.info)))
}

/// `POST models/{model}:{action}`.
pub(crate) async fn action(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response, Refusal<Generate>> {
    let name = name.trim_start_matches("models/");
    let Some((model, verb)) = name.rsplit_once(':') else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("models/{name}: expected models/MODEL:generateContent"),
        )
        .into());
    };
    let raw: serde_json::Value = read_json(body, state.body_limit).await?;
    if let "embedContent" | "batchEmbedContents" = verb {
        ctx.set_model(model);
        return Ok(embed::embed(&state, &ctx, &principal, model, verb, raw).await);
    }
    let wire_req: wire::GenerateContentRequest = serde_json::from_value(fields::normalize(raw)?)
        .map_err(|e| Error::invalid(format!("Invalid JSON payload received. {e}")))?;
    ctx.set_model(model);
    let stream = match verb {
        "generateContent" => false,
        "streamGenerateContent" => true,
        "countTokens" => return count_tokens(&state, &ctx, &principal, model, wire_req).await,
        other => {
            return Err(Error::new(ErrorKind::NotFound, format!("unknown method {other:?}")).into())
        }
    };
    let req = request::to_ir(model, wire_req, stream)?;
    let door = Generate {
        version: model.to_string(),
        n: req.n,
        sse: query.get("alt").map(String::as_str) == Some("sse"),
    };
    Ok(crate::door::chat(&state, &ctx, &principal, door, req).await)
}

/// Gemini generateContent's wire format.
pub(crate) struct Generate {
    /// The model as the caller named it (`modelVersion`).
    version: String,
    n: u32,
    /// `?alt=sse`: server-sent events; else one JSON array streamed as it grows.
    sse: bool,
}

impl Door for Generate {
    const NAME: &'static str = "gemini";
    type Whole = Value;

    const WIRE: WireFormat = WireFormat::Gemini;

    fn output_cap_error(&self, asked: u32, limit: u32, _model: &str) -> Error {
        Error::invalid_param(
            "generationConfig.maxOutputTokens",
            format!(
                "* generationConfig.maxOutputTokens: {asked} is more than this model's {limit}"
            ),
        )
    }

    async fn whole(self, events: EventStream) -> Result<Value, Error> {
        let done = collect(events, self.n).await?;
        let candidates: Vec<Value> = done
            .choices
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let mut parts = Vec::new();
                if !c.reasoning.is_empty() {
                    parts.push(json!({"text": c.reasoning, "thought": true}));
                }
                if !c.content.is_empty() {
                    parts.push(json!({"text": c.content}));
                }
                parts.extend(c.tool_calls.iter().map(|t| call_part(&t.name, &t.arguments, &t.id)));
                json!({"content": {"role": "model", "parts": parts}, "index": i,
                       "finishReason": finish_reason(c.finish_reason.unwrap_or(FinishReason::Stop))})
            })
            .collect();
        Ok(
            json!({"candidates": candidates, "usageMetadata": usage(&done.usage), "modelVersion": self.version}),
        )
    }

    fn stream(self, events: EventStream) -> Frames {
        let chunks = chunks(events, self.version);
        if self.sse {
            let body = chunks.map(|v| format!("data: {v}\r\n\r\n"));
            return Frames::Raw("text/event-stream", Box::pin(body));
        }
        // The default: one JSON array, its elements streamed as they come.
        let mut first = true;
        let body = chunks
            .map(move |v| {
                let sep = if first { "[" } else { ",\r\n" };
                first = false;
                format!("{sep}{v}")
            })
            .chain(futures::stream::once(async { "]".to_string() }))
            .scan(false, |any, s| {
                let out = if s == "]" && !*any {
                    "[]".to_string()
                } else {
                    s
                };
                *any = true;
                futures::future::ready(Some(out))
            });
        Frames::Raw("application/json", Box::pin(body))
    }
}

/// Response objects as the stream goes: text as it comes, function calls whole (Gemini
/// sends them whole), each choice's finishReason with the usage on the last object; an
/// error ends the stream as an error object.
fn chunks(mut events: EventStream, version: String) -> impl Stream<Item = Value> {
    async_stream::stream! {
        let mut calls: HashMap<u32, Vec<ToolCallDelta>> = HashMap::new();
        let mut finished: Vec<(u32, FinishReason)> = Vec::new();
        while let Some(ev) = events.next().await {
            match ev {
                Ok(StreamEvent::Delta { index, delta }) => {
                    let mut parts = Vec::new();
                    if !delta.reasoning.is_empty() {
                        parts.push(json!({"text": delta.reasoning, "thought": true}));
                    }
                    if !delta.content.is_empty() {
                        parts.push(json!({"text": delta.content}));
                    }
                    let pending = calls.entry(index).or_default();
                    for c in delta.tool_calls {
                        match pending.iter_mut().find(|p| p.index == c.index) {
                            Some(p) => p.arguments.push_str(&c.arguments),
                            None => pending.push(c),
                        }
                    }
                    if !parts.is_empty() {
                        yield json!({"candidates": [{"content": {"role": "model", "parts": parts}, "index": index}], "modelVersion": version});
                    }
                }
                Ok(StreamEvent::Finish { index, reason, .. }) => finished.push((index, reason)),
                Ok(StreamEvent::Usage(u)) => {
                    let last = finished.len().saturating_sub(1);
                    for (k, (index, reason)) in finished.drain(..).enumerate() {
                        let parts: Vec<Value> = calls.remove(&index).unwrap_or_default().iter()
                            .map(|c| call_part(c.name.as_deref().unwrap_or_default(), &c.arguments, c.id.as_deref().unwrap_or_default()))
                            .collect();
                        let mut obj = json!({"candidates": [{"content": {"role": "model", "parts": parts}, "index": index,
                            "finishReason": finish_reason(reason)}], "modelVersion": version});
                        if k == last {
                            obj.set("usageMetadata", usage(&u));
                        }
                        yield obj;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    yield Generate::error_body(&e);
                    return;
                }
            }
        }
    }
}

async fn count_tokens(
    state: &AppState,
    ctx: &Arc<RequestCtx>,
    principal: &Principal,
    model: &str,
    req: wire::GenerateContentRequest,
) -> Result<Response, Refusal<Generate>> {
    // countTokens may also wrap the request as `generateContentRequest`.
    let req = match req.extra.get("generateContentRequest") {
        Some(inner) => serde_json::from_value(inner.clone())
            .map_err(|e| Error::invalid(format!("generateContentRequest: {e}")))?,
        None => req,
    };
    let ir = request::to_ir(model, req, false)?;
    let route = state.router.resolve(model)?;
    let mut texts: Vec<String> = ir.messages.iter().map(|m| m.joined_text()).collect();
    texts.extend(ir.tools.iter().map(|t| t.parameters.to_string()));
    let work = async {
        let texts = route.backend.count_tokens(&texts).await?;
        let images = crate::door::image_tokens(&route, &ir).await?;
        Ok(texts.iter().sum::<u32>() + images)
    };
    let count = counted(state, ctx, principal, &route.info, Generate::NAME, work).await?;
    Ok(Json(json!({"totalTokens": count})).into_response())
}
