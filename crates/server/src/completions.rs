//! OpenAI's legacy Completions door (`POST /v1/completions`), for local models: the
//! prompt is continued as it is, with no chat template. Several prompts are several
//! backend requests (each metered as its own), their choices numbered prompt by
//! prompt as OpenAI numbers them.

use crate::auth::Principal;
use crate::body::read_json;
use crate::door::{Door, Frames, Started};
use crate::error::ApiError;
use crate::gate::WireFormat;
use crate::reqlog::RequestCtx;
use crate::sse::SseEvent;
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use futures::StreamExt;
use parlance_core::ir::{ChatRequest, FinishReason, StreamEvent, TokenLogprob, Usage};
use parlance_core::Code;
use parlance_core::{Error, EventStream};
use parlance_protocol::completions as wire;
use parlance_protocol::openai as chat_wire;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// OpenAI's default when `max_tokens` is unsaid.
const DEFAULT_MAX_TOKENS: u32 = 16;
const MAX_PROMPTS: usize = 16;
const MAX_LOGPROBS: u32 = 5;

fn too_many(n: usize) -> Error {
    Error::invalid_param(
        "prompt",
        format!("'prompt' takes at most {MAX_PROMPTS} prompts, got {n}."),
    )
}

/// Token ids as text; a bad id is named as this door names it (`prompt`).
async fn detokenize(route: &parlance_core::router::Route, ids: &[u32]) -> Result<String, Error> {
    route
        .backend
        .detokenize(ids)
        .await
        .map_err(|e| crate::door::rename_param(e, &[("tokens", "prompt")]))
}

/// The prompts as text; token-id prompts are detokenized by the model.
async fn prompts(
    route: &parlance_core::router::Route,
    p: Option<Value>,
) -> Result<Vec<String>, Error> {
    let bad = || {
        Error::invalid_param(
            "prompt",
            "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists.",
        )
    };
    let ids = |v: &[Value]| -> Option<Vec<u32>> {
        v.iter()
            .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect()
    };
    let out = match p {
        None | Some(Value::Null) => vec![String::new()],
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) if items.is_empty() => return Err(bad()),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![detokenize(route, &ids(&items).ok_or_else(bad)?).await?]
        }
        Some(Value::Array(items)) => {
            // Counted before any is detokenized.
            if items.len() > MAX_PROMPTS {
                return Err(too_many(items.len()));
            }
            let mut out = Vec::new();
            for item in items {
                let toks = item.as_array().and_then(|a| ids(a)).ok_or_else(bad)?;
                out.push(detokenize(route, &toks).await?);
            }
            out
        }
        Some(_) => return Err(bad()),
    };
    if out.len() > MAX_PROMPTS {
        return Err(too_many(out.len()));
    }
    Ok(out)
}

/// Validated once through the chat door's checks (the parameters share their names),
/// then made a raw-prompt request.
fn to_ir(r: &wire::CompletionRequest) -> Result<ChatRequest, Error> {
    if r.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(Error::invalid_param(
            "suffix",
            "'suffix' (fill-in-the-middle) is not supported.",
        )
        .with_code(Code::Unsupported));
    }
    if let Some(k) = r.logprobs.filter(|&k| k > MAX_LOGPROBS) {
        return Err(Error::invalid_param(
            "logprobs",
            format!("'logprobs' must be between 0 and {MAX_LOGPROBS}, got {k}."),
        ));
    }
    if r.echo == Some(true) && r.logprobs.is_some() {
        return Err(Error::invalid_param(
            "echo",
            "'echo' with 'logprobs' (the prompt's own logprobs) is not supported.",
        )
        .with_code(Code::Unsupported));
    }
    let n = r.n.unwrap_or(1);
    if let Some(b) = r.best_of.filter(|&b| b != n && b != 1) {
        return Err(Error::invalid_param(
            "best_of",
            format!("'best_of' other than 'n' is not supported, got {b}."),
        )
        .with_code(Code::Unsupported));
    }
    let chat = chat_wire::ChatCompletionRequest {
        model: r.model.clone(),
        messages: vec![chat_wire::ChatMessage {
            role: "user".into(),
            content: Some(chat_wire::MessageContent::Text(String::new())),
            ..Default::default()
        }],
        stream: r.stream,
        temperature: r.temperature,
        top_p: r.top_p,
        n: r.n,
        max_tokens: Some(r.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
        presence_penalty: r.presence_penalty,
        frequency_penalty: r.frequency_penalty,
        logit_bias: r.logit_bias.clone(),
        seed: r.seed,
        stop: r.stop.clone(),
        user: r.user.clone(),
        extra: r.extra.clone(),
        ..Default::default()
    };
    let mut req = crate::openai::to_ir(chat)?;
    req.messages.clear();
    req.logprobs = r.logprobs;
    Ok(req)
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
}

fn logprobs_json(lp: &[TokenLogprob], offset: &mut usize) -> Value {
    let mut offsets = Vec::with_capacity(lp.len());
    for t in lp {
        offsets.push(*offset);
        *offset += t.token.chars().count();
    }
    json!({
        "tokens": lp.iter().map(|t| &t.token).collect::<Vec<_>>(),
        "token_logprobs": lp.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": lp.iter().map(|t| t.top.iter().map(|a| (a.token.clone(), json!(a.logprob))).collect::<Map<_, _>>()).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

fn usage_json(u: &Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total()})
}

fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content_filter",
        _ => "stop",
    }
}

/// All prompts' events as one stream, choice indexes renumbered `prompt * n + choice`,
/// and one usage summed over them at the end.
fn merged(streams: Vec<EventStream>, n: u32) -> EventStream {
    let total = streams.len();
    let tagged = streams
        .into_iter()
        .enumerate()
        .map(|(p, s)| s.map(move |ev| (p as u32, ev)));
    let mut all = futures::stream::select_all(tagged);
    Box::pin(async_stream::stream! {
        let mut usage = Usage::default();
        let mut done = 0;
        while let Some((p, ev)) = all.next().await {
            match ev {
                Ok(StreamEvent::Delta { index, delta }) => yield Ok(StreamEvent::Delta { index: p * n + index, delta }),
                Ok(StreamEvent::Finish { index, reason, stop_sequence }) => yield Ok(StreamEvent::Finish { index: p * n + index, reason, stop_sequence }),
                Ok(StreamEvent::Usage(u)) => {
                    usage.prompt_tokens += u.prompt_tokens;
                    usage.completion_tokens += u.completion_tokens;
                    usage.cached_tokens += u.cached_tokens;
                    done += 1;
                    if done == total {
                        yield Ok(StreamEvent::Usage(usage));
                    }
                }
                Ok(StreamEvent::Debug(_)) => {}
                Err(e) => {
                    yield Err(e);
                    return;
                }
            }
        }
    })
}

pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<Response, ApiError> {
    let wire_req: wire::CompletionRequest = read_json(body, state.body_limit).await?;
    ctx.set_model(&wire_req.model);
    let base = to_ir(&wire_req)?;
    let route = state.router.resolve(&base.model)?;
    let door = Completions {
        meta: Meta {
            id: crate::ids::random("cmpl-"),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: base.model.clone(),
            fingerprint: state.fingerprint.to_string(),
        },
        n: base.n,
        prompts: Vec::new(),
        echo: wire_req.echo == Some(true),
        include_usage: wire_req
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
        want_logprobs: base.logprobs.is_some(),
    };
    if let (Some(asked), Some(limit)) = (base.max_tokens, route.info.max_output_tokens) {
        if asked > limit {
            return Err(door.output_cap_error(asked, limit, &base.model).into());
        }
    }
    let prompts = prompts(&route, wire_req.prompt.clone()).await?;
    let stream = base.stream;
    let mut streams = Vec::with_capacity(prompts.len());
    let mut rate = Default::default();
    for p in &prompts {
        let mut req = base.clone();
        req.raw_prompt = Some(p.clone());
        req.context = Default::default();
        match crate::door::start(&state, &ctx, &principal, &door, &route, req).await {
            Ok(Started { events, rate: r }) => {
                streams.push(events);
                rate = r;
            }
            Err(refused) => return Ok(refused),
        }
    }
    let events = merged(streams, door.n);
    let door = Completions { prompts, ..door };
    let started = Started { events, rate };
    Ok(crate::door::answer(&ctx, door, started, stream).await)
}

/// The legacy completions wire format.
struct Completions {
    meta: Meta,
    n: u32,
    prompts: Vec<String>,
    /// `echo`: each choice's text starts with its prompt.
    echo: bool,
    include_usage: bool,
    want_logprobs: bool,
}

impl Completions {
    /// The text choice `i` starts with.
    fn echo_of(&self, i: u32) -> String {
        let prompt = self
            .prompts
            .get((i / self.n) as usize)
            .filter(|_| self.echo);
        prompt.cloned().unwrap_or_default()
    }

    fn chunk(&self, choices: Value, usage: Value) -> Value {
        let m = &self.meta;
        json!({"id": m.id, "object": "text_completion", "created": m.created, "model": m.model,
            "system_fingerprint": m.fingerprint, "choices": choices, "usage": usage})
    }
}

impl Door for Completions {
    const NAME: &'static str = "completions";
    type Whole = Value;

    const WIRE: WireFormat = WireFormat::OpenAi;

    fn output_cap_error(&self, asked: u32, limit: u32, _model: &str) -> Error {
        crate::error::output_cap("max_tokens", asked, limit)
    }

    fn param_names(&self) -> &'static [(&'static str, &'static str)] {
        &[("messages", "prompt")]
    }

    async fn whole(self, events: EventStream) -> Result<Value, Error> {
        let total = self.n * self.prompts.len() as u32;
        let done = parlance_core::collect::collect(events, total).await?;
        let choices: Vec<Value> = done
            .choices
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let prefix = self.echo_of(i as u32);
                let mut offset = prefix.chars().count();
                json!({
                    "text": format!("{prefix}{}", c.content),
                    "index": i,
                    "logprobs": self.want_logprobs.then(|| logprobs_json(&c.logprobs, &mut offset)),
                    "finish_reason": finish_str(c.finish_reason.unwrap_or(FinishReason::Stop)),
                })
            })
            .collect();
        Ok(self.chunk(Value::Array(choices), usage_json(&done.usage)))
    }

    fn stream(self, events: EventStream) -> Frames {
        let sse = streamed(self, events).map(|v: Value| {
            let data = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            SseEvent::data(data)
        });
        Frames::Sse(Box::pin(sse))
    }
}

fn streamed(door: Completions, mut events: EventStream) -> impl futures::Stream<Item = Value> {
    async_stream::stream! {
        let mut offsets: std::collections::HashMap<u32, usize> = Default::default();
        let mut finished = false;
        while let Some(ev) = events.next().await {
            match ev {
                Ok(StreamEvent::Delta { index, delta }) => {
                    let offset = offsets.entry(index).or_insert(usize::MAX);
                    let mut text = String::new();
                    if *offset == usize::MAX {
                        // The first chunk of a choice carries the echoed prompt.
                        text = door.echo_of(index);
                        *offset = text.chars().count();
                    }
                    text.push_str(&delta.content);
                    let lp = door.want_logprobs.then(|| logprobs_json(&delta.logprobs, offset));
                    yield door.chunk(json!([{"text": text, "index": index, "logprobs": lp, "finish_reason": null}]), Value::Null);
                }
                Ok(StreamEvent::Finish { index, reason, .. }) => {
                    yield door.chunk(json!([{"text": "", "index": index, "logprobs": null, "finish_reason": finish_str(reason)}]), Value::Null);
                }
                Ok(StreamEvent::Usage(u)) => {
                    if door.include_usage {
                        yield door.chunk(json!([]), usage_json(&u));
                    }
                    finished = true;
                }
                Ok(StreamEvent::Debug(_)) => {}
                Err(e) => {
                    yield crate::error::openai_value(&e);
                    return;
                }
            }
        }
        if !finished {
            yield crate::error::openai_value(&Error::internal("the backend ended the stream before it finished"));
            return;
        }
        yield Value::String("[DONE]".into());
    }
}
