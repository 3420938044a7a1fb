//! The Ollama door: `POST /api/chat` and `/api/generate` (NDJSON streaming by default),
//! `/api/embed` and `/api/embeddings`, `GET /api/tags`, `POST /api/show`, `GET /api/ps`
//! and `GET /api/version`, with Ollama's `{"error": "..."}` bodies. Its durations are
//! measured here: the prompt's from the request's start to the first token, the
//! generation's from there to the end.

pub(crate) mod pull;
mod request;

use crate::auth::Principal;
use crate::body::read_json;
use crate::door::{Door, Frames, Refusal};
use crate::gate::WireFormat;
use crate::metering::{embedded, with_rate_headers};
use crate::reqlog::RequestCtx;
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use parlance_core::embed::{shortening, EmbedInput, EmbedRequest, Embeddings};
use parlance_core::ir::{ChatRequest, FinishReason, Progress, StreamEvent, Usage};
use parlance_core::lazy::KeepAlive;
use parlance_core::{Error, EventStream, ModelInfo};
use parlance_protocol::json::Fields;
use parlance_tenancy::store::rfc3339;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// The Ollama version this door answers `/api/version` with (its API as of then).
const VERSION: &str = "0.12.0";

pub(crate) async fn chat(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<Response, Refusal<Ollama>> {
    answer(&state, &ctx, &principal, body, false).await
}

pub(crate) async fn generate(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<Response, Refusal<Ollama>> {
    answer(&state, &ctx, &principal, body, true).await
}

/// `/api/chat` or (`generate`) `/api/generate`, through the one pipeline.
async fn answer(
    state: &AppState,
    ctx: &Arc<RequestCtx>,
    principal: &Principal,
    body: Body,
    generate: bool,
) -> Result<Response, Refusal<Ollama>> {
    let body: Value = read_json(body, state.body_limit).await?;
    ctx.set_model(body.field("model").as_str().unwrap_or_default());
    let mut req = if generate {
        request::generate(&body)?
    } else {
        request::chat(&body)?
    };
    if let Some(v) = body.get("keep_alive").filter(|v| !v.is_null()) {
        let keep = KeepAlive::parse(v)
            .map_err(|e| Error::invalid_param("keep_alive", format!("keep_alive: {e}")))?;
        req.context.keep_alive = Some(keep);
    }
    req.context.context_window = num_ctx(&body)?;
    let door = Ollama::new(&req, generate, ctx.started());
    req.model = served_name(state, &req.model);
    Ok(crate::door::chat(state, ctx, principal, door, req).await)
}

/// `options.num_ctx`: the context size a model loaded on demand is loaded with.
fn num_ctx(body: &Value) -> Result<Option<u32>, Error> {
    match body["options"].get("num_ctx").filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| (64..=1 << 20).contains(n))
            .map(|n| Some(n as u32))
            .ok_or_else(|| {
                Error::invalid_param(
                    "options.num_ctx",
                    "options.num_ctx must be a whole number of tokens from 64 to 1048576",
                )
            }),
    }
}

/// The name a model is served under: Ollama's clients say `name:latest` for `name`.
pub(crate) fn served_name(state: &AppState, name: &str) -> String {
    match name.strip_suffix(":latest") {
        Some(short) if state.router.resolve(name).is_err() => short.to_string(),
        _ => name.to_string(),
    }
}

/// Ollama's chat and generate answers.
pub(crate) struct Ollama {
    model: String,
    /// `/api/generate`: the text is `response`, not `message.content`.
    generate: bool,
    started: Instant,
    /// The request's progress, which says how long it waited for its model to load.
    progress: Progress,
}

impl Ollama {
    fn new(req: &ChatRequest, generate: bool, started: Instant) -> Self {
        Ollama {
            model: req.model.clone(),
            generate,
            started,
            progress: req.context.progress.clone(),
        }
    }

    /// One NDJSON object: the model, the time, and this door's text field.
    fn chunk(&self, text: &str, thinking: &str, calls: &[Value]) -> Value {
        let mut v = json!({"model": self.model, "created_at": now_rfc3339()});
        if self.generate {
            v.set("response", json!(text));
            if !thinking.is_empty() {
                v.set("thinking", json!(thinking));
            }
        } else {
            let mut m = json!({"role": "assistant", "content": text});
            if !thinking.is_empty() {
                m.set("thinking", json!(thinking));
            }
            if !calls.is_empty() {
                m.set("tool_calls", json!(calls));
            }
            v.set("message", m);
        }
        v.set("done", json!(false));
        v
    }

    /// The last object: why it ended, the counts and the measured durations.
    fn done(&self, mut v: Value, reason: FinishReason, u: &Usage, first: Option<Instant>) -> Value {
        let end = Instant::now();
        let first = first.unwrap_or(end);
        let ns = |d: std::time::Duration| d.as_nanos() as u64;
        v.set("done", json!(true));
        let done_reason = match reason {
            FinishReason::Length => "length",
            _ => "stop",
        };
        v.set("done_reason", json!(done_reason));
        v.set(
            "total_duration",
            json!(ns(end.duration_since(self.started))),
        );
        v.set("load_duration", json!(ns(self.progress.load_time())));
        v.set("prompt_eval_count", json!(u.prompt_tokens));
        v.set(
            "prompt_eval_duration",
            json!(ns(first.duration_since(self.started))),
        );
        v.set("eval_count", json!(u.completion_tokens));
        v.set("eval_duration", json!(ns(end.duration_since(first))));
        v
    }
}

/// The events folded as Ollama tells them: text as it comes, tool calls whole at the
/// end, then the closing object.
struct Fold {
    calls: BTreeMap<u32, (String, String)>,
    reason: FinishReason,
    first: Option<Instant>,
}

impl Fold {
    fn new() -> Self {
        Fold {
            calls: BTreeMap::new(),
            reason: FinishReason::Stop,
            first: None,
        }
    }

    /// The text and thinking of a delta (choice 0), its tool-call pieces kept.
    fn apply(&mut self, ev: StreamEvent) -> Option<(String, String)> {
        match ev {
            StreamEvent::Delta { index: 0, delta } => {
                self.first.get_or_insert_with(Instant::now);
                for c in delta.tool_calls {
                    let e = self.calls.entry(c.index).or_default();
                    if let Some(n) = c.name {
                        e.0 = n;
                    }
                    e.1.push_str(&c.arguments);
                }
                Some((delta.content, delta.reasoning))
            }
            StreamEvent::Finish {
                index: 0, reason, ..
            } => {
                self.reason = reason;
                None
            }
            _ => None,
        }
    }

    /// Ollama's tool calls: arguments as an object.
    fn calls(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.calls)
            .into_values()
            .map(|(name, args)| {
                let args: Value = serde_json::from_str(&args).unwrap_or_else(|_| json!({}));
                json!({"function": {"name": name, "arguments": args}})
            })
            .collect()
    }
}

impl Door for Ollama {
    const NAME: &'static str = "ollama";
    type Whole = Value;

    const WIRE: WireFormat = WireFormat::Ollama;

    fn output_cap_error(&self, asked: u32, limit: u32, _model: &str) -> Error {
        crate::error::output_cap("options.num_predict", asked, limit)
    }

    fn param_names(&self) -> &'static [(&'static str, &'static str)] {
        &[("max_tokens", "options.num_predict")]
    }

    async fn whole(self, mut events: EventStream) -> Result<Value, Error> {
        let mut fold = Fold::new();
        let (mut text, mut thinking, mut usage) = (String::new(), String::new(), None);
        while let Some(ev) = events.next().await {
            match ev? {
                StreamEvent::Usage(u) => usage = Some(u),
                ev => {
                    if let Some((t, r)) = fold.apply(ev) {
                        text.push_str(&t);
                        thinking.push_str(&r);
                    }
                }
            }
        }
        let usage = usage
            .ok_or_else(|| Error::internal("the backend ended the answer before it finished"))?;
        let calls = fold.calls();
        let v = self.chunk(&text, &thinking, &calls);
        Ok(self.done(v, fold.reason, &usage, fold.first))
    }

    fn stream(self, mut events: EventStream) -> Frames {
        let lines = async_stream::stream! {
            let mut fold = Fold::new();
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(StreamEvent::Usage(u)) => {
                        let calls = fold.calls();
                        if !calls.is_empty() {
                            yield self.chunk("", "", &calls);
                        }
                        yield self.done(self.chunk("", "", &[]), fold.reason, &u, fold.first);
                        return;
                    }
                    Ok(ev) => {
                        if let Some((t, r)) = fold.apply(ev) {
                            if !t.is_empty() || !r.is_empty() {
                                yield self.chunk(&t, &r, &[]);
                            }
                        }
                    }
                    Err(e) => {
                        yield Self::error_body(&e);
                        return;
                    }
                }
            }
            yield Self::error_body(&Error::internal("the backend ended the stream before it finished"));
        };
        Frames::Raw(
            "application/x-ndjson",
            Box::pin(lines.map(|v: Value| format!("{v}\n"))),
        )
    }
}

/// `POST /api/embed`: `{model, input: string | [string], truncate, dimensions}` ->
/// `{embeddings}`;
/// `POST /api/embeddings` (the older form): `{model, prompt}` -> `{embedding}`.
pub(crate) async fn embed(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Extension(principal): Extension<Principal>,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    body: Body,
) -> Result<Response, Refusal<Ollama>> {
    let body: Value = read_json(body, state.body_limit).await?;
    let model = served_name(&state, body.field("model").as_str().unwrap_or_default());
    ctx.set_model(&model);
    let legacy = uri.path().ends_with("/embeddings");
    let texts: Vec<String> = match (legacy, body.field("input"), body.field("prompt")) {
        (true, _, Value::String(p)) => vec![p.clone()],
        (false, Value::String(s), _) => vec![s.clone()],
        (false, Value::Array(a), _) if !a.is_empty() => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                Error::invalid_param("input", "input must be a string or a list of strings")
            })?,
        _ => return Err(Error::invalid_param("input", "input is required").into()),
    };
    let route = state.router.resolve(&model)?;
    let shorten = match body.field("dimensions") {
        Value::Null => None,
        v => {
            let asked = v.as_u64().ok_or_else(|| {
                Error::invalid_param("dimensions", "dimensions must be a positive integer")
            })?;
            shortening(
                &route.info,
                u32::try_from(asked).unwrap_or(u32::MAX),
                "dimensions",
            )?
        }
    };
    let bytes = texts.iter().map(String::len).sum();
    // Ollama cuts long inputs to the context unless told not to.
    let truncate = (body.field("truncate").as_bool() != Some(false)).then_some(u32::MAX);
    let ir = EmbedRequest {
        model: model.clone(),
        inputs: texts.into_iter().map(EmbedInput::Text).collect(),
        truncate,
    };
    let started = ctx.started();
    let work = route.backend.embed(ir);
    let tokens = |e: &Embeddings| e.prompt_tokens;
    let metered = embedded(
        &state,
        &ctx,
        &principal,
        &route.info,
        Ollama::NAME,
        bytes,
        work,
        tokens,
    );
    let (mut made, rate) = match metered.await {
        Ok(done) => done,
        Err((e, rate)) => {
            return Ok(with_rate_headers(
                Refusal::<Ollama>::from(e).into_response(),
                &rate,
            ))
        }
    };
    if let Some(k) = shorten {
        made.shorten(k, "dimensions")?;
    }
    let body = if legacy {
        json!({"embedding": made.vectors.into_iter().next().unwrap_or_default()})
    } else {
        json!({"model": model, "embeddings": made.vectors,
               "total_duration": started.elapsed().as_nanos() as u64, "load_duration": 0,
               "prompt_eval_count": made.prompt_tokens})
    };
    Ok(with_rate_headers(Json(body).into_response(), &rate))
}

/// A metadata value as Ollama's `model_info` gives it: numbers and booleans as such.
fn meta_value(v: &str) -> Value {
    if let Ok(n) = v.parse::<i64>() {
        return json!(n);
    }
    if let Ok(x) = v.parse::<f64>() {
        if x.is_finite() {
            return json!(x);
        }
    }
    match v {
        "true" => json!(true),
        "false" => json!(false),
        _ => json!(v),
    }
}

fn meta<'a>(m: &'a ModelInfo, key: &str) -> Option<&'a str> {
    m.file_metadata
        .as_ref()?
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `1.2B`, `135M`: Ollama's way of writing a parameter count.
fn parameter_size(m: &ModelInfo) -> String {
    let Some(n) = meta(m, "general.parameter_count").and_then(|v| v.parse::<f64>().ok()) else {
        return meta(m, "general.size_label")
            .unwrap_or_default()
            .to_string();
    };
    match n {
        n if n >= 1e9 => format!("{:.1}B", n / 1e9),
        n => format!("{:.0}M", n / 1e6),
    }
}

/// llama.cpp's `general.file_type` numbers as the quantization they name.
fn quantization(m: &ModelInfo) -> &'static str {
    const NAMES: [(&str, &str); 12] = [
        ("0", "F32"),
        ("1", "F16"),
        ("2", "Q4_0"),
        ("3", "Q4_1"),
        ("7", "Q8_0"),
        ("8", "Q5_0"),
        ("9", "Q5_1"),
        ("10", "Q2_K"),
        ("12", "Q3_K_M"),
        ("15", "Q4_K_M"),
        ("17", "Q5_K_M"),
        ("18", "Q6_K"),
    ];
    let t = meta(m, "general.file_type").unwrap_or_default();
    NAMES
        .iter()
        .find(|(n, _)| *n == t)
        .map_or("", |(_, name)| name)
}

fn details(m: &ModelInfo) -> Value {
    let family = meta(m, "general.architecture").unwrap_or(&m.owned_by);
    json!({"parent_model": "", "format": "gguf", "family": family, "families": [family],
           "parameter_size": parameter_size(m), "quantization_level": quantization(m)})
}

fn listed(m: &ModelInfo) -> Value {
    json!({"name": m.id, "model": m.id, "modified_at": rfc3339(m.created), "size": 0,
           "digest": "", "details": details(m)})
}

/// Every model, loaded or not (a model loaded on demand with its file's size).
pub(crate) async fn tags(State(state): State<Arc<AppState>>) -> Json<Value> {
    let models: Vec<Value> = state
        .router
        .routes()
        .map(|r| {
            let mut v = listed(&r.info);
            if let Some(res) = r.backend.residency() {
                v.set("size", json!(res.size_bytes));
            }
            v
        })
        .collect();
    Json(json!({"models": models}))
}

/// The models in memory: those loaded at start (which never expire) and those loaded
/// on demand, with when they will be unloaded if no request comes.
pub(crate) async fn ps(State(state): State<Arc<AppState>>) -> Json<Value> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let models: Vec<Value> = state
        .router
        .routes()
        .filter_map(|r| {
            let mut v = listed(&r.info);
            v.set("size_vram", json!(0));
            v.set("context_length", json!(r.info.context_length));
            let Some(res) = r.backend.residency() else {
                v.set("expires_at", json!("0001-01-01T00:00:00Z"));
                return Some(v);
            };
            if let Some(n) = res.context {
                v.set("context_length", json!(n));
            }
            if !res.loaded {
                return None;
            }
            // Busy or kept: Ollama shows a far future for a model that will not expire.
            let expires = res
                .expires_in_s
                .map_or(now + 100 * 365 * 86_400, |s| now + s);
            v.set("expires_at", json!(rfc3339(expires)));
            // Ollama's ps says how much memory a model takes.
            v.set("size", json!(res.memory_bytes));
            Some(v)
        })
        .collect();
    Json(json!({"models": models}))
}

pub(crate) async fn version() -> Json<Value> {
    Json(json!({"version": VERSION}))
}

/// `POST /api/show`: what Parlance knows of a model.
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<Value>, Refusal<Ollama>> {
    let body: Value = read_json(body, state.body_limit).await?;
    let name = body
        .field("model")
        .as_str()
        .or_else(|| body.field("name").as_str())
        .unwrap_or_default();
    let route = state.router.resolve(&served_name(&state, name))?;
    let m = &route.info;
    let c = &m.capabilities;
    let caps: Vec<&str> = [
        (c.chat, "completion"),
        (c.tools, "tools"),
        (c.vision, "vision"),
        (c.embeddings, "embedding"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    // The GGUF's own keys, as Ollama shows them (the template is shown on its own).
    let mut info: Map<String, Value> = m
        .file_metadata
        .iter()
        .flat_map(|kv| kv.iter())
        .filter(|(k, _)| k != "tokenizer.chat_template")
        .map(|(k, v)| (k.clone(), meta_value(v)))
        .collect();
    info.entry("general.architecture")
        .or_insert_with(|| json!(m.owned_by));
    // Served context (what a request may use), beside the trained one in `{arch}.context_length`.
    info.insert("context_length".into(), json!(m.context_length));
    if let Some(d) = m.dimensions {
        info.insert("embedding_length".into(), json!(d));
    }
    let template = meta(m, "tokenizer.chat_template").unwrap_or_default();
    Ok(Json(
        json!({"modelfile": "", "parameters": "", "template": template, "details": details(m),
                   "model_info": info, "capabilities": caps, "modified_at": rfc3339(m.created)}),
    ))
}

fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.{:09}Z",
        rfc3339(now.as_secs()).trim_end_matches('Z'),
        now.subsec_nanos()
    )
}
